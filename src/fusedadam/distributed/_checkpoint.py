"""Checkpoint files of a sharded optimizer: one file per rank, a manifest written last.

A save writes, into one directory (shared by the ranks)::

    shard-<id>-<rank>-of-<world>.npz   each rank's params and state chunks (its shard)
    meta-<id>.pkl                      layout, steps, hyperparameters (written by rank 0)
    manifest.json                      names and SHA-256 of the files above (rank 0, last)

``<id>`` is new for every save, so a save never overwrites a file the current manifest
names: every file goes to a temporary name, is flushed to disk and renamed; the manifest
is replaced last, by one atomic rename. A save killed at any point before that rename
leaves the previous manifest and every file it names intact (the orphans are removed by
the next successful save). Loading checks the SHA-256 of every file it opens.

``meta-<id>.pkl`` is a pickle (hyperparameters may be callables): load checkpoints only
from sources you trust, as with ``pickle`` or ``torch.load``.
"""

import hashlib
import json
import os
import pickle
import uuid

import numpy as np

from fusedadam import _precision
from fusedadam.distributed._layout import Segment, copy_overlaps

FORMAT = "fusedadam-sharded-checkpoint/1"
MANIFEST = "manifest.json"
_OWN_PREFIXES = ("shard-", "meta-", ".shard-", ".meta-", ".manifest")


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_directory(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not supported on this platform or file system
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(directory, name, write):
    """``write(file)`` into a temporary file, flush it to disk, rename it to ``name``.

    Returns ``{"file": name, "sha256": ..., "bytes": ...}``.
    """
    final = os.path.join(directory, name)
    temporary = os.path.join(directory, f".{name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    entry = {"file": name, "sha256": _sha256(temporary), "bytes": os.path.getsize(temporary)}
    os.replace(temporary, final)
    return entry


def _commit_manifest(temporary, final):
    """The one step that makes a save current (an atomic rename)."""
    os.replace(temporary, final)
    _fsync_directory(os.path.dirname(final))


def save(comm, directory, shard_arrays, meta):
    """Collective: write this rank's ``shard_arrays`` and (rank 0) ``meta``; commit.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
    directory : str
        Created if missing; must be the same shared directory on every rank.
    shard_arrays : dict of str to ndarray
        This rank's arrays (``np.savez`` names).
    meta : dict
        Picklable; only rank 0's is written.
    """
    rank, world = comm.Get_rank(), comm.Get_size()
    if rank == 0:
        os.makedirs(directory, exist_ok=True)
    save_id = comm.bcast(uuid.uuid4().hex[:12] if rank == 0 else None, root=0)
    comm.Barrier()  # the directory exists
    name = f"shard-{save_id}-{rank:05d}-of-{world:05d}.npz"
    error, entry = None, None
    try:
        stored = {k: _storable(v) for k, v in shard_arrays.items()}
        entry = _write_atomically(directory, name, lambda f: np.savez(f, **stored))
    except OSError as exc:
        error = f"rank {rank}: {exc}"
    entries = comm.gather((error, entry), root=0)
    failure = None
    if rank == 0:
        errors = [e for e, _ in entries if e is not None]
        if errors:
            failure = "; ".join(errors)
        else:
            try:
                meta_entry = _write_atomically(
                    directory,
                    f"meta-{save_id}.pkl",
                    lambda f: pickle.dump(meta, f, protocol=pickle.HIGHEST_PROTOCOL),
                )
                manifest = {
                    "format": FORMAT,
                    "save_id": save_id,
                    "world_size": world,
                    "meta": meta_entry,
                    "shards": [e for _, e in entries],
                }
                temporary = os.path.join(directory, f".{MANIFEST}.tmp-{os.getpid()}")
                with open(temporary, "w") as f:
                    json.dump(manifest, f, indent=1)
                    f.flush()
                    os.fsync(f.fileno())
                _commit_manifest(temporary, os.path.join(directory, MANIFEST))
                _remove_orphans(directory, manifest)
            except OSError as exc:
                failure = f"rank 0: {exc}"
    failure = comm.bcast(failure, root=0)
    if failure is not None:
        raise OSError(
            f"checkpoint save to {directory!r} failed ({failure}); the previous "
            "checkpoint there, if any, is unchanged"
        )


def _storable(array):
    """``.npy`` has no bfloat16: bfloat16 state is stored as its uint16 bits (``read_flat``
    views them back as the dtype of its destination)."""
    return array.view(np.uint16) if array.dtype == _precision.BFLOAT16 else array


def dtype_named(name):
    """The dtype of a name in a checkpoint's meta (``"bfloat16"`` included)."""
    for dtype in _precision.PARAM_DTYPES:
        if dtype.name == name:
            return dtype
    return np.dtype(name)


def _remove_orphans(directory, manifest):
    keep = {manifest["meta"]["file"]} | {e["file"] for e in manifest["shards"]}
    for name in os.listdir(directory):
        if name.startswith(_OWN_PREFIXES) and name not in keep:
            try:
                os.remove(os.path.join(directory, name))
            except OSError:
                pass


class CheckpointReader:
    """Reads a checkpoint directory: manifest, meta, and any rank's shard, verified.

    Shard files are opened lazily (a rank reading its new shard opens only the old shards
    that overlap it) and each file's SHA-256 is checked before it is used.
    """

    def __init__(self, directory):
        self.directory = directory
        path = os.path.join(directory, MANIFEST)
        try:
            with open(path) as f:
                self.manifest = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no checkpoint in {directory!r} ({MANIFEST} missing)"
            ) from None
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} manifest")
        with open(self._verified(self.manifest["meta"]), "rb") as f:
            self.meta = pickle.load(f)
        self.world_size = self.manifest["world_size"]
        self.segments = [Segment.from_meta(m) for m in self.meta["segments"]]
        self._shards = {}

    def _verified(self, entry):
        path = os.path.join(self.directory, entry["file"])
        if not os.path.exists(path):
            raise ValueError(f"checkpoint file {path} is missing")
        if _sha256(path) != entry["sha256"]:
            raise ValueError(
                f"checkpoint file {path} fails its SHA-256 check (corrupt or partly written)"
            )
        return path

    def shard(self, rank):
        """The arrays of old rank ``rank``'s shard file (dict of name to ndarray)."""
        if rank not in self._shards:
            path = self._verified(self.manifest["shards"][rank])
            with np.load(path, allow_pickle=False) as npz:
                self._shards[rank] = {k: npz[k] for k in npz.files}
        return self._shards[rank]

    def read_flat(self, segment_index, name, dst, dst_start):
        """Fill ``dst`` with flat positions ``dst_start`` on of array ``name`` of a segment.

        ``name`` is ``"param"`` or a state name; reads only the old shards overlapping.
        """
        segment = self.segments[segment_index]
        dst_stop = dst_start + dst.size
        for old_rank in range(self.world_size):
            ranges = [
                (start, stop, offset)
                for start, stop, offset in segment.shard_ranges(old_rank)
                if start < dst_stop and dst_start < stop
            ]
            if not ranges:
                continue
            array = self.shard(old_rank)[f"s{segment_index}.{name}"]
            if dst.dtype == _precision.BFLOAT16 and array.dtype == np.uint16:
                array = array.view(dst.dtype)
            copy_overlaps(
                dst,
                dst_start,
                [(start, array[offset : offset + stop - start]) for start, stop, offset in ranges],
            )
