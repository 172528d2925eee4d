"""Shared command line and plotting helpers of the example scripts.

Every example takes ``--fast`` (few iterations, for the test suite) and ``--out DIR`` (where
its PNG goes). matplotlib is optional: without it the scripts print and draw nothing.
"""
import argparse
import os


def parse_args(description, argv=None):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--fast", action="store_true",
                        help="few iterations, for tests (the numbers printed are not the "
                             "full run's)")
    parser.add_argument("--out", default=".", help="directory for the PNG (default: .)")
    return parser.parse_args(argv)


def pyplot():
    """matplotlib.pyplot with a file-only backend, or None when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed (pip install fusedadam[examples]): no figure")
        return None
    if "MPLBACKEND" not in os.environ:
        matplotlib.use("Agg")  # the scripts write PNGs; they never open a window
    import matplotlib.pyplot as plt

    return plt


def save(fig, args, name):
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, name)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    print(f"wrote {path}")
    return path
