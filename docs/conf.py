"""Sphinx configuration of fusedadam's documentation.

Sphinx + numpydoc + pydata-sphinx-theme + sphinx-gallery, as scikit-learn, NumPy and SciPy
build theirs: the docstrings are already numpydoc, and sphinx-gallery turns ``examples/``
into pages showing each script's output and figures. The build needs no network:
MathJax is served from ``_static`` (sphinx-mathjax-offline), and there is no intersphinx.

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import importlib
import os
import sys

import fusedadam
import fusedadam._clip

HERE = os.path.dirname(os.path.abspath(__file__))
# The examples import their shared helpers as ``_common``.
sys.path.insert(0, os.path.join(HERE, "..", "examples"))
project = "fusedadam"
author = "fusedadam developers"
copyright = "fusedadam developers"
version = release = fusedadam.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = [
    "_build",
    "auto_examples/*.ipynb",
    "auto_examples/*.py",
    "auto_examples/*.zip",
    "auto_examples/*.json",
    "auto_examples/*.md5",
    "sg_execution_times.rst",
]
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]


def _missing(name):
    try:
        importlib.import_module(name)
    except ImportError:
        return True
    return False


# fusedadam.torch and fusedadam.distributed document themselves from their docstrings; where
# torch or mpi4py is not installed, autodoc imports them against stand-ins.
autodoc_mock_imports = [m for m in ("torch", "mpi4py") if _missing(m)]
autodoc_default_options = {"members": False, "inherited-members": False}
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
numpydoc_validation_checks = set()

html_theme = "pydata_sphinx_theme"
html_title = f"fusedadam {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "footer_start": ["copyright"],
}
html_static_path = []
html_last_updated_fmt = None

sphinx_gallery_conf = {
    "examples_dirs": os.path.join(HERE, "..", "examples"),
    "gallery_dirs": "auto_examples",
    # Every script but the helpers runs once and its figures and output are kept, except
    # state8bit.py: minutes of training (six runs of two MLPs), which would make the build
    # several times longer. Its page shows the code; its results are on precision.md.
    "filename_pattern": r"/(?!state8bit\.py)[a-z][a-z0-9_]*\.py$",
    # distributed_mlp.py is an mpiexec job (mpi4py, several ranks): not run by the build.
    "ignore_pattern": r"(_common|distributed_mlp)\.py",
    "plot_gallery": "True",
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": True,
    "show_memory": False,
    "matplotlib_animations": False,
    "image_srcset": [],
    "min_reported_time": 3600,
    "write_computation_times": False,
}
