#!/usr/bin/env bash
# The whole GPU job (issue 11) in one run of the device machine (one H100 or H200, 16 cores, no package registry):
# install, GPU test lane, sweep, summary. Every log and result lands in OUT_DIR, in at most 8 files (what the
# device tool brings back): summary.txt, logs.tar.gz (every log and JUnit XML), trainer_step.md, gpu_sweep.{json,csv,md,png}
# (the csv: the sweep's rows of the long results CSV, to be appended to benchmarks/results/benchmarks.csv here).
#
#   bash benchmarks/gpu_check.sh OUT_DIR               # on the GPU machine: ~6 minutes, never more than 7
#   bash benchmarks/gpu_check.sh --rehearse OUT_DIR    # on a CPU machine: the same steps, with the GPU-only
#                                                      # ones replaced by their CPU stand-ins (see below)
#
# Steps, each under its own time limit (the sum stays under BUDGET_S, default 400 s):
# 1. the wheels in .whl/ the machine lacks (kornia, kornia_rs, inf-cl; `carry: [".whl"]`), pip --no-index.
#    Downloaded on the CPU machine (7.0 MiB; .whl/ is git-ignored) with:
#      python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#        -d .whl kornia==0.9.0 kornia_rs==0.2.0 inf-cl==1.2.1
# 2. the project: pip install --no-build-isolation --no-deps -e . , the CUDA kernels for setup.py's default
#    architectures (8.0+PTX;9.0a). Building for 9.0a alone saves no minutes there: measured on the 2-core CPU
#    machine with torch 2.11.0+cu130, each .cu costs ~35 CPU-s for 9.0a and ~50 CPU-s for both (nvcc --threads 2
#    compiles the two in parallel), and on 16 cores ninja compiles the 5 sources side by side.
# 3. python -m synthcl_fast.env_report (versions, backends and why not)
# 4. GPU tests: pytest -m gpu over tests/ (the conformance suite's GPU lanes, the Triton internals on the GPU);
#    -x and a per-test timeout (pytest-timeout). With --rehearse also tests/test_conformance.py's CPU lanes.
# 4b. the trainer on the GPU (issue 26): a short synthcl-train run (bf16 autocast, channels-last, pinned
#    non-blocking batches, no host read inside a step) and the step profile, trainer_step.md (also in summary.txt)
# 5. benchmarks/gpu_sweep.py with a time budget (its JSON/markdown are rewritten after every row, so a run cut
#    short keeps what it measured; its CSV rows go to OUT_DIR/gpu_sweep.csv, not to the tree's results CSV, which
#    does not come back), and its plot (benchmarks/plot.py on that CSV)
# 6. summary.txt: each step's status and time, the failures, the sweep's table; printed at the end
#
# --rehearse (no GPU): step 4 runs the same selection (every test skips without a GPU; collection and imports
# are what is checked) and step 5 runs gpu_sweep.py --dry-run and --smoke (tiny shapes under TRITON_INTERPRET=1:
# the script's own code paths, outputs and plot). triton 3.6.0's interpreter needs numpy < 2.4 (the GPU
# machine's numpy 2.5.2 does not matter to its compiled kernels): rehearse in a venv with numpy 2.3, or
# sweep_smoke fails, its triton rows naming numpy. benchmarks/results/gpu_rehearsal.md: the last rehearsal.
#
# Environment: PYTHON (default python3), BUDGET_S (default 400; 6x that and each step's limit with --rehearse),
# PER_TEST_TIMEOUT_S (default 120), SYNTHCL_FAST_COMMIT (the
# commit being run, recorded in the sweep where there is no .git), TORCH_CUDA_ARCH_LIST (setup.py's default).
set -uo pipefail
cd "$(dirname "$0")/.."

rehearse=0
if [ "${1:-}" = "--rehearse" ]; then rehearse=1; shift; fi
[ $# -eq 1 ] || { echo "usage: bash benchmarks/gpu_check.sh [--rehearse] OUT_DIR" >&2; exit 2; }
out="$1"
mkdir -p "$out/logs"
python="${PYTHON:-python3}"
# On a 2-core CPU machine (--rehearse) every step takes several times longer than on the GPU machine's 16 cores.
limit_scale=$([ $rehearse = 1 ] && echo 6 || echo 1)
budget="${BUDGET_S:-$(( 400 * limit_scale ))}"
per_test="${PER_TEST_TIMEOUT_S:-120}"
export PYTHONUNBUFFERED=1 PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1
unset TRITON_INTERPRET SYNTHCL_FAST_TRITON_TILES
start=$(date +%s)
summary="$out/summary.txt"
: > "$summary"
failed=0

note() { echo "$*" | tee -a "$summary"; }
left() { echo $(( budget - ($(date +%s) - start) )); }

# step NAME LIMIT_S COMMAND...: runs COMMAND with its output in logs/NAME.log, stopped after LIMIT_S seconds
# (SIGINT, then SIGKILL 15 s later) or when the budget is spent; records status and time in the summary.
step() {
  local name="$1" limit=$(( $2 * limit_scale )); shift 2
  local remaining; remaining=$(left)
  [ "$limit" -gt "$remaining" ] && limit="$remaining"
  if [ "$limit" -le 5 ]; then note "$(printf '%-16s SKIPPED (time budget %ss spent)' "$name" "$budget")"; return 1; fi
  local t0 rc; t0=$(date +%s)
  echo "== $name (limit ${limit}s): $*" | tee "$out/logs/$name.log"
  timeout -s INT -k 15 "$limit" "$@" >> "$out/logs/$name.log" 2>&1
  rc=$?
  local status="ok"
  [ $rc -ne 0 ] && status="FAILED (exit $rc)"
  [ $rc -eq 124 ] || [ $rc -eq 130 ] || [ $rc -eq 137 ] && status="STOPPED at its ${limit}s limit (exit $rc)"
  note "$(printf '%-16s %-40s %4ss' "$name" "$status" "$(( $(date +%s) - t0 ))")"
  [ $rc -ne 0 ] && failed=1 && tail -n 25 "$out/logs/$name.log" | sed 's/^/    | /' | tee -a "$summary"
  return $rc
}

finish() {
  tar -czf "$out/logs.tar.gz" -C "$out" logs && rm -rf "$out/logs"
  note "total $(( $(date +%s) - start ))s (budget ${budget}s), $([ $failed = 0 ] && echo 'every step ok' || echo 'FAILURES above'); files: $(cd "$out" && ls | tr '\n' ' ')"
}
trap finish EXIT

note "synthcl_fast GPU check, $(date -u +%FT%TZ), commit ${SYNTHCL_FAST_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}$([ $rehearse = 1 ] && echo ', REHEARSAL (no GPU)')"
"$python" - <<'EOF' 2>&1 | tee -a "$summary"
import platform, torch
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), {gpu}")
EOF
if [ $rehearse = 0 ] && ! "$python" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  note "no CUDA device here: run with --rehearse on a machine without a GPU"; exit 1
fi

