/* The engine's events as QMP events: BLOCK_IMAGE_CORRUPTED, the jobs' events and the
 * quorum's. The engine calls the handler on whatever thread found the event, with driver
 * or job locks held, so it only queues a copy. A delivery thread sends the queue as a
 * command would run (one at a time with the commands); the QMP server also sends it after
 * each command, before the reply, so the events a command caused come before its return,
 * as QEMU's do. A corruption event names the node its image belongs to, looked up when it
 * is sent. The quorum's events are rate-limited as QEMU's monitor limits them (see
 * "throttle" below). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "daemon/daemon.h"
#include "util/common.h"

typedef struct queued_event {
    char *type, *image, *msg;
    bool fatal;
    int64_t offset, size;
    json_object *data;           /* a job or quorum event's members, ready */
    char *throttle_key;          /* rate-limited events: what they are limited per */
    struct timeval when;         /* when it happened (sent with a rate-limited event) */
    bool sync;                   /* goes with the answer of the command that runs */
    pthread_t origin;            /* the thread that reported it */
    struct queued_event *next;
} queued_event;

/* Events beyond this many unsent are dropped (a job retrying a failing request under
 * on-*-error=ignore reports each failure; a client that does not read must not make the
 * daemon's memory grow without bound). */
#define MAX_QUEUED 10000

/* One rate-limited kind of event (QEMU's monitor: at most one a second per key). The
 * first is sent at once and opens a window of a second; what comes in the window is held
 * back, the latest replacing the one before, and sent when the window ends, which opens
 * the next one; a window that ends with nothing held closes the slot. */
typedef struct throttle_slot {
    char *key;
    struct timespec end;         /* CLOCK_MONOTONIC */
    queued_event *held;
    struct throttle_slot *next;
} throttle_slot;

#define THROTTLE_NS 1000000000LL

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    queued_event *head, **tail;
    size_t count;
    bool stop;
    bool started;
    pthread_t thread;
    throttle_slot *slots;        /* under lock */
} queue = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, &queue.head, 0, false,
           false, 0, NULL};

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

/* QEMU's members, in the order qemu-storage-daemon 7.2 sends them. */
static json_object *quorum_event_data(const vd_event *ev)
{
    json_object *d = json_object_new_object();
    bool bad = !strcmp(ev->type, "QUORUM_REPORT_BAD");
    json_object_object_add(d, bad ? "node-name" : "reference",
                           json_object_new_string(ev->node_name ? ev->node_name : ""));
    json_object_object_add(d, "sectors-count", json_object_new_int64(ev->sectors_count));
    json_object_object_add(d, "sector-num", json_object_new_int64(ev->sector_num));
    if (bad) {
        json_object_object_add(d, "type", json_object_new_string(ev->operation));
        if (ev->error) {
            json_object_object_add(d, "error", json_object_new_string(ev->error));
        }
    }
    return d;
}

/* QEMU's monitor limits QUORUM_REPORT_BAD per node-name and QUORUM_FAILURE as a whole
 * (monitor.c's throttle table and keys); NULL: not limited. */
static char *throttle_key(const vd_event *ev)
{
    char *key = NULL;
    if (!strcmp(ev->type, "QUORUM_REPORT_BAD")) {
        if (asprintf(&key, "%s/%s", ev->type, ev->node_name ? ev->node_name : "") < 0) {
            abort();
        }
    } else if (!strcmp(ev->type, "QUORUM_FAILURE")) {
        key = vd_xstrdup(ev->type);
    }
    return key;
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
    gettimeofday(&q->when, NULL);
    if (ev->job_id) {
        q->data = job_event_data(ev);
    } else if (!strcmp(ev->type, "MIGRATION")) {
        q->data = json_object_new_object();
        json_object_object_add(q->data, "status", json_object_new_string(ev->mig_status));
    } else if (!strcmp(ev->type, "MIGRATION_PASS")) {
        q->data = json_object_new_object();
        json_object_object_add(q->data, "pass", json_object_new_int64((int64_t)ev->mig_pass));
    } else if (!strncmp(ev->type, "QUORUM_", 7)) {
        q->data = quorum_event_data(ev);
        q->throttle_key = throttle_key(ev);
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
        free(q->throttle_key);
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
    if (!q) {
        return;
    }
    json_object_put(q->data);
    free(q->throttle_key);
    free(q->type);
    free(q->image);
    free(q->msg);
    free(q);
}

/* ---- throttle ------------------------------------------------------------------------------ */

static struct timespec now_plus(long long ns)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    long long total = (long long)t.tv_nsec + ns;
    t.tv_sec += (time_t)(total / 1000000000LL);
    t.tv_nsec = (long)(total % 1000000000LL);
    return t;
}

