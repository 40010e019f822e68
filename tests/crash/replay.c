/* The replayer's parts: loading a logwrites log (src/block/logwrites.h), the durable image
 * in memory, and writing a crash state (the durable image plus a chosen set of unflushed
 * records, one of them possibly torn) to a file. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block/logwrites.h"
#include "crash.h"

#define CHUNK (64u * 1024)

static uint64_t le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) {
        v = v << 8 | p[i];
    }
    return v;
}

int wlog_load(const char *path, wlog *l)
{
    memset(l, 0, sizeof(*l));
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "crash-test: %s: %s\n", path, strerror(errno));
        return -1;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    l->buf = malloc((size_t)n + 1);
    if (!l->buf || fread(l->buf, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        fprintf(stderr, "crash-test: %s: could not read the log\n", path);
        return -1;
    }
    fclose(f);
    l->buf_len = (size_t)n;
    if (l->buf_len < VD_LOGW_HEADER_SIZE || memcmp(l->buf, VD_LOGW_MAGIC, 8)) {
        fprintf(stderr, "crash-test: %s: not a logwrites log\n", path);
        return -1;
    }
    l->init_size = le(l->buf + 8, 8);
    l->nb_files = 1;
    size_t cap = 0;
    for (size_t pos = VD_LOGW_HEADER_SIZE; pos < l->buf_len;) {
        const uint8_t *p = l->buf + pos;
        if (l->buf_len - pos < VD_LOGW_RECORD_SIZE) {
            fprintf(stderr, "crash-test: %s: truncated record at %zu\n", path, pos);
            return -1;
        }
        logrec r = {.type = (uint32_t)le(p, 4), .file = (uint32_t)le(p + 4, 4),
                    .off = le(p + 8, 8), .len = le(p + 16, 8), .aux = le(p + 24, 8),
                    .pos = pos};
        if (r.file >= VD_LOGW_MAX_FILES) {
            fprintf(stderr, "crash-test: %s: record of file %u at %zu\n", path, r.file, pos);
            return -1;
        }
        r.idx = l->per_file[r.file]++;
        if (r.file >= l->nb_files) {
            l->nb_files = r.file + 1;
        }
        pos += VD_LOGW_RECORD_SIZE;
        if (r.type == VD_LOGW_WRITE) {
            if (r.len > l->buf_len - pos) {
                fprintf(stderr, "crash-test: %s: write record past the end at %zu\n", path,
                        pos);
                return -1;
            }
            r.data = l->buf + pos;
            pos += r.len;
        } else if (r.type < VD_LOGW_ZERO || r.type > VD_LOGW_FLUSH) {
            fprintf(stderr, "crash-test: %s: unknown record type %u\n", path, r.type);
            return -1;
        }
        if (l->nb == cap) {
            cap = cap ? cap * 2 : 256;
            l->recs = realloc(l->recs, cap * sizeof(*l->recs));
            if (!l->recs) {
                abort();
            }
        }
        l->recs[l->nb++] = r;
    }
    return 0;
}

void wlog_free(wlog *l)
{
    free(l->buf);
    free(l->recs);
    memset(l, 0, sizeof(*l));
}

static void memfile_resize(memfile *m, uint64_t size)
{
    if (size > m->cap) {
        uint64_t cap = m->cap ? m->cap : CHUNK;
        while (cap < size) {
            cap *= 2;
        }
        m->data = realloc(m->data, cap);
        m->dirty = realloc(m->dirty, cap / CHUNK + 1);
        if (!m->data || !m->dirty) {
            abort();
        }
        memset(m->data + m->cap, 0, cap - m->cap);
        memset(m->dirty + m->cap / CHUNK, 0, cap / CHUNK + 1 - m->cap / CHUNK);
        m->cap = cap;
    }
    if (size < m->size) {
        memset(m->data + size, 0, m->size - size);
    }
    m->size = size;
}

static void mark_dirty(memfile *m, uint64_t off, uint64_t len)
{
    for (uint64_t c = off / CHUNK; len && c <= (off + len - 1) / CHUNK; c++) {
        m->dirty[c] = 1;
    }
}

void memfile_init(memfile *m, const uint8_t *data, uint64_t size)
{
    memset(m, 0, sizeof(*m));
    memfile_resize(m, size);
    memcpy(m->data, data, size);
    mark_dirty(m, 0, size);
}

void memfile_apply(memfile *m, const logrec *r)
{
    uint64_t end = r->off + r->len;
    switch (r->type) {
    case VD_LOGW_WRITE:
        if (end > m->size) {
            memfile_resize(m, end);
        }
        memcpy(m->data + r->off, r->data, r->len);
        mark_dirty(m, r->off, r->len);
        break;
    case VD_LOGW_ZERO:
    case VD_LOGW_DISCARD:
        if (end > m->size && r->type == VD_LOGW_ZERO) {
            memfile_resize(m, end);
        }
        if (r->off < m->size) {
            memset(m->data + r->off, 0, (end < m->size ? end : m->size) - r->off);
        }
        break;
    case VD_LOGW_TRUNCATE:
        memfile_resize(m, r->off);
        break;
    default:
        break;
    }
}

void memfile_free(memfile *m)
{
    free(m->data);
    free(m->dirty);
    memset(m, 0, sizeof(*m));
}

static int pwrite_full(int fd, const void *buf, size_t len, off_t off)
{
    while (len) {
        ssize_t n = pwrite(fd, buf, len, off);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        buf = (const uint8_t *)buf + n;
        len -= (size_t)n;
        off += n;
    }
    return 0;
}

/* For file systems without FALLOC_FL_ZERO_RANGE (tmpfs). */
static int write_zeros(int fd, uint64_t off, uint64_t len)
{
    static const uint8_t zero[CHUNK];
    int ret = 0;
    while (len && ret == 0) {
        uint64_t n = len < CHUNK ? len : CHUNK;
        ret = pwrite_full(fd, zero, n, (off_t)off);
        off += n;
        len -= n;
    }
    return ret;
}

