/* vdiskd: the storage daemon, with qemu-storage-daemon's command line (--blockdev,
 * --object, --chardev + --monitor, --nbd-server, --export, --pidfile, --daemonize), the
 * options applied in the order given. Runs until SIGINT/SIGTERM or QMP quit, then closes
 * every export and flushes and closes every image. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/daemon.h"
#include "util/service.h"
#include "tools/engine-env.h"

static const char help_text[] =
    "Usage: vdiskd [options]\n"
    "vdisk storage daemon (qemu-storage-daemon's options)\n"
    "\n"
    "  -h, --help             display this help and exit\n"
    "  -V, --version          output version information and exit\n"
    "\n"
    "  --blockdev [driver=]<driver>[,node-name=<N>][,discard=ignore|unmap]\n"
    "             [,cache.direct=on|off][,cache.no-flush=on|off]\n"
    "             [,read-only=on|off][,filename=<F>][,file=<node>|,file.driver=file,...]\n"
    "             [,backing=<node>|null]   configure a block node (or a JSON object)\n"
    "  --chardev socket,id=<id>,path=<path>[,server=on][,wait=off]\n"
    "                         a unix socket for --monitor\n"
    "  --monitor [chardev=]<id>[,mode=control]\n"
    "                         QMP monitor on that socket\n"
    "  --nbd-server addr.type=unix,addr.path=<path>[,tls-creds=<id>][,max-connections=<n>]\n"
    "  --nbd-server addr.type=inet,addr.host=<host>,addr.port=<port>[,tls-creds=<id>]\n"
    "  --nbd-server addr.type=fd,addr.str=<fd>[,tls-creds=<id>]\n"
    "                         start the NBD server (given again: one more address)\n"
    "  --export [type=]nbd,id=<id>,node-name=<node>[,name=<name>][,writable=on|off]\n"
    "           [,description=<text>]\n"
    "                         export a node over NBD\n"
    "  --object tls-creds-x509,id=<id>,dir=<dir>,endpoint=server[,verify-peer=on|off]\n"
    "                         (verify-peer: clients need a certificate; default on)\n"
    "  --object tls-creds-psk,id=<id>,dir=<dir>,endpoint=server\n"
    "                         TLS credentials for the NBD server and incoming migration\n"
    "  --object tls-creds-x509,id=<id>,dir=<dir>,endpoint=client[,verify-peer=on|off]\n"
    "  --object tls-creds-psk,id=<id>,dir=<dir>,endpoint=client[,username=<name>]\n"
    "                         TLS credentials for NBD client nodes and migrate\n"
    "  --incoming tcp:<host>:<port> | unix:<path> | defer\n"
    "                         receive a migration of the nodes of the same names\n"
    "  --pidfile <path>       write process ID to a file after startup\n"
    "  --daemonize            daemonize the process, and have the parent exit once\n"
    "                         startup is complete\n"
    "  --qmp-reference        print the QMP command reference (markdown) and exit\n";

/* ---- key=value,... options onto JSON (dots nest, ",," is a comma) -------------------------- */

static json_object *nested(json_object *root, char *key, char **leaf)
{
    char *dot;
    while ((dot = strchr(key, '.'))) {
        *dot = '\0';
        json_object *child = NULL;
        if (!json_object_object_get_ex(root, key, &child) ||
            !json_object_is_type(child, json_type_object)) {
            child = json_object_new_object();
            json_object_object_add(root, key, child);
        }
        root = child;
        key = dot + 1;
    }
    *leaf = key;
    return root;
}

/* implied: the key of a first item given without "=" (e.g. "nbd" in --export nbd,...). */
static json_object *keyval(const char *text, const char *implied, char *err, size_t errlen)
{
    if (text[0] == '{') {
        json_object *o = json_tokener_parse(text);
        if (!o || !json_object_is_type(o, json_type_object)) {
            snprintf(err, errlen, "invalid JSON object: %s", text);
            json_object_put(o);
            return NULL;
        }
        return o;
    }
    json_object *root = json_object_new_object();
    size_t n = strlen(text);
    char *item = malloc(n + 1);
    if (!item) {
        abort();
    }
    bool first = true;
    for (size_t i = 0; i <= n;) {
        size_t k = 0;
        while (i < n && !(text[i] == ',' && text[i + 1] != ',')) {
            if (text[i] == ',' && text[i + 1] == ',') {
                i++;
            }
            item[k++] = text[i++];
        }
        item[k] = '\0';
        i++;
        if (k == 0) {
            if (i <= n) {
                continue;
            }
            break;
        }
        char *eq = strchr(item, '=');
        if (!eq) {
            if (first && implied) {
                json_object_object_add(root, implied, json_object_new_string(item));
                first = false;
                continue;
            }
            snprintf(err, errlen, "Expected '=' after parameter '%s'", item);
            json_object_put(root);
            free(item);
            return NULL;
        }
        *eq = '\0';
        char *leaf;
        json_object *parent = nested(root, item, &leaf);
        json_object_object_add(parent, leaf, json_object_new_string(eq + 1));
        first = false;
    }
    free(item);
    return root;
}

