"""Build the fusedadam extension, with OpenMP when the compiler has it.

Environment:
  FUSEDADAM_NO_OPENMP=1        build a serial extension even if OpenMP is available
  FUSEDADAM_REQUIRE_OPENMP=1   fail the build when OpenMP is missing
  FUSEDADAM_NO_EXTENSION=1     skip the extension: the package falls back to NumPy
  FUSEDADAM_REQUIRE_EXTENSION=1  fail the build when the extension does not compile
                               (without it a failed compile warns and installs pure Python;
                               CI and wheel builds set it so a broken build never ships)
  FUSEDADAM_BOUNDSCHECK=1      Cython bounds/wraparound checks on memoryview indexing
                               (debugging; the loops index raw pointers and are unaffected)

The module is compiled without debug information (-g0 after Python's own -g): that changes
no instruction, takes a third off the compile (15 s -> 10 s on one core here) and most of
the module's size. CFLAGS with a -g of its own keeps it (the AddressSanitizer run passes -g).
"""

import os
import shlex
import sys
import tempfile
import textwrap
import warnings

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# setuptools >= 77 (pyproject.toml's build requirement) has these; a failed compile raises them.
from setuptools.errors import CCompilerError, CompileError, ExecError, LinkError, PlatformError

BUILD_ERRORS = (CCompilerError, CompileError, ExecError, LinkError, PlatformError, OSError)

OPENMP_TEST = textwrap.dedent(
    """
    #include <omp.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        return (n > 0 && omp_get_max_threads() > 0) ? 0 : 1;
    }
    """
)


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _asks_for_debug_info(cflags):
    return any(flag.startswith("-g") and flag != "-g0" for flag in shlex.split(cflags))


def _openmp_flag_candidates(compiler):
    if compiler.compiler_type == "msvc":
        return [(["/openmp"], [])]
    if sys.platform == "darwin":
        # Apple clang: OpenMP through Homebrew's libomp.
        return [
            (["-Xpreprocessor", "-fopenmp"], ["-lomp"]),
            (["-fopenmp"], ["-fopenmp"]),
        ]
    return [(["-fopenmp"], ["-fopenmp"])]


def _compiles_and_links(compiler, source, compile_args, link_args):
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(source)
        # The extension's link line carries $LDFLAGS (e.g. -L of Homebrew's libomp), the
        # probe's executable link does not: pass them so both agree.
        link_args = list(link_args) + shlex.split(os.environ.get("LDFLAGS", ""))
        try:
            objects = compiler.compile([src], output_dir=tmp, extra_postargs=compile_args)
            compiler.link_executable(objects, "probe", output_dir=tmp, extra_postargs=link_args)
        except Exception:  # CompileError, LinkError, missing headers: all mean "no"
            return False
    return True


class BuildExtWithOpenMP(build_ext):
    """build_ext that probes the compiler for OpenMP and falls back to a serial build.

    The extension itself is optional: when it does not compile (no compiler, a broken
    one) the build warns and the package installs without it, running the NumPy
    reference. FUSEDADAM_REQUIRE_EXTENSION=1 turns that failure back into an error.
    """

    def run(self):
        try:
            super().run()
        except BUILD_ERRORS as exc:  # e.g. no compiler found while setting one up
            self._extension_failed(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except BUILD_ERRORS as exc:
            self._extension_failed(exc, ext.name)

    def _extension_failed(self, exc, name="fusedadam._kernels"):
        if _env_flag("FUSEDADAM_REQUIRE_EXTENSION"):
            raise exc
        message = (
            f"fusedadam: building the compiled extension {name} failed ({exc}). "
            "Installing without it: steps run on the slower NumPy reference backend "
            "(fusedadam.backend_info()['compiled'] is False). Install a C compiler and "
            "reinstall for the fast kernels; set FUSEDADAM_REQUIRE_EXTENSION=1 to make "
            "this an error."
        )
        print("\n" + "*" * 79 + "\n" + message + "\n" + "*" * 79 + "\n", file=sys.stderr)

    def build_extensions(self):
        compile_args, link_args = [], []
        if _env_flag("FUSEDADAM_NO_OPENMP"):
            print("fusedadam: OpenMP disabled by FUSEDADAM_NO_OPENMP")
        else:
            for cflags, lflags in _openmp_flag_candidates(self.compiler):
                if _compiles_and_links(self.compiler, OPENMP_TEST, cflags, lflags):
                    compile_args, link_args = cflags, lflags
                    break
            else:
                message = (
                    "fusedadam: the compiler has no working OpenMP; building a serial "
                    "extension (steps run on one thread)."
                )
                if _env_flag("FUSEDADAM_REQUIRE_OPENMP"):
                    raise RuntimeError(message + " FUSEDADAM_REQUIRE_OPENMP=1 is set.")
                warnings.warn(message)
        if self.compiler.compiler_type == "msvc":
            # /fp:precise keeps IEEE semantics; no contraction into FMA.
            base = ["/O2", "/fp:precise"]
        else:
            # -ffp-contract=off: no fused multiply-add, so results are bit-identical to
            # the NumPy reference. -fno-math-errno lets sqrt vectorize; it changes no value.
            # No fast-math and no native-arch flags: wheels must stay exact and portable.
            base = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]
            if not _asks_for_debug_info(os.environ.get("CFLAGS", "")):
                base.append("-g0")  # see the module docstring
            # The step's helper pool (_pool.h) is built on pthreads.
            compile_args, link_args = compile_args + ["-pthread"], link_args + ["-pthread"]
        for ext in self.extensions:
            ext.extra_compile_args = base + compile_args + list(ext.extra_compile_args)
            ext.extra_link_args = link_args + list(ext.extra_link_args)
        super().build_extensions()


def _extensions():
    if _env_flag("FUSEDADAM_NO_EXTENSION"):
        return []
    from Cython.Build import cythonize
    import numpy

    debug = _env_flag("FUSEDADAM_BOUNDSCHECK")
    headers = [
        "src/fusedadam/_dispatch.h",
        "src/fusedadam/_loops.h",
        "src/fusedadam/_convert.h",
        "src/fusedadam/_gradscan.h",
        "src/fusedadam/_q8.h",
        "src/fusedadam/_segment.h",
        "src/fusedadam/_staged.h",
        "src/fusedadam/_residual.h",
        "src/fusedadam/_finite.h",
        "src/fusedadam/_sparse_rows.h",
        "src/fusedadam/_scalars.h",
        "src/fusedadam/_pool.h",
        "src/fusedadam/_openmp.h",
    ]
    # _kernels: the step engine and its loops. _testing: the test and benchmark kernels
    # (the roofline probe, conversion and 8-bit codec helpers), which run through
    # _kernels' tables by the cdef functions _kernels.pxd declares.
    extensions = [
        Extension(
            f"fusedadam.{name}",
            sources=[f"src/fusedadam/{name}.pyx"],
            depends=headers + ["src/fusedadam/_kernels.pxd"],
            include_dirs=["src/fusedadam", numpy.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
        )
        for name in ("_kernels", "_testing")
    ]
    return cythonize(
        extensions,
        include_path=["src"],
        language_level=3,
        compiler_directives={
            "boundscheck": debug,
            "wraparound": debug,
            "initializedcheck": debug,
            "cdivision": True,
            "embedsignature": True,
        },
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExtWithOpenMP})
