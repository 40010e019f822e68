/* `vdisk compare`: qemu-img compare. Walks both images by block status, reads only where
 * either side has data, and reports the first differing 512-byte sector. Exit codes: 0 same,
 * 1 different, 2 open error, 3 block status error, 4 read error. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli-util.h"

#define SECTOR 512
#define IO_BUF_SIZE (2u << 20)

/* Byte index of the first 512-byte sector of buf that holds a non-zero byte, or -1. */
static int64_t find_nonzero(const uint8_t *buf, int64_t n)
{
    for (int64_t i = 0; i < n; i += SECTOR) {
        int64_t len = n - i < SECTOR ? n - i : SECTOR;
        for (int64_t k = 0; k < len; k++) {
            if (buf[i + k]) {
                return i;
            }
        }
    }
    return -1;
}

/* Does the first sector match? *pnum: length of the prefix (in whole sectors, or up to the
 * end) that has the same match status as the first sector. */
static bool sectors_differ(const uint8_t *a, const uint8_t *b, int64_t bytes, int64_t *pnum)
{
    int64_t i = bytes < SECTOR ? bytes : SECTOR;
    bool res = memcmp(a, b, (size_t)i) != 0;
    while (i < bytes) {
        int64_t len = bytes - i < SECTOR ? bytes - i : SECTOR;
        if ((memcmp(a + i, b + i, (size_t)len) != 0) != res) {
            break;
        }
        i += len;
    }
    *pnum = i;
    return res;
}

/* Reads [offset, offset+bytes) of one image and fails the comparison if any of it is not
 * zero. Returns 0, 1 (mismatch, printed) or 4 (read error, printed). */
static int check_empty(vd_disk *d, int64_t offset, int64_t bytes, const char *filename,
                       uint8_t *buf, bool quiet)
{
    int ret = vd_pread(d, buf, (uint64_t)bytes, (uint64_t)offset);
    if (ret < 0) {
        cli_print_io_detail(d);
        cli_error("Error while reading offset %" PRId64 " of %s: %s", offset, filename,
                  strerror(-ret));
        return 4;
    }
    int64_t idx = find_nonzero(buf, bytes);
    if (idx >= 0) {
        cli_qprintf(quiet, "Content mismatch at offset %" PRId64 "!\n", offset + idx);
        return 1;
    }
    return 0;
}

/* The flags strict mode compares: what qemu's block status reports, minus the host offset
 * value itself. */
static unsigned strict_flags(const vd_extent *st)
{
    return st->flags & (VD_BS_DATA | VD_BS_ZERO | VD_BS_OFFSET | VD_BS_ALLOCATED);
}

