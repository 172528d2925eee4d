"""Sharded step cost per rank: time, state memory, communication volume and overlap.

Run under MPI, one OpenMP thread per rank::

    OMP_NUM_THREADS=1 mpiexec -n 2 -bind-to none python -m mpi4py bench/distributed.py \
        --sizes 1e6,1e7 --out bench/results/distributed_2.json
    python bench/distributed.py --report bench/results/distributed_*.json

For each parameter count N (one float32 array, AdamW) and bucket size it measures, on
every rank (the table shows the slowest rank):

* ``step``: ``ShardedOptimizer.step()`` with the gradients already in ``opt.grads``
  (median of ``--repeats`` samples of ``--steps`` steps, a barrier around each sample);
* ``single``: ``fusedadam.AdamW.step`` on the whole N in one process (the 1-rank baseline);
* ``comm``: the same reduce-scatters and all-gathers, blocking, with no update (what the
  step would pay if nothing overlapped);
* ``compute``: the shard's averaging, non-finite scans and updates alone, no
  communication;
* ``overlap`` = (comm + compute - step) / comm: the share of communication time hidden
  behind computation (0 = none, 1 = all; noisy when comm is tiny);
* ``state``: bytes of optimizer state this rank holds (its arrays' ``nbytes``) and the
  bytes NumPy allocated during the first step (``tracemalloc``; state plus temporaries);
* ``volume``: bytes this rank hands to collectives per step, against 2x the param bytes.
"""

import argparse
import json
import os
import statistics
import sys
import time
import tracemalloc

import numpy as np


def _median_time(fn, comm, steps, repeats):
    samples = []
    fn()  # warm-up
    for _ in range(repeats):
        comm.Barrier()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        comm.Barrier()
        samples.append((time.perf_counter() - t0) / steps)
    return statistics.median(samples)


def measure(n, bucket, steps, repeats):
    from mpi4py import MPI

    import fusedadam as fa
    from fusedadam.distributed import ShardedOptimizer

    comm = MPI.COMM_WORLD
    rng = np.random.default_rng(0)
    param = rng.standard_normal(n).astype(np.float32)
    grad = (rng.standard_normal(n) * 1e-3).astype(np.float32)

    tracemalloc.start()
    opt = ShardedOptimizer(fa.AdamW, [param], comm, bucket_elements=bucket, num_threads=1)
    opt.grads[0][...] = grad
    before = tracemalloc.get_traced_memory()[0]
    opt.step()  # allocates the state lazily
    first_step_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    state_bytes = sum(
        v.nbytes for s in opt.state_dict()["shards"] for k, v in s.items() if k != "param"
    )

    step = _median_time(opt.step, comm, steps, repeats)

    single_opt = fa.AdamW([param.copy()], num_threads=1)
    single = _median_time(lambda: single_opt.step([grad]), comm, steps, repeats)

    buckets = opt._buckets
    flat_grads, reduced, flat_params = opt._flat_grads, opt._reduced, opt._flat_params

    def comm_only():
        for si, b_start, b_stop, _, offset, length, _ in buckets:
            comm.Reduce_scatter_block(
                flat_grads[si][b_start:b_stop], reduced[si][offset : offset + length], op=MPI.SUM
            )
        for si, b_start, b_stop, *_ in buckets:
            comm.Allgather(MPI.IN_PLACE, flat_params[si][b_start:b_stop])

    def compute_only():
        for si, _, _, _, offset, length, unit in buckets:
            chunk = reduced[si][offset : offset + length]
            if comm.Get_size() > 1:  # grad_reduction="mean"
                np.divide(chunk, comm.Get_size(), out=chunk)
            np.isfinite(chunk).all()
            unit.run(chunk, 1.0)  # the shard's engine, as planned by the last step

    comm_time = _median_time(comm_only, comm, steps, repeats)
    compute = _median_time(compute_only, comm, steps, repeats)
    row = {
        "n": n,
        "ranks": comm.Get_size(),
        "bucket_elements": bucket,
        "buckets_per_rank": len(buckets),
        "step_s": step,
        "single_s": single,
        "comm_s": comm_time,
        "compute_s": compute,
        "overlap": (comm_time + compute - step) / comm_time if comm_time > 0 else None,
        "state_bytes": state_bytes,
        "first_step_alloc_bytes": first_step_bytes,
        "single_state_bytes": 2 * param.nbytes,
        "comm_bytes_per_step": opt.comm_bytes_per_step,
        "param_bytes": param.nbytes,
    }
    return comm.gather(row, root=0)