static bool passed(const struct timespec *t)
{
    struct timespec now = now_plus(0);
    return now.tv_sec > t->tv_sec || (now.tv_sec == t->tv_sec && now.tv_nsec >= t->tv_nsec);
}

/* Whether q goes out now (a new window opens); if not, its slot holds it (and owns it). */
static bool throttle_admit(queued_event *q)
{
    pthread_mutex_lock(&queue.lock);
    throttle_slot *t = queue.slots;
    while (t && strcmp(t->key, q->throttle_key)) {
        t = t->next;
    }
    bool now = !t;
    if (t) {
        free_event(t->held);
        t->held = q;
        q->next = NULL;
    } else {
        t = calloc(1, sizeof(*t));
        if (!t) {
            abort();
        }
        t->key = vd_xstrdup(q->throttle_key);
        t->end = now_plus(THROTTLE_NS);
        t->next = queue.slots;
        queue.slots = t;
        pthread_cond_signal(&queue.cond);   /* the delivery thread has a new window to end */
    }
    pthread_mutex_unlock(&queue.lock);
    return now;
}

/* The earliest end of a window, if any. Lock held. */
static bool throttle_next(struct timespec *out)
{
    bool any = false;
    for (throttle_slot *t = queue.slots; t; t = t->next) {
        if (!any || t->end.tv_sec < out->tv_sec ||
            (t->end.tv_sec == out->tv_sec && t->end.tv_nsec < out->tv_nsec)) {
            *out = t->end;
            any = true;
        }
    }
    return any;
}

static void send_one(queued_event *q)
{
    if (q->throttle_key) {
        qmp_event_at(vdiskd.qmp, q->type, json_object_get(q->data), &q->when);
    } else {
        qmp_event(vdiskd.qmp, q->type, json_object_get(q->data));
    }
}

/* Ends the window that ended first, if its second is over: a held event goes out and
 * opens the next one. One at a time, so that windows end in the order of their ends. */
static void throttle_expire(void *arg)
{
    (void)arg;
    queued_event *out = NULL;
    pthread_mutex_lock(&queue.lock);
    throttle_slot **first = NULL;
    for (throttle_slot **p = &queue.slots; *p; p = &(*p)->next) {
        const struct timespec *e = &(*p)->end;
        if (!first || e->tv_sec < (*first)->end.tv_sec ||
            (e->tv_sec == (*first)->end.tv_sec && e->tv_nsec < (*first)->end.tv_nsec)) {
            first = p;
        }
    }
    throttle_slot *t = first ? *first : NULL;
    if (t && passed(&t->end)) {
        if (t->held) {
            out = t->held;
            t->held = NULL;
            t->end = now_plus(THROTTLE_NS);
        } else {
            *first = t->next;
            free(t->key);
            free(t);
        }
    }
    pthread_mutex_unlock(&queue.lock);
    if (out) {
        send_one(out);
        free_event(out);
    }
}

/* ---- sending -------------------------------------------------------------------------------- */

static void send_all(void *arg)
{
    for (queued_event *q = arg, *next; q; q = next) {
        next = q->next;
        if (q->throttle_key && !throttle_admit(q)) {
            continue;
        }
        if (q->data) {
            send_one(q);
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
        struct timespec end;
        bool timed = throttle_next(&end);
        if (queue.head) {
            pthread_mutex_unlock(&queue.lock);
            qmp_run_exclusive(vdiskd.qmp, send_queued, NULL);
        } else if (timed && passed(&end)) {
            pthread_mutex_unlock(&queue.lock);
            qmp_run_exclusive(vdiskd.qmp, throttle_expire, NULL);
        } else {
            if (timed) {
                pthread_cond_clockwait(&queue.cond, &queue.lock, CLOCK_MONOTONIC, &end);
            } else {
                pthread_cond_wait(&queue.cond, &queue.lock);
            }
            continue;
        }
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
    /* What a window still held is dropped with the daemon, as QEMU's timers are. */
    while (queue.slots) {
        throttle_slot *t = queue.slots;
        queue.slots = t->next;
        free_event(t->held);
        free(t->key);
        free(t);
    }
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
