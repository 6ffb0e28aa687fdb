#!/usr/bin/env bash
# Run THERE, on a lent GPU machine, from the repo root, after benchmarks/gpu_wheels.sh ran here:
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=590)
# At most 9 minutes (the timeouts below add up to 520 s): the GPU tests, the Table 5 grid (bench=table5:
# B = 8/16/24/32, N = 1024, fp16, BERT-base; here inference and training step with memory, ratios to both dense
# baselines -- eager RoBERTa, the paper's, and SDPA RoBERTa, today's -- and to HF BERT, and the inference bound),
# the training step over N = 512..4096, one attention layer against the identity-only bound, and the whole-run
# throughput of pre-training (N = 2048) and fine-tuning (N = 384, batch 16) against the Hugging Face Trainer and a
# bare loop (bf16). Every result file lands flat in $OUT (at most 8 files come back).
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
timeout 100 python3 -m pytest -q -rs tests/test_gpu.py > "$OUT/tests.log" 2>&1

MODELS='[roberta_1seq,sparsebert,sparsebert_blocks,blockbert_n2,blockbert_n3,hf_bert,hf_bigbird]'
bench() {  # name, timeout, overrides...
  local name=$1 limit=$2; shift 2
  timeout "$limit" python3 cli.py benchmark device=cuda hydra.run.dir=/tmp/gpu/"$name" "$@" >> "$OUT/benchmark.log" 2>&1
  cp /tmp/gpu/"$name"/benchmark.json "$OUT/$name.json" 2>/dev/null || echo "$name: no results" >> "$OUT/benchmark.log"
}
bench table5 120 bench=table5 \
  'models=[roberta_1seq_eager,roberta_1seq,sparsebert,blockbert_n2,blockbert_n3,hf_bert,hf_bigbird]' \
  'baseline=[roberta_1seq_eager,roberta_1seq,hf_bert]' 'phases=[inference,train]' repeats=5 warmup=2
bench seqlen 60 size=base dtype=bfloat16 "models=$MODELS" 'batch_sizes=[1]' 'seq_lengths=[512,1024,2048,4096]' \
  'phases=[train]' repeats=5 warmup=2
bench attention 40 mode=attention dtype=bfloat16 attention_batch_size=8 'attention_seq_lengths=[1024,2048,4096]' repeats=10 warmup=3
bench pretrain 100 mode=pretrain size=base 'pretrain.models=[blockbert_n3]' pretrain.batch_size=8 pretrain.steps=10 \
  pretrain.documents=1200 pretrain.rows_per_document=120 warmup=3
bench finetune 100 mode=finetune size=base 'finetune.models=[blockbert_n3]' finetune.steps=10 warmup=3
tail -n 60 "$OUT/benchmark.log"
