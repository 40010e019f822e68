/* The QMP monitor server: unix-socket listeners, one thread per client, QEMU's greeting and
 * capability negotiation, the JSON stream cut into commands (bounded: a command may not
 * exceed 1 MiB or nest deeper than 64), argument checking against the command table,
 * dispatch (one command at a time for the whole daemon, as QEMU's main loop runs them), and
 * timestamped events. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "qmp/qmp.h"
#include "util/socket.h"

#define MAX_COMMAND_BYTES (1u << 20)
#define MAX_DEPTH 64

struct qmp_session {
    qmp_server *srv;
    int fd;
    bool negotiated;
    pthread_mutex_t wlock;
    struct qmp_session *next;
};

typedef struct qmp_listener {
    int fd;
    char *path;
} qmp_listener;

struct qmp_server {
    const qmp_command_table *table;
    pthread_mutex_t lock;        /* sessions and listeners */
    pthread_mutex_t run_lock;    /* one command at a time */
    qmp_listener *listeners;
    size_t nb_listeners;
    qmp_session *sessions;
    unsigned nb_threads;         /* client threads alive */
    pthread_cond_t cond;
    int wake[2];
    pthread_t accept_thread;
    bool accept_started;
    bool stopping;
    volatile bool quit;
};

/* ---- output in QEMU's layout -------------------------------------------------------------- */

static void emit(json_object *o, char **buf, size_t *len, size_t *cap);

static void put(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t nc = (*cap ? *cap : 256);
        while (nc < *len + n + 1) {
            nc *= 2;
        }
        char *nb = realloc(*buf, nc);
        if (!nb) {
            abort();
        }
        *buf = nb;
        *cap = nc;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = '\0';
}

static void puts_(char **buf, size_t *len, size_t *cap, const char *s)
{
    put(buf, len, cap, s, strlen(s));
}

static void emit(json_object *o, char **buf, size_t *len, size_t *cap)
{
    switch (json_object_get_type(o)) {
    case json_type_object: {
        puts_(buf, len, cap, "{");
        bool first = true;
        json_object_object_foreach(o, k, v) {
            if (!first) {
                puts_(buf, len, cap, ", ");
            }
            first = false;
            json_object *ks = json_object_new_string(k);
            puts_(buf, len, cap, json_object_to_json_string_ext(ks, JSON_C_TO_STRING_PLAIN |
                                                                JSON_C_TO_STRING_NOSLASHESCAPE));
            json_object_put(ks);
            puts_(buf, len, cap, ": ");
            emit(v, buf, len, cap);
        }
        puts_(buf, len, cap, "}");
        break;
    }
    case json_type_array: {
        puts_(buf, len, cap, "[");
        size_t n = json_object_array_length(o);
        for (size_t i = 0; i < n; i++) {
            if (i) {
                puts_(buf, len, cap, ", ");
            }
            emit(json_object_array_get_idx(o, i), buf, len, cap);
        }
        puts_(buf, len, cap, "]");
        break;
    }
    default:
        puts_(buf, len, cap, json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                                            JSON_C_TO_STRING_NOSLASHESCAPE));
        break;
    }
}

char *qmp_to_string(json_object *o)
{
    char *buf = NULL;
    size_t len = 0, cap = 0;
    emit(o, &buf, &len, &cap);
    return buf;
}

static void send_json(qmp_session *qs, json_object *o)
{
    char *text = qmp_to_string(o);
    size_t n = strlen(text);
    text[n] = '\n';   /* the terminating NUL becomes the line end */
    pthread_mutex_lock(&qs->wlock);
    size_t off = 0;
    while (off <= n) {
        ssize_t w = send(qs->fd, text + off, n + 1 - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            break;   /* the client went away; its reader notices */
        }
        off += (size_t)w;
    }
    pthread_mutex_unlock(&qs->wlock);
    free(text);
}

static void send_error(qmp_session *qs, json_object *id, const char *cls, const char *desc)
{
    json_object *e = json_object_new_object();
    json_object_object_add(e, "class", json_object_new_string(cls));
    json_object_object_add(e, "desc", json_object_new_string(desc));
    json_object *r = json_object_new_object();
    if (id) {
        json_object_object_add(r, "id", json_object_get(id));
    }
    json_object_object_add(r, "error", e);
    send_json(qs, r);
    json_object_put(r);
}

