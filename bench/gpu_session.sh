#!/usr/bin/env bash
# Every GPU figure of the README, in one call of a lent GPU machine (every step has its own timeout, the most wanted
# figures first; the steps before the last are cut at 410 s in all, so in a 600 s call the last one gets at least
# 190 s of its 240, more when they finish early; an earlier form of the whole script took 414 s):
#   bash bench/gpu_session.sh PHOTOS OUT
# PHOTOS holds pizza_steak_sushi_20_percent/ (the e2e JPEGs); OUT receives at most 9 files.
set -u
PHOTOS=$1 OUT=$2
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__)"
  nproc; date -u; } > "$OUT/machine.txt" 2>&1
step() { echo "$(date -u +%T) $*" >> "$OUT/machine.txt"; }

# 1. the model alone, eager: ours, timm's and torchvision's (the yardstick of step 2's share)
step gpu.py
timeout 90 python3 bench/gpu.py --impls ours timm torchvision > "$OUT/gpu.md" 2>&1

# 2. end to end (batches augmented on the GPU, train.py's default there): train.py on 4,500 JPEGs (the 20 percent
#    set's training photos, 10 copies): ViT-B/16 and ViT-Ti/16 with the paper's patch embedding, as step 1 times
#    them, and the small from-scratch model of the README (64 px, 8 px patches from the conv stem, 6 layers)
step e2e
mkdir -p /tmp/e2e/train /tmp/e2e/test
for c in pizza steak sushi; do
  mkdir -p /tmp/e2e/train/$c /tmp/e2e/test/$c
  for i in 0 1 2 3 4 5 6 7 8 9; do
    for f in "$PHOTOS"/pizza_steak_sushi_20_percent/train/$c/*.jpg; do cp "$f" /tmp/e2e/train/$c/${i}_$(basename "$f"); done
  done
  cp "$PHOTOS"/pizza_steak_sushi_20_percent/test/$c/*.jpg /tmp/e2e/test/$c/
done
e2e() {  # NAME SECONDS train.py-flags...
  local name=$1 limit=$2; shift 2
  echo "=== $name" >> "$OUT/e2e.log"
  timeout "$limit" python3 train.py --data /tmp/e2e --epochs 4 --out-dir /tmp/e2e-out --name "e2e-$name" \
    --cache-dir /tmp/e2e-cache "$@" >> "$OUT/e2e.log" 2>&1
}
VIT224="--image-size 224 --patch-size 16 --num-layers 12 --stem patch --batch-size 128"
SMALL="--image-size 64 --patch-size 8 --num-layers 6 --stem conv"
e2e vit_b_16-128 60 --model vit_b_16 $VIT224
e2e vit_ti_16-128 60 --model vit_ti_16 $VIT224
e2e small-128 40 --model vit_ti_16 $SMALL --batch-size 128
python3 - <<'PY' > "$OUT/e2e.md"
import json
for run in ("vit_b_16-128", "vit_ti_16-128", "small-128"):
    try:
        rows = json.load(open(f"/tmp/e2e-out/results/e2e-{run}/metrics.json"))
    except OSError:
        print(f"| {run} | no metrics |"); continue
    for r in rows:
        print(f"| {run} | epoch {r['epoch']} | {r['seconds']:.2f} s | {(4500 + 150) / r['seconds']:.0f} img/s (train + test) |")
PY

# 2b. the small model alone (step 2's yardstick for it; not in step 1, as timm and torchvision have no conv stem)
step small
timeout 30 python3 bench/gpu.py --models vit_ti_16 --impls ours $SMALL > "$OUT/small.md" 2>&1

# 3. the tests that need CUDA (GPU against CPU: batch augmentation, predictions, a mixed-precision compiled run)
step tests
timeout 60 python3 -m pytest -q -p no:cacheprovider tests -k cuda > "$OUT/cuda-tests.log" 2>&1

# 3b. the operators a training step dispatches on CUDA (fused AdamW; bench/README.md has the CPU's counts)
step host_ops
timeout 25 python3 bench/host_ops.py --device cuda > "$OUT/host_ops.md" 2>/tmp/host_ops.err \
  || tail -5 /tmp/host_ops.err >> "$OUT/host_ops.md"

# 4. where ViT-B/16's end-to-end epoch goes (76-80% of the model alone on 2026-11-27): the GPU's busy share of epoch
#    2's training pass, its top operators, and any wait for the GPU (the decoded images are cached by step 2). The
#    input pipeline alone (bench/augment.py) is in bench/README.md twice and left out now.
step profile
timeout 45 python3 bench/profile_epoch.py --epoch 2 --rows 25 -- --data /tmp/e2e --epochs 2 --out-dir /tmp/e2e-prof \
  --name prof --cache-dir /tmp/e2e-cache --model vit_b_16 $VIT224 2>&1 | tr '\r' '\n' | grep -v "it/s\]" \
  > "$OUT/profile.md"

# 5. compiled, toward 50% MFU: ViT-B/16 at batch 256 with max-autotune (Triton GEMM templates, which can fuse the bias
#    and GELU into the matrix products; without CUDA graphs, which gain nothing at this size), ours only: the
#    default mode gave ours and timm 47% there on 2026-11-27 (bench/README.md). Last, and with the longest timeout
#    (autotuning benchmarks every GEMM shape first), so the call's own time limit cuts only this step
step mfu
timeout 240 python3 bench/gpu.py --compile --compile-mode max-autotune-no-cudagraphs --models vit_b_16 --impls ours \
  --batch 256 > "$OUT/mfu.md" 2>&1
step done
