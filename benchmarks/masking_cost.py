"""Layer masking with the layers below the skipped one replayed, against one whole-model pass per layer.

`adept.probe_scores.layer_masking_scores` records every layer's output in one unmasked pass per
batch and, for each skipped layer, replays the outputs below it, so a masked pass computes only
the layers above. This script times both ways side by side on the same batches and checks that
the scores are the same. Default: a random model of SmolLM2-135M's shape (30 layers, hidden 576,
vocabulary 49,152) on random tokens, so it runs anywhere; ``--model DIR`` takes a real checkpoint.

Usage: python benchmarks/masking_cost.py [--model models/real/smollm2-135m] [--tokens 1024] [--threads 2]
"""

from __future__ import annotations

import argparse
import functools
import time

import torch

from adept.probe_scores import bypass_layer, layer_masking_scores, mean_loss


def smollm2_shaped_model():
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def whole_model_per_layer(model, batches, layers):
    """The way masking ran before: the whole model once per skipped layer."""
    base = mean_loss(model, batches)
    scores = []
    for index in layers:
        with bypass_layer(model, index):
            scores.append(mean_loss(model, batches) - base)
    return base, scores


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a checkpoint directory (default: random weights of SmolLM2-135M's shape)")
    parser.add_argument("--tokens", type=int, default=1024, help="probe tokens (blocks of 256, batches of 4)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, local_files_only=True)
    else:
        model = smollm2_shaped_model()
    model.eval()
    generator = torch.Generator().manual_seed(0)
    blocks = max(1, args.tokens // 256)
    ids = torch.randint(0, model.config.vocab_size, (blocks, 256), generator=generator)
    batches = [
        {"input_ids": chunk, "attention_mask": torch.ones_like(chunk), "labels": chunk.clone()}
        for chunk in ids.split(4)
    ]
    layers = list(range(model.config.num_hidden_layers))

    timings, results = {}, {}
    ways = {
        "whole model per layer": whole_model_per_layer,
        "replayed below": functools.partial(layer_masking_scores, progress=False),
    }
    for name, run in ways.items():
        start = time.perf_counter()
        results[name] = run(model, batches, layers)
        timings[name] = time.perf_counter() - start
    (old_base, old), (new_base, new) = results.values()
    worst = max(abs(a - b) for a, b in zip(old, new))
    print(f"{len(layers)} layers, {blocks * 256} probe tokens, {torch.get_num_threads()} threads")
    for name, seconds in timings.items():
        print(f"  {name:<22} {seconds:8.1f} s")
    ratio = timings["replayed below"] / timings["whole model per layer"]
    same_base = old_base == new_base
    print(f"  replayed / whole: {ratio:.2f}; largest score difference {worst:.2e}; base loss equal: {same_base}")


if __name__ == "__main__":
    main()
