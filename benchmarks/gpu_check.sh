#!/usr/bin/env bash
# Run THERE, on a lent GPU machine, from the repo root, after benchmarks/gpu_wheels.sh ran here:
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=590)
# About 9 minutes: the GPU tests, the Table 5 grid (bench=table5: B = 8/16/24/32, N = 1024, fp16, BERT-base;
# here inference and training step with memory, ratios to both dense baselines -- eager RoBERTa, the paper's,
# and SDPA RoBERTa, today's -- and to HF BERT), the training step over N = 512..4096 and one attention layer
# against the identity-only bound. Every result file lands flat in $OUT (at most 8 files come back).
set -uo pipefail
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch; print(torch.__version__)"; } \
  > "$OUT/machine.txt" 2>&1
timeout 200 python3 -m pytest -q -rs tests/test_gpu.py > "$OUT/tests.log" 2>&1

MODELS='[roberta_1seq,sparsebert,sparsebert_blocks,blockbert_n2,blockbert_n3,hf_bert,hf_bigbird]'
bench() {  # name, timeout, overrides...
  local name=$1 limit=$2; shift 2
  timeout "$limit" python3 cli.py benchmark device=cuda hydra.run.dir=/tmp/gpu/"$name" "$@" >> "$OUT/benchmark.log" 2>&1
  cp /tmp/gpu/"$name"/benchmark.json "$OUT/$name.json" 2>/dev/null || echo "$name: no results" >> "$OUT/benchmark.log"
}
bench table5 160 bench=table5 \
  'models=[roberta_1seq_eager,roberta_1seq,sparsebert,blockbert_n2,blockbert_n3,hf_bert,hf_bigbird]' \
  'baseline=[roberta_1seq_eager,roberta_1seq,hf_bert]' 'phases=[inference,train]' repeats=5 warmup=2
bench seqlen 100 size=base dtype=bfloat16 "models=$MODELS" 'batch_sizes=[1]' 'seq_lengths=[512,1024,2048,4096]' \
  'phases=[train]' repeats=5 warmup=2
bench attention 50 mode=attention dtype=bfloat16 attention_batch_size=8 'attention_seq_lengths=[1024,2048,4096]' repeats=10 warmup=3
tail -n 60 "$OUT/benchmark.log"
