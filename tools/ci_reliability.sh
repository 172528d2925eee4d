#!/usr/bin/env bash
# The long runs of the reliability fuzz tests (the default suite runs short versions):
# the features fuzz (5000 hypothesis examples) and the MPI fuzz at 2 and 3 ranks (400
# random configurations each, 5 steps each, bad input injected on one rank).
# Needs mpi4py and mpiexec (pip install mpi4py mpich); FUSEDADAM_REQUIRE_MPI=1 makes
# their absence a failure rather than a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
export FUSEDADAM_REQUIRE_MPI="${FUSEDADAM_REQUIRE_MPI:-1}"
python -m pytest -q -p no:cacheprovider -m soak tests/test_fuzz.py -k features_fuzz_soak
python -m pytest -q -p no:cacheprovider -m soak -s tests/test_distributed.py -k fuzz_sharded_soak
