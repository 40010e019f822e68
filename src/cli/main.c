/* The vdisk command: `vdisk <verb> ...` dispatch, global options (--help, --version) and
 * the error helpers every verb uses. Verbs and their syntax follow qemu-img 7.2. Started
 * through a link named qemu-img, qemu-io or qemu-nbd, vdisk stands in for that program. */
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli-util.h"

void cli_error(const char *fmt, ...)
{
    va_list ap;
    /* No flush of stdout first: as with QEMU's error_report, an error written to a pipe
     * comes before output still in stdout's buffer, and scripts' captures show that order. */
    fprintf(stderr, "%s: ", cli_progname());
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int cli_parse_cache(const char *mode, unsigned *flags)
{
    /* qemu's cache modes are two switches: host page cache bypass (O_DIRECT) and whether
     * the guest-visible write cache is on. "unsafe" keeps the cache and drops flushes. */
    static const struct {
        const char *name;
        unsigned flags;
    } modes[] = {
        {"none", VD_OPEN_NOCACHE},
        {"off", VD_OPEN_NOCACHE},
        {"writeback", 0},
        {"writethrough", VD_OPEN_WRITETHROUGH},
        {"directsync", VD_OPEN_NOCACHE | VD_OPEN_WRITETHROUGH},
        {"unsafe", VD_OPEN_NO_FLUSH},
    };
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        if (!strcmp(mode, modes[i].name)) {
            *flags = (*flags & ~(unsigned)(VD_OPEN_NOCACHE | VD_OPEN_WRITETHROUGH |
                                           VD_OPEN_NO_FLUSH)) | modes[i].flags;
            return 0;
        }
    }
    return -1;
}

/* The help text names the program (%1$s) as it was started, and notes the vdisk version
 * (%2$s) when that name is not vdisk's own. */
