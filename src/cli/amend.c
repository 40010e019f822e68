/* `vdisk amend`: qemu-img amend. Changes format options of an existing image in place
 * (compat, lazy_refcounts, refcount_bits, size ...) through the library. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli-util.h"

/* The qcow2 options qemu can amend; the other creation options are refused with a hint. */
static const char *const qcow2_amendable[] = {
    "backing_file", "backing_fmt", "compat", "data_file", "data_file_raw",
    "lazy_refcounts", "refcount_bits", "size", NULL,
};

/* Options qemu-img lists for amend only: changing the key slots of a LUKS-encrypted image
 * (which vdisk refuses, as it refuses encryption). */
static const vd_create_option amend_only[] = {
    {"encrypt.iter-time", "num", "Time to spend in PBKDF in milliseconds", NULL},
    {"encrypt.keyslot", "num", "Select a single keyslot to modify explicitly", NULL},
    {"encrypt.new-secret", "str", "New secret to set in the matching keyslots. Empty string to "
     "erase", NULL},
    {"encrypt.old-secret", "str", "Select all keyslots that match this password", NULL},
    {"encrypt.state", "str", "Select new state of affected keyslots (active/inactive)", NULL},
};

static int print_amend_help(const char *fmt)
{
    if (!cli_format_known(fmt) && !cli_read_only_format(fmt)) {
        cli_error("Unknown file format '%s'", fmt);
        return 1;
    }
    if (strcmp(fmt, "qcow2") != 0) {
        cli_error("Format driver '%s' does not support option amendment", fmt);
        return 1;
    }
    return cli_print_option_help_extra(fmt, NULL, qcow2_amendable, true, amend_only,
                                       sizeof(amend_only) / sizeof(amend_only[0]));
}

static bool is_v3(const char *compat)
{
    return !strcmp(compat, "1.1") || !strcmp(compat, "v3");
}

static int do_amend(vd_disk *d, vd_opts *o, cli_progress *prog, vd_error **errp)
{
    vd_image_info info;
    vd_error *ierr = NULL;
    bool was_v3 = false;
    if (vd_get_info(d, &info, &ierr) == 0) {
        was_v3 = info.is_qcow2 && strcmp(info.compat, "0.10") != 0;
        vd_image_info_clear(&info);
    } else {
        vd_error_free(ierr);
    }
    const char *size_s = vd_opts_get(o, "size");
    uint64_t size = 0;
    if (size_s && vd_parse_size(size_s, &size) < 0) {
        size_s = NULL;
    }
    char *compat = vd_opts_get(o, "compat") ? cli_xstrdup(vd_opts_get(o, "compat")) : NULL;
    vd_opts_del(o, "size");

    /* qemu upgrades before resizing and downgrades after it, so that a resize never runs
     * under rules of the older version. */
    bool amend_first = !compat || is_v3(compat);
    int ret = 0;
    if (amend_first && vd_opts_count(o) > 0) {
        ret = vd_amend(d, o, errp);
    }
    /* size=0 means "unchanged" to qemu's amend. */
    if (ret == 0 && size_s && size != 0 && size != vd_disk_size(d)) {
        ret = vd_truncate(d, size, true, "off", errp);
    }
    if (ret == 0 && !amend_first && vd_opts_count(o) > 0) {
        ret = vd_amend(d, o, errp);
        if (ret == 0 && was_v3) {
            /* qemu's downgrade reports its own completion before amend's final 100%. */
            cli_progress_print(prog, 100.f, 0);
        }
    }
    free(compat);
    return ret;
}

int cmd_amend(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"force", no_argument, NULL, OPT_FORCE},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = NULL, *cache = "writeback";
    char *options = NULL;
    bool quiet = false, progress = false;
    int c, ret = 1;

    while ((c = getopt_long(argc, argv, ":ho:f:t:pq", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_help();
        case 'o':
            if (cli_add_option_list(&options, optarg) < 0) {
                free(options);
                return 1;
            }
            break;
        case 'f':
            fmt = optarg;
            break;
        case 't':
            cache = optarg;
            break;
        case 'p':
            progress = true;
            break;
        case 'q':
            quiet = true;
            break;
        case OPT_FORCE:
            break;
        default:
            cli_bad_option(c, argv);
        }
    }
    if (!options) {
        cli_error_exit("Must specify options (-o)");
    }
    if (quiet) {
        progress = false;
    }
    cli_progress prog;
    cli_progress_init(&prog, progress, 1.0f);

    vd_engine *e = NULL;
    vd_disk *d = NULL;
    vd_opts *o = NULL;
    const char *filename = optind == argc - 1 ? argv[argc - 1] : NULL;
    bool help = cli_has_help_option(options);
    if (fmt && help) {
        ret = print_amend_help(fmt);
        goto out;
    }
    if (optind != argc - 1) {
        cli_error("Expecting one image file name");
        goto out;
    }
    unsigned flags = VD_OPEN_RDWR;
    if (cli_parse_cache(cache, &flags) < 0) {
        cli_error("Invalid cache option: %s", cache);
        goto out;
    }
    e = cli_engine_new();
    if (cli_open(e, filename, fmt, flags, &d) < 0) {
        goto out;
    }
    fmt = vd_disk_format(d);
    if (help) {
        ret = print_amend_help(fmt);
        goto out;
    }
    if (strcmp(fmt, "qcow2") != 0) {
        cli_error("Format driver '%s' does not support option amendment", fmt);
        goto out;
    }
    o = vd_opts_new();
    if (cli_parse_options(fmt, options, qcow2_amendable, true, "", o) < 0) {
        goto out;
    }
    cli_normalize_bools(fmt, o);
    if (vd_opts_get(o, "backing_file") || vd_opts_get(o, "backing_fmt")) {
        cli_error("Cannot amend the backing file");
        fprintf(stderr, "You can use '%s rebase' instead.\n", cli_progname());
        goto out;
    }

    vd_error *err = NULL;
    cli_progress_print(&prog, 0.f, 0);
    int r = do_amend(d, o, &prog, &err);
    cli_progress_print(&prog, 100.f, 0);
    if (r < 0) {
        cli_report_err_for(err, filename, NULL);
        goto out;
    }
    ret = 0;
out:
    cli_progress_end(&prog);
    vd_opts_free(o);
    free(options);
    if (d && vd_close(d) < 0 && ret == 0) {
        cli_error("%s: error while writing the image", filename);
        ret = 1;
    }
    if (e) {
        vd_engine_free(e);
    }
    return ret;
}
