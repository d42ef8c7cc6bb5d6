# Session 6 (issue 13), run on the GPU device after the default GGUF travelled in parts (device_sweep.sh):
# scores the two CPU-trained adapters (.cache/s6/cpu_default: fp32; .cache/s6/cpu_int8: LORASTUDIO_CPU_INT8=1)
# on the three eval sets with transformers on the GPUs, while four `bench/cpu_calibrate.py` runs measure the
# host Xeon's training speed per precision on 2 pinned cores each (the tokenizer copied to /tmp/tok before).
set -u
export PYTHONPATH=/tmp/site:$PWD LORASTUDIO_HOME=/tmp/lh PYTHONUNBUFFERED=1
bash bench/quality/device_sweep.sh 0 0 > $OUT/rebuild.log 2>&1; tail -3 $OUT/rebuild.log
mkdir -p $OUT/cal
C="python3 bench/cpu_calibrate.py --tokenizer /tmp/tok --out $OUT/cal"
$C --cores 8,9 --workdir /tmp/w1 --label xeon-noamx-bf16 --env ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 > $OUT/cal/a.out 2>&1 &
$C --cores 10,11 --workdir /tmp/w2 --label xeon-fp32-int8off --set dtype=fp32 --env LORASTUDIO_CPU_INT8=0 > $OUT/cal/b.out 2>&1 &
$C --cores 12,13 --workdir /tmp/w3 --label xeon-fp32-int8 --set dtype=fp32 --env LORASTUDIO_CPU_INT8=1 > $OUT/cal/c.out 2>&1 &
$C --cores 14,15 --workdir /tmp/w4 --label xeon-amx-bf16 > $OUT/cal/d.out 2>&1 &
for a in cpu_default cpu_int8; do
  CUDA_VISIBLE_DEVICES=$([ $a = cpu_default ] && echo 0 || echo 1) OMP_NUM_THREADS=4 taskset -c 0-7 python3 bench/quality/score.py --base default --adapter .cache/s6/$a --out $OUT/$a.json --batch-size 16 --engine transformers > $OUT/$a.log 2>&1 &
done
wait
for a in cpu_default cpu_int8; do python3 -c "
import json; q=json.load(open('$OUT/$a.json')); print('$a', 'hard', q.get('hard'), q.get('hard_by_kind'), 'facts', q['facts'], 'whole', q['facts_by_fact'], 'general', q['general'])"; done
cat $OUT/cal/calibrate.jsonl
