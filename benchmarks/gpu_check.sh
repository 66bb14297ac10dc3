#!/usr/bin/env bash
# The first run on a machine with a GPU: build, check every kernel on the device, run the GPU
# tests, and measure. Everything lands in one folder (default benchmarks/gpu-check/, or $OUT),
# one file per step, with summary.md holding what benchmarks/RESULTS.md's GPU section takes:
#
#   bash benchmarks/gpu_check.sh                 # about 6-8 minutes on one H100
#
# Steps: 1 the machine (nvidia-smi, torch); 2 `pip install --no-build-isolation --no-deps .`;
# 3 `fu-fast info --check` (every kernel of the chosen backend against its CPU twin and the
# reference, one analysis against the CPU's); 4 `pytest -m cuda`; 5 `fu-fast bench gpu` at a size
# that fits the budget. A step that fails is recorded and the script goes on, so one run shows
# everything; the exit status is that of the first failed step.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/gpu-check}"
mkdir -p "$out"
summary="$out/summary.md"
status=0

step() {   # step NAME LIMIT_SECONDS COMMAND...: run, log to $out/NAME.txt, record the outcome
  local name="$1" limit="$2"
  shift 2
  local started=$SECONDS
  timeout "$limit" "$@" >"$out/$name.txt" 2>&1
  local rc=$?
  echo "| $name | $rc | $((SECONDS - started)) s |" >>"$summary"
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
  return "$rc"
}

{
  echo "# GPU check, $(date -u +%Y-%m-%d)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  python -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" 2>&1
  echo '```'
  echo
  echo "| step | exit status | time |"
  echo "|---|---:|---:|"
} >"$summary"

step build 600 pip install --no-build-isolation --no-deps . || { cat "$summary"; exit "$status"; }
step info-check 300 fu-fast info --check
step pytest-cuda 600 pytest -m cuda -q -p no:cacheprovider
step bench-gpu 480 fu-fast bench gpu --widths 1 4 --images 1000 --naive-images 64 --json "$out/bench-gpu.json"

{
  echo
  echo "## fu-fast info --check"
  echo '```'
  cat "$out/info-check.txt"
  echo '```'
  echo
  echo "## pytest -m cuda"
  echo '```'
  tail -n 15 "$out/pytest-cuda.txt"
  echo '```'
  echo
  echo "## fu-fast bench gpu --widths 1 4 --images 1000 --naive-images 64"
  echo '```'
  cat "$out/bench-gpu.txt"
  echo '```'
} >>"$summary"
cat "$summary"
exit "$status"
