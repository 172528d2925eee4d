"""Random search over Adam's (lr, beta1, beta2, eps) on Rosenbrock's function.
===========================================================================

Each trial draws lr log-uniform in [1e-4, 1], beta1 uniform in [0.5, 0.99], 1 - beta2
log-uniform in [1e-4, 1e-1] and eps log-uniform in [1e-10, 1e-2] (seeded), runs
``fusedadam.minimize`` for a fixed number of steps from (-1.2, 1) and scores the final
objective. Prints the five best settings and plots the final loss against lr.

    ``python examples/random_search.py [--fast] [--out DIR]``
"""

import numpy as np

import fusedadam as fa
from _common import parse_args, pyplot, save


def rosen(p):
    x, y = p
    return (
        (1 - x) ** 2 + 100 * (y - x**2) ** 2,
        np.array([-2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)]),
    )


def sample(rng):
    return {
        "lr": float(10 ** rng.uniform(-4, 0)),
        "betas": (float(rng.uniform(0.5, 0.99)), float(1 - 10 ** rng.uniform(-4, -1))),
        "eps": float(10 ** rng.uniform(-10, -2)),
    }


def main(argv=None):
    args = parse_args(__doc__, argv)
    trials, steps = (6, 200) if args.fast else (60, 2000)
    rng = np.random.default_rng(0)
    results = []
    for _ in range(trials):
        options = sample(rng)
        res = fa.minimize(rosen, np.array([-1.2, 1.0]), jac=True, options=options, maxiter=steps)
        final = res.fun if np.isfinite(res.fun) else np.inf
        results.append((final, options))
    results.sort(key=lambda r: r[0])
    print(f"{trials} random settings, {steps} Adam steps each on Rosenbrock from (-1.2, 1)")
    print(f"{'final f':>10}  {'lr':>9}  {'beta1':>6}  {'beta2':>8}  {'eps':>8}")
    for final, o in results[:5]:
        print(
            f"{final:10.3e}  {o['lr']:9.3e}  {o['betas'][0]:6.3f}  {o['betas'][1]:8.5f}  "
            f"{o['eps']:8.1e}"
        )
    final, best = results[0]
    print(
        f"best: lr={best['lr']:.4g}, beta1={best['betas'][0]:.4g}, "
        f"beta2={best['betas'][1]:.6g}, eps={best['eps']:.3g} -> f = {final:.3e}"
    )
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4.6))
    lrs = [o["lr"] for _, o in results]
    finals = [max(f, 1e-30) for f, _ in results]
    dots = ax.scatter(
        lrs,
        finals,
        c=[o["betas"][0] for _, o in results],
        cmap="viridis",
        label="one setting (colour: beta1)",
    )
    fig.colorbar(dots, ax=ax, label="beta1")
    ax.plot(
        best["lr"],
        max(final, 1e-30),
        "*",
        color="red",
        ms=16,
        mec="black",
        label=f"best: lr={best['lr']:.3g}, beta1={best['betas'][0]:.2f}",
    )
    ax.legend(loc="upper left", fontsize=9)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="lr",
        ylabel=f"f after {steps} steps",
        title="random search, Adam on Rosenbrock",
    )
    save(fig, args, "random_search.png")


if __name__ == "__main__":
    main()
