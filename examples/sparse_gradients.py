"""Sparse gradients: a 100-dimensional quadratic whose gradient is seen 10% of the time.
=====================================================================================

f(x) = 1/2 sum_i a_i x_i^2 with curvatures a_i from 0.01 to 100. At each step every
coordinate's gradient is observed with probability 0.1 and is 0 otherwise (as for rare
features). The curvatures span 10^4, so SGD's learning rate is capped by the stiffest
coordinate (lr < 2 / 100) and it crawls on the flat ones: its step on a coordinate is
lr * a_i * x_i, and only on the steps that see it. Adam's step is about lr whatever the
gradient's scale, and its moments remember a coordinate between sightings. SparseAdam
(one row per coordinate, only observed rows touched) is the lazy variant: moments of
unseen coordinates neither decay nor move them.

    ``python examples/sparse_gradients.py [--fast] [--out DIR]``
"""

import numpy as np

import fusedadam as fa
from _common import parse_args, pyplot, save

DIM, P_OBSERVED = 100, 0.1


def main(argv=None):
    args = parse_args(__doc__, argv)
    steps = 300 if args.fast else 3000
    rng = np.random.default_rng(0)
    curvature = np.logspace(-2, 2, DIM)
    x0 = rng.standard_normal(DIM)
    masks = rng.random((steps, DIM)) < P_OBSERVED

    def loss(x):
        return 0.5 * float(np.sum(curvature * x * x))

    x_sgd, x_adam, x_lazy = x0.copy(), x0.copy(), x0.copy().reshape(DIM, 1)
    adam = fa.Adam(x_adam, lr=0.01)
    lazy = fa.SparseAdam([x_lazy], lr=0.01)
    sgd_lr = 0.015  # about the largest that is stable: 2 / max(curvature) = 0.02
    curves = {
        "SGD (lr=0.015)": [loss(x0)],
        "Adam (lr=0.01)": [loss(x0)],
        "SparseAdam (lr=0.01)": [loss(x0)],
    }
    for mask in masks:
        x_sgd -= sgd_lr * np.where(mask, curvature * x_sgd, 0.0)
        adam.step(np.where(mask, curvature * x_adam, 0.0))
        rows = np.flatnonzero(mask)
        lazy.step([(rows, (curvature[rows] * x_lazy[rows, 0])[:, None])])
        curves["SGD (lr=0.015)"].append(loss(x_sgd))
        curves["Adam (lr=0.01)"].append(loss(x_adam))
        curves["SparseAdam (lr=0.01)"].append(loss(x_lazy.ravel()))
    print(
        f"{DIM} coordinates, gradient observed with p={P_OBSERVED}, {steps} steps, "
        f"f(x0) = {loss(x0):.3f}"
    )
    for name, curve in curves.items():
        print(f"{name:22s} final f = {curve[-1]:.3e}")
    plt = pyplot()
    if plt is None:
        return
    # Adam's loss jumps by decades from step to step once it is small (a coordinate seen
    # after a long gap gets a full-size step): the raw curves are drawn faint, and a
    # moving median over WINDOW steps carries the trend.
    window = max(1, steps // 60)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    styles = {
        "SGD (lr=0.015)": ("tab:blue", "-"),
        "Adam (lr=0.01)": ("tab:orange", "-"),
        "SparseAdam (lr=0.01)": ("tab:green", "--"),
    }
    for name, curve in curves.items():
        color, style = styles[name]
        curve = np.asarray(curve)
        ax.semilogy(curve, color=color, lw=0.6, alpha=0.3)
        padded = np.concatenate([np.full(window - 1, curve[0]), curve])
        median = np.median(np.lib.stride_tricks.sliding_window_view(padded, window), axis=1)
        ax.semilogy(
            median, color=color, ls=style, lw=2.2, label=f"{name}: final f = {curve[-1]:.1e}"
        )
    ax.set(
        title=f"quadratic, {DIM} dims, gradient seen with p={P_OBSERVED}\n"
        f"(bold: moving median over {window} steps; faint: every step)",
        xlabel="step",
        ylabel="f(x)",
    )
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower left")
    save(fig, args, "sparse_gradients.png")


if __name__ == "__main__":
    main()
