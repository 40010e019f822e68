/* `vdisk rebase`: qemu-img rebase. Safe mode copies into the image every range it does not
 * allocate itself where the old and the new backing file differ, so that its contents stay
 * the same; then (in both modes) the backing file name and format in the image change. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli-util.h"
#include "vdisk/copy.h"

/* Depth at which the file `path` sits in top's chain, or -1. A new backing file that is
 * already in the chain only needs the ranges the layers above it allocate. */
static int chain_depth_of(vd_disk *top, const char *path)
{
    char want[PATH_MAX], have[PATH_MAX];
    if (!realpath(path, want)) {
        return -1;
    }
    int k = 1;
    for (vd_disk *b = vd_disk_backing(top); b; b = vd_disk_backing(b), k++) {
        const char *name = vd_disk_filename(b);
        if (name && realpath(name, have) && !strcmp(want, have)) {
            return k;
        }
    }
    return -1;
}

static bool rebase_progress(void *opaque, uint64_t done, uint64_t total)
{
    if (done > 0) {
        cli_progress_print(opaque, total ? (float)done / (float)total * 100.f : 0.f, 0);
    }
    return true;
}

/* The safe-mode copy: every range the image does not allocate itself, where what its old
 * backing chain reads differs from what new_b reads (zeros if none), is written into the
 * image, so that its contents stay the same. When new_b is already in the chain (at
 * new_depth), what it or the layers below it supply reads the same either way and is left
 * out. Writes go in order, as qemu-img's sequential copy places them. Returns 0 or 1 after
 * printing the error. */
static int copy_differences(vd_disk *top, vd_disk *new_b, int new_depth, cli_progress *prog)
{
    vd_copy_failure failure = VD_COPY_OK;
    vd_copy_opts o = {
        .from_depth = 1,
        .above_depth = new_depth > 0 ? new_depth : 0,
        /* The writes go in order and the disk bounds the copy: two workers keep a read
         * ahead of the write; eight were measured slower on a cold cache. */
        .workers = 2,
        .in_order = true,
        .compared = true,
        .compare = new_b,
        .progress = rebase_progress,
        .opaque = prog,
        .failure = &failure,
    };
    vd_error *err = NULL;
    int r = vd_disk_copy(top, top, 0, vd_disk_size(top), &o, &err);
    if (r == 0) {
        return 0;
    }
    switch (failure) {
    case VD_COPY_FAILED_STATUS:
        cli_error("error while reading image metadata: %s", strerror(-r));
        break;
    case VD_COPY_FAILED_READ:
        cli_error("error while reading from old backing file");
        break;
    case VD_COPY_FAILED_COMPARE:
        cli_error("error while reading from new backing file");
        break;
    case VD_COPY_FAILED_WRITE:
        cli_error("Error while writing to COW image: %s", strerror(-r));
        break;
    default:
        cli_report_err(err, NULL);
        err = NULL;
        break;
    }
    vd_error_free(err);
    return 1;
}

/* Every driver name QEMU 7.2 knows: qemu-img takes any of them for -F, and with -u only
 * writes the name into the image, so vdisk does the same. */
static bool qemu_driver_name(const char *name)
{
    static const char *const names[] = {
        "blkdebug", "blklogwrites", "blkreplay", "blkverify", "bochs", "cloop", "compress",
        "copy-before-write", "copy-on-read", "dmg", "file", "ftp", "ftps", "gluster",
        "host_cdrom", "host_device", "http", "https", "iscsi", "iser", "luks", "nbd", "nfs",
        "null-aio", "null-co", "nvme", "parallels", "preallocate", "qcow", "qcow2", "qed",
        "quorum", "raw", "rbd", "replication", "snapshot-access", "ssh", "throttle", "vdi",
        "vhdx", "vmdk", "vpc", "vvfat",
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (!strcmp(name, names[i])) {
            return true;
        }
    }
    return false;
}

