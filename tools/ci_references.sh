#!/usr/bin/env bash
# CI stage: the 2024-26 algorithms against the packages users run them from
# (docs/algorithms.md): schedulefree, timm, pytorch_optimizer, torch-optimi, optax.
#
# Run inside a venv that already has fusedadam (pip install .) and torch==2.13.0 installed.
# The torch-dependent packages go in with --no-deps (timm would pull torchvision, and with it
# another torch), their other requirements under a torch==2.13.0 constraint; optax brings
# jax (no torch). torch is checked to be 2.13.0 after. Then the parity tests run with
# FUSEDADAM_REQUIRE_REFERENCES=1 (a missing package fails) and any skip fails the stage.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off

# shellcheck source=tools/torch_pin.sh
. tools/torch_pin.sh
require_torch ci_references "expected torch $want_torch before installing the references"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "torch==$want_torch" > "$tmp/constraints.txt"

echo "== reference packages (torch-dependent: --no-deps)"
pip install --no-deps "schedulefree==1.4.1" "timm==1.0.31" "pytorch_optimizer==4.1.0" \
    "adam-atan2-pytorch==0.4.1" \
    "torch-optimi==0.3.3"
echo "== their other requirements and optax (a torch==$want_torch constraint guards torch)"
pip install -c "$tmp/constraints.txt" "optax==0.2.8" einops huggingface-hub safetensors pyyaml \
    typing-extensions

require_torch ci_references "installing the references changed torch"

echo "== parity with the reference packages (float64, 100 steps, rtol 1e-10)"
FUSEDADAM_REQUIRE_REFERENCES=1 python -m pytest -p no:cacheprovider -rs --durations=10 \
    tests/test_algo_*.py "tests/test_formulas.py::test_optax_parity_where_installed" \
    | tee "$tmp/references.log"
if grep -qE "[0-9]+ skipped" "$tmp/references.log"; then
    echo "ci_references: parity tests were skipped" >&2
    exit 1
fi
