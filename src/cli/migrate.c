/* `vdisk migrate`: the migration stream (docs/migration-stream.md) between an image file
 * and a vdiskd, or between two image files on two hosts, offline: the sending side opens
 * FILENAME as node --node-name (default "disk0") and moves it to URI; with --incoming the
 * receiving side listens on URI and writes what comes into FILENAME, which must have the
 * sender's size. A running vdiskd is either side as well (migrate / migrate-incoming), as
 * long as the node names match. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli-util.h"
#include "vdisk/graph.h"
#include "vdisk/migration.h"

enum {
    OPT_NODE = 256,
    OPT_TYPE,
    OPT_LEVEL,
    OPT_CHANNELS,
    OPT_THREADS,
    OPT_DTHREADS,
    OPT_BW,
    OPT_TLS,
    OPT_TLS_HOST,
    OPT_INCOMING,
    OPT_OBJECT,
};

/* Opens filename as node `node` of the engine (a format node over a file node). */
static int open_node(vd_engine *e, const char *fmt, const char *filename, const char *node,
                     bool read_only)
{
    vd_tree *t = vd_tree_new(VD_TREE_OBJECT);
    vd_tree *file = vd_tree_new(VD_TREE_OBJECT);
    vd_tree_put(file, "driver", vd_tree_new_string("file"));
    vd_tree_put(file, "filename", vd_tree_new_string(filename));
    if (!fmt) {
        const char *probed = NULL;
        vd_error *err = NULL;
        if (vd_probe_format(filename, &probed, &err) < 0) {
            cli_report_err_for(err, filename, "Could not open '%s': ", filename);
            vd_tree_free(t);
            vd_tree_free(file);
            return -1;
        }
        fmt = probed;
    }
    vd_tree_put(t, "driver", vd_tree_new_string(fmt));
    vd_tree_put(t, "node-name", vd_tree_new_string(node));
    vd_tree_put(t, "read-only", vd_tree_new_bool(read_only));
    vd_tree_put(t, "file", file);
    vd_error *err = NULL;
    if (vd_blockdev_add(e, t, 0, &err) < 0) {
        cli_report_err(err, "Could not open '%s': ", filename);
        return -1;
    }
    return 0;
}