const char *qmp_error_class(const vd_error *err)
{
    (void)err;
    /* QEMU reports almost everything as GenericError; the few others are chosen where
     * they arise (CommandNotFound, DeviceNotFound). */
    return "GenericError";
}

/* ---- commands ------------------------------------------------------------------------------ */

static const qmp_command *find_command(const qmp_command_table *t, const char *name)
{
    for (; t; t = t->next) {
        for (size_t i = 0; i < t->nb; i++) {
            if (strcmp(t->commands[i].name, name) == 0) {
                return &t->commands[i];
            }
        }
    }
    return NULL;
}

static const char *type_name(qmp_type t)
{
    switch (t) {
    case QMP_STR:
        return "string";
    case QMP_INT:
        return "integer";
    case QMP_BOOL:
        return "boolean";
    case QMP_OBJ:
        return "object";
    case QMP_ARRAY:
        return "array";
    default:
        return "value";
    }
}

static bool type_ok(json_object *v, qmp_type t)
{
    switch (t) {
    case QMP_STR:
        return json_object_is_type(v, json_type_string);
    case QMP_INT:
        return json_object_is_type(v, json_type_int);
    case QMP_BOOL:
        return json_object_is_type(v, json_type_boolean);
    case QMP_OBJ:
        return json_object_is_type(v, json_type_object);
    case QMP_ARRAY:
        return json_object_is_type(v, json_type_array);
    default:
        return true;
    }
}

/* QEMU's argument checks: every required member present, each of its type, no others. */
static int check_args(const qmp_command *c, json_object *args, char *msg, size_t len)
{
    for (const qmp_arg *a = c->args; a && a->name; a++) {
        json_object *v = NULL;
        if (!json_object_object_get_ex(args, a->name, &v)) {
            if (!a->optional) {
                snprintf(msg, len, "Parameter '%s' is missing", a->name);
                return -1;
            }
            continue;
        }
        if (!type_ok(v, a->type)) {
            snprintf(msg, len, "Invalid parameter type for '%s', expected: %s", a->name,
                     type_name(a->type));
            return -1;
        }
    }
    if (c->open_args) {
        return 0;
    }
    json_object_object_foreach(args, k, v) {
        (void)v;
        bool known = false;
        for (const qmp_arg *a = c->args; a && a->name; a++) {
            known |= strcmp(a->name, k) == 0;
        }
        if (!known) {
            snprintf(msg, len, "Parameter '%s' is unexpected", k);
            return -1;
        }
    }
    return 0;
}

