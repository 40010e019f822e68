/* Buffers for O_DIRECT I/O: those of 2 MiB and more start on a huge-page boundary and ask
 * for huge pages, so a request from them is physically contiguous and needs few segments:
 * the kernel does not split it into several device requests (this machine's disk takes at
 * most 254 segments, less than a 1 MiB request of scattered 4 KiB pages). */
#ifndef VD_UTIL_IOBUF_H
#define VD_UTIL_IOBUF_H

#include <stddef.h>

/* n bytes (at least 4 KiB aligned), or NULL without the memory; free() releases it. */
void *vd_io_buffer_alloc(size_t n);

#endif
