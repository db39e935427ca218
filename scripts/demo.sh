#!/usr/bin/env bash
# `make demo`: ADEPT next to full continual pretraining and LLaMA-Pro on the embedded default
# (the shipped demo model, Austen English -> Gene Ontology biology), offline. Prints the
# forgetting/gain table and the path of the HTML report. Extra arguments go to `adept run`,
# e.g. `bash scripts/demo.sh train.training_args.max_steps=300`.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
start=$(date +%s)
.venv/bin/adept run configs/demo.yaml "$@"
echo "demo finished in $(( $(date +%s) - start )) s"
