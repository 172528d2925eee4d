"""ZeRO-style sharded optimizer steps over MPI (mpi4py): ``ShardedOptimizer``.

Needs ``pip install mpi4py mpich`` (mpi4py and MPICH's ``mpich`` wheel, which
brings ``mpiexec``; a system MPI works as well). Not imported by ``import fusedadam``::

    from mpi4py import MPI
    import fusedadam as fa
    from fusedadam.distributed import ShardedOptimizer

    opt = ShardedOptimizer(fa.AdamW, params, comm=MPI.COMM_WORLD, lr=1e-3)
    params = opt.params                  # the optimizer's flat buffers, from now on
    ...                                  # backward writes into opt.grads (or pass grads)
    opt.step()                           # reduce-scatter, shard update, all-gather
    opt.save("ckpt")                     # per-rank shards + manifest, any world size loads
    params, state_dict = consolidate_checkpoint("ckpt")   # one process, no MPI

Run with ``mpiexec -n 4 python -m mpi4py train.py``: ``-m mpi4py`` makes an uncaught
exception on one rank abort the whole job instead of leaving the others waiting in a
collective; ``MPIEXEC_TIMEOUT=<seconds>`` (MPICH's Hydra) bounds the whole run.
"""

from fusedadam.distributed._consolidate import consolidate_checkpoint

__all__ = ["ShardedOptimizer", "consolidate_checkpoint"]


def __getattr__(name):
    # ShardedOptimizer needs mpi4py; consolidate_checkpoint (one process) does not.
    if name == "ShardedOptimizer":
        try:
            from fusedadam.distributed._optimizer import ShardedOptimizer
        except ImportError as exc:
            if exc.name != "mpi4py":
                raise
            raise ImportError(
                "fusedadam.distributed.ShardedOptimizer needs mpi4py: pip install mpi4py mpich",
                name="mpi4py",
            ) from exc
        return ShardedOptimizer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
