#!/usr/bin/env bash
# CI stage: fusedadam.torch inside the training engines (docs/engines.md), on 2 CPU processes.
#
# Run inside a venv that already has fusedadam (pip install .) and torch==2.13.0 installed.
# Installs the engines without letting pip touch torch (--no-deps for every package that
# depends on torch, their other requirements resolved normally under a torch==2.13.0
# constraint), checks that torch is still 2.13.0, then runs the engine recipes, the DTensor
# bridge and the torch 8-bit state tests with FUSEDADAM_REQUIRE_ENGINES=1: a missing engine
# fails, and any skipped test fails the stage. Measured: 3m47s including the installs, the
# tests 2m09s, on this shared 2-core machine under load (test_fsdp2_8bit_state, added
# since, took 21 s more at load average 4.3).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off

# shellcheck source=tools/torch_pin.sh
. tools/torch_pin.sh
require_torch ci_engines "expected torch $want_torch before installing the engines"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "torch==$want_torch" > "$tmp/constraints.txt"

echo "== engines (torch-dependent: --no-deps)"
pip install --no-deps --no-build-isolation \
    "transformers==5.25.0" "accelerate==1.16.0" "lightning==2.6.6" "torchmetrics==1.9.0" \
    "deepspeed==0.19.8"
echo "== their other requirements (a torch==$want_torch constraint guards torch)"
pip install -c "$tmp/constraints.txt" \
    "huggingface-hub==2.4.0" "tokenizers==0.23.3" "safetensors==0.8.0" regex typer tqdm \
    pyyaml packaging psutil \
    "lightning-utilities==0.15.3" typing-extensions "fsspec>=2022.5" \
    einops hjson msgpack ninja py-cpuinfo "pydantic>=2"

require_torch ci_engines "installing the engines changed torch"
python -c "import transformers, accelerate, lightning, deepspeed" 2>/dev/null || {
    echo "ci_engines: an engine does not import" >&2
    python -c "import transformers, accelerate, lightning, deepspeed"
}

echo "== engine recipes (torchrun, 2 processes, gloo), the DTensor bridge, 8-bit state"
FUSEDADAM_REQUIRE_ENGINES=1 DS_ACCELERATOR=cpu python -m pytest -p no:cacheprovider -rs \
    -m "slow or not slow" --durations=0 tests/test_engines.py tests/test_torch_dtensor.py \
    tests/test_torch_state8bit.py \
    | tee "$tmp/engines.log"
if grep -qE "[0-9]+ skipped" "$tmp/engines.log"; then
    echo "ci_engines: engine tests were skipped" >&2
    exit 1
fi
