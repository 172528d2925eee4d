"""Where every element lives: flat per-(group, dtype) buffers, buckets and rank shards.

A *segment* is the params of one group that share one dtype, laid end to end (in param
order, no gaps) in one flat buffer. Only the tail is padded, so that the buffer length is
a multiple of ``world_size * align`` elements, ``align`` being 64 bytes' worth of
elements: every shard then starts on a 64-byte boundary of the (64-byte aligned) buffer.

The buffer is cut into *buckets* of ``bucket`` elements (the last one shorter), each a
multiple of ``world_size * align`` long, and each bucket is split into ``world_size``
equal contiguous *chunks*: rank ``r`` owns chunk ``r`` of every bucket. With one bucket
(every segment smaller than the bucket size) a rank's shard is one contiguous range of
the flat buffer, exactly DeepSpeed's ZeRO layout; with several it is one range per
bucket, which is what lets one bucket's communication overlap another's update while
each collective stays on a contiguous buffer.

Element positions are world-size independent (padding is only at the end), which is what
makes a checkpoint saved at one world size readable at any other.
"""

from dataclasses import dataclass

import numpy as np

from fusedadam import _precision

ALIGN_BYTES = 64

#: Largest element count handed to one collective. MPI counts are C ints and Open MPI has
#: no large-count collectives, so no bucket is ever longer than this (2**30, well below
#: 2**31 - 1, leaving room for implementations that multiply counts by the world size).
MAX_COLLECTIVE_ELEMENTS = 1 << 30


def align_elements(dtype):
    """How many elements of ``dtype`` make 64 bytes (1 for items wider than that)."""
    itemsize = np.dtype(dtype).itemsize
    return max(1, ALIGN_BYTES // itemsize)


def aligned_zeros(n, dtype):
    """A zero-filled 1-d array of ``n`` elements whose data starts on a 64-byte boundary."""
    dtype = np.dtype(dtype)
    raw = np.zeros(n * dtype.itemsize + ALIGN_BYTES, dtype=np.uint8)
    start = (-raw.ctypes.data) % ALIGN_BYTES
    return raw[start : start + n * dtype.itemsize].view(dtype)


@dataclass(frozen=True)
class Segment:
    """One group's params of one dtype in one flat buffer, and how ranks share it.

    Attributes
    ----------
    group : int
        Index of the param group.
    dtype : numpy.dtype
    param_indices : tuple of int
        Positions of the params over all groups (the state_dict keys), in buffer order.
    shapes : tuple of tuple
    offsets : tuple of int
        Flat offset of each param in the buffer.
    size : int
        Real elements (sum of the param sizes).
    padded : int
        Buffer length: ``size`` rounded up to a multiple of ``world_size * align``.
    bucket : int
        Bucket length, a multiple of ``world_size * align``.
    world_size : int
    """

    group: int
    dtype: np.dtype
    param_indices: tuple
    shapes: tuple
    offsets: tuple
    size: int
    padded: int
    bucket: int
    world_size: int

    def buckets(self):
        """``[(start, stop), ...]``: the flat ranges of the buckets (none when empty)."""
        return [
            (start, min(start + self.bucket, self.padded))
            for start in range(0, self.padded, self.bucket)
        ]

    def chunk(self, bucket_range, rank):
        """The flat range of ``rank``'s chunk of the bucket ``bucket_range``."""
        start, stop = bucket_range
        length = (stop - start) // self.world_size
        return start + rank * length, start + (rank + 1) * length

    @property
    def shard_size(self):
        """Elements each rank owns (its chunks of every bucket, padding included)."""
        return self.padded // self.world_size

    def shard_ranges(self, rank):
        """``[(flat_start, flat_stop, shard_offset), ...]``: ``rank``'s chunks, in order."""
        ranges, offset = [], 0
        for bucket_range in self.buckets():
            start, stop = self.chunk(bucket_range, rank)
            ranges.append((start, stop, offset))
            offset += stop - start
        return ranges

    def param_at(self, flat_position):
        """The param index (over all groups) holding ``flat_position``; None in padding."""
        if flat_position >= self.size:
            return None
        # side="right": an empty param shares its offset with the next one and owns nothing.
        k = int(np.searchsorted(self.offsets, flat_position, side="right")) - 1
        return self.param_indices[k]

    def param_sizes(self):
        return [int(np.prod(shape, dtype=np.int64)) for shape in self.shapes]

    def to_meta(self):
        """JSON-able description (checkpoint manifests and shard state_dicts)."""
        return {
            "group": self.group,
            "dtype": _dtype_text(self.dtype),
            "param_indices": list(self.param_indices),
            "shapes": [list(s) for s in self.shapes],
            "offsets": list(self.offsets),
            "size": self.size,
            "padded": self.padded,
            "bucket": self.bucket,
            "world_size": self.world_size,
        }

    @classmethod
    def from_meta(cls, meta):
        return cls(
            meta["group"],
            _dtype_of_text(meta["dtype"]),
            tuple(meta["param_indices"]),
            tuple(tuple(s) for s in meta["shapes"]),
            tuple(meta["offsets"]),
            meta["size"],
            meta["padded"],
            meta["bucket"],
            meta["world_size"],
        )


def _dtype_text(dtype):
    """A dtype as a segment's meta spells it: NumPy's ``str`` (``"<f4"``), or the name of
    bfloat16 (whose ``str`` is only ``"<V2"``)."""
    return dtype.name if dtype == _precision.BFLOAT16 else dtype.str


def _dtype_of_text(text):
    return _precision.BFLOAT16 if text == _precision.BFLOAT16.name else np.dtype(text)


def plan_segments(group_params, world_size, bucket_elements):
    """The segments of every group, in group order then dtype order of first appearance.

    Parameters
    ----------
    group_params : list of list of (shape, dtype)
        Per group, its params' shapes and dtypes in order.
    world_size : int
    bucket_elements : int
        Upper bound on a bucket's length (rounded down to a multiple of
        ``world_size * align``, and capped at :data:`MAX_COLLECTIVE_ELEMENTS`).
    """
    segments, index = [], 0
    for gi, params in enumerate(group_params):
        by_dtype = {}
        for k, (shape, dtype) in enumerate(params):
            by_dtype.setdefault(np.dtype(dtype), []).append((index + k, tuple(shape)))
        index += len(params)
        for dtype, members in by_dtype.items():
            unit = world_size * align_elements(dtype)
            offsets, size = [], 0
            for _, shape in members:
                offsets.append(size)
                size += int(np.prod(shape, dtype=np.int64))
            padded = -(-size // unit) * unit
            cap = min(bucket_elements, MAX_COLLECTIVE_ELEMENTS)
            bucket = max(unit, cap // unit * unit)
            segments.append(
                Segment(
                    gi,
                    dtype,
                    tuple(i for i, _ in members),
                    tuple(s for _, s in members),
                    tuple(offsets),
                    size,
                    padded,
                    bucket,
                    world_size,
                )
            )
    return segments


def copy_overlaps(dst, dst_start, sources):
    """Copy into ``dst`` (flat positions ``dst_start`` on) what ``sources`` hold of it.

    ``sources`` is an iterable of ``(src_start, src)`` pairs of 1-d arrays, each covering
    flat positions ``src_start`` on. Positions no source covers are left as they are.
    """
    dst_stop = dst_start + dst.size
    for src_start, src in sources:
        lo, hi = max(dst_start, src_start), min(dst_stop, src_start + src.size)
        if lo < hi:
            dst[lo - dst_start : hi - dst_start] = src[lo - src_start : hi - src_start]
