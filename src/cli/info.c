/* `vdisk info`: qemu-img info, in its human layout or its JSON (ImageInfo), for one image
 * or the whole backing chain. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli-util.h"
#include "vdisk/snapshot.h"

/* One image of the listing: the library's info plus the names as qemu-img shows them. */
typedef struct image_entry {
    char *filename;
    char *full_backing;  /* NULL without a backing file */
    vd_image_info info;
    vd_snapshot_info *snaps;
    size_t nb_snaps;
} image_entry;

/* The "format-specific" object of a qcow2 image, members in QEMU's field order. */
static cli_json *qcow2_specific(const vd_image_info *info)
{
    cli_json *data = cli_json_object();
    bool v3 = strcmp(info->compat, "0.10") != 0;
    cli_json_add_str(data, "compat", info->compat[0] ? info->compat : "1.1");
    if (v3) {
        cli_json_add_bool(data, "extended-l2", info->extended_l2);
        cli_json_add_bool(data, "lazy-refcounts", info->lazy_refcounts);
        cli_json_add_bool(data, "corrupt", info->corrupt);
    }
    if (info->nb_bitmaps) {
        cli_json *list = cli_json_array();
        for (size_t i = 0; i < info->nb_bitmaps; i++) {
            const vd_image_bitmap *b = &info->bitmaps[i];
            cli_json *bm = cli_json_object(), *flags = cli_json_array();
            if (b->in_use) {
                cli_json_add_str(flags, NULL, "in-use");
            }
            if (b->autoload) {
                cli_json_add_str(flags, NULL, "auto");
            }
            cli_json_add(bm, "flags", flags);
            cli_json_add_str(bm, "name", b->name);
            cli_json_add_int(bm, "granularity", (int64_t)b->granularity);
            cli_json_add(list, NULL, bm);
        }
        cli_json_add(data, "bitmaps", list);
    }
    cli_json_add_int(data, "refcount-bits", info->refcount_bits);
    cli_json_add_str(data, "compression-type",
                     info->compression_type[0] ? info->compression_type : "zlib");
    return data;
}

static cli_json *entry_json(const image_entry *en)
{
    const vd_image_info *info = &en->info;
    cli_json *o = cli_json_object();
    cli_json_add_str(o, "filename", en->filename);
    cli_json_add_str(o, "format", info->format);
    cli_json_add_bool(o, "dirty-flag", info->dirty_flag);
    if (!info->actual_size_unknown) {
        cli_json_add_int(o, "actual-size", (int64_t)info->actual_size);
    }
    cli_json_add_int(o, "virtual-size", (int64_t)info->virtual_size);
    if (info->has_cluster_size) {
        cli_json_add_int(o, "cluster-size", (int64_t)info->cluster_size);
    }
    if (info->encrypted) {
        cli_json_add_bool(o, "encrypted", true);
    }
    if (info->backing_filename) {
        cli_json_add_str(o, "backing-filename", info->backing_filename);
        cli_json_add_str(o, "full-backing-filename", en->full_backing);
    }
    if (info->backing_format) {
        cli_json_add_str(o, "backing-filename-format", info->backing_format);
    }
    if (en->nb_snaps) {
        cli_json *arr = cli_json_array();
        for (size_t i = 0; i < en->nb_snaps; i++) {
            const vd_snapshot_info *sn = &en->snaps[i];
            cli_json *so = cli_json_object();
            cli_json_add_str(so, "id", sn->id);
            cli_json_add_str(so, "name", sn->name);
            cli_json_add_int(so, "vm-state-size", (int64_t)sn->vm_state_size);
            cli_json_add_int(so, "date-sec", sn->date_sec);
            cli_json_add_int(so, "date-nsec", sn->date_nsec);
            cli_json_add_int(so, "vm-clock-sec", (int64_t)(sn->vm_clock_nsec / 1000000000u));
            cli_json_add_int(so, "vm-clock-nsec", (int64_t)(sn->vm_clock_nsec % 1000000000u));
            if (sn->icount != -1) {
                cli_json_add_int(so, "icount", sn->icount);
            }
            cli_json_add(arr, NULL, so);
        }
        cli_json_add(o, "snapshots", arr);
    }
    if (info->is_qcow2) {
        cli_json *spec = cli_json_object();
        cli_json_add_str(spec, "type", "qcow2");
        cli_json_add(spec, "data", qcow2_specific(info));
        cli_json_add(o, "format-specific", spec);
    }
    return o;
}

