/* libFuzzer target for the QMP wire layer: each input is the byte stream a client sends
 * (after the greeting) to a session on a socket pair; the session parses it into commands,
 * checks them against a command table and dispatches them. The table here has harmless
 * commands of every argument type, so what is fuzzed is the framing, the JSON parsing
 * limits, negotiation and argument checking — not vdiskd's handlers, which touch files.
 * FUZZ_EXTRA: src/qmp/qmp-server.c -ljson-c */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz-feed.h"
#include "qmp/qmp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int echo(qmp_session *qs, json_object *args, json_object **ret, vd_error **errp)
{
    (void)qs;
    (void)errp;
    *ret = json_object_get(args);
    return 0;
}

static int refuse(qmp_session *qs, json_object *args, json_object **ret, vd_error **errp)
{
    (void)qs;
    (void)args;
    (void)ret;
    return vd_error_set(errp, VD_ERR_NOT_FOUND, ENOENT, "DeviceNotFound: no such thing");
}

static int event(qmp_session *qs, json_object *args, json_object **ret, vd_error **errp)
{
    (void)ret;
    (void)errp;
    qmp_event(qmp_session_server(qs), "FUZZ_EVENT", json_object_get(args));
    return 0;
}

static const qmp_arg typed[] = {
    {"s", QMP_STR, false, ""}, {"i", QMP_INT, true, ""}, {"b", QMP_BOOL, true, ""},
    {"o", QMP_OBJ, true, ""},  {"a", QMP_ARRAY, true, ""}, {"x", QMP_ANY, true, ""},
    {NULL, 0, false, NULL}};
static const qmp_arg none[] = {{NULL, 0, false, NULL}};
static const qmp_arg caps[] = {{"enable", QMP_ARRAY, true, ""}, {NULL, 0, false, NULL}};

static const qmp_command commands[] = {
    {"qmp_capabilities", echo, caps, false, ""},
    {"typed", echo, typed, false, ""},
    {"open", echo, none, true, ""},
    {"refuse", refuse, none, false, ""},
    {"event", event, none, true, ""},
};
static const qmp_command_table table = {commands, sizeof(commands) / sizeof(commands[0]), NULL,
                                        NULL, NULL};

static qmp_server *server;

static void setup(void)
{
    if (qmp_server_new(&table, &server, NULL) < 0) {
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!server) {
        setup();
    }
    int fd = feed_begin(data, size);
    if (fd < 0) {
        return 0;
    }
    qmp_serve_fd(server, fd);   /* returns at end of input; closes fd */
    feed_end();
    return 0;
}
