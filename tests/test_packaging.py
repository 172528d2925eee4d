"""The installed package: FUSEDADAM_SIMD at import, the compiled module's type stub."""

import ast
import importlib
import os
import pathlib
import subprocess
import sys

import pytest

import fusedadam as fa
from conftest import requires_compiled, simd_paths


def _backend_info_with_env(tmp_path, warnings="error", **env):
    """backend_info() of a fresh interpreter importing the installed package with ``env``.

    ``-W error`` by default: a FUSEDADAM_SIMD the CPU runs must import without a warning.
    """
    code = "import fusedadam as fa, json; print(json.dumps(fa.backend_info()))"
    full_env = dict(os.environ, **env)
    full_env.pop("PYTHONWARNINGS", None)
    return subprocess.run(
        [sys.executable, "-W", warnings, "-c", code],
        cwd=tmp_path,
        env=full_env,
        capture_output=True,
        text=True,
    )


@requires_compiled
@pytest.mark.parametrize("isa", simd_paths())
def test_simd_env_selects_the_path(isa, tmp_path):
    import json

    proc = _backend_info_with_env(tmp_path, FUSEDADAM_SIMD=isa)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["simd"] == isa
    assert info["simd_best"] == fa.backend_info()["simd_best"]


@requires_compiled
def test_simd_env_unknown_name_is_an_error(tmp_path):
    proc = _backend_info_with_env(tmp_path, FUSEDADAM_SIMD="sse9")
    assert proc.returncode != 0
    assert "FUSEDADAM_SIMD='sse9' is not one of" in proc.stderr


@requires_compiled
def test_simd_env_wider_than_cpu_warns_and_uses_the_best(tmp_path):
    import json

    from fusedadam import _kernels

    if _kernels.best_isa() == _kernels.ISA_NAMES[-1]:
        pytest.skip("this CPU runs the widest path")
    wider = _kernels.ISA_NAMES[_kernels.ISA_NAMES.index(_kernels.best_isa()) + 1]
    proc = _backend_info_with_env(tmp_path, warnings="default", FUSEDADAM_SIMD=wider)
    assert proc.returncode == 0, proc.stderr
    assert "RuntimeWarning" in proc.stderr
    assert f"this CPU runs at most {_kernels.best_isa()!r}" in proc.stderr
    assert json.loads(proc.stdout)["simd"] == _kernels.best_isa()


def test_simd_env_is_harmless_without_extension_or_unset(tmp_path):
    import json

    proc = _backend_info_with_env(tmp_path, FUSEDADAM_SIMD="auto")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["simd"] == fa.backend_info()["simd"]


def _public_names_of_stub(path):
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if not n.startswith("_")}


@requires_compiled
@pytest.mark.parametrize(
    "module, classes", [("_kernels", ("Engine", "GroupPlan")), ("_testing", ("Probe",))]
)
def test_stubs_match_the_compiled_modules(module, classes):
    """Each compiled module (the step engine; the test and benchmark kernels) has a stub
    naming exactly its public names and its classes' public members."""
    compiled_module = importlib.import_module(f"fusedadam.{module}")
    stub = pathlib.Path(fa.__file__).with_name(f"{module}.pyi")
    assert stub.is_file(), "the type stub must be installed next to the extension"
    compiled = {n for n in dir(compiled_module) if not n.startswith("_")}
    assert _public_names_of_stub(stub) == compiled
    for cls in classes:
        stub_class = next(
            n
            for n in ast.parse(stub.read_text()).body
            if isinstance(n, ast.ClassDef) and n.name == cls
        )
        stub_members = {n.name for n in stub_class.body if isinstance(n, ast.FunctionDef)}
        public = {n for n in dir(getattr(compiled_module, cls)) if not n.startswith("_")}
        assert public <= stub_members, cls


@requires_compiled
def test_the_kernels_element_sizes_are_numpys():
    # _convert.h's fa_et_bytes is the kernels' one table of storage sizes; each entry must
    # be the item size of the NumPy dtype the Python side stores that type in.
    import ml_dtypes
    import numpy as np

    from fusedadam import _kernels

    stored_as = {
        "float32": np.float32,
        "float64": np.float64,
        "bfloat16": ml_dtypes.bfloat16,
        "float16": np.float16,
        "8bit": np.uint8,  # the codes (the block scales are a float32 array aside)
        "residual": np.int16,  # master="residual": the master's low 16 bits
        "8bit_companded": np.int8,  # the companded map's codes
        "compact": np.int8,  # master="compact": the residual's top byte
    }
    assert _kernels.element_bytes() == {k: np.dtype(t).itemsize for k, t in stored_as.items()}


def test_the_production_module_holds_no_test_kernels():
    """The probe, the conversion and codec helpers and the steps-in-flight reader live in
    fusedadam._testing, not in the step engine's module."""
    stub = pathlib.Path(fa.__file__).with_name("_kernels.pyi")
    names = _public_names_of_stub(stub)
    for name in ("Probe", "probe", "round_float32", "widen_to_float32", "q8_values",
                 "q8_codes", "steps_in_flight_high_water"):  # fmt: skip
        assert name not in names


def test_installed_package_is_typed_and_versioned():
    here = pathlib.Path(fa.__file__).parent
    assert (here / "py.typed").is_file()
    assert isinstance(fa.__version__, str) and fa.__version__[0].isdigit()
    if here.parent.name == "src" and (here.parent.parent / "pyproject.toml").is_file():
        pytest.skip("editable install: the package directory is the source tree")
    # Sources are not installed: only the built module and its stub.
    for pattern in ("*.pyx", "*.pxd", "*.c", "*.h"):
        assert not list(here.glob(pattern)), pattern


@requires_compiled
def test_numbers_of_the_c_headers_have_one_owner():
    """Python takes the C headers' block, chunk, piece, lane and stream sizes from the
    extension; the table a pure-NumPy install uses holds the same numbers."""
    from fusedadam import _constants, _kernels, reference

    assert _constants._WITHOUT_EXTENSION == _kernels.constants()
    assert _constants.CONSTANTS == _kernels.constants()
    assert _constants.Q8_BLOCK == _kernels.Q8_BLOCK
    assert reference.tensor_pieces(40000)[1] == (16384, 32768)
    assert _kernels.get_chunk_size() == _constants.POOL_GRAIN
