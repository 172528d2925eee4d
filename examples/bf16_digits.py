"""Mixed precision: the digits MLP with bfloat16 weights, with and without float32 master weights.
=================================================================================================

The MLP of ``digits_mlp.py`` (scikit-learn's 8x8 digits, 64 -> 128 (ReLU) -> 10, Adam,
lr=1e-3, minibatches of 32) trained three ways, from the same initial weights (rounded to
bfloat16 once, so all three start alike), on the same minibatches in the same order:

float32
    float32 weights, ``fa.Adam`` as in ``digits_mlp.py``.
bfloat16 + float32 master
    the weights are ``ml_dtypes.bfloat16`` arrays; ``fa.Adam`` keeps a float32 copy of each
    (``opt.state[w]["master_param"]``) with float32 moments, updates it and writes the
    rounded weights, in one pass per step.
bfloat16 + residual master
    as above with ``master="residual"``: the float32 master is kept exactly as the int16
    low half of its bits (``opt.state[w]["master_residual"]``, 2 bytes instead of 4); the
    weights are the master rounded to nearest with ties away from zero, so this run is the
    float32-master run bit for bit until the first update that leaves a master exactly on
    a tie (about one element update in 2**17; see docs/master_residual.md).
bfloat16, no master
    the same bfloat16 weights stepped the naive way: each step copies them to float32, runs a
    float32 Adam step (its float32 moments persist), and rounds the result back with
    ``astype(bfloat16)``. Nothing keeps the float32 weights between steps: an update smaller
    than half a bfloat16 spacing of its weight (2**-9 of it, relative) is rounded away.

Forward and backward passes run in float32 on the (upcast) weights in every run, so the runs
differ only in how the weights are stored and updated. Prints each run's training loss and
test accuracy per epoch, and the share of weights a step left unchanged (in bfloat16) over
the last epoch; plots the curves.

Needs scikit-learn (``pip install scikit-learn``); without it, it says so and exits.

    ``python examples/bf16_digits.py [--fast] [--out DIR]``
"""

import numpy as np
from ml_dtypes import bfloat16

import fusedadam as fa
from _common import parse_args, pyplot, save
from digits_mlp import BATCH, LR, accuracy, init_params, load, loss_and_grads

RUNS = ("float32", "bfloat16 + float32 master", "bfloat16 + residual master", "bfloat16, no master")


def make_run(kind, init):
    """The weights the model sees and a ``step(grads)`` that updates them in place."""
    if kind == "float32":
        params = [w.astype(np.float32) for w in init]
        opt = fa.Adam(params, lr=LR)
        return params, opt.step
    params = [w.astype(bfloat16) for w in init]
    if kind == "bfloat16 + float32 master":
        opt = fa.Adam(params, lr=LR)  # float32 master and moments
        return params, opt.step
    if kind == "bfloat16 + residual master":
        opt = fa.Adam(params, lr=LR, master="residual")  # the same master, in 2 bytes
        return params, opt.step
    work = [w.astype(np.float32) for w in params]
    opt = fa.Adam(work, lr=LR)

    def step(grads):
        for w32, w in zip(work, params):
            w32[...] = w  # the float32 weights come from bfloat16 every step
        opt.step(grads)
        for w32, w in zip(work, params):
            w[...] = w32.astype(bfloat16)

    return params, step


def train(kind, data, epochs):
    X_train, y_train, X_test, y_test = data
    rng = np.random.default_rng(1)  # the same draws in every run: init, then the orders
    init = [w.astype(bfloat16).astype(np.float32) for w in init_params(rng, X_train.shape[1], 10)]
    params, step = make_run(kind, init)
    history = []
    for _ in range(epochs):
        order = rng.permutation(len(y_train))
        losses, unchanged, total = [], 0, 0
        for start in range(0, len(order), BATCH):
            batch = order[start : start + BATCH]
            weights = [w.astype(np.float32, copy=False) for w in params]
            loss, grads = loss_and_grads(weights, X_train[batch], y_train[batch])
            before = [w.copy() for w in params]
            step(grads)
            unchanged += sum(int(np.count_nonzero(b == w)) for b, w in zip(before, params))
            total += sum(w.size for w in params)
            losses.append(loss)
        weights = [w.astype(np.float32, copy=False) for w in params]
        history.append(
            {
                "loss": float(np.mean(losses)),
                "accuracy": accuracy(weights, X_test, y_test),
                "unchanged": unchanged / total,
            }
        )
    return history


def main(argv=None):
    args = parse_args(__doc__, argv)
    try:
        data = load()
    except ImportError:
        print("scikit-learn is not installed (pip install scikit-learn): skipping")
        return
    epochs = 2 if args.fast else 60
    print(
        f"digits: {len(data[1])} train / {len(data[3])} test images, MLP 64-128-10, "
        f"Adam lr={LR}, batch {BATCH}, {epochs} epochs"
    )
    histories = {kind: train(kind, data, epochs) for kind in RUNS}
    print(f"{'epoch':>5} " + " ".join(f"{k[:26]:>26}" for k in RUNS))
    for e in range(epochs):
        if e < 5 or (e + 1) % 10 == 0 or e == epochs - 1:
            cells = (
                f"{h[e]['loss']:.4f} / {100 * h[e]['accuracy']:.2f}%" for h in histories.values()
            )
            print(f"{e + 1:>5} " + " ".join(f"{c:>26}" for c in cells))
    print("(training loss / test accuracy)")
    for kind, h in histories.items():
        print(
            f"{kind}: final training loss {h[-1]['loss']:.4f}, test accuracy "
            f"{100 * h[-1]['accuracy']:.2f}%, weights a step left unchanged in the last epoch "
            f"{100 * h[-1]['unchanged']:.1f}%"
        )
    master, residual = histories[RUNS[1]], histories[RUNS[2]]
    same = next((e for e in range(epochs) if master[e] != residual[e]), None)
    print(
        "residual vs float32 master: "
        + (
            "the same in every epoch"
            if same is None
            else f"the same for the first {same} epoch(s), then apart by ties"
        )
        + f"; final training loss {residual[-1]['loss']:.6f} vs {master[-1]['loss']:.6f}"
    )
    plt = pyplot()
    if plt is not None:
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
        epochs_axis = np.arange(1, epochs + 1)
        # float32 wide and pale under the dashed master run: the two curves coincide.
        styles = [{"lw": 4, "alpha": 0.4}, {"ls": "--"}, {"ls": ":"}, {}]
        for (kind, h), style in zip(histories.items(), styles):
            left.plot(epochs_axis, [x["loss"] for x in h], label=kind, **style)
            right.plot(epochs_axis, [100 * x["accuracy"] for x in h], label=kind, **style)
        left.set(title="training loss", xlabel="epoch", yscale="log")
        right.set(title="test accuracy (%)", xlabel="epoch")
        for ax in (left, right):
            ax.grid(True, alpha=0.3)
        left.legend()
        save(fig, args, "bf16_digits.png")


if __name__ == "__main__":
    main()
