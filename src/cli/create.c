/* `vdisk create`: qemu-img create. Checks the options and the backing file the way qemu-img
 * does, prints qemu-img's "Formatting ..." line, then lets the library build the image. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli-util.h"

/* The order in which qemu-img lists creation options on the "Formatting" line, with the
 * defaults it shows for options the user did not set. It follows QEMU's option tables (the
 * format's own options, then the file protocol's). */
typedef struct line_opt {
    const char *name;
    const char *def;
} line_opt;

static const line_opt qcow2_line[] = {
    {"encryption", NULL},
    {"encrypt.format", NULL},
    {"encrypt.key-secret", NULL},
    {"encrypt.cipher-alg", NULL},
    {"encrypt.cipher-mode", NULL},
    {"encrypt.ivgen-alg", NULL},
    {"encrypt.ivgen-hash-alg", NULL},
    {"encrypt.hash-alg", NULL},
    {"encrypt.iter-time", NULL},
    {"cluster_size", "65536"},
    {"extended_l2", "off"},
    {"preallocation", NULL},
    {"compression_type", "zlib"},
    {"size", NULL},
    {"compat", NULL},
    {"backing_file", NULL},
    {"backing_fmt", NULL},
    {"data_file", NULL},
    {"data_file_raw", NULL},
    {"lazy_refcounts", "off"},
    {"refcount_bits", "16"},
    {"nocow", NULL},
    {"extent_size_hint", NULL},
    {NULL, NULL},
};

static const line_opt raw_line[] = {
    {"size", NULL},
    {"cluster_size", NULL},  /* on RBD: the object size */
    {"preallocation", NULL},
    {"nocow", NULL},
    {"extent_size_hint", NULL},
    {NULL, NULL},
};

/* Prints one option value as qemu does: numbers normalised, strings as given. */
static void print_value(const char *fmt, const char *key, const char *value)
{
    cli_opt_type t = cli_option_type(fmt, key);
    if (t == CLI_OPT_SIZE) {
        uint64_t v = 0;
        if (vd_parse_size(value, &v) == 0) {
            printf("%" PRId64, (int64_t)v);
            return;
        }
    } else if (t == CLI_OPT_NUM) {
        char *end = NULL;
        uint64_t v = strtoull(value, &end, 0);
        if (end != value && !*end) {
            printf("%" PRId64, (int64_t)v);
            return;
        }
    }
    /* Option values are shown as they would be written in -o: a comma doubled. */
    for (const char *p = value; *p; p++) {
        fputs(*p == ',' ? ",," : (char[]){*p, '\0'}, stdout);
    }
}

static bool line_has(const line_opt *line, const char *key)
{
    for (size_t i = 0; line && line[i].name; i++) {
        if (!strcmp(line[i].name, key)) {
            return true;
        }
    }
    return false;
}

static void print_formatting_line(const char *filename, const char *fmt, const vd_opts *o)
{
    const line_opt *line = !strcmp(fmt, "qcow2") ? qcow2_line :
                           !strcmp(fmt, "raw") ? raw_line : NULL;
    printf("Formatting '%s', fmt=%s", filename, fmt);
    if (line) {
        for (size_t i = 0; line[i].name; i++) {
            const char *v = vd_opts_get(o, line[i].name);
            if (!v) {
                v = line[i].def;
            }
            if (v) {
                printf(" %s=", line[i].name);
                print_value(fmt, line[i].name, v);
            }
        }
    } else {
        /* A format this table does not know: the library's option order and defaults. */
        size_t n = 0;
        const vd_create_option *t = vd_create_options(fmt, &n);
        for (size_t i = 0; i < n; i++) {
            const char *v = vd_opts_get(o, t[i].name);
            if (!v) {
                v = t[i].def;
            }
            if (v) {
                printf(" %s=", t[i].name);
                print_value(fmt, t[i].name, v);
            }
        }
    }
    /* Options the table above does not list still show, last. */
    for (size_t i = 0; line && i < vd_opts_count(o); i++) {
        const char *k = vd_opts_key(o, i);
        if (!line_has(line, k)) {
            printf(" %s=", k);
            print_value(fmt, k, vd_opts_value(o, i));
        }
    }
    printf("\n");
    fflush(stdout);
}

/* Opens the backing file as qemu-img create does: to check it exists and has the format,
 * and to take the image size from it. Returns 0, or 1 after printing the error. */
static int probe_backing(vd_engine *e, const char *filename, const char *backing,
                         const char *backing_fmt, uint64_t *size)
{
    char *path = vd_backing_path(filename, backing);
    vd_open_opts oo = {.format = backing_fmt, .flags = 0};
    vd_disk *b = NULL;
    vd_error *err = NULL;
    int ret = vd_open(e, path, &oo, &b, &err);
    if (ret < 0) {
        cli_report_err_for(err, path, "%s: ", filename);
        free(path);
        fprintf(stderr, "Could not open backing image.\n");
        return 1;
    }
    free(path);
    if (!backing_fmt) {
        cli_error("%s: Backing file specified without backing format", filename);
        /* qemu-img prints this hint without a line break. */
        fprintf(stderr, "Detected format of %s.", vd_disk_format(b));
        vd_close(b);
        return 1;
    }
    if (*size == UINT64_MAX) {
        *size = vd_disk_size(b);
    }
    vd_close(b);
    return 0;
}

