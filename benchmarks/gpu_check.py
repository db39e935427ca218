"""GPU check: tokens/s, MFU and peak memory of ADEPT vs full CPT on real model shapes, next to the estimate.

Builds random-weight Qwen2.5-0.5B and Qwen3-1.7B in code (`adept.memory.reference_configs`;
nothing is downloaded), bf16 with SDPA, and trains each for a few steps on random tokens:

* ``full``  every weight trains as an fp32 master weight under bf16 autocast;
* ``adept`` ``--copies`` layers inserted at LLaMA-Pro's uniform positions (`plan_expansion` +
  `expand_model`), the base frozen in bf16, the copies in fp32, one AdamW group per tensor
  (`build_param_groups`); uniform positions stand in for importance-chosen ones.

AdamW is fused on CUDA. The first ``--warmup`` steps are not timed. Peak memory is
``torch.cuda.max_memory_allocated`` over all steps, next to `estimate_training_memory`; MFU is
tokens/s x `training_flops_per_token` / the card's dense bf16 peak (looked up from its name, or
``--peak-tflops``). Prints Markdown tables with ADEPT/full ratios, the card and the settings.

Usage:
  python benchmarks/gpu_check.py                                # sized for about 3 minutes on one H100
  python benchmarks/gpu_check.py --micro-batch-size 2 --gradient-checkpointing --json gpu_check.json
  python benchmarks/gpu_check.py --device cpu --tiny            # smoke test of the script (tests/test_memory.py)
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

from adept.architectures import get_architecture
from adept.expansion import expand_model, plan_expansion, select_uniform
from adept.memory import GIB, estimate_training_memory, reference_configs, training_flops_per_token
from adept.tuning import build_param_groups

METHODS = ("adept", "full")
# Dense bf16 peak FLOP/s by card, checked in this order against torch.cuda.get_device_name().
PEAK_FLOPS = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12))


def peak_flops(device_name: str, override_tflops: float | None) -> float | None:
    """The card's dense bf16 peak; None when it is not in `PEAK_FLOPS` and no override is given."""
    if override_tflops:
        return override_tflops * 1e12
    for key, flops in PEAK_FLOPS:
        if key in device_name:
            return flops
    return None


def tiny_configs() -> dict[str, object]:
    """Two tiny shapes (tied Qwen2, untied Qwen3 with qk-norms) for the CPU smoke test."""
    from transformers import Qwen2Config, Qwen3Config

    common = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        max_position_embeddings=256,
    )
    return {
        "tiny-qwen2": Qwen2Config(**common, tie_word_embeddings=True),
        "tiny-qwen3": Qwen3Config(**common, head_dim=16, tie_word_embeddings=False),
    }


def copy_plan(config, copies: int):
    """LLaMA-Pro's uniform placement of ``copies`` layers, standing in for ADEPT's importance-chosen ones."""
    return plan_expansion(config.num_hidden_layers, select_uniform(config.num_hidden_layers, copies))


def build(config, method: str, copies: int, device: torch.device):
    """A random-weight model on ``device`` and its trainable parameter names; copies are fp32, the rest bf16.

    Building under the device context allocates on the GPU directly (no copy of the model in
    host memory); full CPT casts every weight to fp32, ADEPT only the copies.
    """
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
        if method == "full":
            return model.float(), [name for name, _ in model.named_parameters()]
        plan = copy_plan(config, copies)
        model = expand_model(model, plan)
    spec, inserted = get_architecture(config.model_type), set(plan.inserted_layer_indices)
    trainable = []
    for name, param in model.named_parameters():
        key = spec.split_layer_key(name)
        param.requires_grad_(key is not None and key[0] in inserted)
        if param.requires_grad:
            param.data = param.data.float()  # fp32 master weights for the copies only
            trainable.append(name)
    return model, trainable


def timed_steps(model, optimizer, batch: torch.Tensor, steps: int, device: torch.device) -> float:
    """Seconds of ``steps`` optimizer steps (forward under bf16 autocast, backward, AdamW)."""
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize()
    return time.perf_counter() - start


