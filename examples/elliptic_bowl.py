"""Adam on the elliptic bowl f(x) = x0^2 + 5 x1^2 from (10, 10): path and loss.
============================================================================

``fusedadam.minimize`` with ``method="adam"``, ``lr=0.4``, 100 steps, keeping the history.
Adam's per-coordinate scaling makes both coordinates move at about ``lr`` per step at
first, although the gradient in x1 is five times steeper: the path starts on the diagonal.

    ``python examples/elliptic_bowl.py [--fast] [--out DIR]``
"""

import numpy as np

import fusedadam as fa
from _common import mark_ends, parse_args, pyplot, save


def fun(x):
    return x[0] ** 2 + 5.0 * x[1] ** 2, np.array([2.0 * x[0], 10.0 * x[1]])


def main(argv=None):
    args = parse_args(__doc__, argv)
    steps = 20 if args.fast else 100
    res = fa.minimize(
        fun,
        np.array([10.0, 10.0]),
        jac=True,
        method="adam",
        options={"lr": 0.4},
        maxiter=steps,
        return_history=True,
    )
    path = np.array(res.x_history)
    for t in list(range(0, steps + 1, max(1, steps // 10))):
        print(
            f"iteration {t:3d}  x = [{path[t, 0]:8.4f} {path[t, 1]:8.4f}]  "
            f"f = {res.fun_history[t]:.6f}"
        )
    print(f"final f = {res.fun:.3e} at x = {res.x} after {res.nit} steps")
    plt = pyplot()
    if plt is None:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    X, Y = np.meshgrid(np.linspace(-12, 12, 200), np.linspace(-12, 12, 200))
    left.contour(X, Y, X**2 + 5 * Y**2, levels=np.logspace(-1, 3, 15), cmap="viridis")
    left.plot(path[:, 0], path[:, 1], ".-", color="tab:red", ms=3, label="Adam iterates")
    mark_ends(left, path, color="tab:red")
    left.legend(loc="upper left")
    left.set(title="Adam (lr=0.4) on x0² + 5 x1²", xlabel="x0", ylabel="x1", aspect="equal")
    right.semilogy(res.fun_history)
    right.set(title="loss per iteration", xlabel="iteration", ylabel="f(x)")
    save(fig, args, "elliptic_bowl.png")


if __name__ == "__main__":
    main()
