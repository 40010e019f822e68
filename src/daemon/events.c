/* The engine's events as QMP events: BLOCK_IMAGE_CORRUPTED, and the jobs' events. The
 * engine calls the handler on whatever thread found the event, with driver or job locks
 * held, so it only queues a copy. A delivery thread sends the queue as a command would
 * run (one at a time with the commands); the QMP server also sends it after each command,
 * before the reply, so the events a command caused come before its return, as QEMU's do.
 * A corruption event names the node its image belongs to, looked up when it is sent. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/daemon.h"
#include "util/common.h"

typedef struct queued_event {
    char *type, *image, *msg;
    bool fatal;
    int64_t offset, size;
    json_object *data;           /* a job event's members, ready */
    bool sync;                   /* goes with the answer of the command that runs */
    pthread_t origin;            /* the thread that reported it */
    struct queued_event *next;
} queued_event;

/* Events beyond this many unsent are dropped (a job retrying a failing request under
 * on-*-error=ignore reports each failure; a client that does not read must not make the
 * daemon's memory grow without bound). */
#define MAX_QUEUED 10000

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    queued_event *head, **tail;
    size_t count;
    bool stop;
    bool started;
    pthread_t thread;
} queue = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, &queue.head, 0, false,
           false, 0};

static json_object *job_event_data(const vd_event *ev)
{
    json_object *d = json_object_new_object();
    const char *t = ev->type;
    if (!strcmp(t, "JOB_STATUS_CHANGE")) {
        json_object_object_add(d, "status", json_object_new_string(ev->job_status));
        json_object_object_add(d, "id", json_object_new_string(ev->job_id));
    } else if (!strcmp(t, "BLOCK_JOB_PENDING")) {
        json_object_object_add(d, "type", json_object_new_string(ev->job_type));
        json_object_object_add(d, "id", json_object_new_string(ev->job_id));
    } else if (!strcmp(t, "BLOCK_JOB_ERROR")) {
        json_object_object_add(d, "device", json_object_new_string(ev->job_id));
        json_object_object_add(d, "operation", json_object_new_string(ev->operation));
        json_object_object_add(d, "action", json_object_new_string(ev->action));
    } else {
        /* READY, COMPLETED, CANCELLED, in qemu-storage-daemon's order */
        json_object_object_add(d, "device", json_object_new_string(ev->job_id));
        json_object_object_add(d, "len", json_object_new_int64((int64_t)ev->job_len));
        json_object_object_add(d, "offset", json_object_new_int64((int64_t)ev->job_offset));
        json_object_object_add(d, "speed", json_object_new_int64((int64_t)ev->job_speed));
        json_object_object_add(d, "type", json_object_new_string(ev->job_type));
        if (ev->job_error) {
            json_object_object_add(d, "error", json_object_new_string(ev->job_error));
        }
    }
    return d;
}

void daemon_on_engine_event(void *opaque, const vd_event *ev)
{
    (void)opaque;
    queued_event *q = calloc(1, sizeof(*q));
    if (!q) {
        abort();
    }
    q->type = vd_xstrdup(ev->type);
    q->sync = ev->synchronous;
    q->origin = pthread_self();
    if (ev->job_id) {
        q->data = job_event_data(ev);
    }
    q->image = vd_xstrdup(ev->image ? ev->image : "");
    q->msg = vd_xstrdup(ev->msg ? ev->msg : "");
    q->fatal = ev->fatal;
    q->offset = ev->offset;
    q->size = ev->size;
    pthread_mutex_lock(&queue.lock);
    if (queue.count >= MAX_QUEUED) {
        pthread_mutex_unlock(&queue.lock);
        json_object_put(q->data);
        free(q->type);
        free(q->image);
        free(q->msg);
        free(q);
        return;
    }
    *queue.tail = q;
    queue.tail = &q->next;
    queue.count++;
    pthread_cond_signal(&queue.cond);
    pthread_mutex_unlock(&queue.lock);
}

/* The node whose image this is: the format node opened on that file (newest first), or
 * NULL. The caller frees it. */
