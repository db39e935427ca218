"""Which parameters train: the method's layers, the rest frozen, trainable ones as fp32 master weights.

An expansion method trains the copies its checkpoint's ``expansion.json`` lists; ``freeze`` and
``adept-no-stage1`` train the existing layers least important in ``importance.json``; full CPT
and LoRA train what they train. Counts are those a user reads as "trainable share".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from adept.architectures import get_architecture
from adept.config import EXPANDED_METHODS, LAYER_SUBSET_METHODS, TrainConfig
from adept.distributed import full_numel
from adept.expanded_checkpoint import MANIFEST_NAME, load_manifest
from adept.expansion import select_least_important
from adept.importance import read_importance


def layer_parameter_names(model, layers: Sequence[int]) -> list[str]:
    """Names of every parameter of the given decoder layers."""
    spec = get_architecture(model.config.model_type)
    wanted = set(layers)
    names = []
    for name, _ in model.named_parameters():
        parts = spec.split_layer_key(name)
        if parts is not None and parts[0] in wanted:
            names.append(name)
    return names


def freeze_all_but(model, trainable: Sequence[str]) -> None:
    """Let exactly the named parameters require gradients."""
    wanted = set(trainable)
    for name, param in model.named_parameters():
        param.requires_grad_(name in wanted)


def count_parameters(model) -> tuple[int, int]:
    """``(trainable, total)``; tied weights counted once; ZeRO-3 partitions at their full size."""
    seen: set[int] = set()
    total = trainable = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        size = full_numel(param)
        total += size
        if param.requires_grad:
            trainable += size
    return trainable, total


def upcast_trainable_(model) -> int:
    """Trainable parameters to float32 master weights (frozen ones keep the load dtype); returns how many moved.

    Adam's update of a bf16 weight would round away most small steps; keeping the few trainable
    tensors in fp32 costs little when the frozen base is what dominates memory.
    """
    moved = 0
    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != torch.float32:
            param.data = param.data.float()
            moved += 1
    return moved


def trainable_layers(cfg: TrainConfig, model) -> tuple[list[int] | None, dict[str, Any] | None]:
    """Layers to train for the method, and the manifest when the model is expanded."""
    manifest_path = Path(cfg.model) / MANIFEST_NAME
    if cfg.method in EXPANDED_METHODS:
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"{manifest_path}: method '{cfg.method}' needs an expanded checkpoint (run adept expand)"
            )
        manifest = load_manifest(manifest_path)
        if manifest["num_hidden_layers"] != model.config.num_hidden_layers:
            raise ValueError(
                f"{manifest_path}: manifest has {manifest['num_hidden_layers']} layers, the model "
                f"{model.config.num_hidden_layers}"
            )
        return [layer["layer_idx"] for layer in manifest["inserted_layers"]], manifest
    if cfg.method in LAYER_SUBSET_METHODS:
        result = read_importance(cfg.importance, model.config.num_hidden_layers, cfg.model)
        return select_least_important(result.layer_scores(cfg.layer_metric), cfg.num_layers), None
    return None, None
