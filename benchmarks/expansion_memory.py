"""Expansion memory/time and importance-pass cost, measured side by side in one run.

1. Builds a synthetic sharded Llama-style checkpoint (random fp16 weights, >= 2 GB by
   default), then expands it twice, each in a fresh process: with `adept`'s streaming
   expansion and with the naive "load the whole model, expand in memory, save" approach.
   Prints each one's peak RSS divided by the largest input shard, and its wall time.
   Target: streaming peak RSS <= 2x the largest shard.
2. Times the gradient importance pass (|w * dL/dw| and Fisher for every unit) against a plain
   forward+backward over the same tokens on a small model. Target: <= 1.2x.

Usage: python benchmarks/expansion_memory.py [--workdir DIR] [--hidden 2048 --layers 22]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Peak RSS is read from /proc/self/status (VmHWM, per address space); ru_maxrss would carry
# the parent's peak across fork+exec.
HWM = "int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]) * 1024"

STREAMING = """
import sys, time
from adept.expansion import expand_checkpoint, plan_expansion, read_model_config
src, dst = sys.argv[1], sys.argv[2]
before = HWM
start = time.perf_counter()
config = read_model_config(src)
expand_checkpoint(src, dst, plan_expansion(config.num_hidden_layers, [1, config.num_hidden_layers // 2]))
print(time.perf_counter() - start, HWM, before)
"""

NAIVE = """
import sys, time, torch
from transformers import AutoModelForCausalLM
from adept.expansion import expand_model, plan_expansion
src, dst, shard = sys.argv[1], sys.argv[2], sys.argv[3]
before = HWM
start = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float16)
n = model.config.num_hidden_layers
expanded = expand_model(model, plan_expansion(n, [1, n // 2]))
expanded.save_pretrained(dst, max_shard_size=shard)
print(time.perf_counter() - start, HWM, before)
"""


def build_synthetic_checkpoint(
    path: Path, hidden: int, layers: int, intermediate: int, vocab: int, shard_bytes: int
) -> int:
    """Write random fp16 shards plus config and index; return the largest shard's size."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    path.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(1, hidden // 256),
        vocab_size=vocab,
        tie_word_embeddings=False,
        dtype="float16",
    )
    config.save_pretrained(path)
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    kv = config.num_key_value_heads * (hidden // config.num_attention_heads)
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (hidden, hidden),
            p + "self_attn.k_proj.weight": (kv, hidden),
            p + "self_attn.v_proj.weight": (kv, hidden),
            p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (intermediate, hidden),
            p + "mlp.up_proj.weight": (intermediate, hidden),
            p + "mlp.down_proj.weight": (hidden, intermediate),
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        }
    shapes |= {"model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}
    shards: list[dict[str, tuple[int, ...]]] = [{}]
    size = 0
    for key, shape in shapes.items():
        numel = 1
        for d in shape:
            numel *= d
        if size and size + 2 * numel > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = shape
        size += 2 * numel
    weight_map, largest, total = {}, 0, 0
    generator = torch.Generator().manual_seed(0)
    for idx, group in enumerate(shards, start=1):
        name = f"model-{idx:05d}-of-{len(shards):05d}.safetensors"
        tensors = {k: (torch.randn(s, generator=generator) * 0.02).to(torch.float16) for k, s in group.items()}
        save_file(tensors, path / name, metadata={"format": "pt"})
        del tensors
        weight_map |= {k: name for k in group}
        largest = max(largest, (path / name).stat().st_size)
        total += (path / name).stat().st_size
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    return largest


def measure(script: str, *args: str) -> tuple[float, int, int]:
    done = subprocess.run(
        [sys.executable, "-c", script.replace("HWM", HWM), *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    seconds, peak, at_start = done.stdout.strip().splitlines()[-1].split()
    return float(seconds), int(peak), int(at_start)


def importance_overhead(
    hidden: int = 256, layers: int = 8, batch: int = 4, length: int = 256, repeats: int = 3
) -> tuple[float, float]:
    """Seconds per pass: plain forward+backward vs the importance gradient pass, same tokens."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from adept.importance import batch_loss_sum, layer_units, unit_gradient_scores

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        vocab_size=4096,
    )
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 4096, (batch, length))
    batches = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()} for _ in range(4)]
    _, grid = layer_units(model, range(layers))
    params = [p for row in grid for p in row if p is not None]
    for p in model.parameters():
        p.requires_grad_(any(p is q for q in params))

    def plain() -> None:
        for b in batches:
            (batch_loss_sum(model, b) / b["labels"].numel()).backward()
            for p in params:
                p.grad = None

    def probe() -> None:
        unit_gradient_scores(model, batches, params, progress=False)

    timings = {}
    for name, fn in (("plain", plain), ("probe", probe)):
        fn()  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        timings[name] = best
    return timings["plain"], timings["probe"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="Where the synthetic checkpoints go (default: a temp dir)."
    )
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--shard-gb", type=float, default=1.0, help="Shard size of the synthetic checkpoint.")
    parser.add_argument("--skip-naive", action="store_true", help="Only measure the streaming expansion.")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="adept-bench-"))
    src = workdir / "synthetic"
    try:
        shard_bytes = int(args.shard_gb * 1024**3)
        largest = build_synthetic_checkpoint(src, args.hidden, args.layers, args.intermediate, args.vocab, shard_bytes)
        total = sum(f.stat().st_size for f in src.glob("*.safetensors"))
        print(
            f"synthetic Llama checkpoint: {args.layers} layers, hidden {args.hidden}, "
            f"{total / 1024**3:.2f} GiB in {len(list(src.glob('*.safetensors')))} shards, largest "
            f"{largest / 1024**3:.2f} GiB"
        )
        rows = [("streaming (adept expand)", *measure(STREAMING, str(src), str(workdir / "streamed")))]
        shutil.rmtree(workdir / "streamed", ignore_errors=True)
        if not args.skip_naive:
            rows.append(
                ("naive load-expand-save", *measure(NAIVE, str(src), str(workdir / "naive"), f"{args.shard_gb}GB"))
            )
            shutil.rmtree(workdir / "naive", ignore_errors=True)
        print(f"{'method':<26} {'time s':>8} {'peak RSS GiB':>13} {'RSS/shard':>10} {'RSS after imports GiB':>22}")
        for name, seconds, peak, at_start in rows:
            print(
                f"{name:<26} {seconds:>8.1f} {peak / 1024**3:>13.2f} {peak / largest:>10.2f} "
                f"{at_start / 1024**3:>22.2f}"
            )
        streaming_ratio = rows[0][2] / largest
        print(
            f"target: streaming peak RSS <= 2.0x largest shard -> {streaming_ratio:.2f}x "
            f"({'met' if streaming_ratio <= 2.0 else 'MISSED'})"
        )
        if len(rows) == 2:
            print(f"naive / streaming: peak RSS {rows[1][2] / rows[0][2]:.1f}x, time {rows[1][1] / rows[0][1]:.1f}x")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    plain, probe = importance_overhead()
    print(
        f"importance gradient pass vs plain forward+backward (same tokens, 8-layer hidden-256 Llama): "
        f"{probe:.3f}s vs {plain:.3f}s = {probe / plain:.2f}x (target <= 1.2x: "
        f"{'met' if probe / plain <= 1.2 else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
