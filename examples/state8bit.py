"""8-bit optimizer state: the same training with float32 and with block-wise 8-bit moments.
==========================================================================================

``state_dtype="8bit"`` keeps Adam's two moments in one byte per element plus one float32
scale per block of 256 (2.03 bytes of state per parameter instead of 8). Does it train as
well? Two tasks, each run with float32 and with 8-bit state from the same initial weights
and the same minibatches, over three seeds:

- the digits MLP of ``digits_mlp.py`` (64 -> 128 -> 10 on scikit-learn's 8x8 digits; only
  its first weight matrix, 8192 elements, gets 8-bit state: params under 4096 elements
  keep float32 moments);
- a harder one: a 100 -> 256 -> 256 -> 10 MLP (93 000 parameters, every weight matrix in
  8 bits) on a 10-class ``sklearn.datasets.make_classification`` problem (24 000 samples,
  40 informative features, 3 clusters per class; generated, no download), AdamW.

Prints the final training loss and test accuracy of each run and the 8-bit minus float32
deltas; draws the training loss and test accuracy curves. Needs scikit-learn. A full run
trains for minutes, so the documentation build does not run it: the results and curves are
in the "8-bit optimizer state" section of the mixed precision page.

    ``python examples/state8bit.py [--fast] [--out DIR]``
"""

import sys

import numpy as np

import fusedadam as fa
from _common import parse_args, pyplot, save, softmax_cross_entropy


def digits_data(seed):
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    y = digits.target
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = len(y) // 4
    return X[order[n_test:]], y[order[n_test:]], X[order[:n_test]], y[order[:n_test]]


def synthetic_data(seed):
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=24_000, n_features=100, n_informative=40, n_redundant=20, n_classes=10,
        n_clusters_per_class=3, class_sep=1.5, flip_y=0.02, random_state=seed,
    )  # fmt: skip
    X = ((X - X.mean(axis=0)) / X.std(axis=0)).astype(np.float32)
    n_test = len(y) // 6
    return X[n_test:], y[n_test:], X[:n_test], y[:n_test]


def init_mlp(rng, sizes):
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        W = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)
        params += [W.astype(np.float32), np.zeros(fan_out, np.float32)]
    return params


def forward(params, X):
    """Activations of every layer (ReLU between layers) and the logits."""
    acts = [X]
    for i in range(0, len(params), 2):
        z = acts[-1] @ params[i] + params[i + 1]
        acts.append(np.maximum(z, 0.0) if i + 2 < len(params) else z)
    return acts


def loss_and_grads(params, X, y):
    acts = forward(params, X)
    loss, d = softmax_cross_entropy(acts[-1], y)
    grads = [None] * len(params)
    for i in range(len(params) - 2, -1, -2):
        grads[i], grads[i + 1] = acts[i // 2].T @ d, d.sum(axis=0)
        if i:
            d = (d @ params[i].T) * (acts[i // 2] > 0)
    return loss, [g.astype(np.float32, copy=False) for g in grads]


def accuracy(params, X, y):
    return float(np.mean(forward(params, X)[-1].argmax(axis=1) == y))


TASKS = {
    "digits MLP": {"data": digits_data, "sizes": (64, 128, 10), "epochs": 30, "batch": 32,
                   "opt": (fa.Adam, {"lr": 1e-3})},
    "synthetic 10-class MLP": {"data": synthetic_data, "sizes": (100, 256, 256, 10),
                               "epochs": 20, "batch": 128,
                               "opt": (fa.AdamW, {"lr": 2e-3, "weight_decay": 0.01})},
}  # fmt: skip


def train(task, seed, state_dtype, epochs):
    X_train, y_train, X_test, y_test = task["data"](seed)
    rng = np.random.default_rng(100 + seed)
    params = init_mlp(rng, task["sizes"])
    cls, options = task["opt"]
    opt = cls(params, state_dtype=state_dtype, **options)
    history = []
    for _ in range(epochs):
        order = rng.permutation(len(y_train))
        losses = []
        for start in range(0, len(order), task["batch"]):
            batch = order[start : start + task["batch"]]
            loss, grads = loss_and_grads(params, X_train[batch], y_train[batch])
            losses.append(loss)
            opt.step(grads)
        history.append((float(np.mean(losses)), accuracy(params, X_test, y_test)))
    state_bytes = sum(a.nbytes for _, st in opt.state.items() for k, a in st.items() if k != "step")
    return history, state_bytes / sum(p.size for p in params)


def main(argv=None):
    args = parse_args(__doc__, argv)
    try:
        import sklearn  # noqa: F401
    except ImportError:
        print("scikit-learn is not installed (pip install scikit-learn): skipping")
        return 0
    seeds = [0] if args.fast else [0, 1, 2]
    results = {}
    for name, task in TASKS.items():
        epochs = 1 if args.fast else task["epochs"]
        print(f"{name}: {len(seeds)} seed(s), {epochs} epochs")
        for dtype in (None, "8bit"):
            runs = [train(task, seed, dtype, epochs) for seed in seeds]
            results[name, dtype] = runs
            loss = [r[0][-1][0] for r in runs]
            acc = [100 * r[0][-1][1] for r in runs]
            per_loss = ", ".join(f"{x:.4f}" for x in loss)
            per_acc = ", ".join(f"{x:.2f}" for x in acc)
            print(
                f"  state {dtype or 'float32':>7}: {runs[0][1]:.2f} state bytes/param, "
                f"final train loss {np.mean(loss):.4f} (seeds {per_loss}), "
                f"test accuracy {np.mean(acc):.2f}% (seeds {per_acc})"
            )
        d_loss = [
            b[0][-1][0] - a[0][-1][0] for a, b in zip(results[name, None], results[name, "8bit"])
        ]
        d_acc = [100 * (b[0][-1][1] - a[0][-1][1])
                 for a, b in zip(results[name, None], results[name, "8bit"])]  # fmt: skip
        print(
            f"  8-bit minus float32: train loss {np.mean(d_loss):+.4f} "
            f"(per seed {', '.join(f'{x:+.4f}' for x in d_loss)}), test accuracy "
            f"{np.mean(d_acc):+.2f} points (per seed {', '.join(f'{x:+.2f}' for x in d_acc)})"
        )
    plt = pyplot()
    if plt is not None:
        fig, axes = plt.subplots(2, 2, figsize=(10, 7))
        for row, name in enumerate(TASKS):
            for dtype, color in ((None, "tab:blue"), ("8bit", "tab:orange")):
                for i, (history, _) in enumerate(results[name, dtype]):
                    label = f"state {dtype or 'float32'}" if i == 0 else None
                    epochs = np.arange(1, len(history) + 1)
                    axes[row, 0].plot(epochs, [h[0] for h in history], color=color, alpha=0.8,
                                      label=label)  # fmt: skip
                    axes[row, 1].plot(epochs, [100 * h[1] for h in history], color=color,
                                      alpha=0.8, label=label)  # fmt: skip
            axes[row, 0].set(title=f"{name}: training loss", xlabel="epoch", yscale="log")
            axes[row, 1].set(title=f"{name}: test accuracy (%)", xlabel="epoch")
        for ax in axes.flat:
            ax.grid(True, alpha=0.3)
            ax.legend()
        fig.tight_layout()
        save(fig, args, "state8bit.png")
    return 0


if __name__ == "__main__":
    if main() != 0:
        sys.exit(1)
