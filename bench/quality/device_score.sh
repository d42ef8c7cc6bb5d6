#!/usr/bin/env bash
# Run on the GPU device (the `run` tool), in the repository root, after the default model's GGUF has
# travelled in parts to /tmp/parts and the peft/gguf wheels into /tmp/site (device_sweep.sh says how):
# rebuilds the default model's cache, then scores each adapter directory given (carried in an ignored
# folder of the tree, e.g. .cache/…) on the three eval sets with transformers, one GPU each in turn,
# the way the sweeps score theirs. Each adapter's answers come back as $OUT/<name>.json.
#   bash bench/quality/device_score.sh ADAPTER_DIR [ADAPTER_DIR ...]
set -u
export PYTHONPATH=/tmp/site:$PWD LORASTUDIO_HOME=/tmp/lh PYTHONUNBUFFERED=1
bash bench/quality/device_sweep.sh 0 0 > "$OUT/rebuild.log" 2>&1; tail -2 "$OUT/rebuild.log"
gpus=$(nvidia-smi -L | wc -l); i=0
for adapter in "$@"; do
  name=$(basename "$adapter")
  CUDA_VISIBLE_DEVICES=$((i % gpus)) python3 bench/quality/score.py --base default --adapter "$adapter" \
    --out "$OUT/$name.json" --batch-size 16 --engine transformers > "$OUT/$name.log" 2>&1 &
  i=$((i + 1))
done
wait
for adapter in "$@"; do
  name=$(basename "$adapter")
  python3 -c "
import json; q=json.load(open('$OUT/$name.json'))
print('$name', 'hard', q.get('hard'), q.get('hard_by_kind'), 'facts', q['facts'], 'whole', q['facts_by_fact'], 'general', q['general'])" \
    || tail -5 "$OUT/$name.log"
done
