"""Every Python block of README.md and of the docs pages runs as pasted, in a fresh directory.

The blocks of one page run in order in one new interpreter (as pasted into one session),
whose working directory is a new empty directory: a block may use what an earlier block of
its page defined or wrote, and nothing else, not even the checkout's ``examples/``.
Blocks that import torch run in ``test_readme_torch_blocks_run`` (CI runs it with torch
installed and fails if it skips); blocks written for ``mpiexec`` run as a one-rank job in
``test_readme_mpi_blocks_run``.
"""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"

pytestmark = pytest.mark.skipif(not README.is_file(), reason="README.md not shipped here")


def _blocks(page):
    text = page.read_text(encoding="utf-8")
    if page.suffix == ".md":
        return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:   .*\n|\n)+)", text)
    return [textwrap.dedent(block) for block in blocks]


PAGES = [README] + (sorted(DOCS.glob("*.md")) + sorted(DOCS.glob("*.rst")) if DOCS.is_dir() else [])
BLOCKS = {page: _blocks(page) for page in PAGES}


def _kind(code):
    if "from mpi4py import MPI" in code:
        return "mpi"
    if re.search(r"^import torch|^import fusedadam\.torch", code, re.M):
        return "torch"
    return "numpy"


def _pages_of(kind):
    return [page for page, blocks in BLOCKS.items() if any(_kind(code) == kind for code in blocks)]


# A page's blocks run in one namespace: a later block may use an earlier one's names.
RUNNER = """
import sys
namespace = {"__name__": "__main__"}
for index, code in enumerate(BLOCKS):
    try:
        exec(compile(code, f"{PAGE} python block {index}", "exec"), namespace)
    except BaseException:
        print(f"\\n*** {PAGE} python block {index} failed:\\n{code}", file=sys.stderr)
        raise
"""


def _run(page, kinds, tmp_path):
    """Run the page's blocks of these kinds in a new interpreter, in an empty directory."""
    blocks = [code for code in BLOCKS[page] if _kind(code) in kinds]
    name = page.relative_to(ROOT).as_posix()
    script = f"BLOCKS = {blocks!r}\nPAGE = {name!r}\n" + RUNNER
    workdir = tmp_path / page.stem
    workdir.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    return proc.stdout


def test_the_readme_has_a_numpy_and_a_torch_quickstart():
    kinds = [_kind(code) for code in BLOCKS[README]]
    assert kinds.count("numpy") >= 1 and kinds.count("torch") >= 1, kinds


def _check_output(page, out):
    """What a page's blocks print, where the page promises something."""
    name = page.relative_to(ROOT).as_posix()
    if name == "docs/coming_from_torch.md":
        loss = float(re.search(r"step 2000: loss ([0-9.]+)", out).group(1))
        assert loss < 0.01, out  # the MLP fits its target
        assert "JoinSchedules(" in out and " 2000" in out  # the resumed schedule and step
    if "->" in out:  # a training loop: "loss <first> -> <last>"
        first, last = map(float, re.search(r"loss ([0-9.]+) -> ([0-9.]+)", out).groups())
        assert last < 0.1 * first, out


@pytest.mark.parametrize("page", _pages_of("numpy"), ids=lambda p: p.name)
def test_readme_python_blocks_run(page, tmp_path):
    _check_output(page, _run(page, {"numpy"}, tmp_path))


def test_readme_torch_blocks_run(tmp_path):
    pages = _pages_of("torch")
    if not pages:
        pytest.skip("no page has a torch block")
    pytest.importorskip("torch", reason="the PyTorch blocks need torch")
    for page in pages:
        _check_output(page, _run(page, {"numpy", "torch"}, tmp_path))


def test_readme_mpi_blocks_run(tmp_path):
    pages = _pages_of("mpi")
    if not pages:
        pytest.skip("no page has an MPI block")
    pytest.importorskip("mpi4py", reason="the distributed blocks need mpi4py")
    for page in pages:
        out = _run(page, {"mpi"}, tmp_path)  # one rank: MPI's singleton start
        assert re.search(r"loss [0-9.e+-]+ on 1 ranks", out), out
