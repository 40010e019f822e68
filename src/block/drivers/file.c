/* The file protocol driver: a host file or block device, with pread/pwrite, fallocate for
 * zeroing and discard, SEEK_DATA/SEEK_HOLE for block status, fdatasync for flush. */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "block/block.h"
#include "block/drivers/nbd-uri.h"
#include "block/drivers/rbd-filename.h"

/* Buffered writes to one file serialise in the kernel (the inode lock, where waiters
 * spin); taking turns here lets them sleep instead, leaving the CPU to the rest of the
 * pipeline (an NBD client on the same host, the compressors). O_DIRECT writes do not
 * take the inode lock exclusively and run in parallel. */
typedef struct file_state {
    pthread_mutex_t write_lock;
} file_state;

/* QEMU's file options that mean something here: the name, the AIO engine (vdisk has one
 * engine of its own, so any of QEMU's is accepted) and locking (vdisk takes no image locks,
 * so only "off" or "auto" describe what happens). */
static const char *const file_runtime_opts[] = {"filename", "aio", "locking", NULL};

static int file_options(const vd_tree *opts, vd_error **errp)
{
    const char *aio, *locking;
    int ret = vd_tree_get_str(opts, "aio", "aio", &aio, errp);
    if (ret == 0) {
        ret = vd_tree_get_str(opts, "locking", "locking", &locking, errp);
    }
    if (ret < 0) {
        return ret;
    }
    if (aio && strcmp(aio, "threads") && strcmp(aio, "native") && strcmp(aio, "io_uring")) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'aio' does not accept "
                            "value '%s'", aio);
    }
    if (locking && strcmp(locking, "off") && strcmp(locking, "auto")) {
        return vd_error_set(errp, strcmp(locking, "on") ? VD_ERR_INVALID : VD_ERR_UNSUPPORTED,
                            strcmp(locking, "on") ? EINVAL : ENOTSUP,
                            strcmp(locking, "on") ? "Parameter 'locking' does not accept "
                            "value '%s'" : "locking=%s is not supported: vdisk takes no image "
                            "locks", locking);
    }
    return 0;
}

static int file_open(vd_node *n, unsigned flags, vd_error **errp)
{
    if (n->options && !vd_tree_get(n->options, "filename")) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "The 'file' block driver requires a "
                            "file name");
    }
    if (n->options) {
        int ret = file_options(n->options, errp);
        if (ret < 0) {
            return ret;
        }
    }
    int oflags = O_CLOEXEC | ((flags & VD_OPEN_RDWR) ? O_RDWR : O_RDONLY);
    if (flags & VD_OPEN_NOCACHE) {
        oflags |= O_DIRECT;
    }
    int fd = open(n->filename, oflags);
    if (fd < 0) {
        int err = errno;
        return vd_error_set(errp, err == ENOENT ? VD_ERR_NOT_FOUND : VD_ERR_IO, err,
                            "Could not open '%s': %s", n->filename, strerror(err));
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int err = errno;
        close(fd);
        return vd_error_set(errp, VD_ERR_IO, err, "Could not open '%s': %s", n->filename,
                            strerror(err));
    }
    /* A driver named in options wants its kind of file, as QEMU checks; a bare filename
     * takes anything but a directory. */
    bool device = strcmp(n->drv->name, "file") != 0;
    if (n->options && (device ? !S_ISBLK(st.st_mode) && !S_ISCHR(st.st_mode)
                              : !S_ISREG(st.st_mode))) {
        close(fd);
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, device
                            ? "'%s' driver requires '%s' to be either a character or block "
                              "device" : "'%s' driver requires '%s' to be a regular file",
                            n->drv->name, n->filename);
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        return vd_error_set(errp, VD_ERR_IO, EISDIR, "Could not open '%s': %s", n->filename,
                            strerror(EISDIR));
    }
    uint64_t size = (uint64_t)st.st_size;
    if (S_ISBLK(st.st_mode) && ioctl(fd, BLKGETSIZE64, &size) < 0) {
        int err = errno;
        close(fd);
        return vd_error_set(errp, VD_ERR_IO, err, "Could not get the size of '%s': %s",
                            n->filename, strerror(err));
    }
    file_state *fs = calloc(1, sizeof(*fs));
    if (!fs) {
        close(fd);
        return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "out of memory");
    }
    pthread_mutex_init(&fs->write_lock, NULL);
    n->opaque = fs;
    n->fd = fd;
    n->size = size;
    if (flags & VD_OPEN_NOCACHE) {
        n->request_alignment = 4096;
    }
    n->max_transfer = 1u << 30;
    return 0;
}

