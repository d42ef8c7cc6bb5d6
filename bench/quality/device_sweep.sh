#!/usr/bin/env bash
# Run on the GPU device (the `run` tool), in the repository root, after the default model's GGUF has
# travelled in parts (docs/QUALITY.md "Recall that generalises"): r.gguf.partNN (`split -b 20m -d -a 2`: a part
# and the working tree, 42 MiB in session 19, must fit one call's 64 MiB; the wheels travel in a call of their
# own) copied to /tmp/parts by earlier calls, wheels for peft and gguf installed into /tmp/site. Rebuilds the
# default model's bf16 cache exactly as `lorastudio models --prepare default` does (sha256 checked), then runs
# one product sweep per SPEC, all at once on the same GPUs:
#   bash bench/quality/device_sweep.sh BUDGET_S GPUS NAME:DATA:PER_GPU:RECIPES [NAME:DATA:PER_GPU:RECIPES ...]
# BUDGET_S: start no recipe after this many seconds (0: none); each sweep is stopped BUDGET_S + 250 s in (560 s with
# no budget: under the device's 600 s a call).
# NAME's results (every answer) and log come back in $OUT/NAME/.
set -u
BUDGET=$1; GPUS=$2; shift 2
export PYTHONPATH=/tmp/site:$PWD LORASTUDIO_HOME=/tmp/lh PYTHONUNBUFFERED=1
if [ ! -d /tmp/lh/models/default ]; then
  mkdir -p /tmp/lh/models
  cat /tmp/parts/r.gguf.part* > /tmp/lh/default.gguf
  echo "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32  /tmp/lh/default.gguf" | sha256sum -c - || exit 3
  python3 -c "
from pathlib import Path
from lorastudio.models.default import dequantize_gguf
out = Path('/tmp/lh/models/.default-build'); out.mkdir(parents=True, exist_ok=True)
dequantize_gguf(Path('/tmp/lh/default.gguf'), out); out.rename('/tmp/lh/models/default')
print('default model ready')" || exit 4
fi
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
sweeps=(); copiers=()
for spec in "$@"; do
  IFS=: read -r name data per recipes <<<"$spec"
  mkdir -p "$OUT/$name"
  rm -f "/tmp/$name/results.jsonl"  # a second call on a warm machine: its results only, not appended to the last's
  (while sleep 15; do cp "/tmp/$name/results.jsonl" "$OUT/$name/" 2>/dev/null; done) &  # partial results if cut off
  copiers+=($!)
  (timeout $((BUDGET > 0 ? BUDGET + 250 : 560)) python3 bench/quality/product_sweep.py --data "$data" --out "/tmp/$name" --gpus "$GPUS" \
     --per-gpu "$per" --budget-s "$BUDGET" --recipes "$recipes" > "$OUT/$name/sweep.log" 2>&1
   cp "/tmp/$name/results.jsonl" "$OUT/$name/results.jsonl") &
  sweeps+=($!)
done
wait "${sweeps[@]}"
kill "${copiers[@]}" 2>/dev/null
for spec in "$@"; do
  IFS=: read -r name _rest <<<"$spec"
  echo "== $name"; grep -v "^laptop recommendation" "$OUT/$name/sweep.log" | cut -c1-260
done
ls -la "$OUT"/*
