/* The preallocated qcow2 layout (all metadata contiguous at the front, data behind it in
 * guest order): its size computation, shared with measure, and the writer that lays it
 * out. Private to qcow2-create.c and qcow2-layout.c. */
#ifndef VD_QCOW2_LAYOUT_H
#define VD_QCOW2_LAYOUT_H

#include <stdbool.h>
#include <stdint.h>

#include "block/block.h"
#include "block/drivers/qcow2/qcow2-format.h"

/* Every region is a whole number of clusters; positions are cluster indexes. */
typedef struct qcow2_layout {
    uint32_t cluster_bits;
    uint32_t refcount_order;
    bool extl2;
    uint64_t cluster_size;
    uint64_t l2_entries;         /* entries per L2 table */
    uint64_t data_clusters;      /* ceil(virtual size / cluster size) */
    uint64_t l1_size;            /* L1 entries = L2 tables */
    uint64_t l1_clusters;
    uint64_t refblocks;
    uint64_t reftable_clusters;
    uint64_t reftable_start;     /* always 1: right after the header */
    uint64_t refblock_start;
    uint64_t l1_start;
    uint64_t l2_start;
    uint64_t data_start;         /* guest cluster g lives at data_start + g */
    uint64_t total_clusters;     /* file size / cluster size */
} qcow2_layout;

/* QEMU's fixed point for the refcount structures needed to count `clusters` clusters plus
 * themselves (qcow2_refcount_metadata_size). generous adds the 1.5x reftable slack QEMU
 * uses when it grows a reftable. Returns refblocks + reftable clusters. */
uint64_t qcow2_refcount_fixed_point(uint64_t clusters, uint32_t cluster_bits,
                                    uint32_t refcount_order, bool generous,
                                    uint64_t *refblocks, uint64_t *table_clusters);

/* Computes the layout for a virtual size. The file size (total_clusters * cluster_size)
 * equals QEMU's qcow2_calc_prealloc_size, i.e. `qemu-img measure`'s fully allocated size.
 * Returns -EFBIG when the L1 table would exceed 32 MiB, -E2BIG when the preallocated
 * layout's reftable would exceed 8 MiB (l is still filled in then). */
int qcow2_layout_compute(uint64_t size, uint32_t cluster_bits, uint32_t refcount_order,
                         bool extl2, qcow2_layout *l);

/* Writes a preallocated image into the empty, writable `file`: header h (geometry fields
 * are filled in from l), reftable, refblocks, L1, L2 tables, then the data area according
 * to mode ("metadata": sparse, "falloc": fallocated, "full": zeros written), and flushes. */
int qcow2_layout_write(vd_node *file, const qcow2_layout *l, qcow2_header *h,
                       const char *mode, vd_error **errp);

#endif
