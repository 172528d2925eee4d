"""Data-parallel training with a sharded optimizer: ``mpiexec -n 4 python -m mpi4py ...``.

A NumPy MLP (64 -> 128 ReLU -> 10 softmax, float32) on a seeded synthetic 10-class
problem (Gaussian clusters; no download, no scikit-learn). Every rank holds the model and
computes the gradient of its slice of each global batch of 128; the sum over ranks is the
global batch's gradient. ``ShardedOptimizer`` reduce-scatters it, each rank updates its
quarter of the Adam state, and the new params are all-gathered into ``opt.params``.

Rank 0 then trains the same model in one process with ``fusedadam.Adam`` on the whole
batches and prints both test accuracies: they agree to within the effect of summing the
batch gradient in a different order (slices per rank, then MPI's sum).

    mpiexec -n 4 python -m mpi4py examples/distributed_mlp.py [--fast] [--out DIR]
"""

import sys

import numpy as np

import fusedadam as fa

HIDDEN, CLASSES, FEATURES, BATCH, LR = 128, 10, 64, 128, 1e-3


def make_data(seed=0, n_train=4000, n_test=1000):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((CLASSES, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, n_train + n_test)
    X = (centers[y] + 2.2 * rng.standard_normal((len(y), FEATURES))).astype(np.float32)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def init_params(seed=1):
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((FEATURES, HIDDEN)) * np.sqrt(2 / FEATURES)).astype(np.float32),
        np.zeros(HIDDEN, np.float32),
        (rng.standard_normal((HIDDEN, CLASSES)) * np.sqrt(1 / HIDDEN)).astype(np.float32),
        np.zeros(CLASSES, np.float32),
    ]


def forward(params, X):
    W1, b1, W2, b2 = params
    h = np.maximum(X @ W1 + b1, 0.0)
    return h, h @ W2 + b2


def backward(params, X, y, scale, out):
    """Writes into ``out`` the gradient of ``scale * sum(cross-entropy)`` over (X, y)."""
    W1, _, W2, _ = params
    h, logits = forward(params, X)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    p *= scale
    d_h = (p @ W2.T) * (h > 0)
    np.matmul(X.T, d_h, out=out[0])
    np.sum(d_h, axis=0, out=out[1])
    np.matmul(h.T, p, out=out[2])
    np.sum(p, axis=0, out=out[3])


def accuracy(params, X, y):
    return float(np.mean(forward(params, X)[1].argmax(axis=1) == y))


def train_sharded(comm, data, epochs):
    from fusedadam.distributed import ShardedOptimizer

    X, y, X_test, y_test = data
    opt = ShardedOptimizer(fa.Adam, init_params(), comm, lr=LR, grad_reduction="sum")
    params = opt.params  # the optimizer's buffers from now on
    for epoch in range(epochs):
        order = np.random.default_rng(epoch).permutation(len(y))  # same on every rank
        for start in range(0, len(order), BATCH):
            batch = order[start : start + BATCH]
            mine = batch[comm.rank :: comm.size]  # this rank's slice
            backward(params, X[mine], y[mine], 1.0 / len(batch), out=opt.grads)
            opt.step()  # grads already in opt.grads: no copy
    return accuracy(params, X_test, y_test)


def train_single(data, epochs):
    X, y, X_test, y_test = data
    params = init_params()
    grads = [np.empty_like(p) for p in params]
    opt = fa.Adam(params, lr=LR)
    for epoch in range(epochs):
        order = np.random.default_rng(epoch).permutation(len(y))
        for start in range(0, len(order), BATCH):
            batch = order[start : start + BATCH]
            backward(params, X[batch], y[batch], 1.0 / len(batch), out=grads)
            opt.step(grads)
    return accuracy(params, X_test, y_test)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        from mpi4py import MPI
    except ImportError:
        print("mpi4py is not installed (pip install mpi4py mpich): skipping")
        return 0
    comm = MPI.COMM_WORLD
    epochs = 3 if "--fast" in argv else 15
    data = make_data()
    sharded = train_sharded(comm, data, epochs)
    if comm.rank == 0:
        single = train_single(data, epochs)
        print(
            f"{epochs} epochs, global batch {BATCH}: test accuracy sharded over "
            f"{comm.size} ranks {100 * sharded:.2f}%, single process {100 * single:.2f}%"
        )
        print(f"accuracy difference {100 * abs(sharded - single):.2f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