static char *node_of(const char *image)
{
    vd_blockdev_info *list = NULL;
    size_t nb = 0;
    char *name = NULL;
    vd_blockdev_list(vdiskd.engine, &list, &nb);
    for (size_t i = 0; i < nb && !name; i++) {
        if (list[i].file_child && !strcmp(list[i].filename, image)) {
            name = list[i].node_name;
            list[i].node_name = NULL;
        }
    }
    vd_blockdev_list_free(list, nb);
    return name;
}

static void free_event(queued_event *q)
{
    json_object_put(q->data);
    free(q->type);
    free(q->image);
    free(q->msg);
    free(q);
}

static void send_all(void *arg)
{
    for (queued_event *q = arg, *next; q; q = next) {
        next = q->next;
        if (q->data) {
            qmp_event(vdiskd.qmp, q->type, json_object_get(q->data));
            free_event(q);
            continue;
        }
        /* QEMU's members, in the order qemu-storage-daemon sends them. */
        json_object *data = json_object_new_object();
        json_object_object_add(data, "device", json_object_new_string(""));
        json_object_object_add(data, "msg", json_object_new_string(q->msg));
        if (q->offset >= 0) {
            json_object_object_add(data, "offset", json_object_new_int64(q->offset));
        }
        char *node = node_of(q->image);
        if (node) {
            json_object_object_add(data, "node-name", json_object_new_string(node));
            free(node);
        }
        json_object_object_add(data, "fatal", json_object_new_boolean(q->fatal));
        if (q->offset >= 0) {
            json_object_object_add(data, "size", json_object_new_int64(q->size));
        }
        qmp_event(vdiskd.qmp, q->type, data);
        free_event(q);
    }
}

static queued_event *take_all(void)
{
    pthread_mutex_lock(&queue.lock);
    queued_event *q = queue.head;
    queue.head = NULL;
    queue.tail = &queue.head;
    queue.count = 0;
    pthread_mutex_unlock(&queue.lock);
    return q;
}

/* Run as a command runs: what is queued is taken only now, so events a running command
 * causes wait for its end, and go out with it (daemon_events_after_command). */
static void send_queued(void *arg)
{
    (void)arg;
    send_all(take_all());
}

/* The events the command that just ran caused: those its own thread reported, and those
 * reported for it (synchronous); the rest stay queued, for after its reply. */
void daemon_events_after_command(void)
{
    queued_event *mine = NULL, **mt = &mine;
    pthread_t self = pthread_self();
    pthread_mutex_lock(&queue.lock);
    for (queued_event **p = &queue.head; *p;) {
        queued_event *q = *p;
        if (q->sync || pthread_equal(q->origin, self)) {
            *p = q->next;
            queue.count--;
            q->next = NULL;
            *mt = q;
            mt = &q->next;
        } else {
            p = &q->next;
        }
    }
    queue.tail = &queue.head;
    while (*queue.tail) {
        queue.tail = &(*queue.tail)->next;
    }
    pthread_mutex_unlock(&queue.lock);
    if (vdiskd.qmp) {
        send_all(mine);
    } else {
        for (queued_event *next; mine; mine = next) {
            next = mine->next;
            free_event(mine);
        }
    }
}

static void *delivery_thread(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&queue.lock);
    while (!queue.stop) {
        if (!queue.head) {
            pthread_cond_wait(&queue.cond, &queue.lock);
            continue;
        }
        pthread_mutex_unlock(&queue.lock);
        qmp_run_exclusive(vdiskd.qmp, send_queued, NULL);
        pthread_mutex_lock(&queue.lock);
    }
    pthread_mutex_unlock(&queue.lock);
    return NULL;
}

int daemon_events_start(void)
{
    queue.stop = false;
    if (pthread_create(&queue.thread, NULL, delivery_thread, NULL) != 0) {
        return -1;
    }
    queue.started = true;
    return 0;
}

void daemon_events_stop(void)
{
    if (!queue.started) {
        return;
    }
    pthread_mutex_lock(&queue.lock);
    queue.stop = true;
    pthread_cond_signal(&queue.cond);
    pthread_mutex_unlock(&queue.lock);
    pthread_join(queue.thread, NULL);
    queue.started = false;
}

void daemon_deliver_events(void)
{
    if (vdiskd.qmp) {
        qmp_run_exclusive(vdiskd.qmp, send_queued, NULL);
        return;
    }
    queued_event *q = take_all();
    for (queued_event *next; q; q = next) {
        next = q->next;
        free_event(q);
    }
}