static const char help_text[] =
    "%1$s version " VDISK_VERSION "%2$s\n"
    "usage: %1$s [standard options] command [command options]\n"
    "vdisk disk image utility (qemu-img compatible)\n"
    "\n"
    "    '-h', '--help'       display this help and exit\n"
    "    '-V', '--version'    output version information and exit\n"
    "\n"
    "Command syntax:\n"
    "  amend [-p] [-q] [-f fmt] [-t cache] [--force] -o options filename\n"
    "  bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] [-n] "
    "[--no-drain] [-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] "
    "[-t cache] [-w] [-U] filename\n"
    "  bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)... "
    "[-b source_file [-F source_fmt]] [-g granularity] [--object objectdef] "
    "[--image-opts | -f fmt] filename bitmap\n"
    "  check [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] [-T src_cache] [-U] filename\n"
    "  commit [-q] [-f fmt] [-t cache] [-b base] [-r rate_limit] [-d] [-p] filename\n"
    "  compare [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] filename1 filename2\n"
    "  convert [--target-is-zero] [-U] [-c [--compression-level=level]] [-p] [-q] [-n] "
    "[-f fmt] [-t cache] "
    "[-T src_cache] [-O output_fmt] [-B backing_file [-F backing_fmt]] [-o options] "
    "[-S sparse_size] [-r rate_limit] [-m num_threads] [-W] filename [filename2 [...]] "
    "output_filename\n"
    "  create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename "
    "[size]\n"
    "  dd [-U] [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] [skip=blocks] "
    "if=input of=output\n"
    "  info [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename\n"
    "  io [qemu-io options] filename\n"
    "  map [-f fmt] [--start-offset=offset] [--max-length=len] [--output=ofmt] [-U] "
    "filename\n"
    "  measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | [-f fmt] "
    "filename]\n"
    "  migrate [-q] [-p] [-f fmt] [--node-name=name] [--compress-type=type] "
    "[--compress-level=level] [--channels=n] [--max-bandwidth=rate] [--tls-creds=id] "
    "filename uri\n"
    "  migrate --incoming=uri [-q] [-f fmt] [--node-name=name] [--tls-creds=id] filename\n"
    "  snapshot [-U] [-q] [-f fmt] [-l | -a snapshot | -c snapshot | -d snapshot] filename\n"
    "  snapshot [-q] [-f fmt] (-c [snapshot] | -d snapshot) filename [filename2 [...]]\n"
    "  nbd [-f fmt] [-r] [-t] [-k socket | -p port -b addr] [-x name] [-e shared] "
    "filename\n"
    "  rebase [-U] [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] -b backing_file "
    "[-F backing_fmt] filename\n"
    "  resize [-f fmt] [--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size\n"
    "\n"
    "Command parameters:\n"
    "  'filename' is a disk image filename\n"
    "  'fmt' is the disk image format. It is guessed automatically in most cases\n"
    "  'cache' is the cache mode used to write the output disk image, the valid\n"
    "    options are: 'none', 'writeback' (default, except for convert), 'writethrough',\n"
    "    'directsync' and 'unsafe' (default for convert)\n"
    "  'src_cache' is the cache mode used to read input disk images, the valid\n"
    "    options are the same as for the 'cache' option\n"
    "  'size' is the disk image size in bytes. Optional suffixes\n"
    "    'k' or 'K' (kilobyte, 1024), 'M' (megabyte, 1024k), 'G' (gigabyte, 1024M),\n"
    "    'T' (terabyte, 1024G), 'P' (petabyte, 1024T) and 'E' (exabyte, 1024P)  are\n"
    "    supported. 'b' is ignored.\n"
    "  'output_filename' is the destination disk image filename\n"
    "  'output_fmt' is the destination format\n"
    "  'options' is a comma separated list of format specific options in a\n"
    "    name=value format. Use -o help for an overview of the options supported by\n"
    "    the used format\n"
    "  '-c' indicates that target image must be compressed (qcow2 only)\n"
    "  '-u' allows unsafe backing chains. For rebasing, it is assumed that old and\n"
    "       new backing file match exactly. The image doesn't need a working\n"
    "       backing file before rebasing in this case (useful for renaming the\n"
    "       backing file). For image creation, allow creating without attempting\n"
    "       to open the backing file.\n"
    "  '-h' with or without a command shows this help and lists the supported formats\n"
    "  '-p' show progress of command (only certain commands)\n"
    "  '-q' use Quiet mode - do not print any output (except errors)\n"
    "  '-S' indicates the consecutive number of bytes (defaults to 4k) that must\n"
    "       contain only zeros for %1$s to create a sparse image during\n"
    "       conversion. If the number of bytes is 0, the source will not be scanned for\n"
    "       unallocated or zero sectors, and the destination image will always be\n"
    "       fully allocated\n"
    "  '--output' takes the format in which the output must be done (human or json)\n"
    "  '-n' skips the target volume creation (useful if the volume is created\n"
    "       prior to running %1$s)\n"
    "\n"
    "Parameters to check subcommand:\n"
    "  '-r' tries to repair any inconsistencies that are found during the check.\n"
    "       '-r leaks' repairs only cluster leaks, whereas '-r all' fixes all\n"
    "       kinds of errors, with a higher risk of choosing the wrong fix or\n"
    "       hiding corruption that has already occurred.\n"
    "\n"
    "Parameters to convert subcommand:\n"
    "  '-m' specifies how many threads work in parallel during the convert\n"
    "       process (defaults to 8)\n"
    "  '-W' allow to write to the target out of order rather than sequential\n"
    "  '--compression-level' sets the level of -c's compression: 1 to 9 for the zlib\n"
    "       compression type (default 6), 1 to 22 for zstd (default 3); the type is\n"
    "       chosen with -o compression_type=zlib|zstd (vdisk only; not in qemu-img)\n"
    "\n"
    "Parameters to snapshot subcommand:\n"
    "  'snapshot' is the name of the snapshot to create, apply or delete\n"
    "  '-a' applies a snapshot (revert disk to saved state)\n"
    "  '-c' creates a snapshot\n"
    "  '-d' deletes a snapshot\n"
    "  '-l' lists all snapshots in the given image\n"
    "  With several filenames (vdisk only), '-c' takes one snapshot of all the images and\n"
    "       '-d' deletes it from all of them, as one all-or-nothing step: if any image\n"
    "       fails, none changes. '-c' may leave the name out when the word after it is\n"
    "       an existing file followed by no other filename or by two or more: that word\n"
    "       is then the first image, and the snapshot is named vm-YYYYMMDDHHMMSS from\n"
    "       the group's time, which all the images share. '-c A B' always keeps\n"
    "       qemu-img's meaning (snapshot A of image B), so two images need a name.\n"
    "\n"
    "Parameters to compare subcommand:\n"
    "  '-f' first image format\n"
    "  '-F' second image format\n"
    "  '-s' run in Strict mode - fail on different image size or sector allocation\n"
    "\n"
    "Parameters to dd subcommand:\n"
    "  'bs=BYTES' read and write up to BYTES bytes at a time (default: 512)\n"
    "  'count=N' copy only N input blocks\n"
    "  'if=FILE' read from FILE\n"
    "  'of=FILE' write to FILE\n"
    "  'skip=N' skip N bs-sized blocks at the start of input\n"
    "\n"
    "Supported formats: qcow2 raw\n";

