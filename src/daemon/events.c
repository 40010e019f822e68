/* The engine's events (BLOCK_IMAGE_CORRUPTED) as QMP events. The engine calls the handler
 * on the I/O thread that found the event, with driver locks held, so it only queues a
 * copy; the main loop sends the queue as a command would run (one at a time with the
 * commands), naming the node the image belongs to. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/daemon.h"
#include "util/common.h"

typedef struct queued_event {
    char *type, *image, *msg;
    bool fatal;
    int64_t offset, size;
    struct queued_event *next;
} queued_event;

static struct {
    pthread_mutex_t lock;
    queued_event *head, **tail;
} queue = {PTHREAD_MUTEX_INITIALIZER, NULL, &queue.head};

void daemon_on_engine_event(void *opaque, const vd_event *ev)
{
    (void)opaque;
    queued_event *q = calloc(1, sizeof(*q));
    if (!q) {
        abort();
    }
    q->type = vd_xstrdup(ev->type);
    q->image = vd_xstrdup(ev->image ? ev->image : "");
    q->msg = vd_xstrdup(ev->msg ? ev->msg : "");
    q->fatal = ev->fatal;
    q->offset = ev->offset;
    q->size = ev->size;
    pthread_mutex_lock(&queue.lock);
    *queue.tail = q;
    queue.tail = &q->next;
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
    free(q->type);
    free(q->image);
    free(q->msg);
    free(q);
}

static void send_all(void *arg)
{
    for (queued_event *q = arg, *next; q; q = next) {
        next = q->next;
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

void daemon_deliver_events(void)
{
    pthread_mutex_lock(&queue.lock);
    queued_event *q = queue.head;
    queue.head = NULL;
    queue.tail = &queue.head;
    pthread_mutex_unlock(&queue.lock);
    if (q && vdiskd.qmp) {
        qmp_run_exclusive(vdiskd.qmp, send_all, q);
        return;
    }
    for (queued_event *next; q; q = next) {
        next = q->next;
        free_event(q);
    }
}
