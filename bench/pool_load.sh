#!/bin/sh
# Build bench/pool_load.c and time serial / OpenMP fork-join / pool steps with no competing
# process of ours ("idle") and with one CPU-bound competitor pinned to CPU 1 ("pinned") or
# left to the scheduler ("unpinned"). One process per (condition, scheme), conditions and
# schemes interleaved over ROUNDS rounds; JSON lines are gathered into
# bench/results/pool_load[_MODE].json by bench/pool_load_report.py, which prints the table.
#
#   sh bench/pool_load.sh [main|small|ksweep] [ROUNDS] [K]   (main, 3 rounds: ~1 min)
# K: the pool's chunk size in elements for main and small (default 16384).
set -eu
MODE=${1:-main}
ROUNDS=${2:-3}
K=${3:-16384}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
TMP=$(mktemp -d)
COMPETITOR=""
stop_competitor() {
    if [ -n "$COMPETITOR" ]; then
        kill "$COMPETITOR" 2>/dev/null || true
        wait "$COMPETITOR" 2>/dev/null || true
        COMPETITOR=""
    fi
}
trap 'stop_competitor; rm -rf "$TMP"' EXIT INT TERM

${CC:-gcc} -O3 -ffp-contract=off -fno-math-errno -fno-trapping-math -fopenmp -pthread \
    -Wno-unused-function -I "$ROOT/src/fusedadam" "$HERE/pool_load.c" -o "$TMP/pool_load" -lm

if [ "$MODE" = ksweep ]; then SCHEMES="pool"; else SCHEMES="serial omp pool"; fi
OUT="$TMP/lines.jsonl"
: > "$OUT"
round=0
while [ "$round" -lt "$ROUNDS" ]; do
    for cond in idle pinned unpinned; do
        case $cond in
            pinned) taskset -c 1 python3 -c 'while True: pass' & COMPETITOR=$! ;;
            unpinned) python3 -c 'while True: pass' & COMPETITOR=$! ;;
        esac
        [ -n "$COMPETITOR" ] && sleep 0.3
        # rotate the scheme order every round
        set -- $SCHEMES
        i=0
        while [ "$i" -lt "$round" ]; do first=$1; shift; set -- "$@" "$first"; i=$((i + 1)); done
        for scheme in "$@"; do
            printf '{"loadavg_before": "%s", "condition": "%s", "scheme": "%s", "round": %d}\n' \
                "$(cut -d' ' -f1-3 /proc/loadavg)" "$cond" "$scheme" "$round" >> "$OUT"
            "$TMP/pool_load" "$cond" "$MODE" "$scheme" "$K" | sed "s/^{/{\"round\": $round, /" >> "$OUT"
        done
        stop_competitor
    done
    round=$((round + 1))
done
if [ "$MODE" = ksweep ]; then SUFFIX="_ksweep"; else SUFFIX="_${MODE}_k$K"; fi
python3 "$HERE/pool_load_report.py" "$OUT" "$HERE/results/pool_load$SUFFIX.json"
