# Sourced by the CI stages that install torch-dependent packages (ci_engines.sh,
# ci_references.sh): the one torch version CI runs, and the check that it is still the one
# installed. The hook scripts must keep pip from replacing it (--no-deps, a constraint).
want_torch="2.13.0"
torch_version() { python -c "import torch; print(torch.__version__.split('+')[0])"; }
# require_torch STAGE MESSAGE: exit unless torch is $want_torch
require_torch() {
    if [ "$(torch_version)" != "$want_torch" ]; then
        echo "$1: $2 (torch is $(torch_version), CI runs $want_torch)" >&2
        exit 1
    fi
}