static void file_close(vd_node *n)
{
    file_state *fs = n->opaque;
    if (fs) {
        pthread_mutex_destroy(&fs->write_lock);
        free(fs);
        n->opaque = NULL;
    }
    if (n->fd >= 0) {
        close(n->fd);
        n->fd = -1;
    }
}

static int file_pread(vd_node *n, void *buf, uint64_t len, uint64_t off)
{
    char *p = buf;
    while (len > 0) {
        ssize_t r = pread(n->fd, p, len, (off_t)off);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        if (r == 0) {
            memset(p, 0, len);  /* past the end of the file reads as zeros */
            return 0;
        }
        p += r;
        off += (uint64_t)r;
        len -= (uint64_t)r;
    }
    return 0;
}

static int file_pwrite(vd_node *n, const void *buf, uint64_t len, uint64_t off,
                       unsigned flags)
{
    const char *p = buf;
    file_state *fs = n->opaque;
    bool serial = fs && !(n->open_flags & VD_OPEN_NOCACHE);
    if (serial) {
        pthread_mutex_lock(&fs->write_lock);
    }
    int ret = 0;
    while (len > 0) {
        ssize_t r = pwrite(n->fd, p, len, (off_t)off);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            ret = -errno;
            break;
        }
        p += r;
        off += (uint64_t)r;
        len -= (uint64_t)r;
    }
    if (serial) {
        pthread_mutex_unlock(&fs->write_lock);
    }
    if (ret < 0) {
        return ret;
    }
    if ((flags & VD_REQ_FUA) && !(n->open_flags & VD_OPEN_NO_FLUSH)) {
        if (fdatasync(n->fd) < 0) {
            return -errno;
        }
    }
    return 0;
}

static int file_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, unsigned flags)
{
    int mode = (flags & VD_REQ_MAY_UNMAP) ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
                                          : FALLOC_FL_ZERO_RANGE;
    struct stat st;
    if (fstat(n->fd, &st) < 0) {
        return -errno;
    }
    /* Punching past the end does not extend the file; zero-range does. */
    if (fallocate(n->fd, mode, (off_t)off, (off_t)len) == 0) {
        if ((mode & FALLOC_FL_KEEP_SIZE) && off + len > (uint64_t)st.st_size &&
            ftruncate(n->fd, (off_t)(off + len)) < 0) {
            return -errno;
        }
        return 0;
    }
    if (mode != FALLOC_FL_ZERO_RANGE &&
        fallocate(n->fd, FALLOC_FL_ZERO_RANGE, (off_t)off, (off_t)len) == 0) {
        return 0;
    }
    return -ENOTSUP;
}

static int file_pdiscard(vd_node *n, uint64_t off, uint64_t len)
{
    if (fallocate(n->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
                  (off_t)len) < 0) {
        return errno == EOPNOTSUPP ? -ENOTSUP : -errno;
    }
    return 0;
}

static int file_flush(vd_node *n)
{
    if (n->open_flags & VD_OPEN_NO_FLUSH) {
        return 0;  /* cache=unsafe: the user asked us not to pay for durability */
    }
    return fdatasync(n->fd) < 0 ? -errno : 0;
}

static int file_block_status(vd_node *n, uint64_t off, uint64_t len, vd_node_status *st)
{
    st->file = n;
    st->offset = off;
    st->flags = VD_BS_ALLOCATED | VD_BS_OFFSET;
    off_t data = lseek(n->fd, (off_t)off, SEEK_DATA);
    if (data < 0) {
        if (errno == ENXIO) {  /* hole up to the end of the file */
            st->flags |= VD_BS_ZERO;
            st->pnum = len;
            return 0;
        }
        st->flags |= VD_BS_DATA;  /* SEEK_DATA unsupported: assume data */
        st->pnum = len;
        return 0;
    }
    if ((uint64_t)data > off) {
        st->flags |= VD_BS_ZERO;
        st->pnum = (uint64_t)data - off < len ? (uint64_t)data - off : len;
        return 0;
    }
    off_t hole = lseek(n->fd, (off_t)off, SEEK_HOLE);
    st->flags |= VD_BS_DATA;
    st->pnum = hole > (off_t)off && (uint64_t)hole - off < len ? (uint64_t)hole - off : len;
    return 0;
}

