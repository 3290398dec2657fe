#!/usr/bin/env bash
# The ablation on CUB-200-2011 with ViT-B/16 (ImageNet-21k) at 448 px, 3 seeds, on one GPU.
#   bash bench/cub_gpu.sh /data/CUB_200_2011 [weights.safetensors]
# Writes bench/results/ablation_cub_gpu.json (same format as the CPU ablation; resumable:
# re-running skips finished runs and resumes interrupted ones).
# Cost: 7 variants x 3 seeds; progressive costs ~2.75x a plain step, with the crop ~5.5x
# (per_layer ~11x): budget days of GPU time for all 21 runs, or pass --variants/--seeds.
set -euo pipefail
DATA=${1:?usage: bench/cub_gpu.sh CUB_200_2011_FOLDER [WEIGHTS_FILE] [extra ablation.py options]}
shift
EXTRA=()
if [[ $# -gt 0 && -f "$1" ]]; then
  EXTRA+=(--set "weights=$1" pretrained=false)   # offline: local timm checkpoint
  shift
fi
cd "$(dirname "$0")/.."
python bench/ablation.py --config bench/configs/cub_vitb16_448.yaml --data-root "$DATA" \
  --runs-dir bench/runs/cub_vitb16_448 --out bench/results/ablation_cub_gpu.json "${EXTRA[@]}" "$@"
