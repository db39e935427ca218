"""Stage runners: read inputs from disk, call the core functions, write artifacts.

Stages hand over only through files (``importance.json``, an expanded checkpoint with
``expansion.json``), so each one can be re-run, tested and resumed on its own. The CLI and the
pipeline call these; nothing here parses arguments.
"""

from __future__ import annotations

import logging
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from adept.artifacts import artifact_header, read_artifact, write_json
from adept.config import ImportanceSection, ProbeConfig

logger = logging.getLogger(__name__)

IMPORTANCE_NAME = "importance.json"
DTYPES = ("float32", "bfloat16", "float16", "auto")


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; validate explicit choices."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"--device must be cpu, cuda[:N] or auto, got '{device}'")
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got '{dtype}'")
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, dtype)


def load_model_and_tokenizer(model_path: str | os.PathLike, device: str = "cpu", dtype: str = "float32"):
    """Load a local checkpoint and its tokenizer; never reaches a hub."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adept.architectures import get_architecture
    from adept.expansion import read_model_config

    model_path = Path(model_path)
    config = read_model_config(model_path)
    get_architecture(config.model_type)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype, local_files_only=True)
    return model.to(device), tokenizer


def run_importance(
    model_path: str | os.PathLike,
    probe_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    settings: ImportanceSection | None = None,
    *,
    txt_split: str = "paragraph",
    device: str = "cpu",
    dtype: str = "float32",
    progress: bool = True,
) -> Path:
    """Compute importance and write ``importance.json`` plus its two PNGs into ``output_dir``.

    ``settings``: the probe, metrics and seed (`ImportanceSection`'s defaults when None);
    ``txt_split``: how ``.txt`` probe files split into documents (see `adept.data.load_documents`).
    """
    import torch

    from adept.data import load_probe_batches
    from adept.importance import compute_importance
    from adept.plots import plot_layer_bars, plot_unit_heatmap

    settings = settings or ImportanceSection()
    output_dir = Path(output_dir)
    model, tokenizer = load_model_and_tokenizer(model_path, device=device, dtype=dtype)
    torch.manual_seed(settings.seed)
    batches = load_probe_batches(probe_path, tokenizer, settings, seed=settings.seed, txt_split=txt_split)
    metrics = list(settings.metrics)
    result = compute_importance(model, batches, metrics=metrics, progress=progress)
    probe = {f.name: getattr(settings, f.name) for f in fields(ProbeConfig)}
    payload = {
        **artifact_header("importance"),
        "model": str(model_path),
        "model_type": model.config.model_type,
        "probe": {"path": str(probe_path), **probe, "seed": settings.seed, "txt_split": txt_split},
        "metrics": metrics,
        "device": str(next(model.parameters()).device),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        **result.to_dict(),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    path = write_json(output_dir / IMPORTANCE_NAME, payload)
    if result.unit_grad_weight:
        plot_unit_heatmap(result.unit_grad_weight, result.layers, result.unit_names, output_dir / "unit_importance.png")
    plot_layer_bars(payload["layer_scores"], result.layers, output_dir / "layer_importance.png")
    logger.info("importance written to %s", path)
    return path


def load_importance(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``importance.json`` (a file or the directory holding it)."""
    return read_artifact(path, IMPORTANCE_NAME, "importance")


def layer_param_counts(model_path: str | os.PathLike) -> tuple[list[int], int]:
    """Parameters per decoder layer and in total, read from safetensors headers only."""
    from adept.architectures import get_architecture
    from adept.expansion import checkpoint_shards, read_model_config, read_safetensors_header

    model_path = Path(model_path)
    config = read_model_config(model_path)
    spec = get_architecture(config.model_type)
    per_layer = [0] * config.num_hidden_layers
    total = 0
    for shard in checkpoint_shards(model_path):
        header, _ = read_safetensors_header(model_path / shard)
        for key, info in header.items():
            if key == "__metadata__":
                continue
            numel = 1
            for dim in info["shape"]:
                numel *= dim
            total += numel
            parts = spec.split_layer_key(key)
            if parts is not None:
                per_layer[parts[0]] += numel
    return per_layer, total


def run_expansion(
    model_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    layers: list[int] | None = None,
    importance_path: str | os.PathLike | None = None,
    num_new_layers: int | None = None,
    trainable_fraction: float | None = None,
    uniform: int | None = None,
    metric: str = "masking",
    overwrite: bool = False,
) -> Path:
    """Choose the layers to duplicate (explicitly, by importance, by budget, or uniformly) and expand."""
    from adept.expansion import (
        expand_checkpoint,
        plan_expansion,
        read_model_config,
        select_least_important,
        select_uniform,
        select_within_budget,
    )
    from adept.importance import ImportanceResult

    given = [layers is not None, num_new_layers is not None, trainable_fraction is not None, uniform is not None]
    if sum(given) != 1:
        raise ValueError("give exactly one of --layers, --num-new-layers, --trainable-fraction or --uniform")
    config = read_model_config(model_path)
    selection: dict[str, Any]
    if layers is not None:
        chosen = list(layers)
        selection = {"method": "layers", "layers": chosen}
    elif uniform is not None:
        chosen = select_uniform(config.num_hidden_layers, uniform)
        selection = {"method": "uniform", "num_new_layers": uniform}
    else:
        if importance_path is None:
            raise ValueError("--num-new-layers and --trainable-fraction need --importance importance.json")
        payload = load_importance(importance_path)
        result = ImportanceResult.from_dict(payload)
        if result.num_layers != config.num_hidden_layers or result.layers != list(range(result.num_layers)):
            raise ValueError(
                f"{importance_path}: scores cover layers {result.layers} of a {result.num_layers}-layer model, "
                f"but {model_path} has {config.num_hidden_layers} layers"
            )
        scores = result.layer_scores(metric)
        if num_new_layers is not None:
            chosen = select_least_important(scores, num_new_layers)
        else:
            per_layer, total = layer_param_counts(model_path)
            chosen = select_within_budget(scores, per_layer, total, trainable_fraction)
        selection = {
            "method": "importance" if num_new_layers is not None else "trainable_fraction",
            "importance": str(importance_path),
            "metric": metric,
            "num_new_layers": num_new_layers,
            "trainable_fraction": trainable_fraction,
            "layer_scores": scores,
        }
    plan = plan_expansion(config.num_hidden_layers, chosen)
    return expand_checkpoint(model_path, output_dir, plan, overwrite=overwrite, selection=selection)