static int file_truncate(vd_node *n, uint64_t size, bool shrink, const char *prealloc,
                         vd_error **errp)
{
    (void)shrink;
    struct stat st;
    if (fstat(n->fd, &st) < 0) {
        return vd_error_set(errp, VD_ERR_IO, errno, "%s: %s", n->filename, strerror(errno));
    }
    uint64_t old = (uint64_t)st.st_size;
    if (ftruncate(n->fd, (off_t)size) < 0) {
        return vd_error_set(errp, VD_ERR_IO, errno, "%s: Could not resize file: %s",
                            n->filename, strerror(errno));
    }
    n->size = size;
    if (size <= old || !strcmp(prealloc, "off")) {
        return 0;
    }
    if (!strcmp(prealloc, "falloc")) {
        int r = posix_fallocate(n->fd, (off_t)old, (off_t)(size - old));
        if (r != 0) {
            return vd_error_set(errp, VD_ERR_IO, r, "%s: Could not preallocate data for the "
                                "new area: %s", n->filename, strerror(r));
        }
        return 0;
    }
    if (!strcmp(prealloc, "full")) {
        size_t chunk = 1u << 20;
        char *zeros = calloc(1, chunk);
        if (!zeros) {
            return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "out of memory");
        }
        int ret = 0;
        for (uint64_t o = old; o < size && ret == 0; o += chunk) {
            uint64_t now = size - o < chunk ? size - o : chunk;
            ret = file_pwrite(n, zeros, now, o, 0);
        }
        free(zeros);
        if (ret < 0) {
            return vd_error_set(errp, VD_ERR_IO, -ret, "%s: Could not write zeros for "
                                "preallocation: %s", n->filename, strerror(-ret));
        }
        return 0;
    }
    return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Unsupported preallocation mode '%s'",
                        prealloc);
}

static int64_t file_allocated_size(vd_node *n)
{
    struct stat st;
    if (fstat(n->fd, &st) < 0) {
        return -errno;
    }
    return (int64_t)st.st_blocks * 512;
}

