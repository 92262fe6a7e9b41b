#!/usr/bin/env bash
# Every GPU measurement of the project, in one run on a machine with one GPU:
#   tests  the CUDA-only tests (tests/test_cuda_graph.py, tests/test_cnn.py)
#   bench  python bench/run.py --gpu --quick: the GPU keys, a profile, JSON and tables
#   study  a short `study run` of the homework grid, --repeats 3 at 0.125 GPU a trial, and
#          `study report` on it
# each under its own time limit (together under 10 minutes). OUT receives a handful of files
# (a device machine hands back few): environment.txt, stages.tsv (`stage exit seconds`),
# gpu.json and gpu.md (the benchmark's keys and table) and all.tar.gz (every stage's log, the
# benchmark's phases and profile tables, the study's folder and report; no weights), packed
# again after each stage so that what ran comes back even if the whole is stopped.
#
#   bash bench/gpu_all.sh OUT               # every stage
#   bash bench/gpu_all.sh OUT bench study   # only these again (e.g. the ones that failed)
#   DEVICE=cpu bash bench/gpu_all.sh OUT    # the same stages on a machine without a GPU, to
#                                           # check the script (no GPU figures: keys stay null)
#
# On a GPU machine without Ray and without a network: build the bundle here once with
# ../shared/tools/device-bundle.sh, carry .devbundle/, and run from the project root there:
#   source .devbundle/setup.sh && bash bench/gpu_all.sh "$OUT"
# Exits 0 when every stage did, 1 otherwise.
set -uo pipefail
if [ $# -lt 1 ]; then
  echo "usage: bash bench/gpu_all.sh OUT [tests|bench|study ...]" >&2
  exit 2
fi
out_arg="$1"
shift
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(tests bench study)
declare -A limit=([tests]=60 [bench]=420 [study]=110)
for stage in "${stages[@]}"; do
  case "$stage" in
    tests|bench|study) ;;
    *) echo "gpu_all.sh: unknown stage '$stage': tests, bench or study" >&2; exit 2 ;;
  esac
done
device="${DEVICE:-cuda}"
case "$device" in
  cuda) gpus=0.125; scale=1 ;;
  cpu) gpus=0; scale=4 ;;  # a CPU takes longer over the same stages
  *) echo "gpu_all.sh: DEVICE must be cuda or cpu, got '$device'" >&2; exit 2 ;;
esac
# OUT and WORK (everything the stages write; OUT gets it packed), as absolute folders.
folder() {
  if ! mkdir -p -- "$2" 2>/dev/null || ! [ -w "$2" ]; then
    echo "gpu_all.sh: $1 '$2' is not a folder this user can write" >&2
    exit 2
  fi
  (cd -- "$2" && pwd)
}
out="$(folder OUT "$out_arg")" || exit 2
work="$(folder WORK "${WORK:-/tmp/gpu_all}")" || exit 2
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
export python work gpus device

{
  date -Is
  "$python" - <<'EOF'
import platform
from importlib import metadata

import torch

print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA",
      torch.version.cuda, "| cuDNN", torch.backends.cudnn.version())
print("devices:", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
      or "none")
for name in ("ray", "optuna", "pandas", "scipy", "statsmodels", "rich", "pytest"):
    try:
        print(name, metadata.version(name))
    except metadata.PackageNotFoundError:  # shows again in the stage that needs it
        print(name, "MISSING")
EOF
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader
  echo "cpus $(nproc)"
} > "$work/environment.txt" 2>&1
cat "$work/environment.txt"

stage_tests() {
  "$python" -m pytest -q -rs -p no:cacheprovider tests/test_cuda_graph.py tests/test_cnn.py
}

stage_bench() {
  rm -rf "$work/bench-results" "$work/gpu.json" "$work/gpu.md"
  touch "$work/bench.started"
  "$python" bench/run.py --gpu --quick --device "$device" --json "$work/gpu.json"
  local rc=$?
  # This run's folder (none from an earlier run): every phase's log and JSON, the profile
  # tables, the table as gpu.md.
  local run_dir
  run_dir="$(find bench/results -mindepth 1 -maxdepth 1 -type d -name '2*' \
    -newer "$work/bench.started" 2>/dev/null | sort | tail -n 1)"
  if [ -n "$run_dir" ]; then
    cp -r "$run_dir" "$work/bench-results"
    [ -f "$run_dir/results.md" ] && cp "$run_dir/results.md" "$work/gpu.md"
  fi
  return $rc
}

stage_study() {
  rm -rf "$work/study"
  "$python" -m study run --space homework --search grid --repeats 3 --max-epochs 3 \
    --gpus-per-trial "$gpus" --cpus-per-trial 1 --checkpoint-every 0 --quiet \
    --storage-path "$work/study" --name grid || return
  "$python" -m study report "$work/study/grid"
}
export -f stage_tests stage_bench stage_study

pack() {
  cp "$work/environment.txt" "$work/stages.tsv" "$out/" 2>/dev/null
  for f in gpu.json gpu.md; do [ -f "$work/$f" ] && cp "$work/$f" "$out/"; done
  tar -C "$work" --exclude='checkpoint_*' --exclude='*.pt' --exclude='*.npz' \
    -czf "$out/all.tar.gz.tmp" . && mv "$out/all.tar.gz.tmp" "$out/all.tar.gz"
}

failed=0
for stage in "${stages[@]}"; do
  seconds=$(( limit[$stage] * scale ))
  echo "== $stage (at most $seconds s)"
  start=$(date +%s)
  # A shell of its own for each stage, so that its time limit stops all it started.
  timeout --kill-after=10 "$seconds" bash -c "stage_$stage" > "$work/$stage.log" 2>&1
  rc=$?
  seconds=$(( $(date +%s) - start ))
  printf '%s\t%s\t%s\n' "$stage" "$rc" "$seconds" >> "$work/stages.tsv"
  tail -n 25 "$work/$stage.log"
  echo "== $stage: exit $rc in $seconds s"
  [ "$rc" = 0 ] || failed=1
  pack
done
exit $failed
