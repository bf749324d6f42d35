#!/usr/bin/env bash
# The README's first command: the whole megatiny pipeline on the bundled corpus.
#   bundled jsonl (7:3 prose:code) -> sentencepiece tokenizer -> indexed datasets
#   -> pretrain a ~1.8M-parameter Llama under `deepspeed` (ZeRO-3, precision auto; 2 CPU ranks, or every GPU)
#   -> convert to Hugging Face -> generate text with transformers -> evaluate with lm-eval
#   -> loss-curve PNG and validation loss vs. the unigram baseline.
# Each stage is a `megatiny` subcommand (`megatiny X` = `python tools/X_script.py`, see `megatiny --help`).
# Everything goes to runs/quickstart/ (MEGATINY_QUICKSTART_DIR), which is replaced on each run.
# Extra arguments are training config overrides, e.g. `schedule.train_steps=100`. The run fails
# unless the final validation loss is MEGATINY_QUICKSTART_MIN_GAIN (default 1.0) nats/token below
# the unigram baseline.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
bash scripts/setup.sh
source "${MEGATINY_VENV:-$repo/.venv}/bin/activate"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1

run="${MEGATINY_QUICKSTART_DIR:-runs/quickstart}"
corpus=examples/quickstart/corpus
start=$SECONDS
stage() { printf '\n=== [%4ds] %s\n' "$((SECONDS - start))" "$*"; }

rm -rf "$run"
mkdir -p "$run/data"

stage "1/7 train a sentencepiece tokenizer (BPE, byte fallback, 4096 pieces) on the corpus"
megatiny train-tokenizer --input "$corpus/natural_language.jsonl.gz" "$corpus/code.jsonl.zst" \
  --output-prefix "$run/tokenizer" --vocab-size 4096

stage "2/7 preprocess both sources into Megatron-format indexed datasets"
for source in natural_language code; do
  megatiny preprocess --input "$corpus/$source".jsonl.* --output-prefix "$run/data/$source" \
    --tokenizer "$run/tokenizer.model" --prepend-bos --append-eod --workers 2 --no-progress
done

stage "3/7 pretrain under DeepSpeed ZeRO-3, precision auto (blend 0.7 prose : 0.3 code)"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  devices=()                      # every GPU
else
  devices=(--num_gpus 2)          # two CPU ranks
fi
deepspeed "${devices[@]}" --master_port "${MASTER_PORT:-29517}" --module megatiny train \
  --config examples/quickstart/quickstart.yaml \
  tokenizer="$run/tokenizer.model" \
  "data.data_path=0.7 $run/data/natural_language_text_document 0.3 $run/data/code_text_document" \
  checkpoint.save_dir="$run/checkpoints" logging.tensorboard_dir="$run/tensorboard" "$@"

stage "4/7 convert the DeepSpeed checkpoint to a Hugging Face LlamaForCausalLM"
megatiny convert to-hf "$run/checkpoints" "$run/hf"

stage "5/7 generate with transformers from the exported model"
megatiny generate --model "$run/hf" --max-new-tokens 40 \
  --prompt "The Python tutorial" --prompt "def read_config(path):"

stage "6/7 evaluate the exported model with lm-evaluation-harness (local task, zero-shot)"
megatiny evaluate --checkpoint "$run/hf" --backend hf --suite local --output-dir "$run/eval"

stage "7/7 loss curve and validation loss against the unigram baseline"
megatiny report --checkpoint "$run/checkpoints" --tensorboard-dir "$run/tensorboard" \
  --out-png "$run/loss_curve.png" --require-below-baseline "${MEGATINY_QUICKSTART_MIN_GAIN:-1.0}"

stage "done: everything is in $run/ (hf/ is a Hugging Face model directory)"