static void handle(qmp_session *qs, json_object *req)
{
    char msg[512];
    if (!json_object_is_type(req, json_type_object)) {
        send_error(qs, NULL, "GenericError", "QMP input must be a JSON object");
        return;
    }
    json_object *id = NULL, *exec = NULL, *args = NULL;
    json_object_object_get_ex(req, "id", &id);
    json_object_object_foreach(req, k, v) {
        (void)v;
        if (strcmp(k, "execute") && strcmp(k, "arguments") && strcmp(k, "id") &&
            strcmp(k, "exec-oob")) {
            snprintf(msg, sizeof(msg), "QMP input member '%s' is unexpected", k);
            send_error(qs, id, "GenericError", msg);
            return;
        }
    }
    if (json_object_object_get_ex(req, "exec-oob", NULL)) {
        send_error(qs, id, "GenericError", "QMP input member 'exec-oob' is unexpected");
        return;
    }
    if (!json_object_object_get_ex(req, "execute", &exec)) {
        send_error(qs, id, "GenericError", "QMP input lacks member 'execute'");
        return;
    }
    if (!json_object_is_type(exec, json_type_string)) {
        send_error(qs, id, "GenericError", "QMP input member 'execute' must be a string");
        return;
    }
    if (json_object_object_get_ex(req, "arguments", &args) &&
        !json_object_is_type(args, json_type_object)) {
        send_error(qs, id, "GenericError", "QMP input member 'arguments' must be an object");
        return;
    }
    const char *name = json_object_get_string(exec);
    if (!qs->negotiated) {
        if (strcmp(name, "qmp_capabilities") != 0) {
            send_error(qs, id, "CommandNotFound",
                       "Expecting capabilities negotiation with 'qmp_capabilities'");
            return;
        }
    } else if (strcmp(name, "qmp_capabilities") == 0) {
        send_error(qs, id, "CommandNotFound",
                   "Capabilities negotiation is already complete, command ignored");
        return;
    }
    const qmp_command *c = find_command(qs->srv->table, name);
    if (!c) {
        snprintf(msg, sizeof(msg), "The command %s has not been found", name);
        send_error(qs, id, "CommandNotFound", msg);
        return;
    }
    json_object *empty = NULL;
    if (!args) {
        args = empty = json_object_new_object();
    }
    if (check_args(c, args, msg, sizeof(msg)) < 0) {
        send_error(qs, id, "GenericError", msg);
        json_object_put(empty);
        return;
    }
    json_object *ret = NULL;
    vd_error *err = NULL;
    pthread_mutex_lock(&qs->srv->run_lock);
    int rc = qs->srv->table->before_command ? qs->srv->table->before_command(name, &err) : 0;
    if (rc == 0) {
        rc = c->handler(qs, args, &ret, &err);
    }
    if (qs->srv->table->after_command) {
        qs->srv->table->after_command();
    }
    /* The reply goes out before anything else runs, so events that follow the command
     * (sent as a command runs) come after it. */
    json_object_put(empty);
    if (rc < 0) {
        const char *desc = err ? vd_error_msg(err) : strerror(-rc);
        const char *cls = "GenericError";
        /* A handler marks the class by starting the message with it and a colon. */
        static const char *const classes[] = {"DeviceNotFound", "DeviceNotActive"};
        for (size_t i = 0; err && i < sizeof(classes) / sizeof(classes[0]); i++) {
            size_t n = strlen(classes[i]);
            if (strncmp(desc, classes[i], n) == 0 && desc[n] == ':') {
                cls = classes[i];
                desc += n + 1;
                while (*desc == ' ') {
                    desc++;
                }
            }
        }
        send_error(qs, id, cls, desc);
        pthread_mutex_unlock(&qs->srv->run_lock);
        vd_error_free(err);
        json_object_put(ret);
        return;
    }
    if (strcmp(name, "qmp_capabilities") == 0) {
        qs->negotiated = true;
    }
    json_object *r = json_object_new_object();
    json_object_object_add(r, "return", ret ? ret : json_object_new_object());
    if (id) {
        json_object_object_add(r, "id", json_object_get(id));
    }
    send_json(qs, r);
    pthread_mutex_unlock(&qs->srv->run_lock);
    json_object_put(r);
}

/* ---- sessions --------------------------------------------------------------------------------- */

static void greet(qmp_session *qs)
{
    json_object *qemu = json_object_new_object();
    json_object_object_add(qemu, "micro", json_object_new_int(0));
    json_object_object_add(qemu, "minor", json_object_new_int(2));
    json_object_object_add(qemu, "major", json_object_new_int(7));
    json_object *ver = json_object_new_object();
    json_object_object_add(ver, "qemu", qemu);
    json_object_object_add(ver, "package", json_object_new_string("vdiskd " VDISK_VERSION_STR));
    json_object *q = json_object_new_object();
    json_object_object_add(q, "version", ver);
    json_object *caps = json_object_new_array();
    json_object_array_add(caps, json_object_new_string("oob"));
    json_object_object_add(q, "capabilities", caps);
    json_object *g = json_object_new_object();
    json_object_object_add(g, "QMP", q);
    send_json(qs, g);
    json_object_put(g);
}

