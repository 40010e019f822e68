#include "util/zero.h"

#include <stdint.h>
#include <string.h>

bool vd_buf_is_zero(const void *buf, size_t len)
{
    /* Word-at-a-time OR; memcpy keeps it alignment-safe and compiles to plain loads. */
    const uint8_t *p = buf;
    uint64_t acc = 0;
    size_t i = 0;
    for (; i + 64 <= len; i += 64) {
        uint64_t w[8];
        memcpy(w, p + i, sizeof(w));
        acc |= w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7];
        if (acc) {
            return false;
        }
    }
    for (; i < len; i++) {
        acc |= p[i];
    }
    return acc == 0;
}
