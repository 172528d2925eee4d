"""``python -m fusedadam.distributed CHECKPOINT_DIR OUTPUT``: consolidate a sharded checkpoint.

Reads the shard files of a checkpoint saved by ``ShardedOptimizer.save`` at any world size
(one process, no MPI run needed; checksums verified) and writes the single-process params
and ``state_dict``: to an ``.npz`` file (``params/<i>`` plus
:func:`fusedadam.flatten_state_dict`'s entries; a callable hyperparameter cannot be stored
there) or, for any other name, a pickle of ``{"params": [...], "state_dict": {...}}``.
"""

import argparse
import pickle
import sys

import numpy as np

from fusedadam import flatten_state_dict
from fusedadam.distributed import consolidate_checkpoint


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m fusedadam.distributed", description=__doc__.splitlines()[0]
    )
    parser.add_argument("checkpoint", help="directory written by ShardedOptimizer.save")
    parser.add_argument("output", help="OUTPUT.npz, or any other name for a pickle")
    args = parser.parse_args(argv)
    params, state_dict = consolidate_checkpoint(args.checkpoint)
    if args.output.endswith(".npz"):
        arrays = {f"params/{i}": p for i, p in enumerate(params)}
        arrays.update(flatten_state_dict(state_dict))
        with open(args.output, "wb") as f:
            np.savez(f, **arrays)
    else:
        with open(args.output, "wb") as f:
            pickle.dump(
                {"params": params, "state_dict": state_dict}, f, protocol=pickle.HIGHEST_PROTOCOL
            )
    n = sum(p.size for p in params)
    print(
        f"{args.checkpoint}: {len(params)} params ({n} elements), "
        f"{len(state_dict['state'])} state entries -> {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
