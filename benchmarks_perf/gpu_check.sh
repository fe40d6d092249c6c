#!/usr/bin/env bash
# Every GPU claim of benchmarks_perf/README.md checked by one command on a CUDA machine, within 8 minutes:
#   bash benchmarks_perf/gpu_check.sh
# 1. the device (nvidia-smi name and memory) and its measured copy bandwidth;
# 2. every `cuda`-marked test;
# 3. each benchmark at its target size, each printing one PASS/MISS line per README target;
# 4. the benchmarks' tables appended to benchmarks_perf/RESULTS.md under the device, date and commit.
# Each step has its own timeout, cut to what is left of the 8-minute budget (GPU_CHECK_BUDGET_S), and a failing or
# hung step does not stop the next; a summary ends the run, and the exit status is 1 if any step failed. Without
# CUDA it says so and exits 0, having written nothing. PYTHON picks the interpreter (default: python3).
set -u
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
BUDGET_S=${GPU_CHECK_BUDGET_S:-480}

if ! nvidia-smi -L >/dev/null 2>&1 \
    || ! timeout 60 "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  echo "gpu_check: no CUDA device here (nvidia-smi or torch.cuda finds none); nothing run, nothing written."
  exit 0
fi

export PYTHONUNBUFFERED=1  # a step cut by its timeout still leaves what it printed
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # this checkout's qwen_audio, installed or not
logs=$(mktemp -d)
summary=()
failed=0

# step NAME SECONDS COMMAND...: run COMMAND under its own timeout, at most what is left of the budget; its stdout
# goes to the screen and $logs/NAME.log, its stderr to $logs/NAME.err (the last lines shown if it fails).
step() {
  local name=$1 limit=$2 left rc started
  shift 2
  left=$((BUDGET_S - SECONDS))
  ((limit > left)) && limit=$left
  if ((limit < 15)); then
    summary+=("$name: SKIPPED, budget spent")
    failed=1
    return
  fi
  echo
  echo "=== $name (timeout ${limit} s): $*"
  started=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>"$logs/$name.err" | tee "$logs/$name.log"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) summary+=("$name: ran in $((SECONDS - started)) s") ;;
    124 | 137) summary+=("$name: TIMED OUT after ${limit} s"); failed=1 ;;
    *) summary+=("$name: FAILED (exit $rc) after $((SECONDS - started)) s"); failed=1 ;;
  esac
  ((rc == 0)) || tail -20 "$logs/$name.err"
  while IFS= read -r line; do summary+=("  $line"); done < <(grep -E '^target: .*: (PASS|MISS)$' "$logs/$name.log")
}

gpu=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)
echo "gpu_check on $gpu"
# What the steps import, named up front: on a bare GPU machine a missing package is the likeliest failure.
missing=$("$PYTHON" -c "
import importlib.util
modules = ['torchaudio', 'triton', 'lightning', 'transformers', 'soundfile', 'tiktoken', 'jiwer', 'whisper', 'nnAudio',
           'jsonargparse', 'pytest']
print(' '.join(m for m in modules if importlib.util.find_spec(m) is None))")
[[ -z $missing ]] || echo "gpu_check: missing Python modules: $missing (pip install -e '.[dev]'); the steps needing them fail"
step device 60 "$PYTHON" benchmarks_perf/_timing.py
step cuda_tests 150 "$PYTHON" -m pytest -p no:cacheprovider -p no:benchmark -q -m cuda tests
step bench_mel 90 "$PYTHON" benchmarks_perf/bench_mel.py --device cuda --batch 64
step bench_pool 45 "$PYTHON" benchmarks_perf/bench_pool.py --device cuda --batch 32
step bench_attention 60 "$PYTHON" benchmarks_perf/bench_attention.py --device cuda
step bench_train_step 120 "$PYTHON" benchmarks_perf/bench_train_step.py --device cuda
step bench_generate 120 "$PYTHON" benchmarks_perf/bench_generate.py --device cuda

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit="$commit + uncommitted changes"
{
  echo
  echo "## gpu_check.sh on $gpu, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit"
  echo
  echo "Command: \`bash benchmarks_perf/gpu_check.sh\` ($(tail -1 "$logs/device.log" 2>/dev/null))."
  echo "Tests: \`python -m pytest -m cuda tests\`: $(grep -E '(passed|failed|error|skipped|no tests ran)' "$logs/cuda_tests.log" 2>/dev/null | tail -1)."
  for name in bench_mel bench_pool bench_attention bench_train_step bench_generate; do
    [[ -s $logs/$name.log ]] || continue
    echo
    echo "### $name"
    echo
    cat "$logs/$name.log"
  done
  echo
  echo "Summary:"
  echo
  printf -- '- %s\n' "${summary[@]}"
} >>benchmarks_perf/RESULTS.md

echo
echo "=== summary (appended to benchmarks_perf/RESULTS.md)"
printf '%s\n' "${summary[@]}"
rm -rf "$logs"
exit $failed
