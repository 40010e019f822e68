/* `vdisk commit`: qemu-img commit. Copies what the layers above the base allocate into the
 * base (the immediate backing file unless -b names a deeper one), then empties the top
 * image unless -d (implied by -b). */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli-util.h"
#include "vdisk/copy.h"

/* Does `name` (as the user wrote it) designate `layer`, the backing file of the image
 * called `parent_name`? As in qemu, a relative name is taken relative to the directory of
 * that image, and the two paths must resolve to the same file. */
static bool names_layer(const char *parent_name, const char *name, vd_disk *layer)
{
    const char *lname = vd_disk_filename(layer);
    char *rel = vd_backing_path(parent_name, name);
    char a[PATH_MAX], b[PATH_MAX];
    bool same = lname && realpath(rel, a) && realpath(lname, b) && !strcmp(a, b);
    free(rel);
    return same;
}

/* Finds the layer the user named with -b and its depth; NULL if it is not in the chain. */
static vd_disk *find_base(vd_disk *top, const char *top_name, const char *name, int *depth)
{
    const char *parent_name = top_name;
    int k = 1;
    for (vd_disk *b = vd_disk_backing(top); b; b = vd_disk_backing(b), k++) {
        if (names_layer(parent_name, name, b)) {
            *depth = k;
            return b;
        }
        parent_name = vd_disk_filename(b);
    }
    return NULL;
}

static bool commit_progress(void *opaque, uint64_t done, uint64_t total)
{
    if (done == 0) {
        return true;   /* the 0% line is out already */
    }
    cli_progress_print(opaque, total ? (float)done / (float)total * 100.f : 0.f, 0);
    return true;
}

/* Copies what the layers above depth `base_depth` supply, as the top reads it, into
 * `base`. Writes go in order, so the base's layout is that of qemu-img's sequential copy. */
static int copy_to_base(vd_disk *top, vd_disk *base, int base_depth, bool base_has_backing,
                        cli_progress *prog, vd_error **errp)
{
    vd_copy_opts o = {
        .above_depth = base_depth,
        /* Unmapping in a base that has its own backing file would uncover that file. */
        .unmap = !base_has_backing,
        /* The writes go in order and the disk bounds the copy: two workers keep a read
         * ahead of the write; eight were measured slower on a cold cache. */
        .workers = 2,
        .in_order = true,
        .progress = commit_progress,
        .opaque = prog,
    };
    vd_error *err = NULL;
    int ret = vd_disk_copy(top, base, 0, vd_disk_size(top), &o, &err);
    if (ret < 0) {
        vd_error_free(err);
        return vd_error_set(errp, VD_ERR_IO, -ret, "Block job failed: %s", strerror(-ret));
    }
    return 0;
}

int cmd_commit(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = NULL, *cache = "writeback", *base_name = NULL;
    bool progress = false, quiet = false, drop = false;
    int c;

    while ((c = getopt_long(argc, argv, ":f:ht:b:dpqr:", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_help();
        case 'f':
            fmt = optarg;
            break;
        case 't':
            cache = optarg;
            break;
        case 'b':
            base_name = optarg;
            /* Emptying the top would change what the layers between it and the base show. */
            drop = true;
            break;
        case 'd':
            drop = true;
            break;
        case 'p':
            progress = true;
            break;
        case 'q':
            quiet = true;
            break;
        case 'r': {
            /* A rate limit only paces the copy; the copy here runs at full speed. */
            int64_t rate;
            if (cli_cvtnum("rate limit", optarg, &rate) < 0) {
                return 1;
            }
            break;
        }
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
    const char *filename = argv[optind];

    unsigned flags = VD_OPEN_RDWR | VD_OPEN_UNMAP;
    if (cli_parse_cache(cache, &flags) < 0) {
        cli_error("Invalid cache option: %s", cache);
        return 1;
    }

    vd_engine *e = cli_engine_new();
    vd_disk *top = NULL, *base = NULL;
    vd_error *err = NULL;
    cli_progress prog;
    int ret = 1;

    if (cli_open(e, filename, fmt, flags, &top) < 0) {
        vd_engine_free(e);
        return 1;
    }
    cli_progress_init(&prog, progress, 1.f);
    cli_progress_print(&prog, 0.f, 100);

    int base_depth = 1;
    vd_disk *base_layer;
    if (base_name) {
        base_layer = find_base(top, filename, base_name, &base_depth);
        if (!base_layer) {
            vd_error_set(&err, VD_ERR_NOT_FOUND, ENOENT,
                         "Did not find '%s' in the backing chain of '%s'", base_name, filename);
            goto done;
        }
    } else {
        base_layer = vd_disk_backing(top);
        if (!base_layer) {
            vd_error_set(&err, VD_ERR_INVALID, EINVAL, "Image does not have a backing file");
            goto done;
        }
    }

    /* The chain's copy of the base is read-only; write through a handle of our own, opened
     * by the name its overlay gives it (a json: name keeps its filters, as in QEMU). */
    vd_disk *above = top;
    while (vd_disk_backing(above) != base_layer) {
        above = vd_disk_backing(above);
    }
    vd_image_info above_info;
    char *base_file = NULL;
    if (vd_get_info(above, &above_info, NULL) == 0) {
        if (above_info.full_backing_filename) {
            base_file = cli_xstrdup(above_info.full_backing_filename);
        }
        vd_image_info_clear(&above_info);
    }
    if (!base_file) {
        base_file = cli_xstrdup(vd_disk_filename(base_layer));
    }
    vd_open_opts bo = {.format = vd_disk_format(base_layer), .flags = flags};
    int r = vd_open(e, base_file, &bo, &base, &err);
    free(base_file);
    if (r < 0) {
        goto done;
    }
    if (vd_disk_size(base) < vd_disk_size(top)) {
        if (vd_truncate(base, vd_disk_size(top), false, "off", &err) < 0) {
            goto done;
        }
    }
    if (copy_to_base(top, base, base_depth, vd_disk_backing(base) != NULL, &prog, &err) < 0) {
        goto done;
    }
    r = vd_flush(base);
    if (r == 0) {
        r = vd_close(base);
        base = NULL;
    }
    if (r < 0) {
        vd_error_set(&err, VD_ERR_IO, -r, "Block job failed: %s", strerror(-r));
        goto done;
    }
    cli_progress_print(&prog, 100.f, 0);

    if (!drop) {
        vd_error *merr = NULL;
        r = vd_make_empty(top, &merr);
        if (r < 0) {
            vd_error_set(&err, VD_ERR_IO, -r, "Could not empty %s: %s", filename,
                         strerror(-r));
            vd_error_free(merr);
            goto done;
        }
    }
    ret = 0;
done:
    cli_progress_end(&prog);
    if (base) {
        vd_close(base);
    }
    if (vd_close(top) < 0 && ret == 0) {
        vd_error_set(&err, VD_ERR_IO, EIO, "%s: error while closing the image", filename);
        ret = 1;
    }
    vd_engine_free(e);
    if (err) {
        cli_report_err(err, NULL);
        return 1;
    }
    if (ret == 0) {
        cli_qprintf(quiet, "Image committed.\n");
    }
    return ret;
}
