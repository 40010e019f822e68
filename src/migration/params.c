/* Migration parameters and capabilities (params.h). The type errors are QAPI's (what a
 * QMP client sees from QEMU before its checks run), the range errors QEMU 7.2's
 * migrate_params_check's, in its order. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "migration/params.h"

void vd_mig_params_init(vd_mig_params *p)
{
    memset(p, 0, sizeof(*p));
    p->compress_type = VD_MIG_CODEC_NONE;
    p->zlib_level = 1;
    p->zstd_level = 1;
    p->compress_threads = 8;
    p->decompress_threads = 2;
    p->compress_wait_thread = true;
    p->multifd_channels = 2;
    p->max_bandwidth = 128u << 20;
    p->downtime_limit = 300;
    p->throttle_trigger_threshold = 50;
    p->cpu_throttle_initial = 20;
    p->cpu_throttle_increment = 10;
    p->max_cpu_throttle = 99;
}

int vd_mig_params_level(const vd_mig_params *p)
{
    return p->compress_type == VD_MIG_CODEC_ZSTD ? p->zstd_level : p->zlib_level;
}

static const char *const param_names[] = {
    "compress-type", "compress-level", "compress-threads", "decompress-threads",
    "compress-wait-thread", "multifd-channels", "multifd-compression", "multifd-zlib-level",
    "multifd-zstd-level", "max-bandwidth", "downtime-limit", "tls-creds", "tls-hostname",
    "throttle-trigger-threshold", "cpu-throttle-initial", "cpu-throttle-increment",
    "max-cpu-throttle", NULL,
};

static int type_error(const char *key, const char *want, vd_error **errp)
{
    return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Invalid parameter type for '%s', "
                        "expected: %s", key, want);
}

/* An integer member as QAPI reads it: max is the type's largest value (uint8: 255). */
static int get_uint(const vd_tree *args, const char *key, uint64_t max, const char *type,
                    bool *has, uint64_t *out, vd_error **errp)
{
    const vd_tree *v = vd_tree_get(args, key);
    *has = v != NULL;
    if (!v) {
        return 0;
    }
    if (vd_tree_type_of(v) != VD_TREE_INT) {
        return type_error(key, "integer", errp);
    }
    int64_t i = vd_tree_int(v);
    if (i < 0 || (uint64_t)i > max) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter '%s' expects %s", key,
                            type);
    }
    *out = (uint64_t)i;
    return 0;
}

/* A string parameter; null (QEMU's way to reset it) is "". */
static int get_str(const vd_tree *args, const char *key, char *out, size_t cap,
                   vd_error **errp)
{
    const vd_tree *t = vd_tree_get(args, key);
    if (!t) {
        return 0;
    }
    const char *s = vd_tree_type_of(t) == VD_TREE_NULL ? "" : vd_tree_string(t);
    if (!s) {
        return type_error(key, "string", errp);
    }
    if (strlen(s) >= cap) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter '%s' is too long", key);
    }
    snprintf(out, cap, "%s", s);
    return 0;
}

static int get_codec(const vd_tree *args, const char *key, bool *has, vd_mig_codec *out,
                     vd_error **errp)
{
    const vd_tree *v = vd_tree_get(args, key);
    *has = v != NULL;
    if (!v) {
        return 0;
    }
    const char *s = vd_tree_string(v);
    if (!s) {
        return type_error(key, "string", errp);
    }
    for (vd_mig_codec c = VD_MIG_CODEC_NONE; c <= VD_MIG_CODEC_ZSTD; c++) {
        if (!strcmp(s, vd_mig_codec_name(c))) {
            *out = c;
            return 0;
        }
    }
    return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter '%s' does not accept value "
                        "'%s'", key, s);
}

