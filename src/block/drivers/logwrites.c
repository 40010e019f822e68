/* The write-recording filter (see block/logwrites.h): passes every request to its file
 * child and appends what changed the file to a log, in completion order, so that a replayer
 * can rebuild the file as a crash after any record could have left it. Only writes that
 * completed before a flush began are durable after it; the flush record says how many. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "block/logwrites.h"

typedef struct logw_state {
    vd_node *node;       /* the filter, for its error messages */
    pthread_mutex_t lock;
    int fd;              /* opened for appending: other files' filters may share the log */
    uint32_t file;       /* this file's number in a shared log (0: the log's creator) */
    uint64_t records;    /* appended so far, for this file */
    bool failed;         /* the log is incomplete: every later request fails */
} logw_state;

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static int write_full(int fd, struct iovec *iov, int iovcnt)
{
    while (iovcnt > 0) {
        ssize_t n = writev(fd, iov, iovcnt);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        while (iovcnt > 0 && (size_t)n >= iov->iov_len) {
            n -= (ssize_t)iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + n;
            iov->iov_len -= (size_t)n;
        }
    }
    return 0;
}

/* Appends one record; called with the lock held. A request whose record could not be kept
 * fails, since a log that misses a write would make the replayer lie. */
static int append_locked(logw_state *s, uint32_t type, uint64_t off, uint64_t len,
                         uint64_t aux, const void *data)
{
    if (s->failed) {
        vd_node_set_error(s->node, "logwrites: an earlier record could not be written");
        return -EIO;
    }
    uint8_t rec[VD_LOGW_RECORD_SIZE] = {0};
    put_le32(rec, type);
    put_le32(rec + 4, s->file);
    put_le64(rec + 8, off);
    put_le64(rec + 16, len);
    put_le64(rec + 24, aux);
    struct iovec iov[2] = {{rec, sizeof(rec)}, {(void *)data, data ? (size_t)len : 0}};
    int ret = write_full(s->fd, iov, data ? 2 : 1);
    if (ret < 0) {
        s->failed = true;
        vd_node_set_error(s->node, "logwrites: could not append to the log: %s", strerror(-ret));
        return ret;
    }
    s->records++;
    return 0;
}

static int record(vd_node *n, int ret, uint32_t type, uint64_t off, uint64_t len,
                  const void *data)
{
    if (ret < 0) {
        return ret;
    }
    logw_state *s = n->opaque;
    pthread_mutex_lock(&s->lock);
    ret = append_locked(s, type, off, len, 0, data);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

static int logw_pread(vd_node *n, void *buf, uint64_t len, uint64_t off)
{
    return vd_node_pread(n->file, buf, len, off);
}

static int logw_pwrite(vd_node *n, const void *buf, uint64_t len, uint64_t off,
                       unsigned flags)
{
    return record(n, vd_node_pwrite(n->file, buf, len, off, flags), VD_LOGW_WRITE, off, len,
                  buf);
}

static int logw_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, unsigned flags)
{
    return record(n, vd_node_pwrite_zeroes(n->file, off, len, flags), VD_LOGW_ZERO, off, len,
                  NULL);
}

static int logw_pdiscard(vd_node *n, uint64_t off, uint64_t len)
{
    return record(n, vd_node_pdiscard(n->file, off, len), VD_LOGW_DISCARD, off, len, NULL);
}

static int logw_flush(vd_node *n)
{
    logw_state *s = n->opaque;
    pthread_mutex_lock(&s->lock);
    uint64_t covered = s->records;
    pthread_mutex_unlock(&s->lock);
    int ret = vd_node_flush(n->file);
    if (ret < 0) {
        return ret;
    }
    pthread_mutex_lock(&s->lock);
    ret = append_locked(s, VD_LOGW_FLUSH, 0, 0, covered, NULL);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

static int logw_truncate(vd_node *n, uint64_t size, bool shrink, const char *prealloc,
                         vd_error **errp)
{
    int ret = vd_node_truncate(n->file, size, shrink, prealloc, errp);
    n->size = n->file->size;
    if (ret == 0) {
        ret = record(n, 0, VD_LOGW_TRUNCATE, n->file->size, 0, NULL);
        if (ret < 0) {
            char detail[512];
            vd_error_set(errp, VD_ERR_IO, -ret, "%s: %s", n->filename,
                         vd_node_get_error(n, detail, sizeof(detail)) ? detail
                                                                      : strerror(-ret));
        }
    }
    return ret;
}

static void logw_close(vd_node *n)
{
    logw_state *s = n->opaque;
    if (!s) {
        return;
    }
    close(s->fd);
    pthread_mutex_destroy(&s->lock);
    free(s);
    n->opaque = NULL;
}

/* The filter is opened by its filename prefix, never through a driver lookup by name. */
static int logw_open(vd_node *n, unsigned flags, vd_error **errp)
{
    (void)flags;
    return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: logwrites is opened with a "
                        "'logwrites:LOG:PATH' filename", n->filename);
}

