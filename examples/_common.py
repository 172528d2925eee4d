"""Shared command line, loss and plotting helpers of the example scripts.

Every example takes ``--fast`` (few iterations, for the test suite) and ``--out DIR`` (where
its PNG goes: by default a scratch folder, ``$FUSEDADAM_OUTPUT`` or
``<temp dir>/fusedadam-examples``, never the repository). matplotlib is optional: without it
the scripts print and draw nothing.
"""

import argparse
import os
import tempfile

import numpy as np

DPI = 110


def default_out():
    """The scratch folder examples write to unless ``--out`` says otherwise."""
    return os.environ.get("FUSEDADAM_OUTPUT") or os.path.join(
        tempfile.gettempdir(), "fusedadam-examples"
    )


def parse_args(doc, argv=None):
    """The command line; ``doc`` is the script's docstring (its first line describes it).

    sphinx-gallery runs a script with its docstring taken off (``__doc__`` is then None or
    empty), and with no command-line arguments.
    """
    lines = (doc or "").strip().splitlines()
    parser = argparse.ArgumentParser(description=lines[0] if lines else None)
    parser.add_argument(
        "--fast",
        action="store_true",
        help="few iterations, for tests (the numbers printed are not the full run's)",
    )
    parser.add_argument(
        "--out", default=None, help=f"directory for the PNG (default: {default_out()})"
    )
    args = parser.parse_args(argv)
    args.out = args.out or default_out()
    return args


def pyplot():
    """matplotlib.pyplot with a file-only backend, or None when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no figure")
        return None
    if "MPLBACKEND" not in os.environ:
        matplotlib.use("Agg")  # the scripts write PNGs; they never open a window
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 11, "axes.titlesize": 12, "legend.fontsize": 10})
    return plt


def mark_ends(ax, path, color="black"):
    """Mark a trajectory's start (circle) and end (star); both appear in the legend."""
    ax.plot(path[0, 0], path[0, 1], "o", color=color, ms=8, mfc="white", mew=2, label="start")
    ax.plot(path[-1, 0], path[-1, 1], "*", color=color, ms=14, mec="black", label="end")


def save(fig, args, name):
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, name)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    print(f"wrote {path}")
    return path


def softmax_cross_entropy(logits, y):
    """``(loss, d_logits)``: the mean cross-entropy of integer labels ``y`` under
    softmax(``logits``), and its gradient with respect to the logits."""
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    loss = -np.mean(np.log(p[np.arange(len(y)), y] + 1e-12))
    d_logits = p
    d_logits[np.arange(len(y)), y] -= 1.0
    d_logits /= len(y)
    return loss, d_logits
