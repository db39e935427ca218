"""Pretrain the demo base model: a small Llama-architecture causal LM on the general corpus.

Uses the project's own data code (`adept.data.build_packed_dataset`) and the Hugging Face
Trainer, so the run is an ordinary HF training run. Writes safetensors weights, the tokenizer
and `training_summary.json` (tokens seen, held-out loss and perplexity) into --output.

Usage (the exact command behind the shipped model is in models/adept-demo-base/README.md):
    python scripts/pretrain_base.py --train data/demo/general/train.jsonl \
        --heldout data/demo/general/heldout.jsonl --tokenizer models/adept-demo-base \
        --output models/adept-demo-base --max-steps 500 --warmup-steps 30
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, nargs="+", required=True)
    parser.add_argument("--heldout", type=Path, nargs="+", required=True)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--intermediate-size", type=int, default=688)
    parser.add_argument("--num-layers", type=int, default=8)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-steps", type=int, default=500)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup-steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/adept"))
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (on a GPU).")
    args = parser.parse_args()

    import torch
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from adept.data import build_packed_dataset, collate_blocks

    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True)
    train = build_packed_dataset(args.train, tokenizer, args.block_size, cache_dir=args.cache_dir)
    heldout = build_packed_dataset(args.heldout, tokenizer, args.block_size, cache_dir=args.cache_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_heads,
        max_position_embeddings=max(1024, args.block_size),
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    training_args = TrainingArguments(
        output_dir=str(args.output / "trainer"),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        max_steps=args.max_steps,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=args.warmup_steps,
        weight_decay=0.1,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        logging_steps=50,
        eval_strategy="steps",
        eval_steps=max(args.max_steps // 6, 1),
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        data_seed=args.seed,
        bf16=args.bf16,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    trainer = Trainer(
        model=model, args=training_args, train_dataset=train, eval_dataset=heldout, data_collator=collate_blocks
    )
    start = time.time()
    trainer.train()
    metrics = trainer.evaluate()
    model.save_pretrained(args.output)
    tokenizer.save_pretrained(args.output)
    summary = {
        "config": {
            k: getattr(config, k)
            for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        },
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_blocks": len(train),
        "train_tokens_seen": args.max_steps * args.batch_size * args.block_size,
        "heldout_loss": metrics["eval_loss"],
        "heldout_perplexity": math.exp(metrics["eval_loss"]),
        "wall_seconds": round(time.time() - start, 1),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    (args.output / "training_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
