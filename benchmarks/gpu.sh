#!/usr/bin/env bash
# The GPU figures, in one go, on a machine with a CUDA GPU (about 10 minutes on one recent GPU).
#
#   bash benchmarks/gpu.sh [DATA_ROOT] [OUT_DIR] [STEP...]
#
# STEPs (default: speed cifar; about 10 minutes on one recent GPU): speed, cifar, and mnist —
# benchmarks/mnist.toml on the GPU (8 trained models, AutoAttack at 3 budgets; its store under
# results/mnist is reused), then the committed results/mnist-nsl-* files regenerated from it.
# DATA_ROOT holds MNIST and the CIFAR-10 pieces (default: $ROBENCH_DATA, else ../shared/data);
# OUT_DIR receives the CSVs (default: results/), each with the device's name in a column:
#   gpu-speed.csv             benchmarks/speed.py --device cuda: evaluation, AutoAttack, adapter,
#                             training and contract sections on MNIST (see its docstring)
#   gpu-cifar-fast-at.csv     Fast AT on PreActResNet-18, the recipe's 15 epochs of 50,000 images
#                             (the mirror's 4,000 exact training images tiled), clean and PGD-50
#                             accuracy after each epoch, projected wall time of the recipe
#   gpu-cifar-pgd10-at.csv    PGD-10 AT on PreActResNet-18, 2 epochs (enough for seconds per
#                             epoch; projected to the recipe's 30 and the published 200 epochs)
# The settings that fit ~10 minutes are the ones below: --aa-n 500 for the AutoAttack section,
# 2 PGD-AT epochs. Each step stops the script if it fails; what finished stays written.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-${ROBENCH_DATA:-../shared/data}}
OUT=${2:-results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
start=$SECONDS
step() { echo "== $* ($((SECONDS - start)) s)"; "$@"; }
STEPS=("${@:3}")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(speed cifar)
for s in "${STEPS[@]}"; do
  case $s in
    speed)
      step python benchmarks/speed.py --device cuda --data-root "$DATA" --aa-n 500 \
        -o "$OUT/gpu-speed.csv" ;;
    cifar)
      step python benchmarks/gpu_cifar.py --device cuda --data-root "$DATA" \
        --recipes preact18-fast-at -o "$OUT/gpu-cifar-fast-at.csv"
      step python benchmarks/gpu_cifar.py --device cuda --data-root "$DATA" \
        --recipes preact18-pgd10-at --epochs 2 -o "$OUT/gpu-cifar-pgd10-at.csv" ;;
    mnist)
      step robench run benchmarks/mnist.toml --device cuda --data-root "$DATA"
      cp results/mnist/results.csv "$OUT/mnist-nsl-results.csv"
      cp results/mnist/results.json "$OUT/mnist-nsl-provenance.json"
      step robench leaderboard results/mnist -o "$OUT/mnist-nsl-leaderboard.csv"
      step robench leaderboard results/mnist -o "$OUT/mnist-nsl-leaderboard.md" ;;
    *) echo "unknown step '$s' (expected speed, cifar or mnist)" >&2; exit 2 ;;
  esac
done
echo "== done in $((SECONDS - start)) s"