/* QEMU 7.2's checks (migrate_params_check), then the seed's per-type level. */
static int check(const vd_mig_params *p, bool level_given, uint64_t level, vd_error **errp)
{
    if (p->compress_threads < 1) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'compress_threads' "
                            "expects a value between 1 and 255");
    }
    if (p->decompress_threads < 1) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'decompress_threads' "
                            "expects a value between 1 and 255");
    }
    if (p->throttle_trigger_threshold < 1 || p->throttle_trigger_threshold > 100) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter "
                            "'throttle_trigger_threshold' expects an integer in the range of "
                            "1 to 100");
    }
    if (p->cpu_throttle_initial < 1 || p->cpu_throttle_initial > 99) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'cpu_throttle_initial' "
                            "expects an integer in the range of 1 to 99");
    }
    if (p->cpu_throttle_increment < 1 || p->cpu_throttle_increment > 99) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter "
                            "'cpu_throttle_increment' expects an integer in the range of 1 "
                            "to 99");
    }
    if (p->downtime_limit > VD_MIG_MAX_DOWNTIME_MS) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'downtime_limit' "
                            "expects an integer in the range of 0 to (2000 * 1000) ms");
    }
    if (p->multifd_channels < 1) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'multifd_channels' "
                            "expects a value between 1 and 255");
    }
    if (p->max_cpu_throttle < p->cpu_throttle_initial || p->max_cpu_throttle > 99) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'max_cpu_throttle' "
                            "expects an integer in the range of cpu_throttle_initial to 99");
    }
    if (p->zlib_level > 9) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'multifd_zlib_level' "
                            "expects a value between 0 and 9");
    }
    if (p->zstd_level > 20) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'multifd_zstd_level' "
                            "expects a value between 0 and 20");
    }
    if (level_given) {
        unsigned max = p->compress_type == VD_MIG_CODEC_ZSTD ? 20 : 9;
        if (level > max) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'compress_level' "
                                "expects values from 0 to %u for compress_type %s", max,
                                vd_mig_codec_name(p->compress_type));
        }
    }
    return 0;
}

int vd_mig_params_set(vd_mig_params *p, const vd_tree *args, vd_error **errp)
{
    if (vd_tree_type_of(args) != VD_TREE_OBJECT) {
        return type_error("arguments", "object", errp);
    }
    for (size_t i = 0; i < vd_tree_size(args); i++) {
        const char *k = vd_tree_key(args, i);
        bool known = false;
        for (size_t j = 0; param_names[j] && !known; j++) {
            known = !strcmp(k, param_names[j]);
        }
        if (!known) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter '%s' is unexpected",
                                k);
        }
    }
    vd_mig_params n = *p;
    bool has, has_type, has_mtype, has_level;
    uint64_t v = 0, level = 0;
    vd_mig_codec type = n.compress_type, mtype = n.compress_type;
    int r;
    if ((r = get_codec(args, "compress-type", &has_type, &type, errp)) < 0 ||
        (r = get_codec(args, "multifd-compression", &has_mtype, &mtype, errp)) < 0) {
        return r;
    }
    if (has_type && has_mtype && type != mtype) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameters 'compress-type' and "
                            "'multifd-compression' name one setting and differ");
    }
    n.compress_type = has_type ? type : mtype;
    const struct {
        const char *key;
        uint64_t max;
        const char *type;
        uint8_t *u8;
        uint64_t *u64;
    } ints[] = {
        {"compress-threads", 255, "uint8_t", &n.compress_threads, NULL},
        {"decompress-threads", 255, "uint8_t", &n.decompress_threads, NULL},
        {"multifd-channels", 255, "uint8_t", &n.multifd_channels, NULL},
        {"multifd-zlib-level", 255, "uint8_t", &n.zlib_level, NULL},
        {"multifd-zstd-level", 255, "uint8_t", &n.zstd_level, NULL},
        {"throttle-trigger-threshold", 255, "uint8_t", &n.throttle_trigger_threshold, NULL},
        {"cpu-throttle-initial", 255, "uint8_t", &n.cpu_throttle_initial, NULL},
        {"cpu-throttle-increment", 255, "uint8_t", &n.cpu_throttle_increment, NULL},
        {"max-cpu-throttle", 255, "uint8_t", &n.max_cpu_throttle, NULL},
        {"max-bandwidth", INT64_MAX, "uint64", NULL, &n.max_bandwidth},
        {"downtime-limit", INT64_MAX, "uint64", NULL, &n.downtime_limit},
    };
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
        if ((r = get_uint(args, ints[i].key, ints[i].max, ints[i].type, &has, &v, errp)) < 0) {
            return r;
        }
        if (has && ints[i].u8) {
            *ints[i].u8 = (uint8_t)v;
        } else if (has) {
            *ints[i].u64 = v;
        }
    }
    if ((r = get_uint(args, "compress-level", 255, "uint8_t", &has_level, &level, errp)) < 0) {
        return r;
    }
    const vd_tree *w = vd_tree_get(args, "compress-wait-thread");
    if (w) {
        if (vd_tree_type_of(w) != VD_TREE_BOOL) {
            return type_error("compress-wait-thread", "boolean", errp);
        }
        n.compress_wait_thread = vd_tree_bool(w);
    }
    if ((r = get_str(args, "tls-creds", n.tls_creds, sizeof(n.tls_creds), errp)) < 0 ||
        (r = get_str(args, "tls-hostname", n.tls_hostname, sizeof(n.tls_hostname),
                     errp)) < 0) {
        return r;
    }
    if ((r = check(&n, has_level, level, errp)) < 0) {
        return r;
    }
    /* Without a compress-type the level is the legacy compress capability's: zlib's. */
    if (has_level && n.compress_type == VD_MIG_CODEC_ZSTD) {
        n.zstd_level = (uint8_t)level;
    } else if (has_level) {
        n.zlib_level = (uint8_t)level;
    }
    *p = n;
    return 0;
}

