/* Ceph RBD filenames (rbd:pool/[namespace/]image[@snapshot][:key=value...]) turned into the
 * rbd driver's options tree. A pure function: the filename is untrusted text, and a fuzz
 * target calls this directly. */
#ifndef VD_RBD_FILENAME_H
#define VD_RBD_FILENAME_H

#include "vdisk/tree.h"

/* Parses filename as qemu-img 7.2 does into {"driver": "rbd", "pool": P, "namespace": N,
 * "image": I, "snapshot": S, "conf": C, "user": U, "=keyvalue-pairs": J}, all strings. A
 * backslash escapes the character after it and is removed from every part. "namespace" is
 * always there ("" when the name gives none, which the driver reads as the default one);
 * "snapshot" only after an unescaped '@'; "conf" and "user" come from the conf= and id=
 * options; every other key=value goes, in order, into "=keyvalue-pairs" as the JSON text of
 * a flat array ["key1", "value1", "key2", "value2"] (QEMU's internal member: the driver
 * hands the pairs to rados_conf_set), written as QEMU writes JSON: ASCII only, with \uXXXX
 * escapes, and U+FFFD for bytes that are no valid UTF-8. Empty pool or image names are no
 * error here; the driver refuses them as QEMU does. Errors give -EINVAL and QEMU's message
 * ("Pool name is required", "conf option NAME has no value", "File name must start with
 * 'rbd:'"); callers name the file ("Could not open 'NAME': ..."), as qemu-img does. On
 * error *out is left as it was. */
int vd_rbd_filename_options(const char *filename, vd_tree **out, vd_error **errp);

/* Is filename one that vd_rbd_filename_options takes (does it start with "rbd:")? */
bool vd_rbd_filename_prefix(const char *filename);

#endif
