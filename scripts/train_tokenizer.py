"""Train the demo's byte-level BPE tokenizer on the general corpus (HF `tokenizers`).

Deterministic for a given corpus: documents are fed in file order, single-threaded.
Usage: python scripts/train_tokenizer.py --corpus data/demo/general/train.jsonl --output models/adept-demo-base
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, nargs="+", required=True, help="General-domain .jsonl/.txt files.")
    parser.add_argument("--output", type=Path, required=True, help="Directory for tokenizer files.")
    parser.add_argument("--vocab-size", type=int, default=4096)
    args = parser.parse_args()

    os.environ["RAYON_NUM_THREADS"] = "1"  # merges are tie-broken deterministically with one thread
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from adept.data import load_documents

    texts = [doc.text or f"{doc.prompt}{doc.answer}" for path in args.corpus for doc in load_documents(path)]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab_size,
        min_frequency=2,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<|pad|>",
        model_max_length=1024,
    )
    tokenizer.save_pretrained(args.output)
    print(f"tokenizer with {len(tokenizer)} tokens written to {args.output}")


if __name__ == "__main__":
    main()