/* " (vdisk)" after the version when vdisk runs under a QEMU tool's name. */
static const char *version_note(void)
{
    return strcmp(cli_progname(), "vdisk") ? " (vdisk)" : "";
}

void cli_help(void)
{
    printf(help_text, cli_progname(), version_note());
    exit(0);
}

typedef struct verb {
    const char *name;
    int (*handler)(int argc, char **argv);
} verb;

static const verb verbs[] = {
    {"amend", cmd_amend},
    {"bench", cmd_bench},
    {"bitmap", cmd_bitmap},
    {"check", cmd_check},
    {"commit", cmd_commit},
    {"compare", cmd_compare},
    {"convert", cmd_convert},
    {"create", cmd_create},
    {"dd", cmd_dd},
    {"info", cmd_info},
    {"io", cmd_io},
    {"map", cmd_map},
    {"measure", cmd_measure},
    {"migrate", cmd_migrate},
    {"nbd", cmd_nbd},
    {"rebase", cmd_rebase},
    {"resize", cmd_resize},
    {"snapshot", cmd_snapshot},
};

/* The QEMU programs vdisk stands in for when started under their name (a symlink), and the
 * verb each one runs; qemu-img (NULL) takes the verb as its first argument, as vdisk does. */
static const struct {
    const char *name;
    const char *verb;
} dropins[] = {
    {"qemu-img", NULL},
    {"qemu-io", "io"},
    {"qemu-nbd", "nbd"},
};

static int run_verb(const char *name, int argc, char **argv)
{
    for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
        if (!strcmp(name, verbs[i].name)) {
            /* --image-opts means the same to every qemu-img verb (file arguments are
             * option lists), so it is taken here; qemu-io parses its own. */
            if (strcmp(name, "io")) {
                cli_set_image_opts(cli_take_flag(&argc, argv, "--image-opts"));
                cli_set_target_image_opts(cli_take_flag(&argc, argv, "--target-image-opts"));
            }
            /* qemu-nbd's --object is its server's; everyone else's is for clients. */
            if (strcmp(name, "nbd") && strcmp(name, "migrate") &&
                cli_take_objects(&argc, argv) < 0) {
                return 1;
            }
            int ret = verbs[i].handler(argc, argv);
            fflush(stdout);
            return ret;
        }
    }
    cli_error_exit("Command not found: %s", name);
}

int main(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {"trace", required_argument, NULL, 'T'},
        {NULL, 0, NULL, 0},
    };
    int c;

    /* A closed pipe (vdisk info | head) must end the output, not the process mid-write. */
    signal(SIGPIPE, SIG_IGN);

    const char *base = argc > 0 ? strrchr(argv[0], '/') : NULL;
    base = base ? base + 1 : argc > 0 ? argv[0] : "";
    for (size_t i = 0; i < sizeof(dropins) / sizeof(dropins[0]); i++) {
        if (!strcmp(base, dropins[i].name)) {
            cli_set_progname(dropins[i].name, dropins[i].verb);
            if (dropins[i].verb) {
                /* `qemu-io ARGS` is `vdisk io ARGS`: the verb parses the whole line. */
                optind = 0;
                return run_verb(dropins[i].verb, argc, argv);
            }
        }
    }

    if (argc < 2) {
        cli_error_exit("Not enough arguments");
    }
    while ((c = getopt_long(argc, argv, "+:hVT:", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_help();
        case 'V':
            printf("%s version " VDISK_VERSION "%s\n"
                   "qemu-img 7.2 compatible disk image utility\n",
                   cli_progname(), version_note());
            return 0;
        case 'T':
            /* Tracing is a QEMU facility; accepted for command-line compatibility. */
            break;
        default:
            cli_bad_option(c, argv);
        }
    }
    if (optind >= argc) {
        return 0;
    }
    const char *name = argv[optind];
    argc -= optind;
    argv += optind;
    /* Each verb parses its own options from a fresh start. */
    optind = 0;
    return run_verb(name, argc, argv);
}
