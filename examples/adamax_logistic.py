"""The Adam paper's comparison, small: AdaMax vs Adam vs AMSGrad on logistic regression.
=====================================================================================

L2-regularized logistic regression (Kingma & Ba 2014, section 6.1, used MNIST) on a
seeded synthetic problem: 4000 samples, 100 features of which 10 carry the signal,
minibatches of 128. The three optimizers start from the same zero weights and see the same
minibatches; step sizes in the paper's ratio (its defaults are 0.001 for Adam and
0.002 for AdaMax): alpha = 0.01 for Adam and AMSGrad, 2 alpha for AdaMax.
Prints and plots the full training loss after each epoch.

    ``python examples/adamax_logistic.py [--fast] [--out DIR]``
"""

import numpy as np

import fusedadam as fa
from _common import parse_args, pyplot, save

N, D, BATCH, L2 = 4000, 100, 128, 1e-4


def make_data(rng):
    X = rng.standard_normal((N, D))
    w_true = np.zeros(D)
    w_true[:10] = rng.standard_normal(10) * 2
    p = 1 / (1 + np.exp(-(X @ w_true)))
    y = (rng.random(N) < p).astype(np.float64)
    return X, y


def loss_and_grad(w, X, y):
    z = X @ w[:-1] + w[-1]
    # log(1 + exp(z)) - y z, computed stably
    loss = np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * L2 * float(w[:-1] @ w[:-1])
    r = (1 / (1 + np.exp(-z)) - y) / len(y)
    grad = np.empty_like(w)
    grad[:-1] = X.T @ r + L2 * w[:-1]
    grad[-1] = r.sum()
    return loss, grad


def main(argv=None):
    args = parse_args(__doc__, argv)
    epochs = 3 if args.fast else 30
    rng = np.random.default_rng(0)
    X, y = make_data(rng)
    alpha = 1e-2
    weights = {name: np.zeros(D + 1) for name in ("Adam", "AMSGrad", "AdaMax")}
    optimizers = {
        "Adam": fa.Adam(weights["Adam"], lr=alpha),
        "AMSGrad": fa.Adam(weights["AMSGrad"], lr=alpha, amsgrad=True),
        "AdaMax": fa.Adamax(weights["AdaMax"], lr=2 * alpha),
    }
    curves = {name: [loss_and_grad(w, X, y)[0]] for name, w in weights.items()}
    for epoch in range(1, epochs + 1):
        order = rng.permutation(N)
        for start in range(0, N, BATCH):
            batch = order[start : start + BATCH]
            for name, opt in optimizers.items():
                opt.step(loss_and_grad(weights[name], X[batch], y[batch])[1])
        for name, w in weights.items():
            curves[name].append(loss_and_grad(w, X, y)[0])
        if epoch in (1, 2, 5, 10, 20, epochs):
            print(
                f"epoch {epoch:3d}  "
                + "  ".join(f"{name} {curves[name][-1]:.5f}" for name in weights)
            )
    best = min(curves, key=lambda name: curves[name][-1])
    print(f"lowest training loss after {epochs} epochs: {best} ({curves[best][-1]:.5f})")
    plt = pyplot()
    if plt is None:
        return
    # Adam and AMSGrad differ by < 0.5% of the loss: on one loss axis one line hides the
    # other. The right panel shows each curve's distance to the lowest loss any reached.
    floor = min(min(c) for c in curves.values())
    styles = {
        "Adam": ("tab:blue", "-", "o"),
        "AMSGrad": ("tab:orange", "--", "s"),
        "AdaMax": ("tab:green", ":", "^"),
    }
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.3))
    for name, curve in curves.items():
        color, style, marker = styles[name]
        kw = dict(color=color, ls=style, marker=marker, ms=4, lw=1.8, label=name)
        left.plot(curve, **kw)
        right.semilogy(np.asarray(curve) - floor + 1e-6, **kw)
    left.set(title="full training loss", xlabel="epoch", ylabel="loss")
    right.set(
        title="loss above the lowest reached (+1e-6)", xlabel="epoch", ylabel="loss - min loss"
    )
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("AdaMax vs Adam vs AMSGrad: L2-regularized logistic regression")
    fig.tight_layout()
    save(fig, args, "adamax_logistic.png")


if __name__ == "__main__":
    main()
