/* NBD filenames (nbd://, nbd+tcp://, nbd+unix://, and the legacy nbd:unix:PATH and
 * nbd:HOST:PORT forms) turned into the nbd driver's options tree. A pure function: the
 * filename is untrusted text, and a fuzz target calls this directly. */
#ifndef VD_NBD_URI_H
#define VD_NBD_URI_H

#include "vdisk/tree.h"

/* The default TCP port of NBD (IANA), as a string since the option is one. */
#define VD_NBD_DEFAULT_PORT "10809"

/* Parses filename as qemu-img 7.2 does into {"driver": "nbd", "server": {"type": "unix",
 * "path": P} or {"type": "inet", "host": H, "port": "N"}, "export": E}. "export" is left
 * out when the name gives none (the driver then asks for ""); "server" is left out for a
 * legacy name with no address ("nbd:"), which the driver refuses as QEMU does. Errors
 * give -EINVAL and QEMU's message ("No valid URL specified", ...); callers name the file
 * ("Could not open 'NAME': ..."), as qemu-img does. */
int vd_nbd_filename_options(const char *filename, vd_tree **out, vd_error **errp);

/* Is filename one that vd_nbd_filename_options takes (by its prefix)? */
bool vd_nbd_filename_prefix(const char *filename);

#endif
