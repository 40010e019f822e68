/* `vdisk nbd`: exports one image over NBD with qemu-nbd's options (server mode only; no
 * kernel /dev/nbd device). Without -t it exits when the last client that finished the
 * handshake has gone, as qemu-nbd does; SIGINT and SIGTERM flush and close the image. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "cli/cli-util.h"
#include "util/service.h"
#include "vdisk/nbd.h"
#include "tools/engine-env.h"

enum {
    OPT_OBJECT = 300,
    OPT_TLS_CREDS,
    OPT_FORK,
    OPT_PID_FILE,
    OPT_CACHE,
    OPT_DISCARD,
    OPT_AIO,
    OPT_DETECT_ZEROES,
};

/* After "Usage: <name> [OPTIONS] FILE" and "  or:  <name> -L [OPTIONS]" (cmd_nbd prints
 * those with the name it was started under). */
static const char nbd_help[] =
    "Exports FILE (a disk image) over NBD, as qemu-nbd does.\n"
    "\n"
    "  -h, --help                display this help and exit\n"
    "  -V, --version             output version information and exit\n"
    "\n"
    "Connection properties:\n"
    "  -p, --port=PORT           port to listen on (default `10809')\n"
    "  -b, --bind=IFACE          interface to bind to (default `0.0.0.0')\n"
    "  -k, --socket=PATH         path to the unix socket (no TCP listener then)\n"
    "  -e, --shared=NUM          device can be shared by NUM clients (default '1';\n"
    "                            0 = unlimited)\n"
    "  -t, --persistent          don't exit on the last connection\n"
    "  -v, --verbose             accepted for compatibility\n"
    "  -x, --export-name=NAME    expose export by name (default is empty string)\n"
    "  -D, --description=TEXT    export a human-readable description\n"
    "\n"
    "Exposing part of the image:\n"
    "  -o, --offset=OFFSET       offset into the image\n"
    "  -A, --allocation-depth    expose the allocation depth\n"
    "  -B, --bitmap=NAME         expose a persistent dirty bitmap\n"
    "\n"
    "General purpose options:\n"
    "  -L, --list                list exports available from another NBD server\n"
    "  --object type,id=ID,...   tls-creds-x509,id=ID,dir=DIR,endpoint=server\n"
    "                            [,verify-peer=on|off] (default on)\n"
    "                            or tls-creds-psk,id=ID,dir=DIR,endpoint=server\n"
    "  --tls-creds=ID            use id of an earlier --object to provide TLS\n"
    "  --fork                    fork off the server process and exit the parent\n"
    "                            once the server is running\n"
    "  --pid-file=PATH           store the server's process ID in the given file\n"
    "\n"
    "Block device options:\n"
    "  -f, --format=FORMAT       set image format (raw, qcow2, ...)\n"
    "  -r, --read-only           export read-only\n"
    "  -l, --load-snapshot=SNAPSHOT_PARAM\n"
    "                            load an internal snapshot inside FILE and export it\n"
    "                            as an read-only device, SNAPSHOT_PARAM format is\n"
    "                            'snapshot.id=[ID],snapshot.name=[NAME]', or\n"
    "                            '[ID_OR_NAME]'\n"
    "  -n, --nocache             disable host cache\n"
    "      --cache=MODE          set cache mode (none, writeback, writethrough,\n"
    "                            directsync, unsafe)\n"
    "      --discard=MODE        set discard mode (ignore, unmap)\n";

/* --object tls-creds-x509,id=..,dir=..,endpoint=server[,verify-peer=on|off] (or -psk);
 * verify-peer defaults to on, as in QEMU. */
