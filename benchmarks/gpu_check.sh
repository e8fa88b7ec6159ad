#!/usr/bin/env bash
# GPU check for the fused kernels (issue 7), one prepared run of under 8 minutes on a machine with an NVIDIA GPU:
#   1. records the card, driver and versions;
#   2. runs the kernel parity tests on the GPU (tests/kernels: the LoRA, experts, adapter and IA3/SSF paths on CUDA
#      tensors, the Triton LoRA kernels compiled for the card -- not interpreted -- against the plain-torch
#      references, float32 and bf16) and the CUDA-graph tests (tests/proxy/test_graphs.py: trials and packs
#      recorded and replayed against eager training);
#   3. runs benchmarks/step_time.py on CUDA in bfloat16 (5 repeats) and keeps its Markdown tables (whole steps,
#      eager and replayed as CUDA graphs; the expert layer; one site of each adapter/IA3/SSF kernel against its
#      unfused twin);
#   4. runs benchmarks/pack_throughput.py on CUDA with bf16 autocast: 8 plans at the quickstart budget, one at a
#      time against `--pack 8` (the goal: >= 4x trials per hour), each also with CUDA graphs (--graphs);
#   (Where a trial's time goes on the card is a separate run, about a minute:
#    python benchmarks/trial_phases.py --device cuda --autocast bf16 --plans 8 --set steps=30)
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (default: $OUT if set, else ./gpu_check)
#
# Needs torch with CUDA, triton, transformers, peft and pytest in $PYTHON (default: python), e.g. a CUDA build of
# torch, then `pip install -e ".[gpu,test]"`. Every step has its own time limit; a failed step is recorded and the
# next one still runs; the exit status is non-zero if any step failed.
# Limits from the three H200 runs (benchmarks/data/gpu_check_h200*/): parity took 32-34 s, 78 s with the CUDA-graph
# tests; step_time 37-50 s, 74 s with the graphed rows; the pack step 192 s with --graphs (72 s one at a time, 47 s
# packed, 12 s and 9 s with graphs, plus a second trainer and two warm-up trials). 8 worker processes (--procs 8: 11 s,
# plus about 85 s to start them) were measured in the second run and are not repeated. The five limits add up to
# 480 s.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu_check}}
mkdir -p "$out"
py=${PYTHON:-python}
status=0
step() {  # step NAME LIMIT_S CMD...: run with a time limit, keep stdout+stderr in $out/NAME.txt
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" > >(tee "$out/$name.txt") 2>&1
  local rc=$?
  echo "$name: exit $rc after $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
  [ "$rc" -eq 0 ] || status=1
}

unset TRITON_INTERPRET  # compiled kernels on the card
date -u +"%Y-%m-%dT%H:%M:%SZ" > "$out/summary.txt"
step card 20 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
step versions 40 "$py" -c "
import torch, triton, transformers, peft
assert torch.cuda.is_available(), 'torch sees no CUDA device'
print('card', torch.cuda.get_device_name(), '| torch', torch.__version__, 'cuda', torch.version.cuda,
      '| triton', triton.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__)"
step parity 90 "$py" -m pytest tests/kernels tests/proxy/test_graphs.py -q -p no:cacheprovider -rs
step step_time_bf16 100 "$py" benchmarks/step_time.py --device cuda --dtype bfloat16 --repeats 5
step pack_bf16 230 "$py" benchmarks/pack_throughput.py --device cuda --autocast bf16 --pack 8 --plans 8 --repeats 1 \
  --graphs
echo "results in $out/ (summary.txt, card.txt, versions.txt, parity.txt, step_time_bf16.txt, pack_bf16.txt)"
exit $status