static void *session_main(void *arg)
{
    qmp_session *qs = arg;
    qmp_server *s = qs->srv;
    json_tokener *tok = json_tokener_new_ex(MAX_DEPTH);
    greet(qs);
    char buf[4096];
    size_t pending = 0;   /* bytes fed since the last complete value */
    bool skip_line = false;   /* after an error: input is dropped up to the next newline */
    for (;;) {
        ssize_t n = recv(qs->fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0 || !tok) {
            break;
        }
        size_t off = 0;
        while (off < (size_t)n) {
            if (skip_line) {
                /* QEMU's lexer resynchronises at the end of the line too. */
                while (off < (size_t)n && buf[off] != '\n') {
                    off++;
                }
                if (off >= (size_t)n) {
                    break;
                }
                skip_line = false;
            }
            /* Whitespace between values is not a value. */
            while (off < (size_t)n && pending == 0 &&
                   (buf[off] == ' ' || buf[off] == '\n' || buf[off] == '\r' ||
                    buf[off] == '\t')) {
                off++;
            }
            if (off >= (size_t)n) {
                break;
            }
            json_object *o = json_tokener_parse_ex(tok, buf + off, (int)((size_t)n - off));
            enum json_tokener_error e = json_tokener_get_error(tok);
            size_t used = json_tokener_get_parse_end(tok);
            if (e == json_tokener_continue) {
                pending += (size_t)n - off;
                off = (size_t)n;
                if (pending > MAX_COMMAND_BYTES) {
                    send_error(qs, NULL, "GenericError", "JSON parse error, command too "
                               "long (over 1 MiB)");
                    json_tokener_reset(tok);
                    pending = 0;
                    skip_line = true;
                }
                break;
            }
            if (e != json_tokener_success) {
                char m[256];
                snprintf(m, sizeof(m), "JSON parse error, %s", json_tokener_error_desc(e));
                send_error(qs, NULL, "GenericError", m);
                json_tokener_reset(tok);
                pending = 0;
                skip_line = true;
                continue;
            }
            off += used ? used : 1;
            pending = 0;
            json_tokener_reset(tok);
            handle(qs, o);
            json_object_put(o);
            if (s->quit) {
                break;
            }
        }
        if (s->quit) {
            break;
        }
    }
    if (tok) {
        json_tokener_free(tok);
    }
    pthread_mutex_lock(&s->lock);
    for (qmp_session **p = &s->sessions; *p; p = &(*p)->next) {
        if (*p == qs) {
            *p = qs->next;
            break;
        }
    }
    s->nb_threads--;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    close(qs->fd);
    pthread_mutex_destroy(&qs->wlock);
    free(qs);
    return NULL;
}

/* A session on a connected socket, registered with the server (which waits for it at
 * free); NULL (socket closed) when out of memory. */
static qmp_session *session_new(qmp_server *s, int fd)
{
    qmp_session *qs = calloc(1, sizeof(*qs));
    if (!qs) {
        close(fd);
        return NULL;
    }
    qs->srv = s;
    qs->fd = fd;
    pthread_mutex_init(&qs->wlock, NULL);
    pthread_mutex_lock(&s->lock);
    qs->next = s->sessions;
    s->sessions = qs;
    s->nb_threads++;
    pthread_mutex_unlock(&s->lock);
    return qs;
}

/* Its thread could not start: the session goes as if its client had left at once. */
static void session_main_failed(qmp_session *qs)
{
    shutdown(qs->fd, SHUT_RDWR);
    session_main(qs);
}

static void *accept_main(void *arg)
{
    qmp_server *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->lock);
        size_t n = s->nb_listeners;
        struct pollfd pfd[n + 1];
        pfd[0] = (struct pollfd){.fd = s->wake[0], .events = POLLIN};
        for (size_t i = 0; i < n; i++) {
            pfd[i + 1] = (struct pollfd){.fd = s->listeners[i].fd, .events = POLLIN};
        }
        bool stop = s->stopping;
        pthread_mutex_unlock(&s->lock);
        if (stop) {
            break;
        }
        if (poll(pfd, n + 1, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            break;
        }
        if (pfd[0].revents) {
            char b[64];
            ssize_t r = read(s->wake[0], b, sizeof(b));
            (void)r;
        }
        for (size_t i = 0; i < n; i++) {
            if (!(pfd[i + 1].revents & POLLIN)) {
                continue;
            }
            int fd = accept4(pfd[i + 1].fd, NULL, NULL, SOCK_CLOEXEC);
            if (fd < 0) {
                continue;
            }
            qmp_session *qs = session_new(s, fd);
            if (!qs) {
                continue;
            }
            pthread_t t;
            pthread_attr_t attr;
            pthread_attr_init(&attr);
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            if (pthread_create(&t, &attr, session_main, qs) != 0) {
                session_main_failed(qs);
            }
            pthread_attr_destroy(&attr);
        }
    }
    return NULL;
}

void qmp_serve_fd(qmp_server *s, int fd)
{
    qmp_session *qs = session_new(s, fd);
    if (qs) {
        session_main(qs);
    }
}

