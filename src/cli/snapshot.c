/* `vdisk snapshot`: qemu-img snapshot (-l list, -c create, -a apply, -d delete), and, as
 * vdisk's own extension, one all-or-nothing snapshot (-c) or deletion (-d) across several
 * images given after the first. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli/cli-util.h"
#include "vdisk/snapshot.h"

/* qemu-img's table (bdrv_snapshot_dump): a header row, then one row per snapshot. */
void cli_print_snapshot_table(const vd_snapshot_info *list, size_t n)
{
    printf("%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK",
           "ICOUNT");
    for (size_t i = 0; i < n; i++) {
        const vd_snapshot_info *s = &list[i];
        char size[64], date[64], clock[64], icount[32] = "";
        vd_format_size(s->vm_state_size, size, sizeof(size));
        time_t t = (time_t)s->date_sec;
        struct tm tm;
        localtime_r(&t, &tm);
        strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
        uint64_t secs = s->vm_clock_nsec / 1000000000u;
        snprintf(clock, sizeof(clock), "%02d:%02d:%02d.%03d", (int)(secs / 3600),
                 (int)((secs / 60) % 60), (int)(secs % 60),
                 (int)((s->vm_clock_nsec / 1000000) % 1000));
        if (s->icount != -1) {
            snprintf(icount, sizeof(icount), "%" PRId64, s->icount);
        }
        printf("%-9s %-16s %8s%20s%13s%11s\n", s->id, s->name, size, date, clock, icount);
    }
}

enum { ACT_NONE, ACT_LIST, ACT_CREATE, ACT_APPLY, ACT_DELETE };
enum { OPT_OBJECT = 400 };

/* The library names the image in front of its messages; qemu-img's message for one
 * image names the snapshot instead. A leading "could not apply the snapshot: " (or the
 * like, given as what) would repeat what the CLI's own words already say, so it goes too. */
static const char *cause(const vd_error *err, const char *file, const char *what)
{
    const char *m = vd_error_msg(err);
    if (!m) {
        return "";
    }
    size_t n = strlen(file);
    if (strncmp(m, file, n) == 0 && strncmp(m + n, ": ", 2) == 0) {
        m += n + 2;
    }
    n = strlen(what);
    if (strncmp(m, what, n) == 0 && strncmp(m + n, ": ", 2) == 0) {
        m += n + 2;
    }
    return m;
}

static bool is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int list_one(vd_disk *d)
{
    vd_snapshot_info *list = NULL;
    size_t n = 0;
    vd_error *err = NULL;
    if (vd_snapshot_list(d, &list, &n, &err) < 0) {
        cli_report_err(err, "%s", "");
        return 1;
    }
    if (n) {
        printf("Snapshot list:\n");
        cli_print_snapshot_table(list, n);
    }
    vd_snapshot_list_free(list, n);
    return 0;
}

/* One image, qemu-img's way. */
static int single(vd_disk *d, const char *file, int action, const char *name)
{
    vd_error *err = NULL;
    int ret;
    switch (action) {
    case ACT_LIST:
        return list_one(d);
    case ACT_CREATE:
        ret = vd_snapshot_create(d, name, NULL, 0, false, &err);
        if (ret < 0) {
            /* qemu-img's words exactly: the errno only. */
            cli_error("Could not create snapshot '%s': %d (%s)", name, ret, strerror(-ret));
        }
        break;
    case ACT_APPLY:
        ret = vd_snapshot_apply(d, name, &err);
        if (ret < 0) {
            cli_error("Could not apply snapshot '%s': %s", name,
                      cause(err, file, "could not apply the snapshot"));
        }
        break;
    default:
        ret = vd_snapshot_delete(d, NULL, name, &err);
        if (ret < 0) {
            cli_error("Could not delete snapshot '%s': %s", name,
                      cause(err, file, "could not delete the snapshot"));
        }
        break;
    }
    vd_error_free(err);
    return ret < 0 ? 1 : 0;
}