vd_tree *vd_mig_params_query(const vd_mig_params *p)
{
    /* QEMU 7.2's order, the seed's compress-type first. */
    vd_tree *t = vd_tree_new(VD_TREE_OBJECT);
    vd_tree_put(t, "compress-type", vd_tree_new_string(vd_mig_codec_name(p->compress_type)));
    vd_tree_put(t, "compress-level", vd_tree_new_int(vd_mig_params_level(p)));
    vd_tree_put(t, "compress-threads", vd_tree_new_int(p->compress_threads));
    vd_tree_put(t, "compress-wait-thread", vd_tree_new_bool(p->compress_wait_thread));
    vd_tree_put(t, "decompress-threads", vd_tree_new_int(p->decompress_threads));
    vd_tree_put(t, "throttle-trigger-threshold",
                vd_tree_new_int(p->throttle_trigger_threshold));
    vd_tree_put(t, "cpu-throttle-initial", vd_tree_new_int(p->cpu_throttle_initial));
    vd_tree_put(t, "cpu-throttle-increment", vd_tree_new_int(p->cpu_throttle_increment));
    vd_tree_put(t, "tls-creds", vd_tree_new_string(p->tls_creds));
    vd_tree_put(t, "tls-hostname", vd_tree_new_string(p->tls_hostname));
    vd_tree_put(t, "max-bandwidth", vd_tree_new_int((int64_t)p->max_bandwidth));
    vd_tree_put(t, "downtime-limit", vd_tree_new_int((int64_t)p->downtime_limit));
    vd_tree_put(t, "multifd-channels", vd_tree_new_int(p->multifd_channels));
    vd_tree_put(t, "max-cpu-throttle", vd_tree_new_int(p->max_cpu_throttle));
    vd_tree_put(t, "multifd-compression",
                vd_tree_new_string(vd_mig_codec_name(p->compress_type)));
    vd_tree_put(t, "multifd-zlib-level", vd_tree_new_int(p->zlib_level));
    vd_tree_put(t, "multifd-zstd-level", vd_tree_new_int(p->zstd_level));
    return t;
}

static const char *const cap_names[] = {"compress", "multifd", "zero-blocks", "events",
                                        "pause-before-switchover", "auto-converge", NULL};

int vd_mig_caps_set(vd_mig_caps *c, const vd_tree *list, vd_error **errp)
{
    if (vd_tree_type_of(list) != VD_TREE_LIST) {
        return type_error("capabilities", "array", errp);
    }
    vd_mig_caps n = *c;
    bool *slot[] = {&n.compress, &n.multifd, &n.zero_blocks, &n.events,
                    &n.pause_before_switchover, &n.auto_converge};
    for (size_t i = 0; i < vd_tree_size(list); i++) {
        const vd_tree *e = vd_tree_at(list, i);
        if (vd_tree_type_of(e) != VD_TREE_OBJECT) {
            return type_error("capabilities[]", "object", errp);
        }
        const vd_tree *name = vd_tree_get(e, "capability"), *state = vd_tree_get(e, "state");
        if (!name) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'capability' is "
                                "missing");
        }
        if (!state) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'state' is missing");
        }
        if (!vd_tree_string(name)) {
            return type_error("capability", "string", errp);
        }
        if (vd_tree_type_of(state) != VD_TREE_BOOL) {
            return type_error("state", "boolean", errp);
        }
        size_t k = 0;
        while (cap_names[k] && strcmp(cap_names[k], vd_tree_string(name))) {
            k++;
        }
        if (!cap_names[k]) {
            return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Parameter 'capability' does "
                                "not accept value '%s'", vd_tree_string(name));
        }
        *slot[k] = vd_tree_bool(state);
    }
    if (n.compress && n.multifd) {
        return vd_error_set(errp, VD_ERR_INVALID, EINVAL, "Multifd is not compatible with "
                            "compress");
    }
    *c = n;
    return 0;
}

vd_tree *vd_mig_caps_query(const vd_mig_caps *c)
{
    const bool on[] = {c->compress, c->multifd, c->zero_blocks, c->events,
                       c->pause_before_switchover, c->auto_converge};
    vd_tree *l = vd_tree_new(VD_TREE_LIST);
    for (size_t i = 0; cap_names[i]; i++) {
        vd_tree *e = vd_tree_new(VD_TREE_OBJECT);
        vd_tree_put(e, "capability", vd_tree_new_string(cap_names[i]));
        vd_tree_put(e, "state", vd_tree_new_bool(on[i]));
        vd_tree_append(l, e);
    }
    return l;
}
