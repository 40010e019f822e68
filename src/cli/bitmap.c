/* `vdisk bitmap`: qemu-img bitmap. The persistent bitmaps of one image are changed by a
 * list of actions run in the order given (--add, --remove, --clear, --enable, --disable,
 * --merge SOURCE), each as the QMP command of that name would run it; the image is closed
 * at the end, which stores them. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli-util.h"
#include "vdisk/bitmap.h"

enum {
    OPT_ADD = 500,
    OPT_REMOVE,
    OPT_CLEAR,
    OPT_ENABLE,
    OPT_DISABLE,
    OPT_MERGE,
    OPT_BITMAP_OBJECT,
};

typedef struct action {
    int kind;                 /* OPT_ADD ... OPT_MERGE */
    const char *source;       /* --merge */
} action;

static const char *action_name(int kind)
{
    static const char *const names[] = {"add", "remove", "clear", "enable", "disable",
                                        "merge"};
    return names[kind - OPT_ADD];
}

static int run_action(vd_disk *d, vd_disk *src, const action *a, const char *bitmap,
                      uint64_t granularity, vd_error **err)
{
    switch (a->kind) {
    case OPT_ADD: {
        vd_bitmap_add_opts o = {.granularity = granularity, .persistent = true};
        return vd_disk_bitmap_add(d, bitmap, &o, err);
    }
    case OPT_REMOVE:
        return vd_disk_bitmap_remove(d, bitmap, err);
    case OPT_CLEAR:
        return vd_disk_bitmap_clear(d, bitmap, err);
    case OPT_ENABLE:
        return vd_disk_bitmap_enable(d, bitmap, true, err);
    case OPT_DISABLE:
        return vd_disk_bitmap_enable(d, bitmap, false, err);
    default:
        return vd_disk_bitmap_merge(d, bitmap, src, a->source, err);
    }
}

int cmd_bitmap(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, OPT_BITMAP_OBJECT},
        {"add", no_argument, NULL, OPT_ADD},
        {"remove", no_argument, NULL, OPT_REMOVE},
        {"clear", no_argument, NULL, OPT_CLEAR},
        {"enable", no_argument, NULL, OPT_ENABLE},
        {"disable", no_argument, NULL, OPT_DISABLE},
        {"merge", required_argument, NULL, OPT_MERGE},
        {"granularity", required_argument, NULL, 'g'},
        {"source-file", required_argument, NULL, 'b'},
        {"source-format", required_argument, NULL, 'F'},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = NULL, *src_file = NULL, *src_fmt = NULL;
    int64_t granularity = 0;
    bool add = false, merge = false;
    action *acts = calloc((size_t)argc, sizeof(*acts));
    size_t nb = 0;
    int c;
    if (!acts) {
        abort();
    }
    while ((c = getopt_long(argc, argv, ":b:f:F:g:h", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_help();
        case 'b':
            src_file = optarg;
            break;
        case 'f':
            fmt = optarg;
            break;
        case 'F':
            src_fmt = optarg;
            break;
        case 'g':
            if (cli_cvtnum("granularity", optarg, &granularity) < 0) {
                free(acts);
                return 1;
            }
            break;
        case OPT_BITMAP_OBJECT:
            break;   /* secrets and the like: no image format of ours uses them */
        case OPT_ADD:
        case OPT_REMOVE:
        case OPT_CLEAR:
        case OPT_ENABLE:
        case OPT_DISABLE:
        case OPT_MERGE:
            acts[nb].kind = c;
            acts[nb++].source = c == OPT_MERGE ? optarg : NULL;
            add = add || c == OPT_ADD;
            merge = merge || c == OPT_MERGE;
            break;
        default:
            cli_bad_option(c, argv);
        }
    }
    const char *why = NULL;
    if (nb == 0) {
        why = "Need at least one of --add, --remove, --clear, --enable, --disable, or --merge";
    } else if (granularity && !add) {
        why = "granularity only supported with --add";
    } else if (src_fmt && !src_file) {
        why = "-F only supported with -b";
    } else if (src_file && !merge) {
        why = "Merge bitmap source file only supported with --merge";
    } else if (optind != argc - 2) {
        why = "Expecting filename and bitmap name";
    }
    if (why) {
        cli_error("%s", why);
        free(acts);
        return 1;
    }
    const char *filename = argv[optind], *bitmap = argv[optind + 1];

    vd_engine *e = cli_engine_new();
    vd_disk *d = NULL, *src = NULL;
    int ret = 1;
    if (cli_open(e, filename, fmt, VD_OPEN_RDWR, &d) < 0) {
        goto out;
    }
    if (src_file && cli_open(e, src_file, src_fmt, 0, &src) < 0) {
        goto out;
    }
    ret = 0;
    for (size_t i = 0; i < nb && ret == 0; i++) {
        vd_error *err = NULL;
        if (run_action(d, src, &acts[i], bitmap, (uint64_t)granularity, &err) < 0) {
            cli_report_err(err, "Operation %s on bitmap %s failed: ",
                           action_name(acts[i].kind), bitmap);
            ret = 1;
        }
    }
out:
    vd_close(src);
    if (d && vd_close(d) < 0 && ret == 0) {
        cli_error("%s: error while writing the image", filename);
        ret = 1;
    }
    vd_engine_free(e);
    free(acts);
    return ret;
}
