"""Numbers for the demo model card: held-out perplexity of the base model vs a unigram baseline.

The unigram baseline is the best model that ignores context: token frequencies of the
general training corpus (add-one smoothed) under the same tokenizer and the same packing as
`adept eval`. The base model must be far below it on general text, and clearly worse on the
domain than on general text, for continual pretraining to have something to learn and
something to forget. Writes ``measurements.json`` next to the model.

Usage: python scripts/measure_base.py --model models/adept-demo-base
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/adept-demo-base"))
    parser.add_argument("--general-train", default="data/demo/general/train.jsonl")
    parser.add_argument("--general-heldout", default="data/demo/general/heldout.jsonl")
    parser.add_argument("--domain-heldout", default="data/demo/domain/heldout.jsonl")
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--cache-dir", default=".cache/adept")
    args = parser.parse_args()

    import torch

    from adept.checkpoints import load_model_and_tokenizer
    from adept.data import build_packed_dataset
    from adept.evaluation import evaluate_perplexity

    model, tokenizer = load_model_and_tokenizer(args.model, device="cpu")
    train = build_packed_dataset(args.general_train, tokenizer, args.block_size, cache_dir=args.cache_dir)
    counts = torch.bincount(torch.tensor(train["input_ids"]).flatten(), minlength=len(tokenizer)).double() + 1.0
    log_probs = (counts / counts.sum()).log()

    results = {}
    for name, path in (("general", args.general_heldout), ("domain", args.domain_heldout)):
        blocks = build_packed_dataset(path, tokenizer, args.block_size, cache_dir=args.cache_dir)
        targets = torch.tensor(blocks["input_ids"])[:, 1:].flatten()  # the positions a causal LM predicts
        unigram = float(-log_probs[targets].mean())
        model_eval = evaluate_perplexity(
            model, tokenizer, path, args.block_size, batch_size=16, progress=False, cache_dir=args.cache_dir
        )
        results[name] = {
            "path": path,
            "tokens": int(targets.numel()),
            "model_loss": model_eval["loss"],
            "model_perplexity": model_eval["perplexity"],
            "unigram_loss": unigram,
            "unigram_perplexity": math.exp(unigram),
        }
    (args.model / "measurements.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
