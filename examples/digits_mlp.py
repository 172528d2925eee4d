"""A real data set: a NumPy MLP on scikit-learn's handwritten digits, trained by fusedadam.Adam.
=============================================================================================

``sklearn.datasets.load_digits`` (1797 8x8 images, bundled with scikit-learn, no download),
a seeded 75/25 train/test split, pixels scaled to [0, 1]. The network is
64 -> 128 (ReLU) -> 10 (softmax), float32, cross-entropy, minibatches of 32, Adam with
lr=1e-3; forward and backward passes are plain NumPy. Prints the test accuracy after each
epoch, then trains again with ``backend="numpy"`` (the pure-NumPy reference) and compares
the time spent inside ``optimizer.step`` -- and the weights, which are bit-identical since
the compiled kernel and the reference round every operation the same way.

Needs scikit-learn (``pip install scikit-learn``); without it, it says so and exits.

    ``python examples/digits_mlp.py [--fast] [--out DIR]``
"""

import sys
import time

import numpy as np

import fusedadam as fa
from _common import parse_args, pyplot, save, softmax_cross_entropy

HIDDEN, BATCH, LR = 128, 32, 1e-3


def load(seed=0):
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    y = digits.target
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = len(y) // 4
    test, train = order[:n_test], order[n_test:]
    return X[train], y[train], X[test], y[test]


def init_params(rng, n_in, n_out):
    W1 = (rng.standard_normal((n_in, HIDDEN)) * np.sqrt(2.0 / n_in)).astype(np.float32)
    W2 = (rng.standard_normal((HIDDEN, n_out)) * np.sqrt(1.0 / HIDDEN)).astype(np.float32)
    return [W1, np.zeros(HIDDEN, np.float32), W2, np.zeros(n_out, np.float32)]


def forward(params, X):
    W1, b1, W2, b2 = params
    h = np.maximum(X @ W1 + b1, 0.0)
    return h, h @ W2 + b2


def loss_and_grads(params, X, y):
    W1, b1, W2, b2 = params
    h, logits = forward(params, X)
    loss, d_logits = softmax_cross_entropy(logits, y)
    d_h = (d_logits @ W2.T) * (h > 0)
    grads = [X.T @ d_h, d_h.sum(axis=0), h.T @ d_logits, d_logits.sum(axis=0)]
    return loss, [g.astype(np.float32, copy=False) for g in grads]


def accuracy(params, X, y):
    return float(np.mean(forward(params, X)[1].argmax(axis=1) == y))


def train(data, epochs, backend, verbose):
    X_train, y_train, X_test, y_test = data
    rng = np.random.default_rng(1)
    params = init_params(rng, X_train.shape[1], 10)
    opt = fa.Adam(params, lr=LR, backend=backend)
    step_time, history = 0.0, []
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(y_train))
        losses = []
        for start in range(0, len(order), BATCH):
            batch = order[start : start + BATCH]
            loss, grads = loss_and_grads(params, X_train[batch], y_train[batch])
            losses.append(loss)
            t0 = time.perf_counter()
            opt.step(grads)
            step_time += time.perf_counter() - t0
        acc = accuracy(params, X_test, y_test)
        history.append((float(np.mean(losses)), acc))
        if verbose:
            print(
                f"epoch {epoch:2d}  train loss {history[-1][0]:.4f}  test accuracy {100 * acc:.2f}%"
            )
    return params, history, step_time


def main(argv=None):
    args = parse_args(__doc__, argv)
    try:
        data = load()
    except ImportError:
        print("scikit-learn is not installed (pip install scikit-learn): skipping")
        return 0
    epochs = 2 if args.fast else 30
    n_params = sum(p.size for p in init_params(np.random.default_rng(0), 64, 10))
    print(
        f"digits: {len(data[1])} train / {len(data[3])} test images, MLP 64-{HIDDEN}-10 "
        f"({n_params} parameters), Adam lr={LR}, batch {BATCH}"
    )
    params, history, t_compiled = train(data, epochs, "auto", verbose=True)
    ref_params, _, t_numpy = train(data, epochs, "numpy", verbose=False)
    n_steps = epochs * -(-len(data[1]) // BATCH)
    identical = all(np.array_equal(a, b) for a, b in zip(params, ref_params))
    print(f"final test accuracy {100 * history[-1][1]:.2f}%")
    print(
        f"time in optimizer.step over {n_steps} steps: fusedadam "
        f"({fa.backend_info()['simd']}) {t_compiled * 1e3:.1f} ms "
        f"({t_compiled / n_steps * 1e6:.1f} us/step), NumPy reference "
        f"{t_numpy * 1e3:.1f} ms ({t_numpy / n_steps * 1e6:.1f} us/step)"
    )
    print(f"weights after training bit-identical between the two backends: {identical}")
    plt = pyplot()
    if plt is not None:
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
        left.plot([h[0] for h in history], marker="o", ms=3, label=f"Adam, lr={LR}")
        left.set(title="training loss", xlabel="epoch", yscale="log")
        right.plot([100 * h[1] for h in history], marker="o", ms=3, label="test set")
        right.set(title="test accuracy (%)", xlabel="epoch")
        for ax in (left, right):
            ax.grid(True, alpha=0.3)
            ax.legend()
        save(fig, args, "digits_mlp.png")
    return 0 if identical else 1


if __name__ == "__main__":
    # Exit only on failure: sphinx-gallery runs this file too, and a sys.exit(0) would
    # end the documentation build.
    if main() != 0:
        sys.exit(1)
