#!/usr/bin/env bash
# Run on the GPU device (the `run` tool), in the repository root, after the default model's GGUF has
# travelled in parts (docs/QUALITY.md "Recall that generalises"): .mdl/q.gguf.part0..7 copied to /tmp/parts by
# earlier calls, wheels for peft and gguf in .whl/. Rebuilds the default model's bf16 cache exactly as
# `lorastudio models --prepare default` does (sha256 checked), then runs the product sweep.
#   bash bench/quality/device_sweep.sh RECIPES GPUS PER_GPU BUDGET_S
set -u
RECIPES=$1; GPUS=${2:-0}; PER_GPU=${3:-4}; BUDGET=${4:-300}
export PYTHONPATH=/tmp/site:$PWD LORASTUDIO_HOME=/tmp/lh PYTHONUNBUFFERED=1
if [ ! -d /tmp/lh/models/default ]; then
  mkdir -p /tmp/lh/models
  cat /tmp/parts/q.gguf.part? > /tmp/lh/default.gguf
  echo "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32  /tmp/lh/default.gguf" | sha256sum -c - || exit 3
  python3 -c "
from pathlib import Path
from lorastudio.models.default import dequantize_gguf
out = Path('/tmp/lh/models/.default-build'); out.mkdir(parents=True, exist_ok=True)
dequantize_gguf(Path('/tmp/lh/default.gguf'), out); out.rename('/tmp/lh/models/default')
print('default model ready')" || exit 4
fi
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
mkdir -p "$OUT/sweep"
timeout $((BUDGET + 230)) python3 bench/quality/product_sweep.py --data lorastudio/assets/demo/yunzhan_train.jsonl \
  --out /tmp/sweep --gpus "$GPUS" --per-gpu "$PER_GPU" --budget-s "$BUDGET" --recipes "$RECIPES" 2>&1 | tee "$OUT/sweep/sweep.log"
cp /tmp/sweep/results.jsonl "$OUT/sweep/results.jsonl"
for r in /tmp/sweep/h_*; do  # one augmented.jsonl per lever (seed 0), to read what was trained
  case $r in *_s[0-9]) continue;; esac
  [ -f "$r/augmented.jsonl" ] && gzip -c "$r/augmented.jsonl" > "$OUT/sweep/$(basename "$r")_augmented.jsonl.gz"
done
ls -la "$OUT/sweep"
