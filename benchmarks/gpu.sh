#!/usr/bin/env bash
# The GPU checks, in one script for a short lease on a CUDA machine: the GPU tests, the step
# against the lesson's on nanoGPT's character model, that model trained to 1.47, and the
# pretrain preset's throughput. Needs TinyShakespeare in $MINIGPT_DATA_DIR/tinyshakespeare/;
# writes its logs under $OUT (default gpu-out/). Each part has its own time limit.
#     MINIGPT_DATA_DIR=... OUT=... bash benchmarks/gpu.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
runs=$(mktemp -d)

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda,
               torch.cuda.get_device_name())"
  lscpu | grep 'Model name'; } > "$OUT/env.txt" 2>&1

# 1. the tests that need CUDA (the CPU as their oracle)
timeout 120 python3 -m pytest -m gpu -o addopts="" -p no:cacheprovider -ra tests \
    > "$OUT/pytest-gpu.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest-gpu.log"

# 2. the step: nanoGPT's character model, every path
timeout 75 python3 benchmarks/train_step.py --device cuda --preset nanogpt-char --rounds 6 \
    --steps-per-round 10 > "$OUT/train-step.log" 2>&1
echo "rc=$?" >> "$OUT/train-step.log"

# 3. nanoGPT's character recipe to 1.47 (nanoGPT: about 3 minutes on an A100)
timeout 200 python3 -m minigpt train --preset nanogpt-char --device cuda --no-progress \
    --time-budget 120 --targets 1.72,1.6,1.5,1.47 --out "$runs/nanogpt" > "$OUT/nanogpt-char.log" 2>&1
echo "rc=$?" >> "$OUT/nanogpt-char.log"
cp "$runs/nanogpt/summary.json" "$OUT/nanogpt-char-summary.json" 2>/dev/null

# 4. the pretrain preset (12 x 512, block 512, batch 32) on BPE TinyShakespeare: its tokens/s
timeout 110 python3 -m minigpt train --preset pretrain --device cuda --no-progress \
    --tokenizer bpe --vocab-size 8192 --time-budget 60 --eval-every 250 \
    --out "$runs/pretrain" > "$OUT/pretrain.log" 2>&1
echo "rc=$?" >> "$OUT/pretrain.log"
cp "$runs/pretrain/summary.json" "$OUT/pretrain-summary.json" 2>/dev/null
exit 0