# 1. wheels the machine lacks (the download command is at the top); --no-deps: their dependencies (torch,
#    numpy, triton) are the machine's own
if compgen -G ".whl/*.whl" > /dev/null; then
  step wheels 60 "$python" -m pip install --no-index --no-deps --no-compile .whl/*.whl
else
  note "wheels           none in .whl/ (kornia and inf-cl missing: test_trainer and the inf_cl variants fail)"
fi

# 2. the project, C++ and CUDA kernels ahead of time
step build 240 "$python" -m pip install -v --no-index --no-build-isolation --no-deps -e . || {
  note "the build failed: nothing else can run"; exit 1; }
"$python" -c "import json; print('built:', json.load(open('synthcl_fast/_build_info.json')))" 2>&1 | tee -a "$summary"

# 3. what runs here and why not
step env_report 60 "$python" -m synthcl_fast.env_report

# 4. GPU tests (-p no:cacheprovider: no .pytest_cache in the tree)
pytest_args=(-x -q -p no:cacheprovider -o addopts="" -rfE "--timeout=$per_test")
step tests_gpu 160 "$python" -m pytest "${pytest_args[@]}" -m gpu --junitxml="$out/logs/tests_gpu.xml" tests/
[ $? -eq 5 ] && note "    (exit 5: no test is marked gpu)"
# The conformance suite's GPU lanes are marked gpu (tests/conftest.py's lane_param): tests_gpu ran them. Its CPU
# lanes, the only tests a rehearsal executes, run here with --rehearse alone (on the GPU machine they would
# re-check what the rehearsal checked in the same stack, on the sweep's time).
if [ $rehearse = 1 ]; then
  step tests_conformance 150 "$python" -m pytest "${pytest_args[@]}" --junitxml="$out/logs/tests_conformance.xml" \
    tests/test_conformance.py
fi

# 4b. the trainer: two short epochs end to end (evaluation, checkpoints, figures), then the step's time and profile
device=$([ $rehearse = 1 ] && echo cpu || echo cuda)
run_dir="$(mktemp -d)/trainer_run"  # its checkpoints stay out of logs.tar.gz; its metrics go in
step trainer_run 90 "$python" -m synthcl_fast.trainer train --device "$device" --epochs 2 --warmup-epochs 1 \
  --eval-every 2 --no-progress --output-dir "$run_dir"
cp "$run_dir/metrics.csv" "$out/logs/trainer_run_metrics.csv" 2>/dev/null
step trainer_step 60 "$python" benchmarks/profile_trainer_step.py --device "$device" \
  --steps "$([ $rehearse = 1 ] && echo 3 || echo 30)" --profiled-steps 3 --out "$out/trainer_step.md" \
  && cat "$out/trainer_step.md" >> "$summary"

# 5. the sweep
if [ $rehearse = 1 ]; then
  step sweep_plan 60 "$python" benchmarks/gpu_sweep.py --dry-run
  TRITON_INTERPRET=1 step sweep_smoke 240 "$python" benchmarks/gpu_sweep.py --smoke --out "$out/gpu_sweep" \
    --csv "$out/gpu_sweep.csv"
else
  # no new measurement 45 s before the step's end (one measurement, a torch.compile included, fits in that)
  sweep_limit=$(( $(left) - 30 ))
  step sweep "$sweep_limit" "$python" benchmarks/gpu_sweep.py --out "$out/gpu_sweep" --csv "$out/gpu_sweep.csv" \
    --budget-s $(( sweep_limit > 60 ? sweep_limit - 45 : 15 ))
fi
if [ -f "$out/gpu_sweep.csv" ]; then
  step plot 30 "$python" benchmarks/plot.py "$out/gpu_sweep.csv" --out "$out/gpu_sweep.png"
fi
if [ -f "$out/gpu_sweep.json" ]; then
  [ -f "$out/gpu_sweep.md" ] && cat "$out/gpu_sweep.md" >> "$summary"
fi
exit $failed
