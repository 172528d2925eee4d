"""Rosenbrock's valley from a random start: Adam vs plain gradient descent.
========================================================================

f(x, y) = (1 - x)^2 + 100 (y - x^2)^2, minimum 0 at (1, 1). Gradient descent needs a step
small enough for the steepest wall of the valley (here 2e-4) and then crawls along its
floor; Adam divides each coordinate's step by ``sqrt(v_hat)``, so its effective learning
rate ``lr / (sqrt(v_hat) + eps)`` (read from the optimizer's ``exp_avg_sq`` state, v_hat =
exp_avg_sq / (1 - beta2**t)) grows where gradients are small. The third panel shows it.

    ``python examples/rosenbrock.py [--fast] [--out DIR]``
"""

import numpy as np

import fusedadam as fa
from _common import mark_ends, parse_args, pyplot, save


def rosen(p):
    x, y = p
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def rosen_grad(p):
    x, y = p
    return np.array([-2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)])


def run_adam(start, steps, lr, betas=(0.9, 0.999), eps=1e-8):
    p = start.copy()
    opt = fa.Adam(p, lr=lr, betas=betas, eps=eps)
    path, effective_lr = [p.copy()], []
    for t in range(1, steps + 1):
        opt.step(rosen_grad(p))
        path.append(p.copy())
        v_hat = opt.state[p]["exp_avg_sq"] / (1 - betas[1] ** t)
        effective_lr.append(lr / (np.sqrt(v_hat) + eps))
    return np.array(path), np.array(effective_lr)


def run_gd(start, steps, lr):
    p = start.copy()
    path = [p.copy()]
    for _ in range(steps):
        p = p - lr * rosen_grad(p)
        path.append(p.copy())
    return np.array(path)


def main(argv=None):
    args = parse_args(__doc__, argv)
    steps = 200 if args.fast else 5000
    rng = np.random.default_rng(2)
    start = rng.uniform([-2.0, -1.0], [2.0, 3.0])
    adam_path, effective_lr = run_adam(start, steps, lr=0.02)
    gd_path = run_gd(start, steps, lr=2e-4)
    print(f"start {start}, f = {rosen(start):.4f}")
    for name, path in (("Adam (lr=0.02)", adam_path), ("gradient descent (lr=2e-4)", gd_path)):
        print(f"{name:28s} after {steps} steps: x = {path[-1]}, f = {rosen(path[-1]):.3e}")
    print(
        f"Adam's effective learning rate: from {effective_lr[0]} at step 1 to "
        f"{effective_lr[-1]} at step {steps}"
    )
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    X, Y = np.meshgrid(np.linspace(-2.2, 2.2, 300), np.linspace(-1.2, 3.2, 300))
    Z = rosen((X, Y))
    for ax, name, path in (
        (axes[0], "Adam, lr=0.02", adam_path),
        (axes[1], "gradient descent, lr=2e-4", gd_path),
    ):
        ax.contour(X, Y, Z, levels=np.logspace(-1, 3.5, 20), cmap="viridis")
        ax.plot(path[:, 0], path[:, 1], "-", color="tab:red", lw=1.2, label="iterates")
        mark_ends(ax, path, color="tab:red")
        ax.plot(1, 1, "P", color="black", ms=10, label="minimum (1, 1)")
        ax.set(title=f"{name}: f = {rosen(path[-1]):.1e}", xlabel="x", ylabel="y")
        ax.legend(loc="upper left", fontsize=9)
    axes[2].semilogy(effective_lr[:, 0], label="x")
    axes[2].semilogy(effective_lr[:, 1], label="y")
    axes[2].set(title="Adam's effective lr / (sqrt(v̂) + eps)", xlabel="iteration")
    axes[2].legend()
    save(fig, args, "rosenbrock.png")


if __name__ == "__main__":
    main()
