"""A small, independent qcow2 reader for tests: decodes the header, extensions, L1/L2 and
refcount structures of an image file, and pokes bytes, so tests can inspect layouts and
build damaged images without trusting vdisk's own parser. Big-endian throughout."""

import struct

MAGIC = 0x514649FB

# (name, offset, struct format) of the fixed header fields.
FIELDS = [
    ("magic", 0, ">I"),
    ("version", 4, ">I"),
    ("backing_file_offset", 8, ">Q"),
    ("backing_file_size", 16, ">I"),
    ("cluster_bits", 20, ">I"),
    ("size", 24, ">Q"),
    ("crypt_method", 32, ">I"),
    ("l1_size", 36, ">I"),
    ("l1_table_offset", 40, ">Q"),
    ("refcount_table_offset", 48, ">Q"),
    ("refcount_table_clusters", 56, ">I"),
    ("nb_snapshots", 60, ">I"),
    ("snapshots_offset", 64, ">Q"),
    ("incompatible_features", 72, ">Q"),
    ("compatible_features", 80, ">Q"),
    ("autoclear_features", 88, ">Q"),
    ("refcount_order", 96, ">I"),
    ("header_length", 100, ">I"),
    ("compression_type", 104, ">B"),
]
FIELD = {n: (o, f) for n, o, f in FIELDS}

EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875

OFFSET_MASK = 0x00FFFFFFFFFFFE00
COPIED = 1 << 63
COMPRESSED = 1 << 62
ZERO = 1