static int set_param(vd_mig_params *p, const char *key, const char *value, bool string)
{
    vd_tree *t = vd_tree_new(VD_TREE_OBJECT);
    if (string) {
        vd_tree_put(t, key, vd_tree_new_string(value));
    } else {
        int64_t v;
        if (cli_cvtnum(key, value, &v) < 0) {
            vd_tree_free(t);
            return -1;
        }
        vd_tree_put(t, key, vd_tree_new_int(v));
    }
    vd_error *err = NULL;
    int r = vd_mig_params_set(p, t, &err);
    vd_tree_free(t);
    if (r < 0) {
        cli_report_err(err, "%s", "");
        return -1;
    }
    return 0;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int send_side(vd_engine *e, const char *node, const char *uri, vd_mig_params *p,
                     vd_mig_caps *caps, const char *tls_id, bool progress, bool quiet)
{
    const vd_tls_client_creds *tls = NULL;
    if (tls_id && !(tls = vd_engine_tls_client_creds(e, tls_id))) {
        cli_error("No TLS credentials with id '%s'", tls_id);
        return 1;
    }
    vd_mig_disk_opts d = {.node_name = node};
    vd_mig_send_opts o = {.uri = uri, .params = *p, .caps = *caps, .tls = tls, .disks = &d,
                          .nb_disks = 1};
    vd_migration *m = NULL;
    vd_error *err = NULL;
    if (vd_migration_start(e, &o, &m, &err) < 0) {
        cli_report_err(err, "%s", "");
        return 1;
    }
    cli_progress prog;
    cli_progress_init(&prog, progress, 1.f);
    vd_mig_info i;
    for (;;) {
        vd_migration_info(m, &i);
        if (vd_migration_finished(m)) {
            break;
        }
        if (i.total) {
            cli_progress_print(&prog, (float)(i.normal_bytes + i.zero_bytes) * 100.f /
                                          (float)i.total, 0);
        }
        sleep_ms(100);
    }
    vd_migration_info(m, &i);
    vd_migration_free(m);
    if (i.status != VD_MIG_STATUS_COMPLETED) {
        cli_progress_end(&prog);
        cli_error("Migration failed: %s", i.error[0] ? i.error : "unknown error");
        return 1;
    }
    cli_progress_print(&prog, 100.f, 0);
    cli_progress_end(&prog);
    if (!quiet) {
        printf("Migrated %" PRIu64 " bytes (%" PRIu64 " of data, %" PRIu64 " of zeros) in "
               "%.3f s: %" PRIu64 " bytes sent\n", i.total, i.normal_bytes, i.zero_bytes,
               (double)i.total_time_ms / 1000.0, i.transferred);
    }
    return 0;
}

static int receive_side(vd_engine *e, const char *uri, vd_mig_params *p, vd_mig_caps *caps,
                        vd_tls_creds *tls, bool quiet)
{
    vd_mig_incoming_opts o = {.uri = uri, .params = *p, .caps = *caps, .tls = tls};
    vd_mig_incoming *in = NULL;
    vd_error *err = NULL;
    if (vd_mig_incoming_start(e, &o, &in, &err) < 0) {
        cli_report_err(err, "%s", "");
        return 1;
    }
    while (!vd_mig_incoming_finished(in)) {
        sleep_ms(100);
    }
    vd_mig_info i;
    vd_mig_incoming_info(in, &i);
    vd_mig_incoming_free(in);
    if (i.status != VD_MIG_STATUS_COMPLETED) {
        cli_error("Incoming migration failed: %s", i.error[0] ? i.error : "unknown error");
        return 1;
    }
    if (!quiet) {
        printf("Received %" PRIu64 " bytes (%" PRIu64 " of data, %" PRIu64 " of zeros) in "
               "%.3f s\n", i.total, i.normal_bytes, i.zero_bytes,
               (double)i.total_time_ms / 1000.0);
    }
    return 0;
}

int cmd_migrate(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"node-name", required_argument, NULL, OPT_NODE},
        {"compress-type", required_argument, NULL, OPT_TYPE},
        {"compress-level", required_argument, NULL, OPT_LEVEL},
        {"channels", required_argument, NULL, OPT_CHANNELS},
        {"compress-threads", required_argument, NULL, OPT_THREADS},
        {"decompress-threads", required_argument, NULL, OPT_DTHREADS},
        {"max-bandwidth", required_argument, NULL, OPT_BW},
        {"tls-creds", required_argument, NULL, OPT_TLS},
        {"tls-hostname", required_argument, NULL, OPT_TLS_HOST},
        {"incoming", required_argument, NULL, OPT_INCOMING},
        {"object", required_argument, NULL, OPT_OBJECT},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = NULL, *node = "disk0", *tls_id = NULL, *incoming = NULL;
    bool progress = false, quiet = false;
    vd_mig_params p;
    vd_mig_params_init(&p);
    /* Offline, the link is the limit: no bandwidth cap unless asked, every byte compressed
     * when a type is given, on multifd's channels. */
    p.max_bandwidth = 0;
    vd_mig_caps caps = {.multifd = true, .zero_blocks = true};
    cli_tls_object *objs = NULL;
    size_t nb_objs = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":hf:pq", longopts, NULL)) != -1) {
        int r = 0;
        switch (c) {
        case 'h':
            cli_help();
        case 'f':
            fmt = optarg;
            break;
        case 'p':
            progress = true;
            break;
        case 'q':
            quiet = true;
            break;
        case OPT_NODE:
            node = optarg;
            break;
        case OPT_TYPE:
            r = set_param(&p, "compress-type", optarg, true);
            break;
        case OPT_LEVEL:
            r = set_param(&p, "compress-level", optarg, false);
            break;
        case OPT_CHANNELS:
            r = set_param(&p, "multifd-channels", optarg, false);
            break;
        case OPT_THREADS:
            r = set_param(&p, "compress-threads", optarg, false);
            break;
        case OPT_DTHREADS:
            r = set_param(&p, "decompress-threads", optarg, false);
            break;
        case OPT_BW:
            r = set_param(&p, "max-bandwidth", optarg, false);
            break;
        case OPT_TLS:
            tls_id = optarg;
            break;
        case OPT_TLS_HOST:
            r = set_param(&p, "tls-hostname", optarg, true);
            break;
        case OPT_INCOMING:
            incoming = optarg;
            break;
        case OPT_OBJECT:
            /* A server's credentials for --incoming, a client's for sending. */
            r = strstr(optarg, "endpoint=server") ? cli_add_server_object(optarg, &objs,
                                                                           &nb_objs)
                                                  : cli_add_client_object(optarg);
            break;
        default:
            cli_bad_option(c, argv);
        }
        if (r < 0) {
            return 1;
        }
    }
    int want = incoming ? 1 : 2;
    if (argc - optind != want) {
        cli_error(argc - optind < want ? "Expecting %s" : "Unexpected argument: %s",
                  argc - optind < want ? (incoming ? "a filename" : "a filename and a URI")
                                       : argv[optind + want]);
        return 1;
    }
    const char *filename = argv[optind];
    vd_engine *e = cli_engine_new();
    int ret = 1;
    if (open_node(e, fmt, filename, node, !incoming) == 0) {
        if (incoming) {
            vd_tls_creds *tls = NULL;
            for (size_t i = 0; tls_id && i < nb_objs; i++) {
                if (!strcmp(objs[i].id, tls_id)) {
                    tls = objs[i].creds;
                }
            }
            if (tls_id && !tls) {
                cli_error("No TLS credentials with id '%s'", tls_id);
            } else {
                ret = receive_side(e, incoming, &p, &caps, tls, quiet);
            }
        } else {
            ret = send_side(e, node, argv[optind + 1], &p, &caps, tls_id, progress, quiet);
        }
    }
    vd_engine_free(e);
    for (size_t i = 0; i < nb_objs; i++) {
        free(objs[i].id);
        vd_tls_creds_free(objs[i].creds);
    }
    free(objs);
    return ret;
}