int64_t vd_node_file_length(vd_node *n)
{
    /* Filters pass the question down; a node with no host file under it (a format node in a
     * protocol's place, null-co) is as long as its disk. */
    while (n->fd < 0) {
        if (n->drv->is_format || !n->file) {
            return (int64_t)n->size;
        }
        n = n->file;
    }
    struct stat st;
    if (fstat(n->fd, &st) < 0) {
        return -errno;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (S_ISBLK(st.st_mode) && ioctl(n->fd, BLKGETSIZE64, &size) < 0) {
        return -errno;
    }
    return (int64_t)size;
}

/* A new descriptor in the other mode takes the old one's number (dup2 swaps them in one
 * step), so a reader on another thread never meets a closed or reused descriptor. */
static int file_reopen_rw(vd_node *n, bool rw, vd_error **errp)
{
    int oflags = O_CLOEXEC | (rw ? O_RDWR : O_RDONLY);
    if (n->open_flags & VD_OPEN_NOCACHE) {
        oflags |= O_DIRECT;
    }
    int fd = open(n->filename, oflags);
    if (fd < 0) {
        int err = errno;
        return vd_error_set(errp, VD_ERR_IO, err, "Could not reopen '%s': %s", n->filename,
                            strerror(err));
    }
    if (dup2(fd, n->fd) < 0) {
        int err = errno;
        close(fd);
        return vd_error_set(errp, VD_ERR_IO, err, "Could not reopen '%s': %s", n->filename,
                            strerror(err));
    }
    close(fd);
    return 0;
}

#define FILE_DRIVER(NAME)                                                                   \
    {                                                                                       \
        .name = NAME, .is_format = false, .runtime_opts = file_runtime_opts,                \
        .open = file_open, .close = file_close, .pread = file_pread, .pwrite = file_pwrite, \
        .pwrite_zeroes = file_pwrite_zeroes, .pdiscard = file_pdiscard,                     \
        .flush = file_flush, .block_status = file_block_status, .truncate = file_truncate,  \
        .allocated_size = file_allocated_size, .reopen_rw = file_reopen_rw,                 \
    }

/* QEMU's three names for a host file: file for regular files, host_device and host_cdrom
 * for devices (vdisk treats a CD-ROM as any device: no media change). */
const vd_driver vd_file_driver = FILE_DRIVER("file");
const vd_driver vd_host_device_driver = FILE_DRIVER("host_device");
const vd_driver vd_host_cdrom_driver = FILE_DRIVER("host_cdrom");

/* ---- creating image files ---------------------------------------------------------------- */

bool vd_file_create_option(const char *key)
{
    return !strcmp(key, "extent_size_hint") || !strcmp(key, "nocow");
}

bool vd_file_is_other_protocol(const char *filename)
{
    return vd_nbd_filename_prefix(filename) || vd_rbd_filename_prefix(filename) ||
           !strncmp(filename, "json:", 5);
}

/* A name the file protocol does not own (nbd://..., json:...): QEMU's simple create, which
 * opens what is already there and zeroes its first sector, so no probe sees old data. */
static int create_on_protocol(const char *filename, vd_error **errp)
{
    vd_node *n = NULL;
    int ret = vd_node_open_file(NULL, filename, VD_OPEN_RDWR, &n, errp);
    if (ret < 0) {
        return ret;
    }
    static const uint8_t zeros[512];
    uint64_t len = n->size < sizeof(zeros) ? n->size : sizeof(zeros);
    ret = len ? vd_node_pwrite(n, zeros, len, 0, 0) : 0;
    if (ret < 0) {
        vd_error_set(errp, VD_ERR_IO, -ret, "%s: Could not write: %s", filename,
                     strerror(-ret));
    }
    int cret = vd_node_close(n);
    return ret < 0 ? ret : cret;
}

int vd_file_create(const char *filename, const vd_opts *opts, vd_error **errp)
{
    if (vd_rbd_filename_prefix(filename)) {
        return vd_rbd_create(filename, opts, errp);
    }
    if (vd_file_is_other_protocol(filename)) {
        return create_on_protocol(filename, errp);
    }
    uint64_t hint = 1u << 20;   /* QEMU's default extent size hint */
    bool nocow = false;
    if (opts) {
        int ret = vd_opts_get_size(opts, "extent_size_hint", hint, &hint, errp);
        if (ret == 0) {
            ret = vd_opts_get_bool(opts, "nocow", false, &nocow, errp);
        }
        if (ret < 0) {
            vd_error_prepend(errp, "%s: ", filename);
            return ret;
        }
    }
    if (hint > UINT32_MAX) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: Extent size hint is too large",
                            filename);
    }
    int fd = open(filename, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int err = errno;
        return vd_error_set(errp, VD_ERR_IO, err, "%s: Could not create '%s': %s", filename,
                            filename, strerror(err));
    }
    /* Both are hints to the file system, set while the file is still empty as they must
     * be; a file system without them (ext4 has neither) just ignores them, as QEMU does. */
    if (nocow) {
        int attr = 0;
        if (ioctl(fd, FS_IOC_GETFLAGS, &attr) == 0) {
            attr |= FS_NOCOW_FL;
            (void)ioctl(fd, FS_IOC_SETFLAGS, &attr);
        }
    }
    if (hint) {
        struct fsxattr fsx;
        if (ioctl(fd, FS_IOC_FSGETXATTR, &fsx) == 0 && fsx.fsx_extsize == 0) {
            fsx.fsx_xflags |= FS_XFLAG_EXTSIZE;
            fsx.fsx_extsize = (uint32_t)hint;
            (void)ioctl(fd, FS_IOC_FSSETXATTR, &fsx);
        }
    }
    close(fd);
    return 0;
}
