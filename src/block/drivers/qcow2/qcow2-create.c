/* qcow2 image creation: option parsing and validation with qemu-img's rules and wording,
 * the backing-file checks of `qemu-img create`, and the two writers: preallocation=off
 * reproduces QEMU 7.2's file byte for byte by replaying its cluster allocator in memory;
 * every other mode uses our contiguous layout (qcow2-layout.c). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block/drivers/qcow2/qcow2-layout.h"

const vd_create_option qcow2_create_options[] = {
    {"backing_file", "str", "File name of a base image", NULL},
    {"backing_fmt", "str", "Image format of the base image", NULL},
    {"cluster_size", "size", "qcow2 cluster size", "65536"},
    {"compat", "str", "Compatibility level (v2 [0.10] or v3 [1.1])", NULL},
    {"compression_type", "str", "Compression method used for image cluster compression",
     "zlib"},
    {"data_file", "str", "File name of an external data file", NULL},
    {"data_file_raw", "bool", "The external data file must stay valid as a raw image", NULL},
    {"encrypt.cipher-alg", "str", "Name of encryption cipher algorithm", NULL},
    {"encrypt.cipher-mode", "str", "Name of encryption cipher mode", NULL},
    {"encrypt.format", "str", "Encrypt the image, format choices: 'aes', 'luks'", NULL},
    {"encrypt.hash-alg", "str", "Name of encryption hash algorithm", NULL},
    {"encrypt.iter-time", "num", "Time to spend in PBKDF in milliseconds", NULL},
    {"encrypt.ivgen-alg", "str", "Name of IV generator algorithm", NULL},
    {"encrypt.ivgen-hash-alg", "str", "Name of IV generator hash algorithm", NULL},
    {"encrypt.key-secret", "str", "ID of secret providing qcow AES key or LUKS passphrase",
     NULL},
    {"encryption", "bool", "Encrypt the image with format 'aes'. (Deprecated in favor of "
     "encrypt.format=aes)", NULL},
    {"extended_l2", "bool", "Extended L2 tables", "off"},
    {"extent_size_hint", "size", "Extent size hint for the image file, 0 to disable", NULL},
    {"lazy_refcounts", "bool", "Postpone refcount updates", "off"},
    {"nocow", "bool", "Turn off copy-on-write (valid only on btrfs)", NULL},
    {"preallocation", "str", "Preallocation mode (allowed values: off, metadata, falloc, full)",
     NULL},
    {"refcount_bits", "num", "Width of a reference count entry in bits", "16"},
    {"size", "size", "Virtual disk size", NULL},
};
const size_t qcow2_nb_create_options =
    sizeof(qcow2_create_options) / sizeof(qcow2_create_options[0]);

/* Everything a create needs, parsed and validated. */
typedef struct create_params {
    uint64_t size;
    int version;
    uint32_t cluster_bits;
    uint32_t refcount_order;
    bool lazy_refcounts;
    bool extl2;
    const char *prealloc;
    const char *backing_file;
    const char *backing_fmt;
    uint8_t compression_type;
} create_params;

static bool is_known_option(const char *key)
{
    for (size_t i = 0; i < qcow2_nb_create_options; i++) {
        if (!strcmp(key, qcow2_create_options[i].name)) {
            return true;
        }
    }
    /* Known to qemu-img but refused below with a clearer message than "Invalid". */
    return !strcmp(key, "encryption") || !strncmp(key, "encrypt.", 8) ||
           !strcmp(key, "data_file") || !strcmp(key, "data_file_raw") ||
           vd_file_create_option(key);
}

static int parse_number(const vd_opts *opts, const char *key, uint64_t def, uint64_t *out,
                        const char *what, vd_error **errp)
{
    const char *v = vd_opts_get(opts, key);
    char *end = NULL;

    *out = def;
    if (!v) {
        return 0;
    }
    errno = 0;
    *out = strtoull(v, &end, 0);
    /* As QEMU's number options: a leading '-' wraps ("-1" is 2^64 - 1), which the
     * range checks then refuse. */
    if (end == v || *end != '\0' || errno != 0) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: Parameter '%s' expects a number",
                            what, key);
    }
    return 0;
}