int qmp_server_new(const qmp_command_table *table, qmp_server **out, vd_error **errp)
{
    qmp_server *s = calloc(1, sizeof(*s));
    if (!s) {
        return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "out of memory");
    }
    s->table = table;
    signal(SIGPIPE, SIG_IGN);
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->run_lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    if (pipe(s->wake) < 0) {
        free(s);
        return vd_error_set(errp, VD_ERR_IO, errno, "pipe: %s", strerror(errno));
    }
    if (pthread_create(&s->accept_thread, NULL, accept_main, s) != 0) {
        abort();
    }
    s->accept_started = true;
    *out = s;
    return 0;
}

int qmp_server_listen(qmp_server *s, const char *path, vd_error **errp)
{
    int fd = vd_unix_listen(path, 16, errp);
    if (fd < 0) {
        return fd;
    }
    pthread_mutex_lock(&s->lock);
    qmp_listener *l = realloc(s->listeners, (s->nb_listeners + 1) * sizeof(*l));
    if (!l) {
        abort();
    }
    s->listeners = l;
    l[s->nb_listeners].fd = fd;
    l[s->nb_listeners].path = strdup(path);
    s->nb_listeners++;
    pthread_mutex_unlock(&s->lock);
    char b = 0;
    ssize_t w = write(s->wake[1], &b, 1);
    (void)w;
    return 0;
}

void qmp_event(qmp_server *s, const char *name, json_object *data)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    qmp_event_at(s, name, data, &tv);
}

void qmp_event_at(qmp_server *s, const char *name, json_object *data,
                  const struct timeval *when)
{
    json_object *ts = json_object_new_object();
    json_object_object_add(ts, "seconds", json_object_new_int64(when->tv_sec));
    json_object_object_add(ts, "microseconds", json_object_new_int64(when->tv_usec));
    json_object *ev = json_object_new_object();
    json_object_object_add(ev, "timestamp", ts);
    json_object_object_add(ev, "event", json_object_new_string(name));
    if (data) {
        json_object_object_add(ev, "data", data);
    }
    pthread_mutex_lock(&s->lock);
    for (qmp_session *qs = s->sessions; qs; qs = qs->next) {
        if (qs->negotiated) {
            send_json(qs, ev);
        }
    }
    pthread_mutex_unlock(&s->lock);
    json_object_put(ev);
}

void qmp_run_exclusive(qmp_server *s, void (*fn)(void *arg), void *arg)
{
    pthread_mutex_lock(&s->run_lock);
    fn(arg);
    pthread_mutex_unlock(&s->run_lock);
}

bool qmp_quit_requested(qmp_server *s)
{
    return s->quit;
}

void qmp_request_quit(qmp_server *s)
{
    s->quit = true;
}

qmp_server *qmp_session_server(qmp_session *qs)
{
    return qs->srv;
}

void qmp_server_free(qmp_server *s)
{
    if (!s) {
        return;
    }
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    for (qmp_session *qs = s->sessions; qs; qs = qs->next) {
        shutdown(qs->fd, SHUT_RDWR);
    }
    pthread_mutex_unlock(&s->lock);
    char b = 0;
    ssize_t w = write(s->wake[1], &b, 1);
    (void)w;
    pthread_join(s->accept_thread, NULL);
    pthread_mutex_lock(&s->lock);
    while (s->nb_threads) {
        pthread_cond_wait(&s->cond, &s->lock);
    }
    pthread_mutex_unlock(&s->lock);
    for (size_t i = 0; i < s->nb_listeners; i++) {
        close(s->listeners[i].fd);
        unlink(s->listeners[i].path);
        free(s->listeners[i].path);
    }
    free(s->listeners);
    close(s->wake[0]);
    close(s->wake[1]);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->run_lock);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

void qmp_print_reference(const qmp_command_table *table)
{
    printf("| command | arguments | what it does |\n|---|---|---|\n");
    for (const qmp_command_table *t = table; t; t = t->next) {
    for (size_t i = 0; i < t->nb; i++) {
        const qmp_command *c = &t->commands[i];
        printf("| `%s` | ", c->name);
        bool any = false;
        for (const qmp_arg *a = c->args; a && a->name; a++) {
            printf("%s`%s%s`: %s", any ? ", " : "", a->optional ? "*" : "", a->name,
                   type_name(a->type));
            any = true;
        }
        if (c->open_args) {
            printf("%s(driver options)", any ? ", " : "");
            any = true;
        }
        printf("%s | %s |\n", any ? "" : "—", c->doc);
    }
    }
}