int cli_add_server_object(const char *arg, cli_tls_object **objs, size_t *nb)
{
    vd_opts *o = vd_opts_new();
    vd_error *err = NULL;
    const char *type = NULL;
    /* The leading word is the type, as qemu's "qom-type" shortcut. */
    char *copy = strdup(arg);
    if (!copy) {
        abort();
    }
    char *comma = strchr(copy, ',');
    if (comma) {
        *comma = '\0';
    }
    type = copy;
    if (strchr(type, '=')) {
        fprintf(stderr, "%s: --object: the first item must be the object type\n", cli_progname());
        free(copy);
        vd_opts_free(o);
        return -1;
    }
    if (comma && vd_opts_parse(o, comma + 1, &err) < 0) {
        cli_report_err(err, "--object: ");
        free(copy);
        vd_opts_free(o);
        return -1;
    }
    const char *id = vd_opts_get(o, "id"), *dir = vd_opts_get(o, "dir");
    const char *endpoint = vd_opts_get(o, "endpoint");
    int ret = 0;
    vd_tls_creds *creds = NULL;
    if (!id) {
        fprintf(stderr, "%s: Parameter 'id' is missing\n", cli_progname());
        ret = -1;
    } else if (strcmp(type, "tls-creds-x509") && strcmp(type, "tls-creds-psk")) {
        fprintf(stderr, "%s: invalid object type: %s\n", cli_progname(), type);
        ret = -1;
    } else if (endpoint && strcmp(endpoint, "server")) {
        fprintf(stderr, "%s: Expecting TLS credentials with a server endpoint\n",
                cli_progname());
        ret = -1;
    } else if (!strcmp(type, "tls-creds-x509")) {
        /* QEMU's default: clients must show a certificate the CA signed. */
        bool verify = true;
        ret = vd_opts_get_bool(o, "verify-peer", true, &verify, &err);
        if (ret == 0) {
            ret = vd_tls_creds_new_x509(id, dir, verify, &creds, &err);
        }
    } else {
        ret = vd_tls_creds_new_psk(id, dir, &creds, &err);
    }
    if (ret < 0 && err) {
        cli_report_err(err, "%s", "");
    }
    if (ret == 0) {
        cli_tls_object *n = realloc(*objs, (*nb + 1) * sizeof(**objs));
        if (!n) {
            abort();
        }
        *objs = n;
        n[*nb].id = strdup(id);
        n[*nb].creds = creds;
        (*nb)++;
    }
    free(copy);
    vd_opts_free(o);
    return ret < 0 ? -1 : 0;
}

/* Connects as qemu-nbd's client modes do: the unix socket when given, else TCP
 * host:port. Returns the socket, or -1 after printing qemu-nbd's message. */
static int connect_server(const char *sock, const char *host, const char *port)
{
    int fd = -1, err = 0;
    if (sock) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (strlen(sock) >= sizeof(sa.sun_path)) {
            fprintf(stderr, "%s: UNIX socket path '%s' is too long\n", cli_progname(), sock);
            return -1;
        }
        memcpy(sa.sun_path, sock, strlen(sock) + 1);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
            return fd;
        }
        err = errno;
        if (fd >= 0) {
            close(fd);
        }
        fprintf(stderr, "%s: Failed to connect to '%s': %s\n", cli_progname(), sock,
                strerror(err));
        return -1;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    int g = getaddrinfo(host, port, &hints, &res);
    if (g != 0) {
        fprintf(stderr, "%s: address resolution failed for %s:%s: %s\n", cli_progname(), host,
                port, gai_strerror(g));
        return -1;
    }
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
            break;
        }
        err = errno;
        if (fd >= 0) {
            close(fd);
        }
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        fprintf(stderr, "%s: Failed to connect to '%s:%s': %s\n", cli_progname(), host, port,
                strerror(err));
    }
    return fd;
}

