"""The documentation covers what the package offers, and says it the way users read it.

- every public name (``__all__`` of ``fusedadam``, ``fusedadam.torch``,
  ``fusedadam.distributed``, ``fusedadam.functional``, ``fusedadam.schedules``,
  ``fusedadam.reference``) has an autodoc entry in ``docs/api/``;
- the tables on the docs pages are the documented runs in ``bench/results``;
- no internal issue numbers in README, docs, examples, ``--help`` texts and messages, and no
  ``pip install fusedadam[...]`` (the package is not on an index);
- ``python -m fusedadam bench --help`` lists every scenario, and each has its own ``--help``.

The ``__all__`` lists are read from the installed sources without importing them, so the
check needs neither torch nor mpi4py; one built from the registry (``functional``, which
needs neither) is read by importing its module.
"""

import ast
import contextlib
import importlib.util
import io
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
API = DOCS / "api"
RESULTS = ROOT / "bench" / "results"

pytestmark = pytest.mark.skipif(not API.is_dir(), reason="docs/ not shipped here")

PUBLIC_MODULES = [
    "fusedadam",
    "fusedadam.torch",
    "fusedadam.distributed",
    "fusedadam.functional",
    "fusedadam.schedules",
    "fusedadam.reference",
]


def _package_dir():
    return Path(importlib.util.find_spec("fusedadam").submodule_search_locations[0])


def _all_of(module):
    """``__all__`` of an installed fusedadam module, read with ast (the module is not
    imported: torch and mpi4py are not needed). A list built from the registry
    (``[*_algorithms.CLASSES, ...]``) or extended by another module's (``__all__ +=
    optim.__all__``) is evaluated with those two modules, which import neither."""
    parts = module.split(".")[1:]
    base = _package_dir().joinpath(*parts)
    path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    scope = {
        "_algorithms": importlib.import_module("fusedadam._algorithms"),
        "optim": importlib.import_module("fusedadam.optim"),
    }
    names = None
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if not any(getattr(t, "id", None) == "__all__" for t in targets):
                continue
            try:
                value = list(ast.literal_eval(node.value))
            except ValueError:
                try:
                    value = list(
                        eval(compile(ast.Expression(node.value), str(path), "eval"), scope)
                    )
                except NameError:  # built some other way (functional): import the module
                    value = list(importlib.import_module(module).__all__)
            names = value if isinstance(node, ast.Assign) else names + value
    if names is None:
        raise AssertionError(f"{path} has no __all__")
    return names


def _documented():
    names = set()
    for page in API.glob("*.rst"):
        names.update(
            re.findall(
                r"^\.\. auto(?:class|function|module|data|exception)::\s+(\S+)",
                page.read_text(encoding="utf-8"),
                re.M,
            )
        )
    return names


def _public_names():
    out = []
    for module in PUBLIC_MODULES:
        for name in _all_of(module):
            if name.startswith("__"):
                continue  # __version__
            out.append((module, name))
    return out


@pytest.mark.parametrize("module,name", _public_names(), ids=lambda x: x)
def test_every_public_name_has_an_api_entry(module, name):
    qualified = f"{module}.{name}"  # a module (fusedadam.schedules) needs its automodule
    assert qualified in _documented(), f"{qualified} has no autodoc entry in docs/api/*.rst"


def test_every_api_page_is_in_the_toctree():
    index = (API / "index.rst").read_text(encoding="utf-8")
    for page in API.glob("*.rst"):
        if page.stem != "index":
            assert re.search(rf"^\s+{page.stem}$", index, re.M), page.name


def test_every_docs_page_is_in_a_toctree():
    index = (DOCS / "index.rst").read_text(encoding="utf-8")
    for page in list(DOCS.glob("*.md")) + list(DOCS.glob("*.rst")):
        if page.stem != "index":
            assert re.search(rf"^\s+{page.stem}$", index, re.M), page.name


# --- no internal issue numbers where users read -------------------------------------------

ISSUE = re.compile(r"\bissues? #?\d+|\(#\d+\)|\bissue #|the issue's|\bthe issue\b", re.I)