/* Phase one of qemu-img's checks: option names and value syntax. */
static int parse_types(const vd_opts *opts, const char *what, create_params *p,
                       uint64_t *cs, uint64_t *bits, vd_error **errp)
{
    int ret;

    for (size_t i = 0; i < vd_opts_count(opts); i++) {
        if (!is_known_option(vd_opts_key(opts, i))) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: Invalid parameter '%s'", what,
                                vd_opts_key(opts, i));
        }
    }
    if ((ret = vd_opts_get_size(opts, "cluster_size", 65536, cs, errp)) < 0 ||
        (ret = vd_opts_get_bool(opts, "extended_l2", false, &p->extl2, errp)) < 0 ||
        (ret = vd_opts_get_bool(opts, "lazy_refcounts", false, &p->lazy_refcounts, errp)) < 0 ||
        (ret = vd_opts_get_size(opts, "size", p->size, &p->size, errp)) < 0) {
        vd_error_prepend(errp, "%s", what);
        return ret;
    }
    p->backing_file = vd_opts_get(opts, "backing_file");
    p->backing_fmt = vd_opts_get(opts, "backing_fmt");
    return parse_number(opts, "refcount_bits", 16, bits, what, errp);
}

/* Phase three (after the backing checks): values, as QEMU's qcow2_co_create checks them. */
static int validate(const vd_opts *opts, const char *what, create_params *p, uint64_t cs,
                    uint64_t bits, vd_error **errp)
{
    bool encryption = false;
    int ret = vd_opts_get_bool(opts, "encryption", false, &encryption, errp);
    if (ret < 0) {
        vd_error_prepend(errp, "%s", what);
        return ret;
    }
    if (encryption || vd_opts_get(opts, "encrypt.format")) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP,
                            "%s: encrypted images are not supported", what);
    }
    for (size_t i = 0; i < vd_opts_count(opts); i++) {
        if (!strncmp(vd_opts_key(opts, i), "encrypt.", 8)) {
            return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP,
                                "%s: encrypted images are not supported", what);
        }
    }
    if (vd_opts_get(opts, "data_file") || vd_opts_get(opts, "data_file_raw")) {
        return vd_error_set(errp, VD_ERR_UNSUPPORTED, ENOTSUP,
                            "%s: images with an external data file are not supported", what);
    }
    p->cluster_bits = (uint32_t)(cs ? __builtin_ctzll(cs) : 0);
    p->refcount_order = (uint32_t)(bits ? __builtin_ctzll(bits) : 0);

    /* Enumerations are checked by qemu-img when it converts to its QMP names. */
    p->prealloc = vd_opts_get(opts, "preallocation");
    if (!p->prealloc) {
        p->prealloc = "off";
    }
    if (strcmp(p->prealloc, "off") && strcmp(p->prealloc, "metadata") &&
        strcmp(p->prealloc, "falloc") && strcmp(p->prealloc, "full")) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL,
                            "%s: Parameter 'preallocation' does not accept value '%s'", what,
                            p->prealloc);
    }
    const char *compat = vd_opts_get(opts, "compat");
    p->version = 3;
    if (compat && (!strcmp(compat, "0.10") || !strcmp(compat, "v2"))) {
        p->version = 2;
    } else if (compat && strcmp(compat, "1.1") && strcmp(compat, "v3")) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL,
                            "%s: Parameter 'version' does not accept value '%s'", what, compat);
    }
    const char *ct = vd_opts_get(opts, "compression_type");
    p->compression_type = QCOW2_COMPRESSION_ZLIB;
    if (ct && !strcmp(ct, "zstd")) {
        p->compression_type = QCOW2_COMPRESSION_ZSTD;
    } else if (ct && strcmp(ct, "zlib")) {
        /* qemu-img's message, plus the known types (from the codec registry). */
        int ret = vd_compression_check(ct, VD_COMPRESSION_LEVEL_DEFAULT, errp);
        vd_error_prepend(errp, "%s", what);
        return ret;
    }
    if (p->backing_fmt && !vd_driver_find(p->backing_fmt)) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL,
                            "%s: Parameter 'backing-fmt' does not accept value '%s'", what,
                            p->backing_fmt);
    }

    /* QEMU's qcow2_co_create's own checks. */
    if (p->extl2 && p->version < 3) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: Extended L2 entries are only "
                            "supported with compatibility level 1.1 and above (use version=v3 "
                            "or greater)", what);
    }
    if (cs < 512 || cs > (2u << 20) || (cs & (cs - 1)) != 0) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: Cluster size must be a power of "
                            "two between 512 and 2048k", what);
    }
    if (p->extl2 && cs < 16384) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: Extended L2 entries are only "
                            "supported with cluster sizes of at least 16384 bytes", what);
    }
    if (p->backing_file && strcmp(p->prealloc, "off") && !p->extl2) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: Backing file and preallocation "
                            "can only be used at the same time if extended_l2 is on", what);
    }
    if (p->backing_fmt && !p->backing_file) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: Backing format cannot be used "
                            "without backing file", what);
    }
    if (p->lazy_refcounts && p->version < 3) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: Lazy refcounts only supported "
                            "with compatibility level 1.1 and above (use version=v3 or "
                            "greater)", what);
    }
    if (bits == 0 || bits > 64 || (bits & (bits - 1)) != 0) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: Refcount width must be a power "
                            "of two and may not exceed 64 bits", what);
    }
    if (p->version < 3 && bits != 16) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: Different refcount widths than "
                            "16 bits require compatibility level 1.1 or above (use version=v3 "
                            "or greater)", what);
    }
    if (p->version < 3 && p->compression_type != QCOW2_COMPRESSION_ZLIB) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: Non-zlib compression type is "
                            "only supported with compatibility level 1.1 and above (use "
                            "version=v3 or greater)", what);
    }
    return 0;
}