/* ---- the command line ---------------------------------------------------------------------- */

typedef struct chardev {
    char *id;
    char *path;
    struct chardev *next;
} chardev;

static chardev *chardevs;

static int fail_opt(const char *what, vd_error *err)
{
    fprintf(stderr, "vdiskd: %s%s%s\n", what, err ? ": " : "", err ? vd_error_msg(err) : "");
    vd_error_free(err);
    return -1;
}

static int apply_option(int opt, const char *arg)
{
    char msg[256];
    vd_error *err = NULL;
    json_object *o = NULL;
    int ret = 0;
    switch (opt) {
    case 'b':
        o = keyval(arg, "driver", msg, sizeof(msg));
        ret = o ? blockdev_add(o, &err) : -1;
        break;
    case 'o':
        o = keyval(arg, "qom-type", msg, sizeof(msg));
        ret = o ? tls_object_add(o, &err) : -1;
        break;
    case 'c': {
        o = keyval(arg, "backend", msg, sizeof(msg));
        if (!o) {
            ret = -1;
            break;
        }
        const char *backend = opt_str(o, "backend"), *id = opt_str(o, "id");
        const char *path = opt_str(o, "path");
        if (!backend || strcmp(backend, "socket") || !id || !path) {
            fprintf(stderr, "vdiskd: --chardev: only socket,id=ID,path=PATH[,server=on]"
                            "[,wait=off] is supported\n");
            ret = -1;
            break;
        }
        chardev *c = calloc(1, sizeof(*c));
        if (!c || !(c->id = strdup(id)) || !(c->path = strdup(path))) {
            abort();
        }
        c->next = chardevs;
        chardevs = c;
        break;
    }
    case 'm': {
        o = keyval(arg, "chardev", msg, sizeof(msg));
        if (!o) {
            ret = -1;
            break;
        }
        const char *id = opt_str(o, "chardev"), *mode = opt_str(o, "mode");
        chardev *c = chardevs;
        while (c && id && strcmp(c->id, id)) {
            c = c->next;
        }
        if (mode && strcmp(mode, "control")) {
            fprintf(stderr, "vdiskd: Only QMP is supported\n");
            ret = -1;
        } else if (!c) {
            fprintf(stderr, "vdiskd: chardev \"%s\" not found\n", id ? id : "");
            ret = -1;
        } else {
            ret = qmp_server_listen(vdiskd.qmp, c->path, &err);
        }
        break;
    }
    case 'n': {
        o = keyval(arg, NULL, msg, sizeof(msg));
        if (!o) {
            ret = -1;
            break;
        }
        json_object *addr = NULL;
        json_object_object_get_ex(o, "addr", &addr);
        const char *mc = opt_str(o, "max-connections");
        if (vdiskd.nbd) {
            /* vdiskd only: another --nbd-server adds an address to the one server. */
            ret = nbd_server_listen(addr, &err);
        } else {
            ret = nbd_server_start(addr, opt_str(o, "tls-creds"), mc ? atoll(mc) : -1, &err);
        }
        break;
    }
    case 'e':
        o = keyval(arg, "type", msg, sizeof(msg));
        ret = o ? export_add(o, &err) : -1;
        break;
    }
    if (ret < 0 && !o) {
        fprintf(stderr, "vdiskd: %s\n", msg);
    } else if (ret < 0 && err) {
        fail_opt(opt == 'b' ? "--blockdev" : opt == 'e' ? "--export" :
                 opt == 'n' ? "--nbd-server" : opt == 'o' ? "--object" : "--monitor", err);
    }
    json_object_put(o);
    return ret;
}

