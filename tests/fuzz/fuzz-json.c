/* libFuzzer target for the JSON parser of options trees (json: filenames, QMP-like text):
 * any input is parsed or refused with -EINVAL and a message naming JSON; an accepted
 * document prints as JSON that parses again and prints to the very same text. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz-require.h"
#include "vdisk/tree.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    vd_tree *t = NULL;
    vd_error *err = NULL;
    int ret = vd_tree_parse_json((const char *)data, size, &t, &err);
    if (ret < 0) {
        REQUIRE(err && vd_error_msg(err) && strstr(vd_error_msg(err), "JSON"));
        REQUIRE(ret == -EINVAL && err->errnum == EINVAL);
        REQUIRE(!t);
        vd_error_free(err);
        return 0;
    }
    REQUIRE(ret == 0 && !err && t);

    char *json = vd_tree_to_json(t);
    REQUIRE(json);
    vd_tree *back = NULL;
    ret = vd_tree_parse_json(json, strlen(json), &back, &err);
    REQUIRE(ret == 0 && !err && back);
    REQUIRE(vd_tree_type_of(back) == vd_tree_type_of(t));
    REQUIRE(vd_tree_size(back) == vd_tree_size(t));
    char *again = vd_tree_to_json(back);
    REQUIRE(again && strcmp(json, again) == 0);

    free(again);
    free(json);
    vd_tree_free(back);
    vd_tree_free(t);
    return 0;
}
