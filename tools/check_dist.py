#!/usr/bin/env python3
"""Check what fusedadam's sdist and wheel contain.

sdist: exactly the files a build from source needs (the git-tracked files that
MANIFEST.in names, plus setuptools' PKG-INFO/egg-info), and no generated C, no binaries.
wheel: the Python modules, the compiled module with its .pyi stub, py.typed and LICENSE,
and no build sources (.pyx/.pxd/.c/.h); a repaired Linux wheel also carries libgomp.

Usage: python tools/check_dist.py SDIST.tar.gz WHEEL.whl [...]
"""

import fnmatch
import pathlib
import subprocess
import sys
import tarfile
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Tracked files the sdist leaves out on purpose (MANIFEST.in prunes them).
NOT_IN_SDIST = [
    ".ci/*",
    "tools/*",
    "bench/*",
    "docs/*",
    ".gitignore",
    ".gitattributes",
    ".github/*",
]
GENERATED_IN_SDIST = ["PKG-INFO", "setup.cfg", "src/fusedadam.egg-info/*"]
NEVER_IN_SDIST = [
    "*.so",
    "*.pyd",
    "*.o",
    "*.pyc",
    "src/fusedadam/_kernels.c",
    "src/fusedadam/_testing.c",
    "src/fusedadam/_sparse.c",
    "*.html",
]
BUILD_SOURCES = ["*.pyx", "*.pxd", "*.c", "*.h"]


def matches(name, patterns):
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def tracked_files():
    try:
        out = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return {f for f in out.splitlines() if (ROOT / f).is_file()}


def check_sdist(path):
    problems = []
    with tarfile.open(path) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
    top = names[0].split("/")[0]
    files = {n[len(top) + 1 :] for n in names}
    for required in [
        "pyproject.toml",
        "setup.py",
        "README.md",
        "LICENSE",
        "PKG-INFO",
        "src/fusedadam/__init__.py",
        "src/fusedadam/_kernels.pyx",
        "src/fusedadam/_kernels.pyi",
        "src/fusedadam/_kernels.pxd",
        "src/fusedadam/_testing.pyx",
        "src/fusedadam/_testing.pyi",
        "src/fusedadam/_loops.h",
        "src/fusedadam/_openmp.h",
        "src/fusedadam/_openmp.pxd",
        "src/fusedadam/py.typed",
        "tests/conftest.py",
    ]:
        if required not in files:
            problems.append(f"missing {required}")
    problems += [f"must not ship {f}" for f in sorted(files) if matches(f, NEVER_IN_SDIST)]
    tracked = tracked_files()
    if tracked is not None:
        wanted = {f for f in tracked if not matches(f, NOT_IN_SDIST)}
        problems += [f"tracked file missing from the sdist: {f}" for f in sorted(wanted - files)]
        problems += [
            f"untracked file in the sdist: {f}"
            for f in sorted(files - wanted)
            if not matches(f, GENERATED_IN_SDIST)
        ]
    report(path, len(files), problems)
    return not problems


def check_wheel(path):
    problems = []
    with zipfile.ZipFile(path) as whl:
        files = set(whl.namelist())
    package = {f for f in files if f.startswith("fusedadam/")}
    sources = ROOT / "src" / "fusedadam"
    for module in sorted(sources.rglob("*.py")):  # subpackages too (distributed/)
        name = f"fusedadam/{module.relative_to(sources).as_posix()}"
        if name not in package:
            problems.append(f"missing {name}")
    for required in ["fusedadam/_kernels.pyi", "fusedadam/_testing.pyi", "fusedadam/py.typed"]:
        if required not in package:
            problems.append(f"missing {required}")
    # the step engine, and the test and benchmark kernels (the roofline probe) beside it
    for extension in ("_kernels", "_testing"):
        if not any(
            fnmatch.fnmatch(f, f"fusedadam/{extension}*.so")
            or fnmatch.fnmatch(f, f"fusedadam/{extension}*.pyd")
            for f in package
        ):
            problems.append(f"no compiled fusedadam/{extension} module")
    if not any(fnmatch.fnmatch(f, "fusedadam-*.dist-info/licenses/LICENSE") for f in files):
        problems.append("no LICENSE in the .dist-info")
    problems += [
        f"build source in the wheel: {f}"
        for f in sorted(files)
        if matches(f.rsplit("/", 1)[-1], BUILD_SOURCES)
    ]
    if "manylinux" in path.name:
        libs = [f for f in files if f.startswith("fusedadam.libs/")]
        if not any("libgomp" in f for f in libs):
            problems.append("repaired wheel carries no libgomp (fusedadam.libs/)")
        print(f"{path.name}: vendored libraries {libs}")
    report(path, len(files), problems)
    return not problems


def report(path, n_files, problems):
    verdict = "OK" if not problems else "FAIL"
    print(f"{path.name}: {n_files} files: {verdict}")
    for p in problems:
        print(f"  {p}")


def main(argv):
    if not argv:
        print(__doc__)
        return 2
    ok = True
    for arg in map(pathlib.Path, argv):
        ok &= check_sdist(arg) if arg.name.endswith(".tar.gz") else check_wheel(arg)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