int main(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {"blockdev", required_argument, NULL, 'b'},
        {"object", required_argument, NULL, 'o'},
        {"chardev", required_argument, NULL, 'c'},
        {"monitor", required_argument, NULL, 'm'},
        {"nbd-server", required_argument, NULL, 'n'},
        {"export", required_argument, NULL, 'e'},
        {"pidfile", required_argument, NULL, 'p'},
        {"daemonize", no_argument, NULL, 'd'},
        {"qmp-reference", no_argument, NULL, 'r'},
        {"incoming", required_argument, NULL, 'i'},
        {NULL, 0, NULL, 0},
    };
    /* Options are applied in order once the daemon state exists; first collect them. */
    int *opts = calloc((size_t)argc + 1, sizeof(int));
    char **vals = calloc((size_t)argc + 1, sizeof(char *));
    if (!opts || !vals) {
        abort();
    }
    int nopt = 0, c;
    const char *pidfile = NULL, *incoming = NULL;
    bool daemonize = false;
    while ((c = getopt_long(argc, argv, "hV", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(help_text, stdout);
            free(opts);
            free(vals);
            return 0;
        case 'V':
            printf("vdiskd version " VDISK_VERSION_STR "\n");
            free(opts);
            free(vals);
            return 0;
        case 'r':
            qmp_print_reference(&vdiskd_commands);
            free(opts);
            free(vals);
            return 0;
        case 'p':
            pidfile = optarg;
            break;
        case 'd':
            daemonize = true;
            break;
        case 'i':
            incoming = optarg;
            break;
        case '?':
            fprintf(stderr, "Try 'vdiskd --help' for more information\n");
            free(opts);
            free(vals);
            return 1;
        default:
            opts[nopt] = c;
            vals[nopt++] = optarg;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "vdiskd: Unexpected argument: %s\n", argv[optind]);
        free(opts);
        free(vals);
        return 1;
    }

    vd_service sv = {.prog = "vdiskd", .pidfile = pidfile,
                     .pid_error = "Cannot write pid file"};
    if (vd_service_start(&sv, daemonize) < 0) {
        free(opts);
        free(vals);
        return 1;
    }
    vd_engine_settings st = vd_engine_settings_from_env();
    vdiskd.engine = vd_engine_new_with(&st);
    vd_engine_set_event_handler(vdiskd.engine, daemon_on_engine_event, NULL);
    vd_error *err = NULL;
    int status = 1;
    if (qmp_server_new(&vdiskd_commands, &vdiskd.qmp, &err) < 0) {
        fail_opt("QMP", err);
        goto out;
    }
    if (daemon_events_start() < 0) {
        fprintf(stderr, "vdiskd: Could not start the event thread\n");
        goto out;
    }
    vd_mig_params_init(&vdiskd.mig_params);
    for (int i = 0; i < nopt; i++) {
        if (apply_option(opts[i], vals[i]) < 0) {
            goto out;
        }
    }
    /* QEMU's -incoming: after the nodes exist; "defer" waits for migrate-incoming. */
    if (incoming && strcmp(incoming, "defer") &&
        migration_incoming_start(incoming, &err) < 0) {
        fail_opt("--incoming", err);
        goto out;
    }
    if (vd_service_ready(&sv) < 0) {
        goto out;
    }
    status = 0;
    /* Events go out from their own thread; this one only waits for a signal or quit. */
    while (!qmp_quit_requested(vdiskd.qmp) && !vd_service_wait(&sv, 100)) {
    }
out:
    /* Jobs end first (a signal or a failed start; quit has ended them), their events still
     * sent; then commands stop, so none runs while the images close. */
    vd_jobs_cancel_all(vdiskd.engine);
    migration_shutdown();
    daemon_events_stop();
    daemon_deliver_events();
    qmp_server_free(vdiskd.qmp);
    vdiskd.qmp = NULL;
    daemon_stop_all();
    vd_engine_free(vdiskd.engine);
    daemon_deliver_events();   /* no server now: what is left is freed */
    while (chardevs) {
        chardev *ch = chardevs;
        chardevs = ch->next;
        free(ch->id);
        free(ch->path);
        free(ch);
    }
    vd_service_end(&sv, status == 0);
    free(opts);
    free(vals);
    return status;
}
