"""AMSGrad on the quadratic bowl f(x, y) = x^2 + y^2, with the classic tutorial's settings.
========================================================================================

The tutorial ("Gradient descent optimization with AMSGrad from scratch") runs 100
iterations with alpha=0.007, beta1=0.9, beta2=0.99, no bias correction and a first-moment
rate decayed as ``beta1**t`` at iteration t = 1, 2, ...::

    m = beta1**t * m + (1 - beta1**t) * g
    v = beta2 * v + (1 - beta2) * g**2
    vhat = max(vhat, v)
    x = x - alpha * m / (sqrt(vhat) + 1e-8)

fusedadam decays beta1 as ``b1_t = beta1 * beta1_decay**(t - 1)``, so ``beta1_decay =
beta1 = 0.9`` gives exactly ``b1_t = 0.9**t``; with ``bias_correction=False`` the step is
``x -= lr * m / (sqrt(vhat) + eps)``, the tutorial's. The start is the tutorial's too:
``np.random.seed(1)`` then one uniform draw in [-1, 1]^2.

    ``python examples/amsgrad_bowl.py [--fast] [--out DIR]``
"""

import numpy as np

import fusedadam as fa
from _common import mark_ends, parse_args, pyplot, save

BOUNDS = np.array([[-1.0, 1.0], [-1.0, 1.0]])


def objective(x, y):
    return x**2.0 + y**2.0


def derivative(x, y):
    return np.array([2.0 * x, 2.0 * y])


def run(n_iter=100, alpha=0.007, beta1=0.9, beta2=0.99, verbose=True):
    """The tutorial's AMSGrad run; returns the points visited (start first) and scores."""
    np.random.seed(1)
    x = BOUNDS[:, 0] + np.random.rand(len(BOUNDS)) * (BOUNDS[:, 1] - BOUNDS[:, 0])
    opt = fa.Adam(
        x,
        lr=alpha,
        betas=(beta1, beta2),
        eps=1e-8,
        amsgrad=True,
        bias_correction=False,
        beta1_decay=beta1,
    )
    solutions, scores = [x.copy()], [objective(*x)]
    for t in range(n_iter):
        opt.step(derivative(*x))
        score = objective(*x)
        solutions.append(x.copy())
        scores.append(score)
        if verbose:
            print(f">{t} f({x}) = {score:.5f}")
    return np.array(solutions), np.array(scores)


def main(argv=None):
    args = parse_args(__doc__, argv)
    solutions, scores = run(n_iter=10 if args.fast else 100)
    print(f"start {solutions[0]}, final f = {scores[-1]:.3e} after {len(scores) - 1} iterations")
    plt = pyplot()
    if plt is None:
        return
    xs = np.arange(BOUNDS[0, 0], BOUNDS[0, 1] + 0.1, 0.1)
    ys = np.arange(BOUNDS[1, 0], BOUNDS[1, 1] + 0.1, 0.1)
    X, Y = np.meshgrid(xs, ys)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    filled = ax.contourf(X, Y, objective(X, Y), levels=50, cmap="jet")
    fig.colorbar(filled, ax=ax, label="f(x, y)")
    ax.plot(solutions[:, 0], solutions[:, 1], ".-", color="w", label="AMSGrad iterates")
    mark_ends(ax, solutions, color="white")
    ax.legend(loc="upper right", facecolor="lightgray")
    ax.set(title="AMSGrad on x² + y² (fusedadam.Adam(amsgrad=True))", xlabel="x", ylabel="y")
    save(fig, args, "amsgrad_bowl.png")


if __name__ == "__main__":
    main()
