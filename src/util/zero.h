/* Zero detection shared by convert's sparse scan and the qcow2 check. */
#ifndef VD_UTIL_ZERO_H
#define VD_UTIL_ZERO_H

#include <stdbool.h>
#include <stddef.h>

/* True when all len bytes at p are zero. */
bool vd_buf_is_zero(const void *p, size_t len);

#endif
