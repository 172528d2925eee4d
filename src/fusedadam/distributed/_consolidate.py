"""The single-process form of sharded state: ``state_dict`` assembly and checkpoints.

Needs no MPI: :func:`consolidate_checkpoint` runs in one plain process (as DeepSpeed's
``zero_to_fp32`` does), so a checkpoint can be inspected or converted where mpi4py is not
installed.
"""

import numpy as np

from fusedadam.distributed._checkpoint import CheckpointReader, dtype_named

__all__ = ["consolidate_checkpoint", "single_process_state_dict"]


def single_process_state_dict(segments, steps, meta, full_flat):
    """The single-process ``state_dict`` from each segment's full flat state arrays.

    ``full_flat(si, name)`` returns segment ``si``'s whole flat array ``name``.
    """
    state, n_params = {}, 0
    for si, segment in enumerate(segments):
        gi = segment.group
        if not steps[gi]:
            continue
        names = meta["array_names"][si] if "array_names" in meta else meta["state_names"][gi]
        scalars = meta["scalars"][gi] if "scalars" in meta else {}
        for index, shape, offset in zip(segment.param_indices, segment.shapes, segment.offsets):
            size = int(np.prod(shape, dtype=np.int64))
            entry = {"step": steps[gi]}
            for name in names:
                flat = full_flat(si, name)
                entry[name] = flat[offset : offset + size].reshape(shape).copy()
            entry.update({name: np.array(v, dtype=np.float64) for name, v in scalars.items()})
            state[index] = entry
    groups = []
    for gi, hyper in enumerate(meta["param_groups"]):
        count = sum(len(s.param_indices) for s in segments if s.group == gi)
        groups.append({**hyper, "params": list(range(n_params, n_params + count))})
        n_params += count
    return {"state": dict(sorted(state.items())), "param_groups": groups}


def consolidate_checkpoint(directory):
    """The single-process ``(params, state_dict)`` of a checkpoint saved at any world size.

    Runs in one process (no MPI collective): reads every shard file, checking each one's
    SHA-256, as DeepSpeed's ``zero_to_fp32`` does for its checkpoints.

    Returns
    -------
    params : list of ndarray
        In param order, shaped as at construction.
    state_dict : dict
        Loadable by the single-process optimizer class (``load_state_dict``) or by a
        :class:`ShardedOptimizer` of any world size.
    """
    reader = CheckpointReader(directory)
    meta, segments = reader.meta, reader.segments
    n_params = sum(len(s.param_indices) for s in segments)
    params = [None] * n_params
    cache = {}

    def full_flat(si, name):
        if (si, name) not in cache:
            dtypes = meta["array_dtypes"][si] if "array_dtypes" in meta else {}
            dtype = dtype_named(dtypes[name]) if name in dtypes else segments[si].dtype
            flat = np.zeros(segments[si].padded, dtype)
            reader.read_flat(si, name, flat, 0)
            cache[si, name] = flat
        return cache[si, name]

    for si, segment in enumerate(segments):
        flat = full_flat(si, "param")
        for index, shape, offset in zip(segment.param_indices, segment.shapes, segment.offsets):
            size = int(np.prod(shape, dtype=np.int64))
            params[index] = flat[offset : offset + size].reshape(shape).copy()
    return params, single_process_state_dict(segments, meta["steps"], meta, full_flat)
