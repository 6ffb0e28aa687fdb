#!/usr/bin/env bash
# Run THERE, on a lent GPU machine, from the repo root, after benchmarks/gpu_wheels.sh ran here. A session has 15
# minutes of device time, start-up (a few minutes) included: two calls, the second issued at once so that it finds
# the machine warm, most important first (each part's timeout below; every result file lands flat in $OUT):
#   run(command="bash benchmarks/gpu_check.sh tests attention layout", carry=[".whl"], timeout_s=440)   # 410 s
#   run(command="bash benchmarks/gpu_check.sh table5 pretrain finetune", carry=[".whl"], timeout_s=270)  # 250 s
# The last parts, `plan seqlen` (about 7 minutes), need device time of their own: a later session's, or what these
# two leave when their parts end early. A part that runs out of time is stopped with SIGINT: pytest still prints
# which tests passed, failed or did not run, and a benchmark keeps the rows it measured (benchmark.json, "complete":
# false).
# Parts:
#   tests      tests/test_gpu.py but its plan tests (kernels, layouts, fp16/bf16, flex, compile, A.2)
#   plan       tests/test_gpu.py's plan tests (plan's memory within 10 % and its largest batch against the allocator),
#              `blockbert plan --calibrate` (the paper's pre-training rows fitted and timed: the calibration of this
#              GPU kind, to ship in blockbert/measure/calibrations/), then `benchmark mode=plan` (predicted ÷
#              measured seconds per step and peak memory for 3 pre-training runs, BERT-base width)
#   table5     the Table 5 grid (bench=table5: B = 8/16/24/32, N = 1024, fp16, BERT-base; inference and training step
#              with memory, ratios to eager RoBERTa, SDPA RoBERTa and HF BERT, and the inference bound)
#   seqlen     the training step over N = 512..4096
#   attention  one attention layer (padded and jagged layouts, FlexAttention at dropout 0) against dense SDPA and the
#              identity-only bound
#   layout     BERT-base models (dense, n=2, n=3) in each layout (padded, unpadded, jagged) on batches filled to 100,
#              75 and 50 % of N=512, bf16: the measurement `layout=auto` should follow on a GPU
#   pretrain, finetune  whole-run throughput (N = 2048; N = 384, batch 16) against the Hugging Face Trainer and a
#              bare loop (bf16)
set -uo pipefail
PARTS='tests plan table5 seqlen attention layout pretrain finetune'
for one in ${*:-}; do  # every part named is known before the first starts
  [[ " $PARTS " == *" $one "* ]] || { echo "unknown part $one: $PARTS" >&2; exit 2; }
done
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
if [ -d .whl ]; then  # one package at a time: pip installs all or none, and one that fails must not take the rest
  if [ -d /tmp/site/hydra ] && [ -d /tmp/site/datasets ]; then
    echo "wheels: installed by an earlier call" >> "$OUT/machine.txt"
  else
    for package in hydra-core omegaconf antlr4-python3-runtime datasets dill multiprocess; do
      python3 -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/site --find-links .whl "$package" >> "$OUT/machine.txt" 2>&1 \
        || echo "wheel $package: not installed" >> "$OUT/machine.txt"
    done
  fi
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD BLOCKBERT_CACHE=/tmp/gpu/cache
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  python3 -c "
import importlib
for name in 'hydra omegaconf datasets dill multiprocess pytorch_lightning transformers typer rich pytest'.split():
    try:
        importlib.import_module(name)
    except Exception as err:
        print('missing:', name, type(err).__name__, err)
"
} >> "$OUT/machine.txt" 2>&1

MODELS='[roberta_1seq,sparsebert,sparsebert_blocks,blockbert_n2,blockbert_n3,hf_bert,hf_bigbird]'
bench() {  # name, timeout, overrides...
  local name=$1 limit=$2; shift 2
  timeout -s INT -k 10 "$limit" python3 cli.py benchmark device=cuda hydra.run.dir=/tmp/gpu/"$name" "$@" >> "$OUT/benchmark.log" 2>&1
  cp /tmp/gpu/"$name"/benchmark.json "$OUT/$name.json" 2>/dev/null || echo "$name: no results" >> "$OUT/benchmark.log"
}
part() {
  case $1 in
    tests) timeout -s INT -k 10 200 python3 -m pytest -v -rfEs --durations=15 -o addopts= tests/test_gpu.py \
      -k "not plan" > "$OUT/tests.log" 2>&1 ;;
    plan)
      timeout -s INT -k 10 90 python3 -m pytest -v -rfEs -o addopts= tests/test_gpu.py -k plan > "$OUT/plan_tests.log" 2>&1
      timeout -s INT -k 10 120 python3 cli.py plan --calibrate --out /tmp/gpu/calibration > "$OUT/plan.log" 2>&1
      cp /tmp/gpu/calibration/*.json "$OUT/" 2>/dev/null || echo "calibration: no results" >> "$OUT/plan.log"
      bench plan_check 170 mode=plan size=base ;;
    table5) bench table5 90 bench=table5 \
      'models=[roberta_1seq_eager,roberta_1seq,sparsebert,blockbert_n2,blockbert_n3,hf_bert,hf_bigbird]' \
      'baseline=[roberta_1seq_eager,roberta_1seq,hf_bert]' 'phases=[inference,train]' repeats=5 warmup=2 ;;
    seqlen) bench seqlen 90 size=base dtype=bfloat16 "models=$MODELS" 'batch_sizes=[1]' \
      'seq_lengths=[512,1024,2048,4096]' 'phases=[train]' repeats=3 warmup=1 ;;
    attention)  # dropout 0.1 first (the targets), then dropout 0 beside FlexAttention (compiled per length)
      bench attention 50 mode=attention dtype=bfloat16 attention_batch_size=4 \
        'attention_seq_lengths=[1024,2048,4096,8192]' 'attention_dropout=[0.1]' repeats=10 warmup=3
      bench attention_flex 90 mode=attention dtype=bfloat16 attention_batch_size=4 \
        'attention_seq_lengths=[1024,4096]' 'attention_dropout=[0.0]' repeats=10 warmup=3 ;;
    layout) bench layout 70 mode=layout size=base dtype=bfloat16 'phases=[train,inference]' 'layout.fills=[1.0,0.75,0.5]' \
      layout.batch_size=16 repeats=5 warmup=2 ;;
    pretrain) bench pretrain 80 mode=pretrain size=base 'pretrain.models=[blockbert_n3]' pretrain.batch_size=8 \
      pretrain.steps=10 pretrain.documents=1200 pretrain.rows_per_document=120 warmup=3 ;;
    finetune) bench finetune 80 mode=finetune size=base 'finetune.models=[blockbert_n3]' finetune.steps=10 warmup=3 ;;
  esac
}
for name in "${@:-$PARTS}"; do
  for one in $name; do part "$one"; done
done
tail -n 60 "$OUT/benchmark.log" 2>/dev/null
