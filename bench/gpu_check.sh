#!/usr/bin/env bash
# The device check, on one CUDA machine, in at most 8 minutes (bench/README.md):
#   bash bench/gpu_check.sh [--out FILE] [--steps env speed runs chapter7 torchrun]
#   bash bench/gpu_check.sh --dry-run      # anywhere: the plan, checked; nothing runs
#   bash bench/gpu_check.sh --full         # the full recipe's memory and speed -> bench/results/gpu_full_cuda.json
#   bash bench/gpu_check.sh --chapters     # every chapter executed and timed -> bench/results/chapters_cuda.json
# Writes bench/results/gpu_check_cuda.json (and speed_cuda_fp16/bf16.json beside it) after
# every step, so a hard stop at the limit still leaves the steps done so far.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT_S=${GPU_CHECK_LIMIT_S:-480}
if [[ " $* " != *" --dry-run "* ]]; then
    python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: use --dry-run, or --device cpu to try the steps')" \
        || [[ " $* " == *" --device cpu "* ]]
fi
exec timeout --signal=TERM --kill-after=20 "$LIMIT_S" python bench/gpu_check.py "$@"
