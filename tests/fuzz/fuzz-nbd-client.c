/* libFuzzer target for the NBD client of `vdisk nbd --list`: each input is the byte stream
 * a server sends (greeting, option replies) to a client listing its exports; what the
 * client sends is dropped. Any crash, sanitizer report, leak or hang is a bug. On success
 * the listing must hold what the parser promises (bounded names, valid block sizes). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz-require.h"
#include "nbd/nbd-client.h"
#include "nbd/nbd-proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct feed {
    const uint8_t *data;
    size_t size, pos;
} feed;

static int feed_read(void *opaque, void *buf, size_t len, bool *eof)
{
    feed *f = opaque;
    if (len > f->size - f->pos) {
        *eof = true;
        return -1;
    }
    memcpy(buf, f->data + f->pos, len);
    f->pos += len;
    return 0;
}

static int feed_write(void *opaque, const void *buf, size_t len)
{
    (void)opaque;
    (void)buf;
    (void)len;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    feed f = {.data = data, .size = size};
    nbd_client_io io = {.read = feed_read, .write = feed_write, .opaque = &f};
    vd_nbd_export_desc *list = NULL;
    size_t nb = 0;
    vd_error *err = NULL;
    if (nbd_client_list(&io, &list, &nb, &err) == 0) {
        REQUIRE(err == NULL);
        for (size_t i = 0; i < nb; i++) {
            REQUIRE(strlen(list[i].name) <= NBD_MAX_STRING);
            REQUIRE(!list[i].description || strlen(list[i].description) <= NBD_MAX_STRING);
            if (list[i].min_block) {
                REQUIRE((list[i].min_block & (list[i].min_block - 1)) == 0);
                REQUIRE(list[i].opt_block >= list[i].min_block);
                REQUIRE(list[i].max_block >= list[i].min_block);
            }
        }
        vd_nbd_export_desc_free(list, nb);
    } else {
        REQUIRE(err != NULL && list == NULL && nb == 0);
        vd_error_free(err);
    }
    return 0;
}