static void dump_human(const image_entry *en)
{
    const vd_image_info *info = &en->info;
    char vsize[64], dsize[64];
    vd_format_size(info->virtual_size, vsize, sizeof(vsize));
    vd_format_size(info->actual_size, dsize, sizeof(dsize));
    if (info->actual_size_unknown) {
        snprintf(dsize, sizeof(dsize), "unavailable");
    }
    printf("image: %s\n"
           "file format: %s\n"
           "virtual size: %s (%" PRIu64 " bytes)\n"
           "disk size: %s\n",
           en->filename, info->format, vsize, info->virtual_size, dsize);
    if (info->encrypted) {
        printf("encrypted: yes\n");
    }
    if (info->has_cluster_size) {
        printf("cluster_size: %" PRIu64 "\n", info->cluster_size);
    }
    if (info->dirty_flag) {
        printf("cleanly shut down: no\n");
    }
    if (info->backing_filename) {
        printf("backing file: %s", info->backing_filename);
        if (strcmp(info->backing_filename, en->full_backing) != 0) {
            printf(" (actual path: %s)", en->full_backing);
        }
        printf("\n");
    }
    if (info->backing_format) {
        printf("backing file format: %s\n", info->backing_format);
    }
    if (en->nb_snaps) {
        printf("Snapshot list:\n");
        cli_print_snapshot_table(en->snaps, en->nb_snaps);
    }
    if (info->is_qcow2) {
        cli_json *data = qcow2_specific(info);
        printf("Format specific information:\n");
        cli_json_dump_human(stdout, data, 1);
        cli_json_free(data);
    }
}

static void free_entries(image_entry *list, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(list[i].filename);
        free(list[i].full_backing);
        vd_image_info_clear(&list[i].info);
        vd_snapshot_list_free(list[i].snaps, list[i].nb_snaps);
    }
    free(list);
}

/* Collects the top image, and with `chain` every backing file below it. Returns the number
 * of entries, or -1 after printing an error. */
static int collect(vd_engine *e, const char *filename, const char *fmt, bool chain,
                   image_entry **out)
{
    image_entry *list = NULL;
    size_t n = 0, cap = 0;
    char *name = cli_xstrdup(filename);
    char *cur_fmt = fmt ? cli_xstrdup(fmt) : NULL;

    while (name) {
        for (size_t i = 0; i < n; i++) {
            if (!strcmp(list[i].filename, name)) {
                cli_error("Backing file '%s' creates an infinite loop.", name);
                goto err;
            }
        }
        vd_disk *d = NULL;
        int oret = cli_open(e, name, cur_fmt, VD_OPEN_NO_BACKING, &d);
        /* Backing files are named by the image, never as option lists. */
        bool opts = cli_set_image_opts(false);
        if (oret < 0) {
            goto err;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 4;
            list = realloc(list, cap * sizeof(*list));
            if (!list) {
                abort();
            }
        }
        image_entry *en = &list[n];
        memset(en, 0, sizeof(*en));
        vd_error *verr = NULL;
        if (vd_get_info(d, &en->info, &verr) < 0) {
            cli_report_err_for(verr, name, NULL);
            vd_close(d);
            goto err;
        }
        /* A table that cannot be read is reported by check; info shows what it can. */
        if (vd_snapshot_list(d, &en->snaps, &en->nb_snaps, &verr) < 0) {
            vd_error_free(verr);
            en->snaps = NULL;
            en->nb_snaps = 0;
        }
        /* "file:PATH" is shown as the library names the file: PATH, or ./PATH when PATH
         * could be mistaken for a protocol (as qemu-img shows it); options as the file
         * they open; a URI as its node rebuilds it (nbd+unix://?socket=...). */
        if (!strncmp(name, "file:", 5) || !strncmp(name, "json:", 5) || opts ||
            !strncmp(name, "nbd:", 4) || strstr(name, "://")) {
            free(name);
            name = cli_xstrdup(vd_disk_filename(d));
        }
        vd_close(d);
        en->filename = name;
        name = NULL;
        n++;
        if (en->info.backing_filename) {
            en->full_backing = vd_backing_path(en->filename, en->info.backing_filename);
        }
        free(cur_fmt);
        cur_fmt = NULL;
        if (chain && en->full_backing) {
            name = cli_xstrdup(en->full_backing);
            if (en->info.backing_format) {
                cur_fmt = cli_xstrdup(en->info.backing_format);
            }
        }
    }
    *out = list;
    return (int)n;
err:
    free(name);
    free(cur_fmt);
    free_entries(list, n);
    return -1;
}

int cmd_info(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"format", required_argument, NULL, 'f'},
        {"output", required_argument, NULL, OPT_OUTPUT},
        {"backing-chain", no_argument, NULL, OPT_BACKING_CHAIN},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = NULL, *output = NULL;
    bool chain = false;
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
        case OPT_BACKING_CHAIN:
            chain = true;
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
    image_entry *list = NULL;
    int n = collect(e, filename, fmt, chain, &list);
    if (n < 0) {
        vd_engine_free(e);
        return 1;
    }
    if (json) {
        cli_json *root;
        if (chain) {
            root = cli_json_array();
            for (int i = 0; i < n; i++) {
                cli_json_add(root, NULL, entry_json(&list[i]));
            }
        } else {
            root = entry_json(&list[0]);
        }
        cli_json_print(stdout, root);
        cli_json_free(root);
    } else {
        for (int i = 0; i < n; i++) {
            if (i > 0) {
                printf("\n");
            }
            dump_human(&list[i]);
        }
    }
    free_entries(list, (size_t)n);
    vd_engine_free(e);
    return 0;
}