/* qemu-img create's backing checks: the backing file must open (unless unsafe), its
 * format must be given, and it supplies the size when none was given. */
static int check_backing(vd_engine *e, const char *filename, create_params *p, unsigned flags,
                         vd_error **errp)
{
    if (!p->backing_file) {
        return 0;
    }
    if (!strcmp(filename, p->backing_file)) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: Error: Trying to create an "
                            "image with the same filename as the backing file", filename);
    }
    if (p->backing_file[0] == '\0') {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: Expected backing file name, got "
                            "empty string", filename);
    }
    if (strlen(p->backing_file) > QCOW2_MAX_BACKING_NAME) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: Backing file name too long "
                            "(%zu bytes, at most %d)", filename, strlen(p->backing_file),
                            QCOW2_MAX_BACKING_NAME);
    }
    if (flags & VD_CREATE_UNSAFE) {
        if (!p->backing_fmt) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: Backing file specified "
                                "without backing format", filename);
        }
        return 0;
    }

    char *path = vd_backing_path(filename, p->backing_file);
    vd_open_opts oo = {.format = p->backing_fmt, .flags = 0};
    vd_disk *bd = NULL;
    vd_error *err = NULL;
    int ret = vd_open(e, path ? path : p->backing_file, &oo, &bd, &err);
    free(path);
    if (ret < 0) {
        ret = vd_error_set(errp, err ? err->cls : VD_ERR_IO, -ret,
                           "%s: %s\nCould not open backing image.", filename,
                           err ? vd_error_msg(err) : strerror(-ret));
        vd_error_free(err);
        return ret;
    }
    if (!p->backing_fmt) {
        ret = vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: Backing file specified without "
                           "backing format\nDetected format of %s.", filename,
                           vd_disk_format(bd));
        vd_close(bd);
        return ret;
    }
    if (p->size == UINT64_MAX) {
        p->size = vd_disk_size(bd);
    }
    vd_close(bd);
    return 0;
}

/* ---- preallocation=off: QEMU's allocator replayed in memory --------------------------
 * qemu-img creates a 3-cluster image (header, reftable, one refblock), then grows the L1
 * through its generic allocator, which may add refblocks (self-describing or not) and even
 * grow the reftable, restarting the search each time. To match its bytes we run the same
 * algorithm on an in-memory copy of the file and write out what it wrote. */

typedef struct sim {
    uint32_t cluster_bits;
    uint64_t cs;
    uint32_t order;
    uint64_t per_block;      /* refcount entries per refblock */
    uint64_t refmax;
    uint8_t *img;            /* the file as QEMU would have written it */
    uint64_t img_cap;
    uint64_t file_len;
    uint8_t *written;        /* one byte per cluster: did QEMU write it */
    uint64_t written_cap;
    uint64_t *rt;            /* reftable, in memory */
    uint64_t rt_size;        /* entries */
    uint64_t rt_offset;
    uint64_t free_idx;       /* QEMU's free_cluster_index */
} sim;

/* The replay only ever needs the first tens of MiB (L1 <= 32 MiB); refuse anything odd. */
#define SIM_MAX_FILE (256ull << 20)