int cmd_rebase(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = NULL, *cache = "writeback", *src_cache = "writeback";
    const char *out_base = NULL, *out_basefmt = NULL;
    bool progress = false, quiet = false, unsafe = false;
    int c;

    while ((c = getopt_long(argc, argv, ":hf:F:b:upt:T:qU", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_help();
        case 'f':
            fmt = optarg;
            break;
        case 'F':
            out_basefmt = optarg;
            break;
        case 'b':
            out_base = optarg;
            break;
        case 'u':
            unsafe = true;
            break;
        case 'p':
            progress = true;
            break;
        case 't':
            cache = optarg;
            break;
        case 'T':
            src_cache = optarg;
            break;
        case 'q':
            quiet = true;
            break;
        case 'U':
            break;
        default:
            cli_bad_option(c, argv);
        }
    }
    if (quiet) {
        progress = false;
    }
    if (optind != argc - 1) {
        cli_error_exit("Expecting one image file name");
    }
    if (!unsafe && !out_base) {
        cli_error_exit("Must specify backing file (-b) or use unsafe mode (-u)");
    }
    const char *filename = argv[optind];

    cli_progress prog;
    cli_progress_init(&prog, progress, 2.0f);
    cli_progress_print(&prog, 0, 100);

    vd_engine *e = cli_engine_new();
    vd_disk *top = NULL, *new_b = NULL;
    int ret = 1;
    unsigned flags = VD_OPEN_RDWR | (unsafe ? VD_OPEN_NO_BACKING : 0);
    unsigned src_flags = 0;
    if (cli_parse_cache(cache, &flags) < 0) {
        cli_error("Invalid cache option: %s", cache);
        goto out;
    }
    if (cli_parse_cache(src_cache, &src_flags) < 0) {
        cli_error("Invalid source cache option: %s", src_cache);
        goto out;
    }
    if (cli_open(e, filename, fmt, flags, &top) < 0) {
        goto out;
    }
    if (out_basefmt && !cli_format_known(out_basefmt) && !qemu_driver_name(out_basefmt)) {
        cli_error("Invalid format name: '%s'", out_basefmt);
        goto out;
    }
    bool new_backing = out_base && out_base[0];
    /* qemu-img refuses a backing file without a format only when it rewrites the header;
     * refusing before the copy gives the same result without the wasted work. */
    if (new_backing && !out_basefmt) {
        cli_error("Could not change the backing file to '%s': backing format must be "
                  "specified", out_base);
        goto out;
    }

    if (!unsafe) {
        int new_depth = -1;
        if (new_backing) {
            char *path = vd_backing_path(filename, out_base);
            vd_open_opts no = {.format = out_basefmt, .flags = src_flags};
            vd_error *err = NULL;
            new_depth = chain_depth_of(top, path);
            int r = vd_open(e, path, &no, &new_b, &err);
            if (r < 0) {
                cli_report_err_for(err, path, "Could not open new backing file '%s': ",
                                   out_base);
                free(path);
                goto out;
            }
            free(path);
        }
        if (copy_differences(top, new_b, new_depth, &prog)) {
            goto out;
        }
    }

    vd_error *err = NULL;
    int r = vd_set_backing(top, new_backing ? out_base : NULL, new_backing ? out_basefmt : NULL,
                           &err);
    if (r == -ENOSPC) {
        cli_error("Could not change the backing file to '%s': No space left in the file "
                  "header", out_base ? out_base : "");
        vd_error_free(err);
        goto out;
    } else if (r < 0) {
        cli_error("Could not change the backing file to '%s': %s", out_base ? out_base : "",
                  strerror(-r));
        vd_error_free(err);
        goto out;
    }
    cli_progress_print(&prog, 100, 0);
    ret = 0;
out:
    cli_progress_end(&prog);
    if (new_b) {
        vd_close(new_b);
    }
    if (top && vd_close(top) < 0 && ret == 0) {
        cli_error("%s: error while writing the image", filename);
        ret = 1;
    }
    vd_engine_free(e);
    return ret;
}
