#!/usr/bin/env bash
# Every GPU check and measurement of the GPU issue, in two parts that fit two device calls of
# 6 minutes each, run back to back on one warm machine:
#
#   bash benchmarks/gpu_suite.sh check   # does it work (GPU tests, bf16/fp16 training on CIFAR-10
#                                        # with both pipelines, GPU->CPU checkpoint, explanations
#                                        # on the GPU, the quickstart), then the speed levers:
#                                        # ViT-S/16 compiled default vs CUDA graphs at batch 256
#                                        # and 512 (MFU against the measured matmul rate), ours
#                                        # vs timm compiled, and (issue 14) what rollout and the
#                                        # gradient methods cost against a forward pass
#   bash benchmarks/gpu_suite.sh tta [key=value ...]   # the lighter recipe
#                                        # configs/cifar10_gpu_5min_light.yaml (TTA_CONFIG: another
#                                        # one, e.g. configs/cifar10_gpu_5min.yaml), from a
#                                        # cold compile cache, accuracy against wall time, with
#                                        # the loop levers (TTA_LEVERS) unless overridden
#   bash benchmarks/gpu_suite.sh more    # measured on 2026-11-30 already: ours vs timm eager,
#                                        # input pipelines, the tiny model compiled
#
# Steps run in order of importance; each gets at most its own limit and never more than what is
# left of the part's budget (SUITE_BUDGET_S, default 340 s), so a slow step costs the later ones,
# never the whole call. One log per part and the JSON files land in $OUT (at most 8 files come
# back from the device machine): copy them to benchmarks/results/.
#
# Rehearse on a CPU with tiny settings before spending GPU time (same steps, minutes):
#   SUITE_BUDGET_S=3000 bash benchmarks/gpu_suite.sh check --device cpu   (step limits x6 on a CPU)
#   SUITE_BUDGET_S=3000 bash benchmarks/gpu_suite.sh tta --device cpu
#   SUITE_BUDGET_S=3000 bash benchmarks/gpu_suite.sh more --device cpu
#
# Prepare once, on the development machine, in the repository root (.whl/ and .gpudata/ are
# git-ignored; the device image has torch, timm, torchvision, torchmetrics, matplotlib and
# OpenCV, not albumentations or pydantic):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl albumentations==2.0.8 albucore==0.0.24 annotated-types==0.8.0 pydantic==2.14.4 \
#     pydantic_core==2.50.5 simsimd==6.5.16 stringzilla==5.3.2 typing-inspection==0.4.5
#   mkdir -p .gpudata && cp ../shared/data/cifar10-train.tar.gz .gpudata/
# then, with the device tool, carry [".whl", ".gpudata"] and run `bash benchmarks/gpu_suite.sh check`.
set -uo pipefail
part=${1:?usage: gpu_suite.sh check|tta|more [--device cpu] [key=value ...]}
shift
device=cuda
if [ "${1:-}" = "--device" ]; then device=$2; shift 2; fi
OUT=${OUT:-/tmp/gpu_suite_out}
DATA=${DATA:-/tmp/data}
budget=${SUITE_BUDGET_S:-340}
# the per-step limits are sized for the GPU; a CPU rehearsal (a shared 2-core machine) needs more
limit_scale=${STEP_LIMIT_SCALE:-$([ "$device" = cpu ] && echo 6 || echo 1)}
start=$(date +%s)
mkdir -p "$OUT"
log="$OUT/$part.log"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

note() { echo "$*" | tee -a "$log"; }

# step NAME LIMIT_S CMD...: run CMD under min(LIMIT_S, time left); its output goes to the part's
# log, the last lines to stdout; a line "STEP NAME rc=.. seconds" says how it ended.
step() {
  local name=$1 limit=$(( $2 * limit_scale )); shift 2
  local left=$(( budget - ($(date +%s) - start) ))
  if [ "$left" -lt 20 ]; then note "STEP $name SKIPPED (${left}s of the budget left)"; return; fi
  local t=$(( limit < left ? limit : left )) t0
  t0=$(date +%s)
  echo "=== $name (limit ${t}s): $*" >> "$log"
  timeout --kill-after=5 "$t" "$@" > "$OUT/.step.log" 2>&1
  local rc=$?
  cat "$OUT/.step.log" >> "$log"
  tail -n "${TAIL:-12}" "$OUT/.step.log"
  rm -f "$OUT/.step.log"
  note "STEP $name rc=$rc $(( $(date +%s) - t0 ))s (limit ${t}s)$([ $rc = 124 ] && echo ' TIMED OUT')"
}

# --- set-up: packages the image lacks, the data -------------------------------------------------
if ! $PY -c "import albumentations" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { note "wheel install failed"; exit 1; }
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if [ ! -d "$DATA/train" ]; then
  mkdir -p "$DATA" && tar -xzf .gpudata/cifar10-train.tar.gz -C "$DATA" || { note "no data"; exit 1; }
fi
if [ "$device" = cuda ]; then
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,memory.total \
    --format=csv | tee -a "$log"
fi
$PY -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__)" | tee -a "$log"
date -u +%Y-%m-%dT%H:%M:%SZ | tee -a "$log"