static int compare_images(vd_disk *d1, vd_disk *d2, const char *f1, const char *f2,
                          bool strict, bool quiet, cli_progress *prog)
{
    int64_t size1 = (int64_t)vd_disk_size(d1), size2 = (int64_t)vd_disk_size(d2);
    int64_t total = size1 < size2 ? size1 : size2;
    int64_t base = size1 > size2 ? size1 : size2;
    uint8_t *buf1 = cli_alloc_io_buffer(IO_BUF_SIZE);
    uint8_t *buf2 = cli_alloc_io_buffer(IO_BUF_SIZE);
    int64_t offset = 0;
    int ret = 0;

    cli_progress_print(prog, 0, 100);
    if (strict && size1 != size2) {
        cli_qprintf(quiet, "Strict mode: Image size mismatch!\n");
        ret = 1;
        goto out;
    }

    while (offset < total) {
        vd_extent s1, s2;
        ret = vd_block_status(d1, (uint64_t)offset, (uint64_t)(size1 - offset), &s1);
        if (ret < 0 || s1.length == 0) {
            cli_print_io_detail(d1);
            cli_error("Sector allocation test failed for %s", f1);
            ret = 3;
            goto out;
        }
        ret = vd_block_status(d2, (uint64_t)offset, (uint64_t)(size2 - offset), &s2);
        if (ret < 0 || s2.length == 0) {
            cli_print_io_detail(d2);
            cli_error("Sector allocation test failed for %s", f2);
            ret = 3;
            goto out;
        }
        bool alloc1 = s1.flags & VD_BS_ALLOCATED, alloc2 = s2.flags & VD_BS_ALLOCATED;
        int64_t chunk = (int64_t)(s1.length < s2.length ? s1.length : s2.length);
        if (chunk > total - offset) {
            chunk = total - offset;
        }

        if (strict && strict_flags(&s1) != strict_flags(&s2)) {
            cli_qprintf(quiet, "Strict mode: Offset %" PRId64 " block status mismatch!\n",
                        offset);
            ret = 1;
            goto out;
        }
        if ((s1.flags & VD_BS_ZERO) && (s2.flags & VD_BS_ZERO)) {
            /* Both read as zeros: nothing to compare. */
        } else if (alloc1 == alloc2) {
            if (alloc1) {
                int64_t pnum;
                if (chunk > (int64_t)IO_BUF_SIZE) {
                    chunk = IO_BUF_SIZE;
                }
                ret = vd_pread(d1, buf1, (uint64_t)chunk, (uint64_t)offset);
                if (ret < 0) {
                    cli_print_io_detail(d1);
                    cli_error("Error while reading offset %" PRId64 " of %s: %s", offset, f1,
                              strerror(-ret));
                    ret = 4;
                    goto out;
                }
                ret = vd_pread(d2, buf2, (uint64_t)chunk, (uint64_t)offset);
                if (ret < 0) {
                    cli_print_io_detail(d2);
                    cli_error("Error while reading offset %" PRId64 " of %s: %s", offset, f2,
                              strerror(-ret));
                    ret = 4;
                    goto out;
                }
                bool differ = sectors_differ(buf1, buf2, chunk, &pnum);
                if (differ || pnum != chunk) {
                    cli_qprintf(quiet, "Content mismatch at offset %" PRId64 "!\n",
                                offset + (differ ? 0 : pnum));
                    ret = 1;
                    goto out;
                }
            }
        } else {
            if (chunk > (int64_t)IO_BUF_SIZE) {
                chunk = IO_BUF_SIZE;
            }
            ret = alloc1 ? check_empty(d1, offset, chunk, f1, buf1, quiet)
                         : check_empty(d2, offset, chunk, f2, buf1, quiet);
            if (ret) {
                goto out;
            }
        }
        offset += chunk;
        cli_progress_print(prog, (float)chunk / (float)base * 100, 100);
    }

    if (size1 != size2) {
        vd_disk *over = size1 > size2 ? d1 : d2;
        const char *fover = size1 > size2 ? f1 : f2;
        cli_qprintf(quiet, "Warning: Image size mismatch!\n");
        while (offset < base) {
            vd_extent st;
            ret = vd_block_status(over, (uint64_t)offset, (uint64_t)(base - offset), &st);
            if (ret < 0 || st.length == 0) {
                cli_print_io_detail(over);
                cli_error("Sector allocation test failed for %s", fover);
                ret = 3;
                goto out;
            }
            int64_t chunk = (int64_t)st.length;
            if ((st.flags & VD_BS_ALLOCATED) && !(st.flags & VD_BS_ZERO)) {
                if (chunk > (int64_t)IO_BUF_SIZE) {
                    chunk = IO_BUF_SIZE;
                }
                ret = check_empty(over, offset, chunk, fover, buf1, quiet);
                if (ret) {
                    goto out;
                }
            }
            offset += chunk;
            cli_progress_print(prog, (float)chunk / (float)base * 100, 100);
        }
    }
    cli_qprintf(quiet, "Images are identical.\n");
    ret = 0;
out:
    free(buf1);
    free(buf2);
    return ret;
}

int cmd_compare(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    const char *fmt1 = NULL, *fmt2 = NULL, *cache = "writeback";
    bool progress = false, quiet = false, strict = false;
    int c, ret;

    while ((c = getopt_long(argc, argv, ":hf:F:T:pqsU", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_help();
        case 'f':
            fmt1 = optarg;
            break;
        case 'F':
            fmt2 = optarg;
            break;
        case 'T':
            cache = optarg;
            break;
        case 'p':
            progress = true;
            break;
        case 'q':
            quiet = true;
            break;
        case 's':
            strict = true;
            break;
        case 'U':
            break;
        default:
            cli_bad_option(c, argv);
        }
    }
    if (quiet) {
        progress = false;
    }
    if (optind != argc - 2) {
        cli_error_exit("Expecting two image file names");
    }
    const char *f1 = argv[optind], *f2 = argv[optind + 1];

    cli_progress prog;
    cli_progress_init(&prog, progress, 2.0f);
    unsigned flags = 0;
    if (cli_parse_cache(cache, &flags) < 0) {
        cli_error("Invalid source cache option: %s", cache);
        cli_progress_end(&prog);
        return 2;
    }

    vd_engine *e = cli_engine_new();
    vd_disk *d1 = NULL, *d2 = NULL;
    if (cli_open(e, f1, fmt1, flags, &d1) < 0) {
        ret = 2;
        goto out;
    }
    if (cli_open(e, f2, fmt2, flags, &d2) < 0) {
        ret = 2;
        goto out;
    }
    ret = compare_images(d1, d2, f1, f2, strict, quiet, &prog);
out:
    if (d2) {
        vd_close(d2);
    }
    if (d1) {
        vd_close(d1);
    }
    cli_progress_end(&prog);
    vd_engine_free(e);
    return ret;
}
