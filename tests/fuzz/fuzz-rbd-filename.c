/* libFuzzer target for rbd filenames (rbd:pool/[namespace/]image[@snapshot][:key=value...]):
 * any text is parsed or refused with a message; an accepted name gives the rbd driver's
 * options as strings, and the rados key/value pairs are JSON text of a flat array of
 * strings, two for each pair, that the driver can read back. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "block/drivers/rbd-filename.h"
#include "fuzz-require.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool is_str(const vd_tree *t)
{
    return t && vd_tree_type_of(t) == VD_TREE_STRING;
}

static bool is_member(const char *k)
{
    static const char *const names[] = {"driver", "pool",  "namespace", "image",
                                        "snapshot", "user", "conf", "=keyvalue-pairs"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (!strcmp(k, names[i])) {
            return true;
        }
    }
    return false;
}

/* The pairs text: QEMU's JSON writer's output, so plain ASCII, and a list of 2n strings
 * (n > 0: without pairs there is no member). */
static void check_pairs(const char *json)
{
    for (const char *p = json; *p; p++) {
        REQUIRE((unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7f);
    }
    vd_tree *list = NULL;
    vd_error *err = NULL;
    REQUIRE(vd_tree_parse_json(json, strlen(json), &list, &err) == 0 && !err);
    REQUIRE(vd_tree_type_of(list) == VD_TREE_LIST);
    REQUIRE(vd_tree_size(list) >= 2 && vd_tree_size(list) % 2 == 0);
    for (size_t i = 0; i < vd_tree_size(list); i++) {
        REQUIRE(is_str(vd_tree_at(list, i)));
    }
    /* Written out again by vdisk's own writer, the list gives the same text, but for the
     * \uXXXX escapes, which that writer leaves as raw bytes or writes in lower case. */
    char *again = vd_tree_to_json(list);
    REQUIRE(again);
    REQUIRE(strstr(json, "\\u") || !strcmp(again, json));
    free(again);
    vd_tree_free(list);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *name = malloc(size + 1);
    REQUIRE(name);
    memcpy(name, data, size);
    name[size] = '\0';  /* a filename is a C string: an embedded NUL ends it */

    vd_tree *t = (vd_tree *)(uintptr_t)1;  /* must stay untouched on failure */
    vd_error *err = NULL;
    int ret = vd_rbd_filename_options(name, &t, &err);
    if (ret < 0) {
        REQUIRE(err && vd_error_msg(err) && vd_error_msg(err)[0]);
        REQUIRE(ret == -err->errnum && ret == -EINVAL);
        REQUIRE(t == (vd_tree *)(uintptr_t)1);
        vd_error_free(err);
        free(name);
        return 0;
    }
    REQUIRE(!err && t && vd_tree_type_of(t) == VD_TREE_OBJECT);
    REQUIRE(vd_rbd_filename_prefix(name) && strchr(name, '/'));
    REQUIRE(!strcmp(vd_tree_string(vd_tree_get(t, "driver")), "rbd"));
    REQUIRE(is_str(vd_tree_get(t, "pool")) && is_str(vd_tree_get(t, "namespace")) &&
            is_str(vd_tree_get(t, "image")));
    for (size_t i = 0; i < vd_tree_size(t); i++) {
        REQUIRE(is_member(vd_tree_key(t, i)) && is_str(vd_tree_at(t, i)));
    }
    /* Unescaping only removes bytes: no part is longer than the name. */
    for (size_t i = 0; i < vd_tree_size(t); i++) {
        if (strcmp(vd_tree_key(t, i), "=keyvalue-pairs")) {
            REQUIRE(strlen(vd_tree_string(vd_tree_at(t, i))) <= size);
        }
    }
    /* A snapshot needs an '@' after the prefix, and any option an '='. */
    REQUIRE(!vd_tree_get(t, "snapshot") || strchr(name + 4, '@'));
    const vd_tree *pairs = vd_tree_get(t, "=keyvalue-pairs");
    if (pairs) {
        check_pairs(vd_tree_string(pairs));
    }
    REQUIRE(!pairs || strchr(name + 4, '='));
    REQUIRE((!vd_tree_get(t, "user") && !vd_tree_get(t, "conf")) || strchr(name + 4, '='));

    /* The tree survives a round trip through JSON (what a json: name would carry) when
     * its strings are ASCII: bytes from the name need not be UTF-8, which JSON text must
     * be. */
    char *json = vd_tree_to_json(t);
    REQUIRE(json);
    bool ascii = true;
    for (const char *p = json; *p; p++) {
        ascii &= (unsigned char)*p < 0x80;
    }
    if (ascii) {
        vd_tree *back = NULL;
        REQUIRE(vd_tree_parse_json(json, strlen(json), &back, NULL) == 0);
        char *json2 = vd_tree_to_json(back);
        REQUIRE(!strcmp(json, json2));
        free(json2);
        vd_tree_free(back);
    }
    free(json);
    vd_tree_free(t);
    free(name);
    return 0;
}