/* qemu-nbd --list: what the server says about each of its exports, in qemu-nbd's words. */
static int list_exports(const char *sock, const char *host, const char *port)
{
    static const char *const flag_names[] = {
        [1] = "readonly", [2] = "flush", [3] = "fua", [4] = "rotational", [5] = "trim",
        [6] = "zeroes", [7] = "df", [8] = "multi", [9] = "resize", [10] = "cache",
        [11] = "fast-zero",
    };
    int fd = connect_server(sock, host, port);
    if (fd < 0) {
        return 1;
    }
    vd_nbd_export_desc *list = NULL;
    size_t nb = 0;
    vd_error *err = NULL;
    int ret = vd_nbd_list_exports(fd, &list, &nb, &err);
    close(fd);
    if (ret < 0) {
        cli_report_err(err, "%s", "");
        return 1;
    }
    printf("exports available: %zu\n", nb);
    for (size_t i = 0; i < nb; i++) {
        const vd_nbd_export_desc *e = &list[i];
        printf(" export: '%s'\n", e->name);
        if (e->description && *e->description) {
            printf("  description: %s\n", e->description);
        }
        if (e->flags & 1) {   /* NBD_FLAG_HAS_FLAGS */
            printf("  size:  %" PRIu64 "\n", e->size);
            printf("  flags: 0x%x (", e->flags);
            for (unsigned bit = 0; bit < sizeof(flag_names) / sizeof(flag_names[0]); bit++) {
                if (flag_names[bit] && (e->flags & (1u << bit))) {
                    printf(" %s", flag_names[bit]);
                }
            }
            printf(" )\n");
        }
        if (e->min_block) {
            printf("  min block: %u\n", e->min_block);
            printf("  opt block: %u\n", e->opt_block);
            printf("  max block: %u\n", e->max_block);
        }
        if (e->nb_contexts) {
            printf("  available meta contexts: %zu\n", e->nb_contexts);
            for (size_t j = 0; j < e->nb_contexts; j++) {
                printf("   %s\n", e->contexts[j]);
            }
        }
    }
    vd_nbd_export_desc_free(list, nb);
    return 0;
}

/* The first fd systemd passes (sd_listen_fds). */
#define SOCKET_ACTIVATION_FD 3

/* systemd socket activation: LISTEN_PID names this process and LISTEN_FDS counts the
 * listening sockets passed from fd 3 on. Returns that count, 0 when not activated. */
static int socket_activation(void)
{
    const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
    if (!pid || !fds) {
        return 0;
    }
    char *end;
    errno = 0;
    long p = strtol(pid, &end, 10);
    if (errno || end == pid || *end || p != (long)getpid()) {
        return 0;
    }
    errno = 0;
    long n = strtol(fds, &end, 10);
    if (errno || end == fds || *end || n <= 0 || n > INT_MAX - SOCKET_ACTIVATION_FD) {
        return 0;
    }
    /* Not for the children of this process. */
    for (long fd = SOCKET_ACTIVATION_FD; fd < SOCKET_ACTIVATION_FD + n; fd++) {
        fcntl((int)fd, F_SETFD, FD_CLOEXEC);
    }
    return (int)n;
}

/* QEMU's deprecation warnings from the -l parser. */
static void snapshot_param_warn(const char *msg, void *opaque)
{
    (void)opaque;
    fprintf(stderr, "%s: warning: %s\n", cli_progname(), msg);
}