static int sim_reserve(sim *s, uint64_t end)
{
    if (end > SIM_MAX_FILE) {
        return -EFBIG;
    }
    if (end > s->img_cap) {
        uint64_t cap = s->img_cap ? s->img_cap : (1u << 20);
        while (cap < end) {
            cap *= 2;
        }
        uint8_t *n = realloc(s->img, cap);
        if (!n) {
            return -ENOMEM;
        }
        memset(n + s->img_cap, 0, cap - s->img_cap);
        s->img = n;
        s->img_cap = cap;
    }
    uint64_t clusters = (end + s->cs - 1) / s->cs;
    if (clusters > s->written_cap) {
        uint64_t cap = s->written_cap ? s->written_cap : 1024;
        while (cap < clusters) {
            cap *= 2;
        }
        uint8_t *n = realloc(s->written, cap);
        if (!n) {
            return -ENOMEM;
        }
        memset(n + s->written_cap, 0, cap - s->written_cap);
        s->written = n;
        s->written_cap = cap;
    }
    return 0;
}

/* Records a write of [off, off+len) (the bytes are already in img or are zeros). */
static int sim_wrote(sim *s, uint64_t off, uint64_t len)
{
    int ret = sim_reserve(s, off + len);
    if (ret < 0) {
        return ret;
    }
    for (uint64_t c = off / s->cs; c < (off + len + s->cs - 1) / s->cs; c++) {
        s->written[c] = 1;
    }
    if (off + len > s->file_len) {
        s->file_len = off + len;
    }
    return 0;
}

static uint64_t sim_get_refcount(sim *s, uint64_t ci)
{
    uint64_t ti = ci / s->per_block;
    if (ti >= s->rt_size || s->rt[ti] == 0 || s->rt[ti] + s->cs > s->img_cap) {
        return 0;
    }
    return qcow2_refcount_get(s->img + s->rt[ti], s->order, ci % s->per_block);
}

/* alloc_clusters_noref: first run of n clusters with refcount 0 from free_idx. */
static uint64_t sim_alloc_noref(sim *s, uint64_t n)
{
retry:
    for (uint64_t i = 0; i < n; i++) {
        uint64_t idx = s->free_idx++;
        if (sim_get_refcount(s, idx) != 0) {
            goto retry;
        }
    }
    return s->free_idx - n;
}

static int sim_update(sim *s, uint64_t start, uint64_t n, bool decrease);

static int sim_zero_cluster(sim *s, uint64_t ci)
{
    int ret = sim_wrote(s, ci * s->cs, s->cs);
    if (ret == 0) {
        memset(s->img + ci * s->cs, 0, s->cs);
    }
    return ret;
}

/* qcow2_refcount_area with no additional clusters: a new, 1.5x reftable plus the
 * refblocks it needs, placed at start_offset; the old table is freed. */
static int sim_refcount_area(sim *s, uint64_t start_offset, uint64_t new_index,
                             uint64_t new_offset)
{
    uint64_t total;
    int ret;

    qcow2_refcount_fixed_point(start_offset / s->cs, s->cluster_bits, s->order, true, &total,
                               NULL);
    if (total > QCOW2_MAX_REFTABLE_BYTES) {
        return -EFBIG;
    }
    uint64_t area_index = (start_offset / s->cs) / s->per_block;
    uint64_t per_cluster = s->cs / 8;
    uint64_t table_size = total + (total + 1) / 2;
    table_size = (table_size + per_cluster - 1) / per_cluster * per_cluster;
    uint64_t table_clusters = table_size / per_cluster;
    if (table_size > QCOW2_MAX_REFTABLE_BYTES || new_index >= total) {
        return -EFBIG;
    }
    uint64_t *table = calloc(table_size, sizeof(*table));
    if (!table) {
        return -ENOMEM;
    }
    memcpy(table, s->rt, (s->rt_size < table_size ? s->rt_size : table_size) * 8);
    if (new_offset) {
        table[new_index] = new_offset;
    }
    uint64_t additional = 0;
    for (uint64_t i = area_index; i < total; i++) {
        additional += table[i] == 0;
    }
    uint64_t table_offset = start_offset + additional * s->cs;
    uint64_t end_offset = table_offset + table_clusters * s->cs;
    uint64_t block_offset = start_offset;
    ret = sim_reserve(s, end_offset);
    for (uint64_t i = area_index; i < total && ret == 0; i++) {
        if (!table[i]) {
            ret = sim_zero_cluster(s, block_offset / s->cs);
            table[i] = block_offset;
            block_offset += s->cs;
        }
        uint64_t first = i * s->per_block * s->cs;
        if (ret == 0 && first < end_offset) {
            uint64_t j = first < start_offset ? (start_offset - first) / s->cs : 0;
            uint64_t end = (end_offset - first) / s->cs;
            end = end < s->per_block ? end : s->per_block;
            for (; j < end; j++) {
                qcow2_refcount_set(s->img + table[i], s->order, j, 1);
            }
            ret = sim_wrote(s, table[i], s->cs);
        }
    }
    if (ret == 0) {
        for (uint64_t i = 0; i < table_size; i++) {
            vd_put_be64(s->img + table_offset + i * 8, table[i]);
        }
        ret = sim_wrote(s, table_offset, table_size * 8);
    }
    if (ret < 0) {
        free(table);
        return ret;
    }
    uint64_t old_offset = s->rt_offset;
    uint64_t old_clusters = (s->rt_size * 8 + s->cs - 1) / s->cs;
    free(s->rt);
    s->rt = table;
    s->rt_size = table_size;
    s->rt_offset = table_offset;
    /* QEMU ignores a failure to free the old table; so do we. */
    (void)sim_update(s, old_offset / s->cs, old_clusters, true);
    return 0;
}