static int img_create(const char *filename, const char *fmt, const char *base,
                      const char *base_fmt, const char *options, int64_t img_size,
                      bool unsafe, bool quiet)
{
    char prefix[4096];
    snprintf(prefix, sizeof(prefix), "%s: ", filename);
    if (cli_read_only_format(fmt)) {
        cli_error("%s: Format driver '%s' does not support image creation", filename, fmt);
        return 1;
    }
    if (!cli_format_known(fmt)) {
        cli_error("%s: Unknown file format '%s'", filename, fmt);
        return 1;
    }

    vd_opts *o = vd_opts_new();
    vd_engine *e = NULL;
    int ret = 1;
    uint64_t size = img_size < 0 ? UINT64_MAX : (uint64_t)img_size;

    cli_set_option_target(filename);
    if (options && cli_parse_options(fmt, options, NULL, false, prefix, o) < 0) {
        goto out;
    }
    const char *osize = vd_opts_get(o, "size");
    if (osize) {
        if (img_size >= 0) {
            cli_error("%s: The image size must be specified only once", filename);
            goto out;
        }
        if (vd_parse_size(osize, &size) < 0) {
            size = UINT64_MAX;
        }
    }
    if (base) {
        if (!cli_has_option(fmt, "backing_file")) {
            cli_error("%s: Backing file not supported for file format '%s'", filename, fmt);
            goto out;
        }
        vd_opts_set(o, "backing_file", base);
    }
    if (base_fmt) {
        if (!cli_has_option(fmt, "backing_fmt")) {
            cli_error("%s: Backing file format not supported for file format '%s'", filename,
                      fmt);
            goto out;
        }
        vd_opts_set(o, "backing_fmt", base_fmt);
    }

    const char *backing = vd_opts_get(o, "backing_file");
    const char *backing_fmt = vd_opts_get(o, "backing_fmt");
    e = cli_engine_new();
    if (backing) {
        if (!strcmp(filename, backing)) {
            cli_error("%s: Error: Trying to create an image with the same filename as the "
                      "backing file", filename);
            goto out;
        }
        if (!backing[0]) {
            cli_error("%s: Expected backing file name, got empty string", filename);
            goto out;
        }
        if (!unsafe) {
            if (probe_backing(e, filename, backing, backing_fmt, &size)) {
                goto out;
            }
        } else if (!backing_fmt) {
            cli_error("%s: Backing file specified without backing format", filename);
            goto out;
        }
    }
    if (size == UINT64_MAX) {
        cli_error("%s: Image creation needs a size parameter", filename);
        goto out;
    }

    /* qemu prints the size among the options; the library gets it as an argument. */
    char sizebuf[32];
    snprintf(sizebuf, sizeof(sizebuf), "%" PRIu64, size);
    vd_opts_set(o, "size", sizebuf);
    if (!quiet) {
        print_formatting_line(filename, fmt, o);
    }
    vd_opts_del(o, "size");
    cli_normalize_bools(fmt, o);

    if (backing_fmt && !backing) {
        cli_error("%s: Backing format cannot be used without backing file", filename);
        goto out;
    }

    vd_error *err = NULL;
    int r = vd_create(e, filename, fmt, size, o, unsafe ? VD_CREATE_UNSAFE : 0, &err);
    if (r == -EFBIG) {
        vd_error_free(err);
        /* qemu-img hints whenever the format has a cluster_size option (it has a default). */
        bool has_cs = vd_opts_get(o, "cluster_size") || !strcmp(fmt, "qcow2");
        cli_error("%s: The image size is too large for file format '%s'%s", filename, fmt,
                  has_cs ? " (try using a larger cluster size)" : "");
        goto out;
    }
    if (r < 0) {
        cli_report_err_for(err, filename, "%s: ", filename);
        goto out;
    }
    ret = 0;
out:
    vd_opts_free(o);
    if (e) {
        vd_engine_free(e);
    }
    return ret;
}

int cmd_create(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = "raw";
    const char *base_fmt = NULL;
    const char *base = NULL;
    char *options = NULL;
    bool quiet = false, unsafe = false;
    int64_t img_size = -1;
    int c, ret;

    while ((c = getopt_long(argc, argv, ":F:b:f:ho:qu", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_help();
        case 'F':
            base_fmt = optarg;
            break;
        case 'b':
            base = optarg;
            break;
        case 'f':
            fmt = optarg;
            break;
        case 'o':
            if (cli_add_option_list(&options, optarg) < 0) {
                free(options);
                return 1;
            }
            break;
        case 'q':
            quiet = true;
            break;
        case 'u':
            unsafe = true;
            break;
        default:
            cli_bad_option(c, argv);
        }
    }

    const char *filename = optind < argc ? argv[optind] : NULL;
    if (options && cli_has_help_option(options)) {
        free(options);
        if (cli_read_only_format(fmt)) {
            cli_error("Format driver '%s' does not support image creation", fmt);
            return 1;
        }
        return cli_print_option_help(fmt, filename, NULL, false);
    }
    if (optind >= argc) {
        cli_error_exit("Expecting image file name");
    }
    optind++;
    if (optind < argc) {
        if (cli_cvtnum("image size", argv[optind++], &img_size) < 0) {
            free(options);
            return 1;
        }
    }
    if (optind != argc) {
        cli_error_exit("Unexpected argument: %s", argv[optind]);
    }
    ret = img_create(filename, fmt, base, base_fmt, options, img_size, unsafe, quiet);
    free(options);
    return ret;
}
