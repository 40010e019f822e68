/* libFuzzer target for the blkdebug config-file parser (QEMU's [inject-error] and
 * [set-state] format): any input is parsed or refused with a message naming the file and
 * the line; an accepted file gives rules that each have a known event, an errno in range
 * and, for set-state, a new state. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "block/drivers/blkdebug-config.h"
#include "fuzz-require.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bd_qrule *rules = NULL;
    int nb = -1;
    vd_error *err = NULL;
    int ret = bd_config_parse_text((const char *)data, size, "fuzz.conf", &rules, &nb, &err);
    if (ret < 0) {
        REQUIRE(err && vd_error_msg(err) && strstr(vd_error_msg(err), "blkdebug: "));
        REQUIRE(ret == -err->errnum);
        REQUIRE(!rules && nb == 0);
        vd_error_free(err);
        return 0;
    }
    REQUIRE(!err && nb >= 0 && nb <= 256 && (nb == 0 || rules));
    for (int i = 0; i < nb; i++) {
        REQUIRE(rules[i].event[0] != '\0');
        REQUIRE(strlen(rules[i].event) <= BD_EVENT_NAME_MAX);
        REQUIRE(rules[i].err >= 0 && rules[i].err <= 4095);
        REQUIRE(rules[i].offset >= -1);
        REQUIRE(rules[i].action != BD_SET_STATE || rules[i].new_state > 0);
        REQUIRE(!rules[i].active && !rules[i].gone);
    }
    free(rules);
    return 0;
}
