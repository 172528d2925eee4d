"""fusedadam.distributed's flat layout, without MPI: buckets, shards, alignment, lookups."""

import numpy as np
import pytest

from fusedadam.distributed._layout import (
    MAX_COLLECTIVE_ELEMENTS,
    aligned_zeros,
    align_elements,
    copy_overlaps,
    plan_segments,
)

SHAPES = [(7,), (0,), (131,), (1,), (64, 3), (0, 5)]


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("bucket", [1, 40, 64, 1000, 1 << 22])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shards_partition_the_buffer_evenly_and_aligned(world, bucket, dtype):
    (segment,) = plan_segments([[(s, dtype) for s in SHAPES]], world, bucket)
    unit = world * align_elements(dtype)
    assert segment.size == sum(int(np.prod(s)) for s in SHAPES)
    assert segment.padded % unit == 0 and 0 <= segment.padded - segment.size < unit
    owner = np.full(segment.padded, -1)
    for rank in range(world):
        ranges = segment.shard_ranges(rank)
        assert sum(stop - start for start, stop, _ in ranges) == segment.shard_size
        offset = 0
        for start, stop, shard_offset in ranges:
            assert shard_offset == offset and start % align_elements(dtype) == 0
            assert (owner[start:stop] == -1).all()
            owner[start:stop] = rank
            offset += stop - start
    assert (owner >= 0).all()  # every element has exactly one owner
    lengths = {stop - start for start, stop in segment.buckets()[:-1]}
    assert len(lengths) <= 1  # equal buckets, the last may be shorter


def test_params_lie_end_to_end_and_are_found_by_position():
    (segment,) = plan_segments([[(s, np.float32) for s in SHAPES]], 3, 64)
    assert segment.offsets == (0, 7, 7, 138, 139, 331)
    assert [segment.param_at(p) for p in (0, 6, 7, 137, 138, 139, 330)] == [0, 0, 2, 2, 3, 4, 4]
    assert segment.param_at(segment.size) is None  # padding


def test_groups_and_dtypes_make_separate_segments_in_order():
    segments = plan_segments(
        [[((3,), np.float32), ((2,), np.float64), ((4,), np.float32)], [((5,), np.float64)]],
        2,
        1 << 22,
    )
    assert [(s.group, s.dtype, s.param_indices) for s in segments] == [
        (0, np.float32, (0, 2)),
        (0, np.float64, (1,)),
        (1, np.float64, (3,)),
    ]


def test_buckets_keep_every_collective_count_below_2_to_31():
    """A group of more than 2**31 elements is cut into buckets of at most 2**30."""
    shapes = [((1 << 31) + 12345,), (7,), ((1 << 30) + 3,)]
    for world in (1, 3, 64):
        (segment,) = plan_segments([[(s, np.float32) for s in shapes]], world, 1 << 40)
        buckets = segment.buckets()
        assert buckets[0][0] == 0 and buckets[-1][1] == segment.padded >= segment.size
        assert all(a[1] == b[0] for a, b in zip(buckets, buckets[1:]))
        assert all(0 < stop - start <= MAX_COLLECTIVE_ELEMENTS for start, stop in buckets)
        assert all((stop - start) % (world * 16) == 0 for start, stop in buckets)
        assert segment.padded - segment.size < world * 16


@pytest.mark.parametrize("n", [0, 1, 17, 1000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8])
def test_aligned_zeros(n, dtype):
    a = aligned_zeros(n, dtype)
    assert a.shape == (n,) and a.dtype == dtype and not a.any()
    assert n == 0 or a.ctypes.data % 64 == 0  # an empty array's address is meaningless


def test_copy_overlaps_copies_only_the_intersections():
    dst = np.full(10, -1.0)
    copy_overlaps(dst, 100, [(95, np.arange(8.0)), (108, np.arange(5.0) + 50)])
    assert dst.tolist() == [5, 6, 7, -1, -1, -1, -1, -1, 50, 51]