def measure(name: str, config, method: str, block_size: int, args, device: torch.device) -> dict:
    """One (model, method, block size) run: throughput, MFU, peak memory and the estimate."""
    row = {"model": name, "method": method, "block_size": block_size, "micro_batch_size": args.micro_batch_size}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = optimizer = None
    try:
        model, trainable = build(config, method, args.copies, device)
        model.train()
        if args.gradient_checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
        groups = build_param_groups(model, trainable, base_lr=args.lr) if method == "adept" else model.parameters()
        optimizer = torch.optim.AdamW(groups, lr=args.lr, fused=device.type == "cuda")
        batch = torch.randint(0, config.vocab_size, (args.micro_batch_size, block_size), device=device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        timed_steps(model, optimizer, batch, args.warmup, device)
        seconds = timed_steps(model, optimizer, batch, args.steps, device)
        row["tokens_per_s"] = args.steps * batch.numel() / seconds
        row["peak_bytes"] = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    except torch.cuda.OutOfMemoryError:
        row.update(tokens_per_s=None, peak_bytes=None, oom=True)
    finally:
        del model, optimizer
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    copies = None if method == "full" else args.copies
    lowest = None if method == "full" else min(copy_plan(config, args.copies).inserted_layer_indices)
    row["flops_per_token"] = training_flops_per_token(
        config, method=method, trainable_layers=copies, lowest_trainable_layer=lowest, block_size=block_size
    )
    estimate = estimate_training_memory(
        config,
        method=method,
        trainable_layers=copies,
        lowest_trainable_layer=lowest,
        micro_batch_size=args.micro_batch_size,
        block_size=block_size,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    row["estimate"] = estimate.as_dict()
    row["estimate_bytes"] = estimate.total
    return row


def _gib(value: float | None) -> str:
    return "–" if value is None else f"{value / GIB:.3g}"


def _ratio(a: float | None, b: float | None, digits: int = 2) -> str:
    return "–" if not a or not b else f"{a / b:.{digits}f}"


def markdown(rows: list[dict], peak: float | None) -> str:
    """The measurement table and the ADEPT/full ratio table."""
    lines = [
        "| model | block | method | tokens/s | MFU | peak GiB | estimate GiB | peak / estimate |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        speed = "OOM" if r.get("oom") else f"{r['tokens_per_s']:,.0f}"
        mfu = "–" if not (peak and r["tokens_per_s"]) else f"{r['tokens_per_s'] * r['flops_per_token'] / peak:.1%}"
        lines.append(
            f"| {r['model']} | {r['block_size']} | {r['method']} | {speed} | {mfu} | {_gib(r['peak_bytes'])} "
            f"| {_gib(r['estimate_bytes'])} | {_ratio(r['peak_bytes'], r['estimate_bytes'])} |"
        )
    lines += [
        "",
        "| model | block | ADEPT/full tokens/s | ADEPT/full peak memory | ADEPT/full estimate |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for key in dict.fromkeys((r["model"], r["block_size"]) for r in rows):
        pair = {r["method"]: r for r in rows if (r["model"], r["block_size"]) == key}
        a, f = pair["adept"], pair["full"]
        lines.append(
            f"| {key[0]} | {key[1]} | {_ratio(a['tokens_per_s'], f['tokens_per_s'])} "
            f"| {_ratio(a['peak_bytes'], f['peak_bytes'])} | {_ratio(a['estimate_bytes'], f['estimate_bytes'])} |"
        )
    return "\n".join(lines)


def settings_line(args, device: torch.device, peak: float | None) -> str:
    """The card and every setting, printed above the tables."""
    import transformers

    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak_text = f"{peak / 1e12:.0f} TFLOP/s dense bf16" if peak else "peak unknown (--peak-tflops)"
    return (
        f"{card} ({peak_text}); torch {torch.__version__}, transformers {transformers.__version__}; "
        f"bf16 autocast, SDPA, AdamW{' fused' if device.type == 'cuda' else ''}, micro-batch {args.micro_batch_size}, "
        f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}, {args.steps} timed steps after "
        f"{args.warmup} warmup; ADEPT trains {args.copies} copies at uniform positions"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["Qwen2.5-0.5B", "Qwen3-1.7B"], help="reference shapes to run")
    parser.add_argument("--block-size", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--micro-batch-size", type=int, default=1, choices=[1, 2, 3, 4])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--copies", type=int, default=4, help="layers ADEPT inserts and trains")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, block 32, 2 copies, 2 steps: a smoke test")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak, when not known")
    parser.add_argument("--json", type=Path, default=None, help="also write every row and the settings here")
    args = parser.parse_args(argv)
    if args.tiny:
        args.block_size, args.copies, args.steps, args.warmup = [32], 2, 2, 1
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    """Run every model x block size x method; print the tables; return the rows."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "gpu_check: CUDA is not available here. Run it on a GPU machine, "
            "or smoke-test the script with --device cpu --tiny."
        )
    configs = tiny_configs() if args.tiny else reference_configs()
    unknown = sorted(set(args.models) - set(configs)) if not args.tiny else []
    if unknown:
        raise SystemExit(f"gpu_check: unknown model(s) {unknown}; choose from {sorted(configs)}")
    names = list(configs) if args.tiny else args.models
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_flops(name, args.peak_tflops)
    rows = [
        measure(model, configs[model], method, block, args, device)
        for model in names
        for block in args.block_size
        for method in METHODS
    ]
    print(settings_line(args, device, peak), "", markdown(rows, peak), sep="\n")
    if args.json:
        args.json.write_text(json.dumps({"settings": settings_line(args, device, peak), "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
