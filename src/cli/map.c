/* `vdisk map`: qemu-img map. Walks the image with block status through the backing chain
 * and prints merged extents in qemu-img's human table or its one-line-per-extent JSON. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli-util.h"

typedef struct map_entry {
    int64_t start;
    int64_t length;
    int64_t depth;
    int64_t offset;
    bool present, zero, data, has_offset;
    const char *filename;  /* only with an offset */
} map_entry;

static int get_status(vd_disk *d, int chain_len, int64_t offset, int64_t bytes, map_entry *e)
{
    vd_extent st;
    int ret = vd_block_status(d, (uint64_t)offset, (uint64_t)bytes, &st);
    if (ret < 0) {
        return ret;
    }
    if (st.length == 0) {
        return -EIO;
    }
    /* qemu reports an extent nothing allocates at the depth of the bottom layer. */
    int depth = st.depth;
    if (depth > chain_len - 1) {
        depth = chain_len - 1;
    }
    *e = (map_entry){
        .start = offset,
        .length = (int64_t)st.length,
        .depth = depth,
        .offset = (int64_t)st.offset,
        .present = st.flags & VD_BS_ALLOCATED,
        .zero = st.flags & VD_BS_ZERO,
        .data = st.flags & VD_BS_DATA,
        .has_offset = st.flags & VD_BS_OFFSET,
        .filename = (st.flags & VD_BS_OFFSET) ? st.file : NULL,
    };
    return 0;
}

static bool mergeable(const map_entry *curr, const map_entry *next)
{
    if (curr->length == 0) {
        return false;
    }
    if (curr->zero != next->zero || curr->data != next->data || curr->depth != next->depth ||
        curr->present != next->present || (curr->filename != NULL) != (next->filename != NULL) ||
        curr->has_offset != next->has_offset) {
        return false;
    }
    if (curr->filename && strcmp(curr->filename, next->filename)) {
        return false;
    }
    if (curr->has_offset && curr->offset + curr->length != next->offset) {
        return false;
    }
    return true;
}

static int dump_entry(bool json, map_entry *e, map_entry *next)
{
    if (!json) {
        if (e->data && !e->has_offset) {
            cli_error("File contains external, encrypted or compressed clusters.");
            return -1;
        }
        if (e->data && !e->zero) {
            printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", (uint64_t)e->start,
                   (uint64_t)e->length, e->has_offset ? (uint64_t)e->offset : 0,
                   e->filename ? e->filename : "");
        }
        /* The table ignores the difference between unallocated, zero and zero+data, so
         * such extents are folded into one for longer runs. */
        if (next && (!next->data || next->zero)) {
            next->data = false;
            next->zero = true;
        }
        return 0;
    }
    printf("{ \"start\": %" PRId64 ", \"length\": %" PRId64 ", \"depth\": %" PRId64
           ", \"present\": %s, \"zero\": %s, \"data\": %s", e->start, e->length, e->depth,
           e->present ? "true" : "false", e->zero ? "true" : "false",
           e->data ? "true" : "false");
    if (e->has_offset) {
        printf(", \"offset\": %" PRId64, e->offset);
    }
    putchar('}');
    if (next) {
        puts(",");
    }
    return 0;
}

int cmd_map(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"format", required_argument, NULL, 'f'},
        {"output", required_argument, NULL, OPT_OUTPUT},
        {"force-share", no_argument, NULL, 'U'},
        {"start-offset", required_argument, NULL, OPT_START_OFFSET},
        {"max-length", required_argument, NULL, OPT_MAX_LENGTH},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = NULL, *output = NULL;
    int64_t start_offset = 0, max_length = -1;
    int c;

    while ((c = getopt_long(argc, argv, ":f:hU", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_help();
        case 'f':
            fmt = optarg;
            break;
        case 'U':
            break;
        case OPT_OUTPUT:
            output = optarg;
            break;
        case OPT_START_OFFSET:
            if (cli_cvtnum("start offset", optarg, &start_offset) < 0) {
                return 1;
            }
            break;
        case OPT_MAX_LENGTH:
            if (cli_cvtnum("max length", optarg, &max_length) < 0) {
                return 1;
            }
            break;
        default:
            cli_bad_option(c, argv);
        }
    }
    if (optind != argc - 1) {
        cli_error_exit("Expecting one image file name");
    }
    const char *filename = argv[optind];
    int json = cli_parse_output(output);
    if (json < 0) {
        return 1;
    }

    vd_engine *e = cli_engine_new();
    vd_disk *d = NULL;
    if (cli_open(e, filename, fmt, 0, &d) < 0) {
        vd_engine_free(e);
        return 1;
    }
    int chain_len = cli_chain_length(d);

    if (json) {
        putchar('[');
    } else {
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    }

    int64_t length = (int64_t)vd_disk_size(d);
    if (max_length != -1 && start_offset < length && max_length < length - start_offset) {
        length = start_offset + max_length;
    }
    map_entry curr = {.start = start_offset, .length = 0}, next;
    int ret = 0;
    while (curr.start + curr.length < length) {
        int64_t offset = curr.start + curr.length;
        ret = get_status(d, chain_len, offset, length - offset, &next);
        if (ret < 0) {
            cli_print_io_detail(d);
            cli_error("Could not read file metadata: %s", strerror(-ret));
            goto out;
        }
        if (mergeable(&curr, &next)) {
            curr.length += next.length;
            continue;
        }
        if (curr.length > 0) {
            ret = dump_entry(json, &curr, &next);
            if (ret < 0) {
                goto out;
            }
        }
        curr = next;
    }
    ret = dump_entry(json, &curr, NULL);
    if (json && ret == 0) {
        puts("]");
    }
out:
    fflush(stdout);
    vd_close(d);
    vd_engine_free(e);
    return ret < 0 ? 1 : 0;
}
