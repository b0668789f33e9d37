#!/usr/bin/env bash
# Every GPU measurement of the performance issue, in two device calls of < 10 minutes each.
#
# Prepare once, on the development machine, in the repository root (.whl/ and .gpudata/ are
# git-ignored, so nothing is committed):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl albumentations==2.0.8 albucore==0.0.24 annotated-types==0.8.0 pydantic==2.14.3 \
#     pydantic_core==2.50.4 simsimd==6.5.16 stringzilla==5.3.2 typing-inspection==0.4.5
#   mkdir -p .gpudata && cp ../shared/data/cifar10-train.tar.gz .gpudata/
# (the device image has torch, timm, torchvision, torchmetrics, matplotlib and OpenCV, not
# albumentations or pydantic). Then, with the device tool, carry [".whl", ".gpudata"] and run:
#   bash benchmarks/gpu_suite.sh speed     # GPU tests, model speed vs timm (eager and compiled),
#                                          # ViT-S/B MFU vs measured matmul peak, data pipeline
#   bash benchmarks/gpu_suite.sh tta [key=value ...]   # configs/cifar10_vit_tiny.yaml, 10 min
# Results land in $OUT (at most 8 files come back); copy them into benchmarks/results/ and
# record them in benchmarks/RESULTS.md with the device name and the date.
set -uo pipefail
part=${1:?usage: gpu_suite.sh speed|tta [key=value ...]}
shift
OUT=${OUT:-/tmp/gpu_suite_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
mkdir -p /tmp/data && tar -xzf .gpudata/cifar10-train.tar.gz -C /tmp/data || exit 1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,memory.total \
  --format=csv > "$OUT/gpu.csv"
date -u +%Y-%m-%dT%H:%M:%SZ >> "$OUT/gpu.csv"

case "$part" in
  speed)
    timeout 90 python3 -m pytest -q -m gpu tests/ 2>&1 | tee "$OUT/gpu_tests.log"
    timeout 150 python3 benchmarks/model_speed.py --device cuda --precision bf16 \
      --json "$OUT/model_speed_bf16.json" 2>&1 | tail -n 25
    timeout 170 python3 benchmarks/model_speed.py --device cuda --precision bf16 --compile \
      --json "$OUT/model_speed_bf16_compile.json" 2>&1 | tail -n 25
    timeout 150 python3 benchmarks/gpu_efficiency.py --device cuda --profile \
      --json "$OUT/gpu_efficiency.json" 2>&1 | tail -n 40
    timeout 60 python3 benchmarks/data_speed.py --cifar /tmp/data --device cuda --limit 5000 \
      --workers 0,8 --train-workers 8 --train-batches 30 --json "$OUT/data_speed_gpu.json" \
      2>&1 | tail -n 20
    ;;
  tta)
    timeout 570 python3 benchmarks/time_to_accuracy.py --data /tmp/data \
      --config configs/cifar10_vit_tiny.yaml --budget-min 10 --out /tmp/tta \
      --json "$OUT/time_to_accuracy_gpu.json" --png "$OUT/time_to_accuracy_gpu.png" \
      train.device=cuda "$@" 2>&1 | tail -n 30
    cp /tmp/tta/cifar10_vit_tiny/metrics.jsonl "$OUT/" 2>/dev/null
    ;;
  *)
    echo "unknown part $part (speed or tta)"; exit 2 ;;
esac