def report(paths):
    rows = []
    for path in paths:
        with open(path) as f:
            rows += json.load(f)["results"]
    rows.sort(key=lambda r: (r["n"], r["bucket_elements"], r["ranks"]))
    print(
        "| N | ranks | buckets | step (ms) | 1-process step (ms) | comm alone (ms) | "
        "compute alone (ms) | overlap | state/rank (MB) | 1-process state (MB) | "
        "bytes to collectives / param bytes |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        overlap = "n/a" if r["overlap"] is None else f"{r['overlap']:.2f}"
        print(
            f"| {r['n']:.0e} | {r['ranks']} | {r['buckets_per_rank']} | "
            f"{1e3 * r['step_s']:.2f} | {1e3 * r['single_s']:.2f} | "
            f"{1e3 * r['comm_s']:.2f} | {1e3 * r['compute_s']:.2f} | {overlap} | "
            f"{r['state_bytes'] / 1e6:.1f} | {r['single_state_bytes'] / 1e6:.1f} | "
            f"{r['comm_bytes_per_step'] / r['param_bytes']:.3f} |"
        )


def model(paths, link_gbps, latency_us, cores_per_node, bucket_elements):
    """Predicted step time and memory per node for 7B and 70B parameters, 8-64 nodes.

    compute = c * N / nodes, with c the per-element update cost of one rank here (the
    lowest compute_s / (n / ranks) in the result files) divided by ``cores_per_node``
    (one rank per node using all its cores, perfect scaling: optimistic, the update is
    memory-bound); comm = 2 * (nodes - 1) / nodes * 4N bytes / link bandwidth (ring
    reduce-scatter + all-gather of float32, the volume of one allreduce) + a latency of
    2 * (nodes - 1) * latency per bucket. The step lies between max(compute, comm) (full
    overlap) and compute + comm (none).
    """
    rows = []
    for path in paths:
        with open(path) as f:
            rows += json.load(f)["results"]
    c_core = min(r["compute_s"] / (r["n"] / r["ranks"]) for r in rows)
    c_node = c_core / cores_per_node
    bandwidth = link_gbps / 8 * 1e9
    print(
        f"c = {c_core * 1e9:.2f} ns/element on one core here (measured), "
        f"{c_node * 1e9:.3f} ns/element per node assumed ({cores_per_node} cores); link "
        f"{link_gbps:g} Gb/s, latency {latency_us:g} us, buckets of {bucket_elements} "
        "elements"
    )
    print(
        "| params | nodes | compute (s) | comm (s) | step (s), full .. no overlap | "
        "state per node (GB) | params+grads per node (GB) |"
    )
    print("|---|---|---|---|---|---|---|")
    for n in (7e9, 70e9):
        for nodes in (8, 16, 32, 64):
            compute = c_node * n / nodes
            buckets = -(-n // bucket_elements)
            comm = (
                2 * (nodes - 1) / nodes * 4 * n / bandwidth
                + 2 * (nodes - 1) * latency_us * 1e-6 * buckets
            )
            print(
                f"| {n / 1e9:.0f}B | {nodes} | {compute:.3f} | {comm:.2f} | "
                f"{max(compute, comm):.2f} .. {compute + comm:.2f} | "
                f"{8 * n / nodes / 1e9:.1f} | {8 * n / 1e9:.0f} |"
            )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e6,1e7")
    parser.add_argument(
        "--buckets", default="4194304,1048576", help="bucket_elements values (comma-separated)"
    )
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="JSON file for the results (rank 0 writes it)")
    parser.add_argument(
        "--report",
        nargs="+",
        metavar="JSON",
        help="print a Markdown table from result files and exit",
    )
    parser.add_argument(
        "--model",
        nargs="+",
        metavar="JSON",
        help="print the 7B/70B scaling prediction calibrated on result files and exit",
    )
    parser.add_argument("--link-gbps", type=float, default=200.0)
    parser.add_argument("--latency-us", type=float, default=5.0)
    parser.add_argument("--cores-per-node", type=int, default=16)
    args = parser.parse_args(argv)
    if args.report:
        report(args.report)
        return 0
    if args.model:
        model(
            args.model,
            args.link_gbps,
            args.latency_us,
            args.cores_per_node,
            int(args.buckets.split(",")[0]),
        )
        return 0
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    results = []
    for n in (int(float(s)) for s in args.sizes.split(",")):
        for bucket in (int(b) for b in args.buckets.split(",")):
            per_rank = measure(n, bucket, args.steps, args.repeats)
            if comm.Get_rank() == 0:
                slowest = max(per_rank, key=lambda r: r["step_s"])
                results.append(slowest)
                print(json.dumps(slowest), flush=True)
    if comm.Get_rank() == 0 and args.out:
        meta = {
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "mpi": MPI.Get_library_version().splitlines()[0].strip(),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
        }
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
