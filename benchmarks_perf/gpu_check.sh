#!/usr/bin/env bash
# Every GPU claim of benchmarks_perf/README.md checked by one command on a CUDA machine in 8 min:
#   bash benchmarks_perf/gpu_check.sh            # on the GPU machine
#   bash benchmarks_perf/gpu_check.sh --dry-run  # anywhere: each step as `--help` (pytest: collect)
# 0. what the steps import, installed from wheels first if any is missing
#    (pip install --prefer-binary -e '.[cuda,dev]', FlashAttention-4 among them), so the device
#    minutes go to measuring;
# 1. the device (nvidia-smi name and memory) and its measured copy bandwidth;
# 2. every `cuda`-marked test;
# 3. each benchmark at its target size, each printing one PASS/MISS line per target:
#    FlashAttention-4 parity (bench_attention); log-mel >= 1.5x torchaudio and >= 10x openai-whisper
#    (bench_mel); pool + LayerNorm >= 70 % of copy bandwidth forward + backward in fp32 and bf16 and
#    >= 80 % bf16 forward (bench_pool); stage-1 MFU >= 40 % on executed FLOPs (bench_train_step);
#    bf16 first-token agreement with an fp32 reference (bench_bf16_agreement); generation >= 2x
#    transformers (bench_generate);
# 4. the benchmarks' tables appended to benchmarks_perf/RESULTS.md under the device, date and commit.
# Each step has its own timeout, cut to what is left of the 8-minute budget (GPU_CHECK_BUDGET_S);
# a failing or hung step does not stop the next; a summary ends the run; the exit status is 1
# if any step failed. Without CUDA it says so and exits 0, having written nothing. PYTHON picks the
# interpreter (default: python3).
# --dry-run exercises this script's logic without a GPU: nothing is installed, every step runs its
# command with `--help` (pytest collects the cuda tests instead), and the tables go to a temporary
# file, not RESULTS.md.
set -u
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
BUDGET_S=${GPU_CHECK_BUDGET_S:-480}
dry_run=0
[[ ${1:-} == --dry-run ]] && dry_run=1

if ((dry_run)); then
  results=$(mktemp --suffix=.md)
  echo "gpu_check: dry run, no GPU used; tables go to $results"
elif ! nvidia-smi -L >/dev/null 2>&1 \
    || ! timeout 60 "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  echo "gpu_check: no CUDA device here (nvidia-smi or torch.cuda finds none); nothing run, nothing written."
  exit 0
else
  results=benchmarks_perf/RESULTS.md
fi

export PYTHONUNBUFFERED=1  # a step cut by its timeout still leaves what it printed
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # this checkout's qwen_audio, installed or not
logs=$(mktemp -d)
summary=()
failed=0

# step NAME SECONDS COMMAND...: run COMMAND under its own timeout, at most what is left of the budget; its stdout
# goes to the screen and $logs/NAME.log, its stderr to $logs/NAME.err (the last lines shown if it fails).
# In a dry run the command gets `--help`, or `--collect-only` for pytest.
step() {
  local name=$1 limit=$2 left rc started
  shift 2
  if ((dry_run)); then
    if [[ " $* " == *" pytest "* ]]; then set -- "$@" --collect-only; else set -- "$@" --help; fi
  fi
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

if ((dry_run)); then
  gpu="dry run, no GPU"
else
  gpu=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)
fi
echo "gpu_check on $gpu"
# What the steps import: on a bare GPU machine a missing package is the likeliest failure, so
# install first.
missing=$("$PYTHON" -c "
import importlib.util
modules = ['torchaudio', 'triton', 'lightning', 'transformers', 'soundfile', 'tiktoken', 'jiwer', 'whisper', 'nnAudio',
           'jsonargparse', 'pytest', 'flash_attn']
missing = [m for m in modules if importlib.util.find_spec(m) is None]
if 'flash_attn' not in missing and importlib.util.find_spec('flash_attn.cute') is None:
    missing.append('flash_attn.cute')  # flash-attn 2 is not FlashAttention-4
print(' '.join(missing))")
if [[ -n $missing ]]; then
  echo "gpu_check: missing Python modules: $missing; installing the cuda and dev extras from wheels"
  if ((dry_run)); then
    summary+=("install: dry run, would run: $PYTHON -m pip install --prefer-binary -e .[cuda,dev]")
  else
    step install 120 "$PYTHON" -m pip install --prefer-binary --quiet -e ".[cuda,dev]"
  fi
fi
step device 30 "$PYTHON" benchmarks_perf/_timing.py
step cuda_tests 100 "$PYTHON" -m pytest -p no:cacheprovider -p no:benchmark -q -m cuda tests
step bench_attention 50 "$PYTHON" benchmarks_perf/bench_attention.py --device cuda
step bench_mel 45 "$PYTHON" benchmarks_perf/bench_mel.py --device cuda --batch 64
step bench_pool 35 "$PYTHON" benchmarks_perf/bench_pool.py --device cuda --batch 32
step bench_train_step 150 "$PYTHON" benchmarks_perf/bench_train_step.py --device cuda \
  --compile --mel-in-step --repeats 2
step bench_bf16_agreement 60 "$PYTHON" benchmarks_perf/bench_bf16_agreement.py --device cuda
step bench_generate 75 "$PYTHON" benchmarks_perf/bench_generate.py --device cuda

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit="$commit + uncommitted changes"
{
  echo
  echo "## gpu_check.sh on $gpu, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit"
  echo
  command="bash benchmarks_perf/gpu_check.sh$( ((dry_run)) && echo ' --dry-run')"
  echo "Command: \`$command\` ($(tail -1 "$logs/device.log" 2>/dev/null))."
  tests=$(grep -E '(passed|failed|error|skipped|no tests ran|collected)' "$logs/cuda_tests.log")
  echo "Tests: \`python -m pytest -m cuda tests\`: $(tail -1 <<<"$tests")."
  for name in bench_attention bench_mel bench_pool bench_train_step bench_bf16_agreement \
      bench_generate; do
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
} >>"$results"

echo
echo "=== summary (appended to $results)"
printf '%s\n' "${summary[@]}"
rm -rf "$logs"
exit $failed
