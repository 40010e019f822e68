/* Buffers for O_DIRECT I/O (iobuf.h). */
#include <stdlib.h>
#include <sys/mman.h>

#include "util/iobuf.h"

void *vd_io_buffer_alloc(size_t n)
{
    size_t huge = (size_t)2 << 20;
    void *p = NULL;
    if (posix_memalign(&p, n >= huge ? huge : 4096, n ? n : 4096) != 0) {
        return NULL;
    }
    if (n >= huge) {
        (void)madvise(p, n & ~(huge - 1), MADV_HUGEPAGE);  /* a hint; failure is harmless */
    }
    return p;
}