def _user_facing_texts():
    yield "README.md", (ROOT / "README.md").read_text(encoding="utf-8")
    for page in sorted(DOCS.rglob("*")):
        if page.suffix in (".md", ".rst") and "auto_examples" not in page.parts:
            yield page.relative_to(ROOT).as_posix(), page.read_text(encoding="utf-8")
    for script in sorted((ROOT / "examples").glob("*.py")) + [ROOT / "examples" / "README.txt"]:
        yield script.relative_to(ROOT).as_posix(), script.read_text(encoding="utf-8")
    # docstrings, help texts and error messages
    for source in sorted(_package_dir().rglob("*.py")) + sorted(_package_dir().glob("*.pyx")):
        yield (
            f"fusedadam/{source.relative_to(_package_dir()).as_posix()}",
            source.read_text(encoding="utf-8"),
        )


@pytest.mark.parametrize(
    "name,text", list(_user_facing_texts()), ids=lambda x: x if len(x) < 60 else ""
)
def test_no_internal_issue_numbers_in_docs(name, text):
    found = ISSUE.findall(text)
    assert not found, f"{name}: {found}"
    # fusedadam is not on PyPI: extras are installed from a checkout, pip install ".[torch]"
    assert not re.findall(r"fusedadam\[\w+", text), f"{name}: pip install fusedadam[...]"


def _help(argv):
    from fusedadam import __main__ as entry

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exc:
        entry.main(argv)
    assert exc.value.code in (0, None)
    return out.getvalue()


def _top_help():
    from fusedadam import __main__ as entry

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        entry.main(["bench", "--help"])
    return out.getvalue()


def test_bench_help_lists_every_scenario_and_each_has_its_own_help():
    from fusedadam.benchmarks import cli, scenarios

    top = _top_help()
    expected = set(scenarios.SCENARIOS) | {"show", "offload"}
    assert expected <= set(cli.SCENARIO_HELP), expected - set(cli.SCENARIO_HELP)
    for name in expected:
        assert re.search(rf"^  {name}\s", top, re.M), (name, top)
        text = _help(["bench", name, "--help"])
        assert f"python -m fusedadam bench {name}" in text, text
        assert not ISSUE.search(text), text
    assert not ISSUE.search(top)
    assert not ISSUE.search(_help(["--help"]))


# --- the tables on the pages are the documented runs --------------------------------------


@pytest.mark.skipif(not RESULTS.is_dir(), reason="bench/results not shipped here")
def test_performance_table_is_the_documented_run():
    from fusedadam.benchmarks import report

    run = json.loads((RESULTS / "readme_sweep.json").read_text(encoding="utf-8"))
    assert report.markdown(run) in (DOCS / "performance.md").read_text(encoding="utf-8")


@pytest.mark.skipif(not RESULTS.is_dir(), reason="bench/results not shipped here")
def test_offload_table_is_the_documented_run():
    from fusedadam.benchmarks import offload

    run = json.loads((RESULTS / "offload.json").read_text(encoding="utf-8"))
    assert offload.markdown(run) in (DOCS / "precision.md").read_text(encoding="utf-8")


NONFINITE_RUNS = sorted(RESULTS.glob("nonfinite_mixed*.json")) if RESULTS.is_dir() else []


@pytest.mark.parametrize("run", NONFINITE_RUNS, ids=lambda p: p.name)
def test_nonfinite_tables_are_the_documented_runs(run):
    spec = importlib.util.spec_from_file_location(
        "bench_nonfinite", ROOT / "bench" / "nonfinite.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.markdown(json.loads(run.read_text(encoding="utf-8")))
    assert expected in (DOCS / "precision.md").read_text(encoding="utf-8")


@pytest.mark.skipif(not RESULTS.is_dir(), reason="bench/results not shipped here")
def test_peak_rss_table_is_the_documented_run():
    spec = importlib.util.spec_from_file_location("bench_peak_rss", ROOT / "bench" / "peak_rss.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run = json.loads((RESULTS / "peak_rss.json").read_text(encoding="utf-8"))
    expected = module.markdown(run)
    assert expected in (DOCS / "master_residual.md").read_text(encoding="utf-8")
