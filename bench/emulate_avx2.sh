#!/usr/bin/env bash
# Run a command as on a CPU with AVX2 and nothing newer, on a machine that has more (AVX-512, AMX):
#   bash bench/emulate_avx2.sh .venv/bin/lorastudio train lorastudio/assets/demo/yunzhan_train.jsonl --base default ...
# torch's own kernels, oneDNN, MKL (fp32 GEMMs) and fbgemm (int8) are capped at AVX2 (`bench/cpu_speed.py
# --emulate-avx2` runs itself through this script), and the product is given this CPU's flags without the AVX-512,
# AMX and VNNI ones (LORASTUDIO_CPU_FLAGS), so it takes the avx2-fp32 class's choices: fp32 training with int8
# frozen-base GEMMs, 7-bit int8 activations, that class's time estimate scaled by the (capped) probe. llama.cpp
# (replay answers, scoring) keeps its own build's instructions. An approximation: the cores, caches and memory stay
# this machine's.
set -eu
export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2
LORASTUDIO_CPU_FLAGS="$(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2 | tr ' ' '\n' \
  | grep -v -E '^(avx512|amx|avx_vnni|avx_ifma|avx_ne_convert)' | tr '\n' ' ')"
export LORASTUDIO_CPU_FLAGS
exec "$@"
