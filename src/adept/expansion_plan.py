"""Stage 1b core: the expansion plan and the state-dict surgery that follows it (paper Sec. 3.2).

Duplicates chosen decoder layers, inserting each copy right after its source, with the copy's
attention and MLP output projections (weight and bias) set to zero -- or, where a norm follows
them (Gemma2/3, OLMo2), that norm's gain set to its zero -- so the expanded model computes
exactly what the original did. Plans the new layer order, rewrites every per-layer config field,
maps every source tensor to its targets (asserting each is consumed once) and expands a state
dict or an in-memory model. No file I/O: `adept.expanded_checkpoint` streams the same mapping
to disk.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from adept.architectures import ArchitectureSpec, get_architecture


@dataclass(frozen=True)
class InsertedLayer:
    """One inserted copy: its index in the expanded model and where it came from."""

    layer_idx: int
    source_layer_idx: int


@dataclass(frozen=True)
class ExpansionPlan:
    """Which layers to duplicate and where every layer lands in the expanded model."""

    source_num_layers: int
    source_layers: tuple[int, ...]
    layer_map: tuple[int, ...]
    inserted: tuple[InsertedLayer, ...]

    @property
    def num_hidden_layers(self) -> int:
        return self.source_num_layers + len(self.source_layers)

    @property
    def inserted_layer_indices(self) -> list[int]:
        return [layer.layer_idx for layer in self.inserted]

    def new_layer_origin(self) -> list[tuple[int, bool]]:
        """For each expanded layer: ``(source layer, is_copy)``."""
        origin: list[tuple[int, bool]] = [(-1, False)] * self.num_hidden_layers
        for old, new in enumerate(self.layer_map):
            origin[new] = (old, False)
        for layer in self.inserted:
            origin[layer.layer_idx] = (layer.source_layer_idx, True)
        return origin


def plan_expansion(source_num_layers: int, source_layers: Sequence[int]) -> ExpansionPlan:
    """Plan the duplication of ``source_layers`` (0-based) in a model of the given depth."""
    layers = list(source_layers)
    if not layers:
        raise ValueError("no layers to expand: give at least one source layer")
    if len(set(layers)) != len(layers):
        duplicates = sorted({idx for idx in layers if layers.count(idx) > 1})
        raise ValueError(f"duplicate layer ids {duplicates}: each layer can be expanded once")
    out_of_range = [idx for idx in layers if not 0 <= idx < source_num_layers]
    if out_of_range:
        raise ValueError(
            f"layer ids {out_of_range} out of range: the model has {source_num_layers} layers "
            f"(0-{source_num_layers - 1})"
        )
    if len(layers) >= source_num_layers:
        raise ValueError(
            f"cannot expand {len(layers)} layers of a {source_num_layers}-layer model: choose fewer than "
            f"{source_num_layers}"
        )
    chosen = set(layers)
    layer_map: list[int] = []
    inserted: list[InsertedLayer] = []
    new_idx = 0
    for old in range(source_num_layers):
        layer_map.append(new_idx)
        new_idx += 1
        if old in chosen:
            inserted.append(InsertedLayer(layer_idx=new_idx, source_layer_idx=old))
            new_idx += 1
    return ExpansionPlan(source_num_layers, tuple(sorted(chosen)), tuple(layer_map), tuple(inserted))


def expand_config(config, plan: ExpansionPlan, spec: ArchitectureSpec | None = None):
    """Return a copy of ``config`` with every per-layer field following the new layer order."""
    spec = spec or get_architecture(config.model_type)
    if config.num_hidden_layers != plan.source_num_layers:
        raise ValueError(
            f"config has num_hidden_layers={config.num_hidden_layers} but the plan was made for "
            f"{plan.source_num_layers}"
        )
    new_config = copy.deepcopy(config)
    origin = plan.new_layer_origin()
    for name in spec.per_layer_fields:
        values = getattr(config, name, None)
        if values is None:
            continue
        if len(values) != plan.source_num_layers:
            raise ValueError(f"config.{name} has {len(values)} entries for {plan.source_num_layers} layers")
        setattr(new_config, name, [values[src] for src, _ in origin])
    for name in spec.layer_threshold_fields:
        threshold = getattr(config, name, None)
        if threshold is None:
            continue
        # "layers >= threshold" keeps selecting the same source layers (and their copies).
        if threshold >= plan.source_num_layers:
            new_threshold = threshold + len(plan.inserted)
        else:
            new_threshold = plan.layer_map[max(threshold, 0)]
        setattr(new_config, name, new_threshold)
    _check_no_unhandled_per_layer_lists(config, spec, plan.source_num_layers)
    new_config.num_hidden_layers = plan.num_hidden_layers
    return new_config


def _check_no_unhandled_per_layer_lists(config, spec: ArchitectureSpec, num_layers: int) -> None:
    """Fail loudly when a config holds a per-layer list the adapter does not know about."""
    for name, value in config.to_dict().items():
        if isinstance(value, (list, tuple)) and len(value) == num_layers and num_layers > 2:
            if name not in spec.per_layer_fields and name not in ("architectures",):
                raise ValueError(
                    f"config.{name} looks like a per-layer field ({num_layers} entries) that the "
                    f"'{spec.model_type}' adapter does not handle; refusing to expand"
                )


@dataclass(frozen=True)
class TensorCopy:
    """One tensor of the expanded checkpoint: where it comes from, or the constant it is set to."""

    target_key: str
    source_key: str
    fill: float | None = None


def map_tensor_keys(keys: Sequence[str], plan: ExpansionPlan, spec: ArchitectureSpec) -> list[TensorCopy]:
    """Targets of ``keys`` in order: each tensor at its new index, then its copy if any."""
    copies: list[TensorCopy] = []
    chosen = {layer.source_layer_idx: layer.layer_idx for layer in plan.inserted}
    for key in keys:
        parts = spec.split_layer_key(key)
        if parts is None:
            copies.append(TensorCopy(key, key))
            continue
        old, unit = parts
        if old >= plan.source_num_layers:
            raise ValueError(
                f"tensor '{key}' belongs to layer {old}, beyond the {plan.source_num_layers} layers of the config"
            )
        copies.append(TensorCopy(spec.layer_key(plan.layer_map[old], unit), key))
        if old in chosen:
            copies.append(TensorCopy(spec.layer_key(chosen[old], unit), key, fill=spec.copy_init_value(unit)))
    return copies


def plan_tensor_copies(keys: Sequence[str], plan: ExpansionPlan, spec: ArchitectureSpec) -> list[TensorCopy]:
    """Map every source key to its targets, asserting every layer is present and every key used once."""
    copies = map_tensor_keys(keys, plan, spec)
    units_per_layer: dict[int, set[str]] = {}
    for key in keys:
        parts = spec.split_layer_key(key)
        if parts is not None:
            units_per_layer.setdefault(parts[0], set()).add(parts[1])
    missing = sorted(set(range(plan.source_num_layers)) - set(units_per_layer))
    if missing:
        raise ValueError(f"checkpoint has no tensors for layers {missing}")
    for old in plan.source_layers:
        modules = {unit.rsplit(".", 1)[0] for unit in units_per_layer[old]}
        needed = set(spec.output_projections) | set(spec.identity_units())
        if not needed <= modules:
            raise ValueError(
                f"layer {old} lacks {sorted(needed - modules)} (output projections and the norms after them); "
                f"cannot make its copy an identity"
            )
    targets = [c.target_key for c in copies]
    assert len(targets) == len(set(targets)), "expanded checkpoint would contain a key twice"
    assert {c.source_key for c in copies} == set(keys), "every source tensor must be consumed"
    return copies


def expand_state_dict(state_dict: Mapping[str, Any], plan: ExpansionPlan, spec: ArchitectureSpec) -> dict[str, Any]:
    """In-memory expansion of a state dict (tensors cloned; each copy's identity tensors set)."""
    expanded: dict[str, Any] = {}
    for item in plan_tensor_copies(list(state_dict), plan, spec):
        tensor = state_dict[item.source_key].detach()
        expanded[item.target_key] = tensor.clone() if item.fill is None else tensor.new_full(tensor.shape, item.fill)
    return expanded


def expand_model(model, plan: ExpansionPlan):
    """Build a fresh expanded model (correct ``layer_idx`` everywhere) from an in-memory model."""
    spec = get_architecture(model.config.model_type)
    new_config = expand_config(model.config, plan, spec)
    state_dict = model.state_dict()
    new_state = expand_state_dict(state_dict, plan, spec)
    new_model = type(model)(new_config).to(dtype=next(model.parameters()).dtype)
    missing, unexpected = new_model.load_state_dict(new_state, strict=False)
    tied = set(getattr(new_model, "_tied_weights_keys", None) or [])
    if unexpected or [key for key in missing if key not in tied]:
        raise RuntimeError(
            f"expanded state dict does not fit the expanded model: missing={missing}, unexpected={unexpected}"
        )
    if getattr(new_config, "tie_word_embeddings", False):
        new_model.tie_weights()
    return new_model.eval() if not model.training else new_model