/* alloc_refcount_block: returns the refblock offset for cluster ci in *block, or -EAGAIN
 * after allocating one (QEMU then restarts the caller's search). */
static int sim_alloc_refblock(sim *s, uint64_t ci, uint64_t *block)
{
    uint64_t ti = ci / s->per_block;
    int ret;

    if (ti < s->rt_size && s->rt[ti]) {
        *block = s->rt[ti];
        return 0;
    }
    uint64_t nb = sim_alloc_noref(s, 1);
    if (nb == 0) {
        return -EIO;
    }
    if (nb / s->per_block == ti) {
        /* The new block describes itself. */
        ret = sim_zero_cluster(s, nb);
        if (ret < 0) {
            return ret;
        }
        qcow2_refcount_set(s->img + nb * s->cs, s->order, nb % s->per_block, 1);
    } else {
        ret = sim_update(s, nb, 1, false);
        if (ret < 0) {
            return ret;
        }
        ret = sim_zero_cluster(s, nb);
        if (ret < 0) {
            return ret;
        }
    }
    if (ti < s->rt_size) {
        s->rt[ti] = nb * s->cs;
        vd_put_be64(s->img + s->rt_offset + ti * 8, nb * s->cs);
        ret = sim_wrote(s, s->rt_offset + ti * 8, 8);
        return ret < 0 ? ret : -EAGAIN;
    }
    uint64_t need = ci + 1 > nb + 1 ? ci + 1 : nb + 1;
    uint64_t blocks_used = (need + s->per_block - 1) / s->per_block;
    ret = sim_refcount_area(s, blocks_used * s->per_block * s->cs, ti, nb * s->cs);
    return ret < 0 ? ret : -EAGAIN;
}

/* update_refcount by +-1 over clusters [start, start+n); undone on failure. */
static int sim_update(sim *s, uint64_t start, uint64_t n, bool decrease)
{
    uint64_t old_ti = UINT64_MAX, block = 0, ci;
    int ret = 0;

    for (ci = start; ci < start + n; ci++) {
        uint64_t ti = ci / s->per_block;
        if (ti != old_ti) {
            ret = sim_alloc_refblock(s, ci, &block);
            if (ret == -EAGAIN && s->free_idx > start) {
                s->free_idx = start;
            }
            if (ret < 0) {
                break;
            }
        }
        old_ti = ti;
        uint8_t *b = s->img + block;
        uint64_t idx = ci % s->per_block;
        uint64_t rc = qcow2_refcount_get(b, s->order, idx);
        if (decrease ? rc == 0 : rc == s->refmax) {
            ret = -EINVAL;
            break;
        }
        rc = decrease ? rc - 1 : rc + 1;
        if (rc == 0 && ci < s->free_idx) {
            s->free_idx = ci;
        }
        qcow2_refcount_set(b, s->order, idx, rc);
        ret = sim_wrote(s, block, s->cs);
        if (ret < 0) {
            break;
        }
    }
    if (ret < 0) {
        (void)sim_update(s, start, ci - start, !decrease);
    }
    return ret;
}

