#!/usr/bin/env bash
# `make gpu-check` on a lent GPU machine that has its own torch and no package registry.
#
#   bash bench/gpu_run.sh [PART ...]      # from the repository root; no PART = every part
#
# Installs the wheels that `make gpu-wheels` put in .whl/ (carried along with the working tree;
# GPU_WHEELS_DIR names another folder) into /tmp/site, then runs bench/gpu_check.py with that
# machine's python3 on the named parts, within GPU_CHECK_BUDGET seconds (default 540: one device
# call is at most 600). The report (gpu-check[-PARTS].md) and the pipeline's measurements
# (stage_timing.json) go to $OUT, the folder a device call brings back, or to bench/results/ where
# $OUT is unset. GPU_CHECK_ARGS adds options (e.g. --quick, to try the script on a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
wheels="${GPU_WHEELS_DIR:-.whl}"
if compgen -G "$wheels/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheels"/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# The fused ops `make gpu-prebuild` compiled for this machine's torch, carried as .ops-cache: imported
# instead of built here (one that does not fit or load is built as usual).
if [ -d .ops-cache ] && [ -z "${EMOJI3D_OPS_CACHE:-}" ]; then
    export EMOJI3D_OPS_CACHE="$PWD/.ops-cache"
fi
out="${OUT:-bench/results}"
name="gpu-check.md"
parts=()
if [ "$#" -gt 0 ]; then
    name="gpu-check$(printf -- '-%s' "$@").md"
    parts=(--parts "$@")
fi
exec python3 bench/gpu_check.py --budget "${GPU_CHECK_BUDGET:-540}" --out "$out/$name" --json-out "$out" "${parts[@]}" ${GPU_CHECK_ARGS:-}
