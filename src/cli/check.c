/* `vdisk check`: qemu-img check, with -r repair, its human report or JSON (ImageCheck), and
 * its exit codes: 0 clean, 1 check failed, 2 corruptions, 3 leaks only, 63 no check. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli-util.h"

static void dump_json(const vd_check_result *r, const char *filename, const char *format,
                      bool quiet)
{
    if (quiet) {
        return;
    }
    /* Members in ImageCheck's field order; the optional ones only when non-zero. */
    cli_json *o = cli_json_object();
    cli_json_add_str(o, "filename", filename);
    cli_json_add_str(o, "format", format);
    cli_json_add_int(o, "check-errors", r->check_errors);
    if (r->image_end_offset) {
        cli_json_add_int(o, "image-end-offset", r->image_end_offset);
    }
    if (r->corruptions) {
        cli_json_add_int(o, "corruptions", r->corruptions);
    }
    if (r->leaks) {
        cli_json_add_int(o, "leaks", r->leaks);
    }
    if (r->corruptions_fixed) {
        cli_json_add_int(o, "corruptions-fixed", r->corruptions_fixed);
    }
    if (r->leaks_fixed) {
        cli_json_add_int(o, "leaks-fixed", r->leaks_fixed);
    }
    if (r->total_clusters) {
        cli_json_add_int(o, "total-clusters", r->total_clusters);
    }
    if (r->allocated_clusters) {
        cli_json_add_int(o, "allocated-clusters", r->allocated_clusters);
    }
    if (r->fragmented_clusters) {
        cli_json_add_int(o, "fragmented-clusters", r->fragmented_clusters);
    }
    if (r->compressed_clusters) {
        cli_json_add_int(o, "compressed-clusters", r->compressed_clusters);
    }
    cli_json_print(stdout, o);
    cli_json_free(o);
}

static void dump_human(const vd_check_result *r, bool quiet)
{
    if (!(r->corruptions || r->leaks || r->check_errors)) {
        cli_qprintf(quiet, "No errors were found on the image.\n");
    } else {
        if (r->corruptions) {
            cli_qprintf(quiet, "\n%" PRId64 " errors were found on the image.\n"
                        "Data may be corrupted, or further writes to the image "
                        "may corrupt it.\n", r->corruptions);
        }
        if (r->leaks) {
            cli_qprintf(quiet, "\n%" PRId64 " leaked clusters were found on the image.\n"
                        "This means waste of disk space, but no harm to data.\n", r->leaks);
        }
        if (r->check_errors) {
            cli_qprintf(quiet, "\n%" PRId64 " internal errors have occurred during the "
                        "check.\n", r->check_errors);
        }
    }
    if (r->total_clusters != 0 && r->allocated_clusters != 0) {
        cli_qprintf(quiet, "%" PRId64 "/%" PRId64 " = %0.2f%% allocated, %0.2f%% fragmented, "
                    "%0.2f%% compressed clusters\n", r->allocated_clusters, r->total_clusters,
                    (double)r->allocated_clusters * 100.0 / (double)r->total_clusters,
                    (double)r->fragmented_clusters * 100.0 / (double)r->allocated_clusters,
                    (double)r->compressed_clusters * 100.0 / (double)r->allocated_clusters);
    }
    if (r->image_end_offset) {
        cli_qprintf(quiet, "Image end offset: %" PRId64 "\n", r->image_end_offset);
    }
}

/* What the check prints while it runs. stderr is unbuffered and a hostile image yields
 * millions of lines, so they are written in blocks rather than one write per line. */
typedef struct check_out {
    bool quiet, human;
    size_t len;
    char buf[64 * 1024];
} check_out;

static void msg_flush(check_out *o)
{
    if (o->len) {
        fwrite(o->buf, 1, o->len, stderr);
        o->len = 0;
    }
}

static void msg_append(check_out *o, const char *s, size_t n)
{
    if (o->len + n > sizeof(o->buf)) {
        msg_flush(o);
    }
    if (n > sizeof(o->buf)) {
        fwrite(s, 1, n, stderr);
        return;
    }
    memcpy(o->buf + o->len, s, n);
    o->len += n;
}

