/* The write-recording filter (drivers/logwrites.c), like Linux dm-log-writes: a filename
 * `logwrites:LOG:PATH` opens PATH through a filter that appends every change reaching the
 * file, and every completed flush, in order, to LOG. tests/crash/ replays such a log to
 * build the file as a crash at any point could leave it. LOG may not contain ':'.
 *
 * Several files can share one log, so that a crash state of all of them (a job's source
 * and target, a backing chain) is one prefix of it: `logwrites:LOG#N:PATH` (N from 1 to
 * VD_LOGW_MAX_FILES - 1) appends PATH's records, marked as file N, to a LOG that a filter
 * opened as `logwrites:LOG:PATH` (file 0) created first. Each record is appended by one
 * write to a file opened for appending, after its request completed, so a request that
 * waited for another's completion comes after it in the log.
 *
 * LOG format (little-endian): a header of VD_LOGW_MAGIC (8 bytes) and file 0's size when
 * recording began (u64), then records of a fixed part (type u32, file u32, off u64,
 * len u64, aux u64) followed, for VD_LOGW_WRITE, by len bytes of data. A record is
 * appended when its request has completed; a failed request is not recorded. */
#ifndef VD_LOGWRITES_H
#define VD_LOGWRITES_H

#include "block/block.h"

#define VD_LOGWRITES_PREFIX "logwrites:"
#define VD_LOGW_MAGIC "VDLOGW01"
#define VD_LOGW_HEADER_SIZE 16
#define VD_LOGW_RECORD_SIZE 32
#define VD_LOGW_MAX_FILES 16

enum {
    VD_LOGW_WRITE = 1,    /* data written at off */
    VD_LOGW_ZERO = 2,     /* [off, off+len) reads as zeros; extends the file if past its end */
    VD_LOGW_DISCARD = 3,  /* hole punched in [off, off+len), size kept */
    VD_LOGW_TRUNCATE = 4, /* the file's size became off */
    VD_LOGW_FLUSH = 5,    /* a flush completed: the first aux records of its file (those
                           * completed when it began) are durable */
};

extern const vd_driver vd_logwrites_driver;

/* Splits `logwrites:LOG:PATH` into freshly allocated log and path; errors name the part. */
int vd_logwrites_parse(const char *spec, char **log, char **path, vd_error **errp);
/* Makes `filter` (a node of vd_logwrites_driver) record the writes to the open `child` into
 * a new file `log` (truncated if it exists), or, for `LOG#N`, append them as file N to the
 * existing LOG. */
int vd_logwrites_wrap(vd_node *filter, vd_node *child, const char *log, vd_error **errp);

#endif
