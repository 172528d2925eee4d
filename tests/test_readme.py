"""Every ```python block of README.md runs as pasted, in order, in a scratch directory."""

import re
from pathlib import Path

import pytest


README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = (
    re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)
    if README.is_file()
    else []
)

pytestmark = [
    pytest.mark.skipif(not README.is_file(), reason="README.md not shipped here"),
    # Without the extension, backend="auto" warns once that it runs the NumPy reference.
    pytest.mark.filterwarnings("ignore:fusedadam's compiled extension is not available"),
]


def test_the_readme_has_python_blocks():
    if README.is_file():
        assert len(BLOCKS) >= 3


# Blocks written for mpiexec (the distributed section) run in their own test, where mpi4py
# is installed; as one process they are a one-rank job.
MPI_BLOCKS = [i for i, code in enumerate(BLOCKS) if "from mpi4py import MPI" in code]
EXAMPLES = README.parent / "examples"
# Blocks using torch ("Using it from PyTorch") run in their own test, where torch is
# installed (CI's torch step runs it and fails if it skips).
TORCH_BLOCKS = [i for i, code in enumerate(BLOCKS) if "import torch" in code]


def test_readme_mpi_blocks_run(tmp_path, monkeypatch):
    if not MPI_BLOCKS:
        pytest.skip("the README has no MPI block")
    pytest.importorskip("mpi4py", reason="the distributed section needs mpi4py")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(EXAMPLES))  # its model comes from examples/
    for index in MPI_BLOCKS:
        exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {})


def test_readme_python_blocks_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # blocks write checkpoints; later blocks read them
    for index, code in enumerate(BLOCKS):
        if index in MPI_BLOCKS or index in TORCH_BLOCKS:
            continue  # test_readme_mpi_blocks_run, test_readme_torch_blocks_run
        try:
            exec(compile(code, f"README.md python block {index}", "exec"), {})
        except Exception as exc:
            raise AssertionError(f"README python block {index} failed:\n{code}") from exc
    out = capsys.readouterr().out
    assert "step 2000: loss" in out
    loss = float(re.search(r"step 2000: loss ([0-9.]+)", out).group(1))
    assert loss < 0.01, out  # the MLP fits its target
    assert "JoinSchedules(" in out and " 2000" in out  # the resumed schedule and step


def test_readme_torch_blocks_run(tmp_path, monkeypatch, capsys):
    if not TORCH_BLOCKS:
        pytest.skip("the README has no torch block")
    pytest.importorskip("torch", reason="the PyTorch section needs torch")
    monkeypatch.chdir(tmp_path)
    for index in TORCH_BLOCKS:
        exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {})
    out = capsys.readouterr().out
    first, last = map(float, re.search(r"loss ([0-9.]+) -> ([0-9.]+)", out).groups())
    assert last < 0.1 * first, out  # the 10-line loop trains


RUN = README.parent / "bench" / "results" / "readme_sweep.json"


@pytest.mark.skipif(not RUN.is_file(), reason="bench/results not shipped here")
def test_readme_and_docs_performance_tables_are_the_documented_run():
    import json

    from fusedadam.benchmarks import report

    expected = report.markdown(json.loads(RUN.read_text(encoding="utf-8")))
    assert expected in README.read_text(encoding="utf-8")
    docs_table = README.parent / "docs" / "perf_table.md"
    assert docs_table.read_text(encoding="utf-8") == expected


DOCS = README.parent / "docs"
DOC_PAGES = [
    page
    for page in (sorted(DOCS.glob("*.rst")) if DOCS.is_dir() else [])
    if ".. code-block:: python" in page.read_text(encoding="utf-8")
]


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda p: p.name)
def test_docs_python_code_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(
        r"\.\. code-block:: python\n\n((?:   .*\n|\n)+)", page.read_text(encoding="utf-8")
    )
    for index, block in enumerate(blocks):
        code = "\n".join(line[3:] for line in block.splitlines())
        exec(compile(code, f"{page.name} python block {index}", "exec"), {})


OFFLOAD_RUN = README.parent / "bench" / "results" / "offload.json"


@pytest.mark.skipif(not OFFLOAD_RUN.is_file(), reason="bench/results not shipped here")
def test_readme_and_docs_offload_tables_are_the_documented_run():
    import json

    from fusedadam.benchmarks import offload

    expected = offload.markdown(json.loads(OFFLOAD_RUN.read_text(encoding="utf-8")))
    assert expected in README.read_text(encoding="utf-8")
    docs_table = README.parent / "docs" / "offload_table.md"
    assert docs_table.read_text(encoding="utf-8") == expected


NONFINITE_RUNS = sorted((README.parent / "bench" / "results").glob("nonfinite_mixed*.json"))


@pytest.mark.parametrize("run", NONFINITE_RUNS, ids=lambda p: p.name)
def test_readme_nonfinite_tables_are_the_documented_runs(run):
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location(
        "bench_nonfinite", README.parent / "bench" / "nonfinite.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.markdown(json.loads(run.read_text(encoding="utf-8")))
    assert expected in README.read_text(encoding="utf-8")