static bool print_msg(void *opaque, const char *line)
{
    check_out *o = opaque;
    msg_append(o, line, strlen(line));
    msg_append(o, "\n", 1);
    return true;
}

/* Between the repair and the re-check, as qemu-img: the first pass's lines, then this on
 * stdout (buffered as qemu-img's is, so a terminal shows it here), then the second's. */
static void print_recheck(void *opaque, int64_t leaks_fixed, int64_t corruptions_fixed)
{
    check_out *o = opaque;
    msg_flush(o);
    if (o->human) {
        cli_qprintf(o->quiet, "The following inconsistencies were found and repaired:\n\n"
                    "    %" PRId64 " leaked clusters\n"
                    "    %" PRId64 " corruptions\n\n"
                    "Double checking the fixed image now...\n",
                    leaks_fixed, corruptions_fixed);
    }
}

int cmd_check(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"format", required_argument, NULL, 'f'},
        {"repair", required_argument, NULL, 'r'},
        {"output", required_argument, NULL, OPT_OUTPUT},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = NULL, *output = NULL, *cache = "writeback";
    unsigned fix = 0;
    unsigned flags = VD_OPEN_CHECK | VD_OPEN_NO_REPAIR;
    bool quiet = false;
    int c;

    while ((c = getopt_long(argc, argv, ":hf:r:T:qU", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_help();
        case 'f':
            fmt = optarg;
            break;
        case 'r':
            flags |= VD_OPEN_RDWR;
            if (!strcmp(optarg, "leaks")) {
                fix = VD_FIX_LEAKS;
            } else if (!strcmp(optarg, "all")) {
                fix = VD_FIX_LEAKS | VD_FIX_ERRORS;
            } else {
                cli_error_exit("Unknown option value for -r (expecting 'leaks' or 'all'): %s",
                               optarg);
            }
            break;
        case OPT_OUTPUT:
            output = optarg;
            break;
        case 'T':
            cache = optarg;
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
    if (optind != argc - 1) {
        cli_error_exit("Expecting one image file name");
    }
    const char *filename = argv[optind];
    int json = cli_parse_output(output);
    if (json < 0) {
        return 1;
    }
    if (cli_parse_cache(cache, &flags) < 0) {
        cli_error("Invalid source cache option: %s", cache);
        return 1;
    }

    vd_engine *e = cli_engine_new();
    vd_disk *d = NULL;
    if (cli_open(e, filename, fmt, flags, &d) < 0) {
        vd_engine_free(e);
        return 1;
    }

    vd_check_result r;
    memset(&r, 0, sizeof(r));
    vd_error *err = NULL;
    /* The library's findings go to stderr while the check runs, before the summary, as
     * qemu-img's do; all of them, however many. */
    check_out out = {.quiet = quiet, .human = !json};
    /* qemu-img's error_report() lines carry the name this program runs under. */
    vd_check_hooks hooks = {.msg = print_msg, .recheck = print_recheck,
                            .program_name = cli_progname(), .opaque = &out};
    fflush(stdout);
    int ret = vd_check_stream(d, fix, &hooks, &r, &err);
    msg_flush(&out);
    if (ret == -ENOTSUP) {
        cli_error("This image format does not support checks");
        vd_error_free(err);
        ret = 63;
        goto out;
    }
    if (ret == 0) {
        if (json) {
            dump_json(&r, filename, vd_disk_format(d), quiet);
        } else {
            dump_human(&r, quiet);
        }
    }
    if (ret < 0 || r.check_errors) {
        if (ret < 0) {
            cli_error("Check failed: %s", strerror(-ret));
        } else {
            cli_error("Check failed");
        }
        vd_error_free(err);
        ret = 1;
        goto out;
    }
    ret = r.corruptions ? 2 : r.leaks ? 3 : 0;
out:
    vd_check_result_clear(&r);
    if (vd_close(d) < 0 && ret == 0) {
        cli_error("%s: error while closing the image", filename);
        ret = 1;
    }
    vd_engine_free(e);
    return ret;
}