if [ "$device" = cuda ]; then  # the real thing
  per_class=1000; epochs=3; workers=8; batch=256; speed=(); budget_min=5; quick=(); tta_data=$DATA
  models_eager=vit_tiny_patch4_32,vit_small_patch16_224,vit_base_patch16_224
  compiled=vit_small_patch16_224
  eff=(--models vit_small_patch16_224 --batches 256,512 --compile on,reduce-overhead)
  compiled_more=vit_base_patch16_224
  data_speed=(--limit 3000 --workers 0,16 --train-workers 16 --train-batches 20)
  explain_cost=(--model vit_base_patch16_224 --sizes 224,448,896 --repeats 5 --warmup 1)
else  # the rehearsal: every step, tiny sizes
  per_class=50; epochs=3; workers=2; batch=16; budget_min=1; quick=(train.epochs=1)
  speed=(--batch 2 --repeats 1 --warmup 1 --iters 1)
  models_eager=vit_tiny_patch4_32; compiled=vit_tiny_patch4_32
  tta_data=/tmp/gpu_suite_rehearsal_data  # 40 images per class: an epoch in seconds
  [ -d "$tta_data" ] || $PY -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; \
from gpu_check import link_subset; link_subset(Path('$DATA'), Path('$tta_data'), per_class=40)"
  eff=(--models vit_tiny_patch4_32 --batches 4 --compile on,reduce-overhead --warmup 1 --iters 1 --repeats 1)
  compiled_more=vit_tiny_patch4_32
  data_speed=(--limit 512 --workers 0 --train-workers 1 --train-batches 3)
  explain_cost=(--model vit_nano_patch4_32 --sizes 32,64 --repeats 1 --warmup 0)
fi

case "$part" in
  check)
    step gpu_tests 70 $PY -m pytest -q -m gpu -p no:cacheprovider tests/
    step gpu_check 110 $PY benchmarks/gpu_check.py --data "$DATA" --device "$device" \
      --per-class $per_class --epochs $epochs --workers $workers --batch-size $batch --json "$OUT/gpu_check.json"
    step quickstart 50 $PY train.py "${quick[@]}"
    step gpu_efficiency 110 $PY benchmarks/gpu_efficiency.py --device "$device" "${eff[@]}" \
      --json "$OUT/gpu_efficiency.json"
    step model_speed_compiled 100 $PY benchmarks/model_speed.py --device "$device" \
      --precision bf16 --compile --models $compiled_more --modes train,infer "${speed[@]}" \
      --json "$OUT/model_speed_bf16_compile.json"
    # issue 14: rollout and the gradient methods against a forward (+ backward) pass, fp32
    step rollout_cost 30 $PY benchmarks/rollout_cost.py --device "$device" "${explain_cost[@]}" \
      --json "$OUT/rollout_cost_gpu.json"
    ;;
  more)
    step model_speed_eager 60 $PY benchmarks/model_speed.py --device "$device" --precision bf16 \
      --models $models_eager "${speed[@]}" --json "$OUT/model_speed_bf16.json"
    step data_speed 30 $PY benchmarks/data_speed.py --cifar "$DATA" --device "$device" \
      "${data_speed[@]}" --json "$OUT/data_speed_gpu.json"
    step model_speed_compiled_tiny 100 $PY benchmarks/model_speed.py --device "$device" \
      --precision bf16 --compile --models vit_tiny_patch4_32 --modes train,infer "${speed[@]}" \
      --json "$OUT/model_speed_bf16_compile_tiny.json"
    step gpu_efficiency_profile 110 $PY benchmarks/gpu_efficiency.py --device "$device" \
      --models $compiled --batches $batch --compile on --profile --json "$OUT/gpu_efficiency_profile.json"
    ;;
  tta)
    # a cold compile cache: the wall time includes what a first run on a fresh machine pays
    export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d /tmp/inductor-cold-XXXX)
    tta_out=$(mktemp -d /tmp/tta-XXXX)
    # the loop-speed levers (same maths: augmentation draws per batch, graphs of the same model)
    read -r -a extra <<< "${TTA_LEVERS:-data.aug_batches=4 train.compile_mode=reduce-overhead}"
    [ "$device" = cpu ] && extra+=(train.compile=false data.workers=2 train.batch_size=64)
    tta_config=${TTA_CONFIG:-configs/cifar10_gpu_5min_light.yaml}
    TAIL=30 step time_to_accuracy 330 $PY benchmarks/time_to_accuracy.py --data "$tta_data" \
      --config "$tta_config" --budget-min $budget_min --out "$tta_out" \
      --json "$OUT/time_to_accuracy_gpu.json" --png "$OUT/time_to_accuracy_gpu.png" \
      train.device=$device train.time_budget_min=$budget_min "${extra[@]}" "$@"
    tta_run="$tta_out/$(basename "$tta_config" .yaml)"
    cp "$tta_run"/metrics.jsonl "$OUT/tta_metrics.jsonl" 2>/dev/null
    cp "$tta_run"/config.yaml "$OUT/tta_config.yaml" 2>/dev/null
    ;;
  *)
    echo "unknown part $part (check, tta or more)"; exit 2 ;;
esac
note "part $part done in $(( $(date +%s) - start ))s"