class Image:
    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            self.head = f.read(2 * 1024 * 1024)
        h = {}
        for name, off, fmt in FIELDS:
            n = struct.calcsize(fmt)
            if off + n <= len(self.head):
                h[name] = struct.unpack_from(fmt, self.head, off)[0]
        if h.get("version") == 2:
            h.update(incompatible_features=0, compatible_features=0, autoclear_features=0,
                     refcount_order=4, header_length=72, compression_type=0)
        self.h = h
        self.cluster_size = 1 << h["cluster_bits"]
        self.extl2 = bool(h["incompatible_features"] & (1 << 4))
        self.l2_entry_size = 16 if self.extl2 else 8
        self.l2_entries = self.cluster_size // self.l2_entry_size

    # ---- header extensions ----
    def extensions(self):
        """[(type, offset of the type field, data length)] in file order."""
        out = []
        off = self.h["header_length"]
        end = self.h["backing_file_offset"] or self.cluster_size
        while off + 8 <= min(end, len(self.head)):
            t, ln = struct.unpack_from(">II", self.head, off)
            out.append((t, off, ln))
            if t == EXT_END:
                break
            off += 8 + ((ln + 7) & ~7)
        return out

    # ---- raw access ----
    def read(self, off, n):
        with open(self.path, "rb") as f:
            f.seek(off)
            return f.read(n)

    def be64(self, off):
        return struct.unpack(">Q", self.read(off, 8))[0]

    def l1(self):
        n = self.h["l1_size"]
        data = self.read(self.h["l1_table_offset"], 8 * n)
        return list(struct.unpack(">%dQ" % (len(data) // 8), data))

    def l2(self, l2_offset):
        """Standard entries (the first u64 of extended entries)."""
        data = self.read(l2_offset, self.cluster_size)
        vals = struct.unpack(">%dQ" % (len(data) // 8), data)
        return list(vals[::2]) if self.extl2 else list(vals)

    def reftable(self):
        n = self.h["refcount_table_clusters"] * self.cluster_size // 8
        data = self.read(self.h["refcount_table_offset"], 8 * n)
        return list(struct.unpack(">%dQ" % (len(data) // 8), data))

    def first_l2(self):
        """Offset of the first allocated L2 table and its L1 index."""
        for i, e in enumerate(self.l1()):
            if e & OFFSET_MASK:
                return e & OFFSET_MASK, i
        return None, None

    def first_data(self):
        """(L2 offset, index in L2, entry) of the first allocated standard data entry."""
        for e in self.l1():
            l2o = e & OFFSET_MASK
            if not l2o:
                continue
            for j, d in enumerate(self.l2(l2o)):
                if d & OFFSET_MASK and not d & COMPRESSED:
                    return l2o, j, d
        return None, None, None

    def first_compressed(self):
        for e in self.l1():
            l2o = e & OFFSET_MASK
            if not l2o:
                continue
            for j, d in enumerate(self.l2(l2o)):
                if d & COMPRESSED:
                    return l2o, j, d
        return None, None, None


def poke(path, off, data):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


def poke_field(path, name, value):
    off, fmt = FIELD[name]
    poke(path, off, struct.pack(fmt, value))


def poke_be64(path, off, value):
    poke(path, off, struct.pack(">Q", value & 0xFFFFFFFFFFFFFFFF))


def poke_be32(path, off, value):
    poke(path, off, struct.pack(">I", value & 0xFFFFFFFF))


def truncate(path, length):
    with open(path, "r+b") as f:
        f.truncate(length)


def check_prealloc_layout(path):
    """For a preallocated image: every metadata cluster (header, refcount table and
    blocks, L1, L2 tables, snapshot table) must lie before the first data cluster, and
    data clusters must follow guest order (strictly increasing host offsets) with every
    guest cluster allocated. Returns (problems, metadata_bytes, data_clusters)."""
    img = Image(path)
    cs = img.cluster_size
    h = img.h
    problems = []
    meta = {0}

    def add_range(off, length):
        for c in range(off // cs, (off + max(length, 1) - 1) // cs + 1):
            meta.add(c)

    add_range(h["refcount_table_offset"], h["refcount_table_clusters"] * cs)
    for e in img.reftable():
        if e & ~0x1FF:
            meta.add((e & ~0x1FF) // cs)
    add_range(h["l1_table_offset"], h["l1_size"] * 8)
    if h["nb_snapshots"]:
        add_range(h["snapshots_offset"], cs)
    nb_guest = -(-h["size"] // cs)
    guest = 0
    prev = -1
    first_data = None
    unallocated = 0
    order_errors = 0
    for e in img.l1():
        l2o = e & OFFSET_MASK
        if not l2o:
            n = min(img.l2_entries, nb_guest - guest)
            unallocated += n
            guest += n
            continue
        meta.add(l2o // cs)
        for d in img.l2(l2o):
            if guest >= nb_guest:
                break
            guest += 1
            off = d & OFFSET_MASK
            if not off or d & COMPRESSED:
                unallocated += 1
                continue
            if first_data is None:
                first_data = off
            if off <= prev:
                order_errors += 1
                if order_errors <= 3:
                    problems.append("guest cluster %d at host 0x%x is not after the "
                                    "previous one (0x%x)" % (guest - 1, off, prev))
            prev = off
    if unallocated:
        problems.append("%d of %d guest clusters have no preallocated host cluster"
                        % (unallocated, nb_guest))
    if order_errors > 3:
        problems.append("%d guest clusters out of order in all" % order_errors)
    if first_data is not None:
        late = sorted(c for c in meta if c * cs >= first_data)
        if late:
            problems.append("%d metadata clusters lie after the first data cluster 0x%x "
                            "(first at 0x%x)" % (len(late), first_data, late[0] * cs))
    return problems, len(meta) * cs, nb_guest - unallocated


if __name__ == "__main__":
    import sys
    if len(sys.argv) == 3 and sys.argv[1] == "layout":
        probs, meta_bytes, ndata = check_prealloc_layout(sys.argv[2])
        print("metadata_bytes=%d data_clusters=%d" % (meta_bytes, ndata))
        for p in probs:
            print("problem: " + p)
        sys.exit(1 if probs else 0)
    sys.exit("usage: qcow2img.py layout IMAGE")
