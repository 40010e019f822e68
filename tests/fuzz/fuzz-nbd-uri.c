/* libFuzzer target for NBD filenames (nbd://, nbd+unix://, nbd:unix:..., nbd:HOST:PORT):
 * any text is parsed or refused with a message; an accepted name gives the nbd driver's
 * options with the shape the driver reads (server.type unix with a path, or inet with a
 * host and a port; an export string), and a URI's port is a number in range. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "block/drivers/nbd-uri.h"
#include "fuzz-require.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool is_str(const vd_tree *t)
{
    return t && vd_tree_type_of(t) == VD_TREE_STRING;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *name = malloc(size + 1);
    REQUIRE(name);
    memcpy(name, data, size);
    name[size] = '\0';  /* a filename is a C string: an embedded NUL ends it */
    bool uri = strstr(name, "://") != NULL;

    vd_tree *t = (vd_tree *)(uintptr_t)1;  /* must stay untouched on failure */
    vd_error *err = NULL;
    int ret = vd_nbd_filename_options(name, &t, &err);
    if (ret < 0) {
        REQUIRE(err && vd_error_msg(err) && vd_error_msg(err)[0]);
        REQUIRE(ret == -err->errnum && ret == -EINVAL);
        REQUIRE(t == (vd_tree *)(uintptr_t)1);
        vd_error_free(err);
        free(name);
        return 0;
    }
    REQUIRE(!err && t && vd_tree_type_of(t) == VD_TREE_OBJECT);
    /* Only names with QEMU's prefixes give options (and the prefix check agrees), but
     * QEMU stops reading at an empty ":exportname=" before it looks at the prefix: such a
     * name gives none, and the driver then says the server address is missing. */
    REQUIRE((!strncmp(name, "nbd", 3) && (vd_nbd_filename_prefix(name) || uri)) ||
            (strstr(name, ":exportname=") && vd_tree_size(t) == 1));
    REQUIRE(!strcmp(vd_tree_string(vd_tree_get(t, "driver")), "nbd"));
    const vd_tree *exp = vd_tree_get(t, "export");
    REQUIRE(!exp || is_str(exp));
    REQUIRE(!exp || !uri || vd_tree_string(exp)[0]);  /* a URI's empty export is none */
    const vd_tree *server = vd_tree_get(t, "server");
    REQUIRE(server || !uri);
    for (size_t i = 0; i < vd_tree_size(t); i++) {
        const char *k = vd_tree_key(t, i);
        REQUIRE(!strcmp(k, "driver") || !strcmp(k, "export") || !strcmp(k, "server"));
    }
    if (server) {
        REQUIRE(vd_tree_type_of(server) == VD_TREE_OBJECT);
        const char *type = vd_tree_string(vd_tree_get(server, "type"));
        REQUIRE(type);
        if (!strcmp(type, "unix")) {
            REQUIRE(is_str(vd_tree_get(server, "path")) && vd_tree_size(server) == 2);
        } else {
            REQUIRE(!strcmp(type, "inet") && vd_tree_size(server) == 3);
            REQUIRE(is_str(vd_tree_get(server, "host")));
            const char *port = vd_tree_string(vd_tree_get(server, "port"));
            REQUIRE(port && port[0] && strlen(port) <= 32);
            if (uri) {
                char *end;
                long p = strtol(port, &end, 10);
                REQUIRE(*end == '\0' && p >= 1 && p <= 65535);
            }
        }
    }
    /* The tree survives a round trip through JSON (what a json: name would carry) when
     * its strings are ASCII: bytes from the name or from %XX need not be UTF-8, which
     * JSON text must be. */
    char *json = vd_tree_to_json(t);
    REQUIRE(json);
    bool ascii = true;
    for (const char *p = json; *p; p++) {
        ascii &= (unsigned char)*p < 0x80;
    }
    if (!ascii) {
        free(json);
        vd_tree_free(t);
        free(name);
        return 0;
    }
    vd_tree *back = NULL;
    REQUIRE(vd_tree_parse_json(json, strlen(json), &back, NULL) == 0);
    char *json2 = vd_tree_to_json(back);
    REQUIRE(!strcmp(json, json2));
    free(json);
    free(json2);
    vd_tree_free(back);
    vd_tree_free(t);
    free(name);
    return 0;
}