static int apply_to_file(int fd, const logrec *r, const uint8_t *torn_mask)
{
    switch (r->type) {
    case VD_LOGW_WRITE:
        if (!torn_mask) {
            return pwrite_full(fd, r->data, r->len, (off_t)r->off);
        }
        for (uint64_t s = 0; s * SECTOR < r->len; s++) {
            uint64_t n = r->len - s * SECTOR < SECTOR ? r->len - s * SECTOR : SECTOR;
            if (torn_mask[s]) {
                int ret = pwrite_full(fd, r->data + s * SECTOR, n, (off_t)(r->off + s * SECTOR));
                if (ret < 0) {
                    return ret;
                }
            }
        }
        return 0;
    case VD_LOGW_ZERO:
        if (fallocate(fd, FALLOC_FL_ZERO_RANGE, (off_t)r->off, (off_t)r->len) == 0) {
            return 0;
        }
        return errno == EOPNOTSUPP ? write_zeros(fd, r->off, r->len) : -errno;
    case VD_LOGW_DISCARD:
        return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)r->off,
                         (off_t)r->len) < 0 ? -errno : 0;
    case VD_LOGW_TRUNCATE:
        return ftruncate(fd, (off_t)r->off) < 0 ? -errno : 0;
    default:
        return 0;
    }
}

int state_write(const char *path, const memfile *m, const logrec *const *recs, size_t n,
                long torn_idx, const uint8_t *torn_mask)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        fprintf(stderr, "crash-test: %s: %s\n", path, strerror(errno));
        return -1;
    }
    int ret = ftruncate(fd, (off_t)m->size) < 0 ? -errno : 0;
    for (uint64_t c = 0; ret == 0 && c * CHUNK < m->size; c++) {
        if (m->dirty[c]) {
            uint64_t off = c * CHUNK, len = m->size - off < CHUNK ? m->size - off : CHUNK;
            ret = pwrite_full(fd, m->data + off, len, (off_t)off);
        }
    }
    for (size_t i = 0; ret == 0 && i < n; i++) {
        ret = apply_to_file(fd, recs[i], (long)i == torn_idx ? torn_mask : NULL);
    }
    close(fd);
    if (ret < 0) {
        fprintf(stderr, "crash-test: %s: could not write the state: %s\n", path,
                strerror(-ret));
    }
    return ret;
}
