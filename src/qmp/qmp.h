/* QMP, QEMU's JSON control protocol, for vdiskd: the monitor server (greeting, capability
 * negotiation, execute/arguments/id, return/error, timestamped events) and the command
 * table every command is described in once — argument checking, dispatch and the
 * reference in the README all come from it. */
#ifndef VD_QMP_H
#define VD_QMP_H

#include <stdbool.h>
#include <stddef.h>

#include <json-c/json.h>

#include "vdisk/vdisk.h"

#ifndef VDISK_VERSION_STR
#define VDISK_VERSION_STR "0.1.0"
#endif

/* Argument types, checked before a handler runs (QEMU's words in the errors). */
typedef enum {
    QMP_STR,
    QMP_INT,
    QMP_BOOL,
    QMP_OBJ,
    QMP_ARRAY,
    QMP_ANY,
} qmp_type;

typedef struct qmp_arg {
    const char *name;
    qmp_type type;
    bool optional;
    const char *doc;
} qmp_arg;

typedef struct qmp_session qmp_session;

/* A handler returns 0 with *ret set (NULL = {}), or fails with *errp set. args is the
 * checked "arguments" object (never NULL). */
typedef int (*qmp_handler)(qmp_session *qs, json_object *args, json_object **ret,
                           vd_error **errp);

typedef struct qmp_command {
    const char *name;
    qmp_handler handler;
    const qmp_arg *args;        /* NULL-terminated by name; NULL = none */
    bool open_args;             /* other members allowed (checked by the handler) */
    const char *doc;
} qmp_command;

/* A command table: the program's commands (vdiskd: src/daemon/commands.c). The QMP layer
 * knows no command of its own; the server is given its table. */
typedef struct qmp_command_table {
    const qmp_command *commands;
    size_t nb;
    /* More commands (a table per source file), searched after these; may be NULL. */
    const struct qmp_command_table *next;
    /* Run after each command, before its reply, as the command ran (vdiskd sends the
     * events the command caused there); may be NULL. */
    void (*after_command)(void);
    /* Run before each command (of the root table): a failure is the command's reply
     * (vdiskd refuses graph changes while a migration runs); may be NULL. */
    int (*before_command)(const char *name, vd_error **errp);
} qmp_command_table;

/* Error classes on the wire: vd_error classes map onto them. */
const char *qmp_error_class(const vd_error *err);

/* ---- server ------------------------------------------------------------------------------ */

typedef struct qmp_server qmp_server;

/* A server that runs the commands of `table` (kept by reference: it must outlive the
 * server). */
int qmp_server_new(const qmp_command_table *table, qmp_server **out, vd_error **errp);
/* Listens on a unix socket (mode 0600). */
int qmp_server_listen(qmp_server *s, const char *path, vd_error **errp);
/* Serves one client on an already connected socket in the calling thread until it
 * disconnects; the socket is closed then (tests, the fuzz target). */
void qmp_serve_fd(qmp_server *s, int fd);
/* Sends an event to every client that finished negotiation. data may be NULL. Takes data. */
void qmp_event(qmp_server *s, const char *name, json_object *data);
/* The same, stamped with the time it happened rather than now (an event held back by a
 * rate limit keeps its own time, as QEMU's do). */
struct timeval;
void qmp_event_at(qmp_server *s, const char *name, json_object *data,
                  const struct timeval *when);
/* Runs fn(arg) as a command runs: one at a time with the commands, so it may use what the
 * handlers use (the daemon's node registry). */
void qmp_run_exclusive(qmp_server *s, void (*fn)(void *arg), void *arg);
/* Set by the quit command; vdiskd's main loop polls it. */
bool qmp_quit_requested(qmp_server *s);
void qmp_request_quit(qmp_server *s);
void qmp_server_free(qmp_server *s);

/* The server a session belongs to (for events from handlers). */
qmp_server *qmp_session_server(qmp_session *qs);

/* QEMU's JSON layout ("key": value, ", " between members), one line. Caller frees. */
char *qmp_to_string(json_object *o);

/* The README's QMP reference, as markdown, from the table. */
void qmp_print_reference(const qmp_command_table *table);

#endif