/* Several images: one transaction, every image or none. */
static int group(vd_disk **d, size_t n, int action, const char *name)
{
    vd_action *acts = calloc(n, sizeof(*acts));
    if (!acts) {
        abort();
    }
    for (size_t i = 0; i < n; i++) {
        acts[i].kind = action == ACT_CREATE ? VD_ACTION_SNAPSHOT_INTERNAL
                                            : VD_ACTION_SNAPSHOT_DELETE_INTERNAL;
        acts[i].disk = d[i];
        acts[i].name = name;
    }
    vd_error *err = NULL;
    int ret = vd_transaction(acts, n, &err);
    free(acts);
    if (ret < 0) {
        if (action == ACT_CREATE) {
            cli_error("Could not create snapshot '%s' of %zu images, none changed: %s",
                      name ? name : "(automatic name)", n, vd_error_msg(err));
        } else {
            cli_error("Could not delete snapshot '%s' from %zu images, none changed: %s",
                      name, n, vd_error_msg(err));
        }
        vd_error_free(err);
        return 1;
    }
    return 0;
}

int cmd_snapshot(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"format", required_argument, NULL, 'f'},
        {"force-share", no_argument, NULL, 'U'},
        {"object", required_argument, NULL, OPT_OBJECT},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = NULL, *name = NULL;
    int action = ACT_NONE, c;
    bool quiet = false, force_share = false;

    while ((c = getopt_long(argc, argv, ":la:c:d:hqf:U", long_options, NULL)) != -1) {
        int next = ACT_NONE;
        switch (c) {
        case 'h':
            cli_help();
        case 'f':
            fmt = optarg;
            break;
        case 'q':
            quiet = true;
            break;
        case 'U':
            force_share = true;
            break;
        case OPT_OBJECT:
            break;   /* secrets and the like: no image format of ours uses them */
        case 'l':
            next = ACT_LIST;
            break;
        case 'a':
            next = ACT_APPLY;
            break;
        case 'c':
            next = ACT_CREATE;
            break;
        case 'd':
            next = ACT_DELETE;
            break;
        default:
            cli_bad_option(c, argv);
        }
        if (next != ACT_NONE) {
            if (action != ACT_NONE) {
                cli_error_exit("Cannot mix '-l', '-a', '-c', '-d'");
            }
            action = next;
            name = next == ACT_LIST ? NULL : optarg;
        }
    }
    (void)quiet;   /* nothing is printed on success but the listing, as qemu-img */
    int nfiles = argc - optind;
    /* -c with no name: when the word after -c is an existing file and the command is not
     * qemu-img's one-image form (-c NAME FILE), it is the first image, and the snapshot
     * gets the group's vm-YYYYMMDDHHMMSS name. So "-c A" alone and "-c A B C..." are
     * auto-named, while "-c A B" stays qemu-img's: a snapshot named A of image B. */
    if (action == ACT_CREATE && is_file(name) && nfiles != 1) {
        optind--;
        argv[optind] = (char *)name;
        name = NULL;
        nfiles++;
    }
    if (nfiles < 1 || (nfiles > 1 && action != ACT_CREATE && action != ACT_DELETE)) {
        cli_error_exit("Expecting one image file name");
    }
    /* With no action qemu-img opens the image and does nothing. */
    unsigned flags = action == ACT_LIST || action == ACT_NONE ? 0 : VD_OPEN_RDWR;
    if (force_share && (flags & VD_OPEN_RDWR)) {
        cli_error("Could not open '%s': force-share=on can only be used with read-only "
                  "images", argv[optind]);
        return 1;
    }
    vd_engine *e = cli_engine_new();
    vd_disk **d = calloc((size_t)nfiles, sizeof(*d));
    if (!d) {
        abort();
    }
    int status = 1;
    int opened = 0;
    for (; opened < nfiles; opened++) {
        if (cli_open(e, argv[optind + opened], fmt, flags, &d[opened]) < 0) {
            goto out;
        }
    }
    if (action == ACT_NONE) {
        status = 0;
    } else if (nfiles == 1 && name) {
        status = single(d[0], argv[optind], action, name);
    } else if (nfiles == 1 && action == ACT_LIST) {
        status = list_one(d[0]);
    } else {
        status = group(d, (size_t)nfiles, action, name);
    }
out:
    for (int i = 0; i < opened; i++) {
        if (vd_close(d[i]) < 0 && status == 0) {
            cli_error("Could not close '%s': %s", argv[optind + i], strerror(EIO));
            status = 1;
        }
    }
    free(d);
    vd_engine_free(e);
    return status;
}