/* qcow2_alloc_clusters: search, count, and retry while refblocks keep appearing. */
static int sim_alloc(sim *s, uint64_t n, uint64_t *out)
{
    int ret;
    do {
        *out = sim_alloc_noref(s, n);
        ret = sim_update(s, *out, n, false);
    } while (ret == -EAGAIN);
    return ret;
}

static int write_sim(vd_node *file, sim *s, qcow2_header *h, vd_error **errp)
{
    uint8_t *hdr = calloc(1, s->cs);
    int ret;

    if (!hdr) {
        return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "%s: out of memory", file->filename);
    }
    h->refcount_table_offset = s->rt_offset;
    h->refcount_table_clusters = (uint32_t)(s->rt_size * 8 / s->cs);
    ret = qcow2_header_encode(h, hdr, s->cs);
    if (ret < 0) {
        free(hdr);
        return vd_error_set(errp, VD_ERR_INVALID, -ret, "%s: the qcow2 header does not fit "
                            "in one cluster", file->filename);
    }
    memcpy(s->img, hdr, s->cs);
    free(hdr);

    /* Written clusters in runs; holes stay holes, as in QEMU's file. */
    uint64_t nclusters = (s->file_len + s->cs - 1) / s->cs;
    for (uint64_t c = 0; c < nclusters;) {
        if (!s->written[c]) {
            c++;
            continue;
        }
        uint64_t e = c;
        while (e < nclusters && s->written[e]) {
            e++;
        }
        uint64_t end = e * s->cs < s->file_len ? e * s->cs : s->file_len;
        ret = vd_node_pwrite(file, s->img + c * s->cs, end - c * s->cs, c * s->cs, 0);
        if (ret < 0) {
            return vd_error_set(errp, VD_ERR_IO, -ret, "%s: Could not write qcow2 metadata: "
                                "%s", file->filename, strerror(-ret));
        }
        c = e;
    }
    ret = vd_node_truncate(file, s->file_len, false, "off", errp);
    if (ret < 0) {
        return ret;
    }
    ret = vd_node_flush(file);
    if (ret < 0) {
        return vd_error_set(errp, VD_ERR_IO, -ret, "%s: Could not flush: %s", file->filename,
                            strerror(-ret));
    }
    return 0;
}

static int create_off(vd_node *file, const create_params *p, qcow2_header *h,
                      vd_error **errp)
{
    sim s;
    int ret;

    memset(&s, 0, sizeof(s));
    s.cluster_bits = p->cluster_bits;
    s.cs = 1ull << p->cluster_bits;
    s.order = p->refcount_order;
    s.per_block = s.cs * 8 >> s.order;
    s.refmax = s.order == 6 ? UINT64_MAX : (1ull << (1u << s.order)) - 1;

    /* What QEMU's qcow2_co_create writes first: header, reftable (one cluster, entry 0 pointing
     * at cluster 2) and an empty refblock, then it allocates clusters 0..2. */
    s.rt_size = s.cs / 8;
    s.rt = calloc(s.rt_size, sizeof(*s.rt));
    ret = s.rt ? sim_wrote(&s, 0, 3 * s.cs) : -ENOMEM;
    uint64_t at = 0;
    if (ret == 0) {
        s.rt_offset = s.cs;
        s.rt[0] = 2 * s.cs;
        vd_put_be64(s.img + s.cs, 2 * s.cs);
        ret = sim_alloc(&s, 3, &at);
    }
    /* Then the resize: the L1 grows to its final size in freshly allocated clusters, of
     * which only l1_size * 8 bytes are written. */
    uint64_t l1_size = h->l1_size;
    if (ret == 0 && l1_size > 0) {
        ret = sim_alloc(&s, (l1_size * 8 + s.cs - 1) / s.cs, &at);
        if (ret == 0) {
            h->l1_table_offset = at * s.cs;
            ret = sim_wrote(&s, at * s.cs, l1_size * 8);
        }
    }
    if (ret < 0) {
        ret = vd_error_set(errp, ret == -EFBIG ? VD_ERR_INVALID : VD_ERR_IO, -ret,
                           "%s: Could not allocate the qcow2 metadata: %s", file->filename,
                           strerror(-ret));
    } else {
        ret = write_sim(file, &s, h, errp);
    }
    free(s.img);
    free(s.written);
    free(s.rt);
    return ret;
}

