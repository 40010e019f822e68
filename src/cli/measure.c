/* `vdisk measure`: qemu-img measure. Asks the library how large an image of the output
 * format would be, for a given size or for the contents of an existing image. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli-util.h"
#include "vdisk/bitmap.h"

/* qemu reports a "bitmaps" size when both the target and the source can hold persistent
 * bitmaps: qcow2 v3 on both sides. */
static bool reports_bitmaps(const char *out_fmt, const vd_opts *o, vd_disk *src)
{
    if (!src || strcmp(out_fmt, "qcow2") != 0) {
        return false;
    }
    const char *compat = vd_opts_get(o, "compat");
    if (compat && (!strcmp(compat, "0.10") || !strcmp(compat, "v2"))) {
        return false;
    }
    vd_image_info info;
    vd_error *err = NULL;
    if (vd_get_info(src, &info, &err) < 0) {
        vd_error_free(err);
        return false;
    }
    bool v3 = info.is_qcow2 && strcmp(info.compat, "0.10") != 0;
    vd_image_info_clear(&info);
    return v3;
}

/* What `convert --bitmaps` would store for the source's persistent bitmaps in clusters of
 * cs bytes, as QEMU reckons it: every bitmap fully allocated, its table, and the
 * directory. */
static uint64_t bitmaps_size(vd_disk *src, const vd_opts *o)
{
    uint64_t cs = 65536;
    const char *v = vd_opts_get(o, "cluster_size");
    if (v && (vd_parse_size(v, &cs) < 0 || cs == 0)) {
        cs = 65536;
    }
    vd_bitmap_info *list;
    size_t nb;
    if (vd_disk_bitmap_list(src, &list, &nb, NULL) < 0) {
        return 0;
    }
    uint64_t size = vd_disk_size(src), total = 0, dir = 0;
    for (size_t i = 0; i < nb; i++) {
        if (!list[i].persistent) {
            continue;
        }
        uint64_t granules = (size + list[i].granularity - 1) / list[i].granularity;
        uint64_t clusters = ((granules + 7) / 8 + cs - 1) / cs;
        total += clusters * cs + (clusters * 8 + cs - 1) / cs * cs;
        dir += (24 + strlen(list[i].name) + 7) / 8 * 8;
    }
    vd_bitmap_list_free(list, nb);
    return total + (dir + cs - 1) / cs * cs;
}

int cmd_measure(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"output", required_argument, NULL, OPT_OUTPUT},
        {"size", required_argument, NULL, OPT_SIZE},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = NULL, *out_fmt = "raw", *filename = NULL;
    char *options = NULL;
    bool json = false;
    int64_t img_size = -1;
    int ret = 1, c;
    vd_engine *e = NULL;
    vd_disk *src = NULL;
    vd_opts *o = NULL;

    /* Like qemu-img measure, an unknown or incomplete option shows the help. */
    while ((c = getopt_long(argc, argv, "hf:O:o:l:U", long_options, NULL)) != -1) {
        switch (c) {
        case 'f':
            fmt = optarg;
            break;
        case 'O':
            out_fmt = optarg;
            break;
        case 'o':
            if (cli_add_option_list(&options, optarg) < 0) {
                goto out;
            }
            break;
        case 'l':
            cli_error("Internal snapshots are not supported by measure");
            goto out;
        case 'U':
            break;
        case OPT_OUTPUT: {
            int j = cli_parse_output(optarg);
            if (j < 0) {
                goto out;
            }
            json = j;
            break;
        }
        case OPT_SIZE:
            if (cli_cvtnum("image size", optarg, &img_size) < 0) {
                goto out;
            }
            break;
        default:
            cli_help();
        }
    }

    if (argc - optind > 1) {
        cli_error("At most one filename argument is allowed.");
        goto out;
    } else if (argc - optind == 1) {
        filename = argv[optind];
    }
    if (!filename && fmt) {
        cli_error("--image-opts, -f, and -l require a filename argument.");
        goto out;
    }
    if (filename && img_size >= 0) {
        cli_error("--size N cannot be used together with a filename.");
        goto out;
    }
    if (!filename && img_size < 0) {
        cli_error("Either --size N or one filename must be specified.");
        goto out;
    }

    e = cli_engine_new();
    if (filename && cli_open(e, filename, fmt, 0, &src) < 0) {
        goto out;
    }
    if (!cli_format_known(out_fmt)) {
        cli_error("Unknown file format '%s'", out_fmt);
        goto out;
    }
    o = vd_opts_new();
    if (options) {
        if (cli_has_help_option(options)) {
            cli_error("Invalid parameter 'help'");
            cli_error("Invalid options for file format '%s'", out_fmt);
            goto out;
        }
        if (cli_parse_options(out_fmt, options, NULL, false, "", o) < 0) {
            cli_error("Invalid options for file format '%s'", out_fmt);
            goto out;
        }
        cli_normalize_bools(out_fmt, o);
    }
    uint64_t size = src ? vd_disk_size(src) : (uint64_t)img_size;
    if (!src) {
        vd_opts_del(o, "size");
    }

    vd_measure_result res;
    vd_error *err = NULL;
    if (vd_measure(out_fmt, o, size, src, &res, &err) < 0) {
        cli_report_err_for(err, filename, NULL);
        goto out;
    }
    bool bitmaps = reports_bitmaps(out_fmt, o, src);
    uint64_t bm_size = bitmaps ? bitmaps_size(src, o) : 0;
    if (json) {
        cli_json *j = cli_json_object();
        cli_json_add_int(j, "required", (int64_t)res.required);
        cli_json_add_int(j, "fully-allocated", (int64_t)res.fully_allocated);
        if (bitmaps) {
            cli_json_add_int(j, "bitmaps", (int64_t)bm_size);
        }
        cli_json_print(stdout, j);
        cli_json_free(j);
    } else {
        printf("required size: %" PRIu64 "\n", res.required);
        printf("fully allocated size: %" PRIu64 "\n", res.fully_allocated);
        if (bitmaps) {
            printf("bitmaps size: %" PRIu64 "\n", bm_size);
        }
    }
    ret = 0;
out:
    vd_opts_free(o);
    free(options);
    if (src) {
        vd_close(src);
    }
    if (e) {
        vd_engine_free(e);
    }
    return ret;
}
