/* `vdisk resize`: qemu-img resize, absolute or relative (+SIZE / -SIZE), with --shrink and
 * --preallocation for the added range. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli-util.h"

static bool valid_prealloc(const char *mode)
{
    return !strcmp(mode, "off") || !strcmp(mode, "metadata") || !strcmp(mode, "falloc") ||
           !strcmp(mode, "full");
}

int cmd_resize(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"preallocation", required_argument, NULL, OPT_PREALLOCATION},
        {"shrink", no_argument, NULL, OPT_SHRINK},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = NULL, *prealloc = "off";
    bool quiet = false, shrink = false;
    int c;

    /* The size goes before option parsing so that "-1G" is not taken for an option. */
    if (argc < 3) {
        cli_error_exit("Not enough arguments");
    }
    const char *size = argv[--argc];

    while ((c = getopt_long(argc, argv, ":f:hq", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_help();
        case 'f':
            fmt = optarg;
            break;
        case 'q':
            quiet = true;
            break;
        case OPT_PREALLOCATION:
            if (!valid_prealloc(optarg)) {
                cli_error("Invalid preallocation mode '%s'", optarg);
                return 1;
            }
            prealloc = optarg;
            break;
        case OPT_SHRINK:
            shrink = true;
            break;
        default:
            cli_bad_option(c, argv);
        }
    }
    if (optind != argc - 1) {
        cli_error_exit("Expecting image file name and size");
    }
    const char *filename = argv[optind];

    int relative = 0;
    if (size[0] == '+') {
        relative = 1;
        size++;
    } else if (size[0] == '-') {
        relative = -1;
        size++;
    }
    uint64_t n = 0;
    int pr = vd_parse_size(size, &n);
    if (pr < 0) {
        if (pr == -ERANGE) {
            cli_error("Value '%s' is out of range for parameter 'size'", size);
        } else {
            cli_error("Parameter 'size' expects a non-negative number below 2^64");
            fprintf(stderr, "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, "
                    "tera-, peta-\nand exabytes, respectively.\n");
        }
        return 1;
    }

    vd_engine *e = cli_engine_new();
    vd_disk *d = NULL;
    int ret = 1;
    if (cli_open(e, filename, fmt, VD_OPEN_RDWR, &d) < 0) {
        goto out;
    }
    int64_t current = (int64_t)vd_disk_size(d);
    /* qemu computes the new size in signed 64-bit arithmetic; sizes past INT64_MAX wrap to
     * negative values and are then refused as not positive. Unsigned math wraps the same. */
    uint64_t t = (uint64_t)current;
    if (relative > 0) {
        t += n;
    } else if (relative < 0) {
        t -= n;
    } else {
        t = n;
    }
    int64_t total = (int64_t)t;
    if (total <= 0) {
        cli_error("New image size must be positive");
        goto out;
    }
    if (total <= current && strcmp(prealloc, "off") != 0) {
        cli_error("Preallocation can only be used for growing images");
        goto out;
    }
    if (total < current && !shrink) {
        cli_error("Use the --shrink option to perform a shrink operation.");
        fprintf(stderr, "%s: warning: Shrinking an image will delete all data beyond the "
                "shrunken image's end. Before performing such an operation, make sure there "
                "is no important data there.\n", cli_progname());
        goto out;
    }

    vd_error *err = NULL;
    if (vd_truncate(d, (uint64_t)total, shrink, prealloc, &err) < 0) {
        cli_report_err_for(err, filename, NULL);
        goto out;
    }
    int64_t new_size = (int64_t)vd_disk_size(d);
    if (new_size != total && new_size == current) {
        cli_error("Image was not resized; resizing may not be supported for this image");
        goto out;
    }
    if (new_size != total) {
        fprintf(stderr, "%s: warning: Image should have been resized to %" PRId64
                " bytes, but was resized to %" PRId64 " bytes\n", cli_progname(), total, new_size);
    }
    ret = 0;
out:
    if (d && vd_close(d) < 0 && ret == 0) {
        cli_error("%s: error while writing the image", filename);
        ret = 1;
    }
    if (ret == 0) {
        cli_qprintf(quiet, "Image resized.\n");
    }
    vd_engine_free(e);
    return ret;
}