int qcow2_create(vd_engine *e, const char *filename, uint64_t size, const vd_opts *opts,
                 unsigned flags, vd_error **errp)
{
    create_params p = {.size = size};
    qcow2_header h;
    vd_node *file = NULL;
    int ret;

    uint64_t cs = 65536, bits = 16;
    ret = parse_types(opts, filename, &p, &cs, &bits, errp);
    if (ret < 0) {
        return ret;
    }
    ret = check_backing(e, filename, &p, flags, errp);
    if (ret < 0) {
        return ret;
    }
    if (p.size == UINT64_MAX) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "%s: Image creation needs a size "
                            "parameter", filename);
    }
    ret = validate(opts, filename, &p, cs, bits, errp);
    if (ret < 0) {
        return ret;
    }
    if (p.size > INT64_MAX) {
        return vd_error_set(errp, VD_ERR_INVALID, EFBIG, "%s: Image size must be less than 8 "
                            "EiB!", filename);
    }
    /* qemu-img silently rounds the size up to whole sectors. */
    p.size = (p.size + 511) & ~511ull;

    qcow2_layout l;
    ret = qcow2_layout_compute(p.size, p.cluster_bits, p.refcount_order, p.extl2, &l);
    if (ret == -EFBIG) {
        return vd_error_set(errp, VD_ERR_INVALID, EFBIG, "%s: The image size is too large for "
                            "file format 'qcow2' (try using a larger cluster size)", filename);
    }
    if (ret < 0 && strcmp(p.prealloc, "off")) {
        return vd_error_set(errp, VD_ERR_INVALID, EFBIG, "%s: Could not resize image: the "
                            "refcount table for preallocating %" PRIu64 " bytes would exceed "
                            "8 MiB (try using a larger cluster size or refcount_bits)",
                            filename, p.size);
    }

    memset(&h, 0, sizeof(h));
    h.version = (uint32_t)p.version;
    h.cluster_bits = p.cluster_bits;
    h.size = p.size;
    h.l1_size = (uint32_t)l.l1_size;
    h.refcount_order = p.refcount_order;
    h.compression_type = p.compression_type;
    if (p.compression_type != QCOW2_COMPRESSION_ZLIB) {
        h.incompatible_features |= QCOW2_INCOMPAT_COMPRESSION;
    }
    if (p.extl2) {
        h.incompatible_features |= QCOW2_INCOMPAT_EXTL2;
    }
    if (p.lazy_refcounts) {
        h.compatible_features |= QCOW2_COMPAT_LAZY_REFCOUNTS;
    }
    /* The header only borrows these strings; it is not cleared with qcow2_header_clear. */
    h.backing_file = (char *)p.backing_file;
    h.backing_format = (char *)p.backing_fmt;

    /* A long backing name may not fit in cluster 0 (512-byte clusters); QEMU finds out
     * when it assigns the backing file, with this message. */
    uint8_t *probe = malloc(l.cluster_size);
    if (!probe) {
        return vd_error_set(errp, VD_ERR_NOMEM, ENOMEM, "%s: out of memory", filename);
    }
    ret = qcow2_header_encode(&h, probe, l.cluster_size);
    free(probe);
    if (ret < 0) {
        return vd_error_set(errp, VD_ERR_INVALID, ENOSPC, "%s: Could not assign backing file "
                            "'%s' with format '%s': %s", filename,
                            p.backing_file ? p.backing_file : "",
                            p.backing_fmt ? p.backing_fmt : "", strerror(ENOSPC));
    }

    ret = vd_file_create(filename, opts, errp);
    if (ret < 0) {
        return ret;
    }
    ret = vd_node_open_file(e, filename, VD_OPEN_RDWR, &file, errp);
    if (ret < 0) {
        if (!vd_file_is_other_protocol(filename)) {
            unlink(filename);
        }
        return ret;
    }
    if (!strcmp(p.prealloc, "off")) {
        ret = create_off(file, &p, &h, errp);
    } else {
        ret = qcow2_layout_write(file, &l, &h, p.prealloc, errp);
    }
    int cret = vd_node_close(file);
    if (ret == 0 && cret < 0) {
        ret = vd_error_set(errp, VD_ERR_IO, -cret, "%s: Could not close: %s", filename,
                           strerror(-cret));
    }
    if (ret < 0) {
        /* As qemu-img does, a failed create leaves no file behind. */
        if (!vd_file_is_other_protocol(filename)) {
            unlink(filename);
        }
    }
    return ret;
}