const vd_driver vd_logwrites_driver = {
    .name = "logwrites",
    .is_format = false,
    .open = logw_open,
    .close = logw_close,
    .pread = logw_pread,
    .pwrite = logw_pwrite,
    .pwrite_zeroes = logw_pwrite_zeroes,
    .pdiscard = logw_pdiscard,
    .flush = logw_flush,
    .block_status = vd_filter_block_status,
    .truncate = logw_truncate,
    .allocated_size = vd_filter_allocated_size,
};

int vd_logwrites_parse(const char *spec, char **log, char **path, vd_error **errp)
{
    *log = *path = NULL;
    size_t plen = strlen(VD_LOGWRITES_PREFIX);
    if (strncmp(spec, VD_LOGWRITES_PREFIX, plen) != 0) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "not a logwrites filename: '%s'",
                            spec);
    }
    const char *l = spec + plen;
    const char *colon = strchr(l, ':');
    if (!colon || colon == l || colon[1] == '\0') {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "logwrites: expected "
                            "'logwrites:LOG:PATH' with a non-empty LOG and PATH, got '%s'",
                            spec);
    }
    *log = strndup(l, (size_t)(colon - l));
    *path = strdup(colon + 1);
    if (!*log || !*path) {
        free(*log);
        free(*path);
        *log = *path = NULL;
        return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "out of memory");
    }
    return 0;
}

/* `LOG#N`: file N of a shared LOG; else 0 (*file_no) and the whole name. */
static char *shared_log_name(const char *log, uint32_t *file_no)
{
    *file_no = 0;
    const char *hash = strrchr(log, '#');
    if (hash && hash > log && hash[1]) {
        char *end;
        unsigned long n = strtoul(hash + 1, &end, 10);
        if (*end == '\0' && hash[1] >= '0' && hash[1] <= '9' && n >= 1 &&
            n < VD_LOGW_MAX_FILES) {
            *file_no = (uint32_t)n;
            return strndup(log, (size_t)(hash - log));
        }
    }
    return strdup(log);
}

int vd_logwrites_wrap(vd_node *filter, vd_node *child, const char *log, vd_error **errp)
{
    int64_t size = vd_node_file_length(child);
    if (size < 0) {
        return vd_error_set(errp, VD_ERR_IO, (int)-size, "logwrites: %s: %s", child->filename,
                            strerror((int)-size));
    }
    uint32_t file_no;
    char *name = shared_log_name(log, &file_no);
    logw_state *s = calloc(1, sizeof(*s));
    if (!s || !name) {
        free(s);
        free(name);
        return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "out of memory");
    }
    s->node = filter;
    s->file = file_no;
    /* A shared log's other files append to what file 0 created. */
    s->fd = open(name, O_WRONLY | O_APPEND | O_CLOEXEC | (file_no ? 0 : O_CREAT | O_TRUNC),
                 0644);
    if (s->fd < 0) {
        int err = errno;
        free(s);
        if (file_no) {
            vd_error_set(errp, VD_ERR_IO, err, "logwrites: could not open the shared log "
                         "'%s' (file %u): %s", name, file_no, strerror(err));
        } else {
            vd_error_set(errp, VD_ERR_IO, err, "logwrites: could not create log '%s': %s",
                         name, strerror(err));
        }
        free(name);
        return -err;
    }
    free(name);
    if (file_no == 0) {
        uint8_t hdr[VD_LOGW_HEADER_SIZE];
        memcpy(hdr, VD_LOGW_MAGIC, 8);
        put_le64(hdr + 8, (uint64_t)size);
        struct iovec iov = {hdr, sizeof(hdr)};
        int ret = write_full(s->fd, &iov, 1);
        if (ret < 0) {
            close(s->fd);
            free(s);
            return vd_error_set(errp, VD_ERR_IO, -ret, "logwrites: could not write log "
                                "'%s': %s", log, strerror(-ret));
        }
    }
    pthread_mutex_init(&s->lock, NULL);
    filter->opaque = s;
    filter->file = child;
    filter->size = child->size;
    filter->request_alignment = child->request_alignment;
    filter->max_transfer = child->max_transfer;
    return 0;
}