int cmd_nbd(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {"port", required_argument, NULL, 'p'},
        {"bind", required_argument, NULL, 'b'},
        {"socket", required_argument, NULL, 'k'},
        {"shared", required_argument, NULL, 'e'},
        {"persistent", no_argument, NULL, 't'},
        {"verbose", no_argument, NULL, 'v'},
        {"export-name", required_argument, NULL, 'x'},
        {"description", required_argument, NULL, 'D'},
        {"format", required_argument, NULL, 'f'},
        {"read-only", no_argument, NULL, 'r'},
        {"load-snapshot", required_argument, NULL, 'l'},
        {"nocache", no_argument, NULL, 'n'},
        {"cache", required_argument, NULL, OPT_CACHE},
        {"discard", required_argument, NULL, OPT_DISCARD},
        {"aio", required_argument, NULL, OPT_AIO},
        {"detect-zeroes", required_argument, NULL, OPT_DETECT_ZEROES},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"tls-creds", required_argument, NULL, OPT_TLS_CREDS},
        {"fork", no_argument, NULL, OPT_FORK},
        {"pid-file", required_argument, NULL, OPT_PID_FILE},
        {"offset", required_argument, NULL, 'o'},
        {"allocation-depth", no_argument, NULL, 'A'},
        {"bitmap", required_argument, NULL, 'B'},
        {"list", no_argument, NULL, 'L'},
        {NULL, 0, NULL, 0},
    };
    const char *port = NULL, *bind_addr = NULL, *sock = NULL, *name = "", *desc = NULL;
    const char *fmt = NULL, *tls_id = NULL, *pid_file = NULL;
    unsigned shared = 1;
    bool persistent = false, readonly = false, do_fork = false, alloc_depth = false;
    /* For --list: the options that describe an export, which it cannot take. */
    bool list = false, per_device = false;
    uint64_t dev_offset = 0;
    unsigned flags = 0;
    /* -B NAME, as many as given: persistent bitmaps of the image, offered as
     * qemu:dirty-bitmap:NAME. */
    const char **bitmap_names = calloc((size_t)argc, sizeof(*bitmap_names));
    size_t nb_bitmap_names = 0;
    vd_dirty_bitmap **bitmaps = calloc((size_t)argc + 1, sizeof(*bitmaps));
    size_t nb_bitmaps = 0;
    if (!bitmap_names || !bitmaps) {
        abort();
    }
    cli_tls_object *objs = NULL;
    size_t nb_objs = 0;
    /* -l: a bare ID_OR_NAME, or (winning over it, as in qemu-nbd) the id and name of the
     * last "snapshot.id=...,snapshot.name=..." given. */
    const char *sn_id_or_name = NULL;
    char *sn_id = NULL, *sn_name_opt = NULL;
    bool sn_opts = false;
    vd_error *err = NULL;
    int c, status = 1;

    while ((c = getopt_long(argc, argv, ":hVp:b:k:e:tvx:D:f:rl:no:AB:L", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf("Usage: %s [OPTIONS] FILE\n  or:  %s -L [OPTIONS]\n",
                   cli_command_name("nbd"), cli_command_name("nbd"));
            fputs(nbd_help, stdout);
            return 0;
        case 'V':
            printf("%s version " VDISK_VERSION "\n", cli_command_name("nbd"));
            return 0;
        case 'p': {
            char *end;
            long v = strtol(optarg, &end, 0);
            if (*end || v < 1 || v > 65535) {
                cli_error_exit("Invalid port number `%s'", optarg);
            }
            port = optarg;
            break;
        }
        case 'b':
            bind_addr = optarg;
            break;
        case 'k':
            sock = optarg;
            break;
        case 'e': {
            char *end;
            long v = strtol(optarg, &end, 0);
            if (*end || v < 0 || v > 65536) {
                cli_error_exit("Invalid shared device number '%s'", optarg);
            }
            shared = (unsigned)v;
            break;
        }
        case 't':
            persistent = true;
            break;
        case 'v':
            break;
        case 'x':
            per_device = true;
            name = optarg;
            if (strlen(name) > 4096) {
                cli_error_exit("export name '%s' too long", name);
            }
            break;
        case 'D':
            per_device = true;
            desc = optarg;
            if (strlen(desc) > 4096) {
                cli_error_exit("export description '%s' too long", desc);
            }
            break;
        case 'f':
            per_device = true;
            fmt = optarg;
            break;
        case 'l':
            /* qemu-nbd tells the option syntax by its "snapshot." prefix; a snapshot is
             * always exported read-only (the load refuses a writable image). Only the bare
             * form counts as a per-device setting for --list, as in qemu-nbd. */
            if (strncmp(optarg, "snapshot.", 9) == 0) {
                char *id, *sn_name;
                if (vd_snapshot_param_parse(optarg, &id, &sn_name, snapshot_param_warn, NULL,
                                            &err) < 0) {
                    cli_report_err(err, NULL);
                    err = NULL;
                    cli_error("Failed in parsing snapshot param `%s'", optarg);
                    goto out;
                }
                free(sn_id);
                free(sn_name_opt);
                sn_id = id;
                sn_name_opt = sn_name;
                sn_opts = true;
            } else {
                sn_id_or_name = optarg;
                per_device = true;
            }
            readonly = true;
            break;
        case 'r':
            readonly = true;
            break;
        case 'o': {
            /* qemu-nbd's parser: any base, a minus sign wraps around, no suffixes. */
            char *end;
            errno = 0;
            unsigned long long v = strtoull(optarg, &end, 0);
            if (errno || end == optarg || *end) {
                fprintf(stderr, "%s: Invalid offset '%s'\n", cli_progname(), optarg);
                goto out;
            }
            dev_offset = v;
            per_device |= v != 0;
            break;
        }
        case 'A':
            alloc_depth = true;
            per_device = true;
            break;
        case 'B':
            bitmap_names[nb_bitmap_names++] = optarg;
            per_device = true;
            break;
        case 'L':
            list = true;
            break;
        case 'n':
            per_device = true;
            flags |= VD_OPEN_NOCACHE;
            break;
        case OPT_CACHE: {
            per_device = true;
            unsigned cf = 0;
            if (cli_parse_cache(optarg, &cf) < 0) {
                cli_error_exit("Invalid cache mode '%s'", optarg);
            }
            flags |= cf;
            break;
        }
        case OPT_DISCARD:
            per_device = true;
            if (!strcmp(optarg, "unmap") || !strcmp(optarg, "on")) {
                flags |= VD_OPEN_UNMAP;
            } else if (strcmp(optarg, "ignore") && strcmp(optarg, "off")) {
                cli_error_exit("Invalid discard option `%s'", optarg);
            }
            break;
        case OPT_AIO:
            per_device = true;
            break;   /* accepted: our I/O path has no such choice */
        case OPT_DETECT_ZEROES:
            break;   /* accepted: our I/O path has no such choice */
        case OPT_OBJECT:
            if (cli_add_server_object(optarg, &objs, &nb_objs) < 0) {
                goto out;
            }
            break;
        case OPT_TLS_CREDS:
            tls_id = optarg;
            break;
        case OPT_FORK:
            do_fork = true;
            break;
        case OPT_PID_FILE:
            pid_file = optarg;
            break;
        default:
            cli_bad_option(c, argv);
        }
    }
    if (list) {
        const char *why = optind != argc ? "List mode is incompatible with a file name"
                          : per_device   ? "List mode is incompatible with per-device settings"
                          : do_fork      ? "List mode is incompatible with forking"
                          /* Our credentials are all server ones; a client needs its own. */
                          : tls_id ? "Expecting TLS credentials with a client endpoint"
                                   : NULL;
        if (why) {
            fprintf(stderr, "%s: %s\n", cli_progname(), why);
        } else {
            status = list_exports(sock, bind_addr ? bind_addr : "0.0.0.0",
                                  port ? port : "10809");
        }
        goto out;
    }
    if (optind != argc - 1) {
        cli_error_exit("Invalid number of arguments");
    }
    const char *file = argv[optind];
    /* Checked before --fork, as qemu-nbd does: LISTEN_PID names this process. */
    int activated = socket_activation();
    if (activated) {
        const char *why = sock ? "Unix socket can't be set when using socket activation"
                          : bind_addr ? "The interface can't be set when using socket "
                                        "activation"
                          : port ? "TCP port number can't be set when using socket activation"
                          : activated > 1 ? "vdisk nbd does not support socket activation "
                                            "with LISTEN_FDS > 1"
                                          : NULL;
        if (why) {
            fprintf(stderr, "%s: %s\n", cli_progname(), why);
            goto out;
        }
    }
    vd_tls_creds *tls = NULL;
    if (tls_id) {
        for (size_t i = 0; i < nb_objs; i++) {
            if (!strcmp(objs[i].id, tls_id)) {
                tls = objs[i].creds;
            }
        }
        if (!tls) {
            fprintf(stderr, "%s: Failed to get TLS creds: No TLS credentials with id "
                            "'%s'\n", cli_progname(), tls_id);
            goto out;
        }
    }

    vd_service sv = {.prog = cli_progname(), .pidfile = pid_file,
                     .pid_error = "Failed to write pid file"};
    if (vd_service_start(&sv, do_fork) < 0) {
        goto out;
    }
    vd_engine *e = cli_engine_new();
    vd_disk *d = NULL;
    vd_nbd_server *srv = NULL;
    if (cli_open(e, file, fmt, flags | (readonly ? 0 : VD_OPEN_RDWR), &d) < 0) {
        goto done;
    }
    /* qemu-nbd puts a raw node with this offset over the image; these are that node's
     * complaints. */
    if (dev_offset > INT64_MAX) {
        fprintf(stderr, "%s: Parameter 'offset' expects a non-negative number below 2^64\n"
                        "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, "
                        "peta-\nand exabytes, respectively.\n", cli_progname());
        goto done;
    }
    if (dev_offset > vd_disk_size(d)) {
        fprintf(stderr, "%s: Offset (%llu) cannot be greater than size of the containing "
                        "file (%llu)\n", cli_progname(), (unsigned long long)dev_offset,
                (unsigned long long)vd_disk_size(d));
        goto done;
    }
    if (sn_opts || sn_id_or_name) {
        /* With an offset, qemu-nbd asks the raw node it put over the image, which has no
         * snapshots: its refusal, word for word. */
        int r = dev_offset ? vd_error_set(&err, VD_ERR_UNSUPPORTED, ENOTSUP, "Block format "
                                          "'raw' used by device '' does not support "
                                          "temporarily loading internal snapshots")
                : sn_opts  ? vd_snapshot_load_tmp(d, sn_id, sn_name_opt, &err)
                           : vd_snapshot_load_tmp_by_id_or_name(d, sn_id_or_name, &err);
        if (r < 0) {
            cli_report_err_for(err, vd_disk_filename(d), "Failed to load snapshot: ");
            err = NULL;
            goto done;
        }
    }
    vd_nbd_server_opts so = {.max_connections = shared, .tls = tls, .one_shot = !persistent,
                             .workers = vd_nbd_workers_from_env()};
    if (vd_nbd_server_new(&so, &srv, &err) < 0) {
        cli_report_err(err, "%s", "");
        goto done;
    }
    /* qemu-nbd restricts an image probed as raw to whole sectors (so that its first
     * sector stays guarded) and advertises that as the minimum block size. */
    bool probed_raw = !fmt && !strcmp(vd_disk_format(d), "raw") && !dev_offset;
    int ret = 0;
    for (; nb_bitmaps < nb_bitmap_names && ret == 0; nb_bitmaps++) {
        ret = vd_bitmap_acquire(d, NULL, bitmap_names[nb_bitmaps], readonly,
                                &bitmaps[nb_bitmaps], &err);
    }
    if (ret < 0) {
        nb_bitmaps--;   /* the one that failed */
        cli_report_err(err, "%s", "");
        goto done;
    }
    vd_nbd_export_opts eo = {.name = name, .description = desc, .disk = d,
                             .writable = !readonly, .min_block = probed_raw ? 512 : 0,
                             .offset = dev_offset, .allocation_depth = alloc_depth,
                             .bitmaps = bitmaps, .nb_bitmaps = nb_bitmaps};
    ret = vd_nbd_export_add(srv, &eo, &err);
    if (ret == 0) {
        nb_bitmaps = 0;   /* the export has them now */
    }
    if (ret == 0) {
        ret = activated ? vd_nbd_server_listen_fd(srv, SOCKET_ACTIVATION_FD, &err)
              : sock    ? vd_nbd_server_listen_unix(srv, sock, &err)
                        : vd_nbd_server_listen_inet(srv, bind_addr ? bind_addr : "0.0.0.0",
                                                    port ? port : "10809", &err);
    }
    if (ret < 0) {
        cli_report_err(err, "%s", "");
        goto done;
    }
    if (vd_service_ready(&sv) < 0) {
        goto done;
    }
    status = 0;
    /* Without -t the server itself stops taking clients once the last one that finished
     * the handshake has gone (qemu-nbd's rule); a signal ends it in any case. */
    while (!vd_service_wait(&sv, 50) && !vd_nbd_server_finished(srv)) {
    }
done:
    vd_nbd_server_free(srv);
    for (size_t i = 0; i < nb_bitmaps; i++) {
        vd_bitmap_release(bitmaps[i]);
    }
    if (d && vd_close(d) < 0) {
        status = 1;
    }
    vd_engine_free(e);
    vd_service_end(&sv, status == 0);
out:
    for (size_t i = 0; i < nb_objs; i++) {
        vd_tls_creds_free(objs[i].creds);
        free(objs[i].id);
    }
    free(objs);
    free(sn_id);
    free(sn_name_opt);
    free(bitmap_names);
    free(bitmaps);
    return status;
}
