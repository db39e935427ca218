"""Stage 1b: function-preserving selective layer expansion (paper Sec. 3.2).

Duplicates chosen decoder layers, inserting each copy right after its source, with the copy's
attention and MLP output projections (weight and bias) set to zero -- or, where a norm follows
them (Gemma2/3, OLMo2), that norm's gain set to its zero -- so the expanded model computes
exactly what the original did. Reads a safetensors checkpoint, writes an ordinary Hugging Face
checkpoint with its own model card plus the manifest ``expansion.json`` that later stages read.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import struct
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adept.architectures import ArchitectureSpec, get_architecture
from adept.artifacts import artifact_header, atomic_directory, write_json
from adept.checkpoints import INDEX_NAME, checkpoint_shards, read_model_config, read_safetensors_header

logger = logging.getLogger(__name__)

MANIFEST_NAME = "expansion.json"
MODEL_CARD_NAME = "README.md"
_COPY_CHUNK = 16 * 1024 * 1024


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


def select_least_important(layer_scores: Sequence[float], num_new_layers: int) -> list[int]:
    """The ``num_new_layers`` layers with the lowest general-competence importance.

    Ties are broken by layer index so the choice is deterministic.
    """
    if not 0 < num_new_layers < len(layer_scores):
        raise ValueError(
            f"--num-new-layers must be between 1 and {len(layer_scores) - 1} for a {len(layer_scores)}-layer model, "
            f"got {num_new_layers}"
        )
    order = sorted(range(len(layer_scores)), key=lambda idx: (layer_scores[idx], idx))
    return sorted(order[:num_new_layers])


def select_uniform(num_layers: int, num_new_layers: int) -> list[int]:
    """LLaMA-Pro's uniform expansion: one copy after the last layer of each of ``num_new_layers`` equal groups.

    For 8 layers and 2 copies this is layers 3 and 7; importance plays no part.
    """
    if not 0 < num_new_layers <= num_layers:
        raise ValueError(
            f"--uniform must be between 1 and {num_layers} for a {num_layers}-layer model, got {num_new_layers}"
        )
    return [(group + 1) * num_layers // num_new_layers - 1 for group in range(num_new_layers)]


def select_within_budget(
    layer_scores: Sequence[float], layer_num_params: Sequence[int], total_params: int, trainable_fraction: float
) -> list[int]:
    """Least important layers whose copies fit in ``trainable_fraction`` of the expanded model.

    The fraction is of the expanded model's parameters (original plus copies), the number a
    user sees as "trainable share" after expansion.
    """
    if not 0.0 < trainable_fraction < 1.0:
        raise ValueError(f"--trainable-fraction must be in (0, 1), got {trainable_fraction}")
    order = sorted(range(len(layer_scores)), key=lambda idx: (layer_scores[idx], idx))
    chosen: list[int] = []
    trainable = 0
    for idx in order[: len(layer_scores) - 1]:
        candidate = trainable + layer_num_params[idx]
        if candidate / (total_params + candidate) > trainable_fraction:
            break
        chosen.append(idx)
        trainable = candidate
    if not chosen:
        smallest = min(layer_num_params)
        raise ValueError(
            f"--trainable-fraction {trainable_fraction} is too small for one layer copy "
            f"(needs at least {smallest / (total_params + smallest):.4f})"
        )
    return sorted(chosen)


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


def _map_keys(keys: Sequence[str], plan: ExpansionPlan, spec: ArchitectureSpec) -> list[TensorCopy]:
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
    copies = _map_keys(keys, plan, spec)
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


# --- streaming safetensors ---------------------------------------------------------------


def _fill_bytes(dtype: str, value: float) -> bytes:
    """One element of safetensors dtype ``dtype`` holding ``value``."""
    import torch

    dtypes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    if dtype not in dtypes:
        raise ValueError(f"cannot set a {dtype} tensor to {value}: only floating-point tensors can be initialised")
    return torch.tensor([value], dtype=dtypes[dtype]).view(torch.uint8).numpy().tobytes()


def _write_expanded_shard(source: Path, target: Path, copies: list[TensorCopy]) -> int:
    """Stream one shard: copy tensor bytes range by range, write constants for the set tensors.

    Memory stays at one copy buffer whatever the shard size. Returns bytes of tensor data.
    """
    header, data_start = read_safetensors_header(source)
    metadata = header.pop("__metadata__", None)
    new_header: dict[str, Any] = {}
    offset = 0
    for item in copies:
        info = header[item.source_key]
        begin, end = info["data_offsets"]
        new_header[item.target_key] = {
            "dtype": info["dtype"],
            "shape": info["shape"],
            "data_offsets": [offset, offset + (end - begin)],
        }
        offset += end - begin
    if metadata is not None:
        new_header["__metadata__"] = metadata
    encoded = json.dumps(new_header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # tensor data starts 8-byte aligned, as safetensors writes it
    buffer = bytearray(_COPY_CHUNK)
    with open(source, "rb") as src, open(target, "wb") as dst:
        dst.write(struct.pack("<Q", len(encoded)))
        dst.write(encoded)
        for item in copies:
            begin, end = header[item.source_key]["data_offsets"]
            remaining = end - begin
            if item.fill is not None:
                element = _fill_bytes(header[item.source_key]["dtype"], item.fill)
                chunk = element * (_COPY_CHUNK // len(element))
                while remaining > 0:
                    step = min(remaining, len(chunk))
                    dst.write(chunk[:step])
                    remaining -= step
                continue
            src.seek(data_start + begin)
            view = memoryview(buffer)
            while remaining > 0:
                got = src.readinto(view[: min(remaining, _COPY_CHUNK)])
                if not got:
                    raise ValueError(f"{source}: truncated tensor data for '{item.source_key}'")
                dst.write(view[:got])
                remaining -= got
    return offset


def expand_checkpoint(
    model_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    plan: ExpansionPlan,
    *,
    overwrite: bool = False,
    selection: dict[str, Any] | None = None,
) -> Path:
    """Stream-expand a local safetensors checkpoint into ``output_dir``.

    Each output shard holds the tensors of the matching input shard plus the copies of the
    layers found there, so peak memory is a copy buffer, not the model. The output directory
    appears only when everything, manifest included, has been written.
    """
    from tqdm.auto import tqdm

    model_dir = Path(model_dir)
    output_dir = Path(output_dir)
    config = read_model_config(model_dir)
    spec = get_architecture(config.model_type)
    new_config = expand_config(config, plan, spec)
    shards = checkpoint_shards(model_dir)
    all_keys = [key for keys in shards.values() for key in keys]
    plan_tensor_copies(all_keys, plan, spec)  # validates the whole checkpoint before writing anything

    initialized: dict[str, float] = {}
    weight_map: dict[str, str] = {}
    total_size = 0
    with atomic_directory(output_dir, overwrite=overwrite) as tmp_dir:
        for shard, keys in tqdm(shards.items(), desc="expanding shards", unit="shard", disable=len(shards) < 2):
            copies = _map_keys(keys, plan, spec)
            total_size += _write_expanded_shard(model_dir / shard, tmp_dir / shard, copies)
            for item in copies:
                weight_map[item.target_key] = shard
                if item.fill is not None:
                    initialized[item.target_key] = item.fill
        if (model_dir / INDEX_NAME).is_file():
            index = json.loads((model_dir / INDEX_NAME).read_text())
            index["metadata"] = {**index.get("metadata", {}), "total_size": total_size}
            index["weight_map"] = dict(sorted(weight_map.items()))
            (tmp_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        new_config.save_pretrained(tmp_dir)
        skipped = []
        for item in sorted(model_dir.iterdir()):
            if item.is_file() and item.name not in shards and item.name not in (INDEX_NAME, "config.json"):
                if _describes_the_model(item.name):
                    skipped.append(item.name)
                else:
                    shutil.copy2(item, tmp_dir / item.name)
        if skipped:
            logger.info("not copied (they describe %s, not the expanded model): %s", model_dir, ", ".join(skipped))
        manifest = build_manifest(model_dir, config, plan, dict(sorted(initialized.items())), selection)
        write_json(tmp_dir / MANIFEST_NAME, manifest)
        (tmp_dir / MODEL_CARD_NAME).write_text(model_card(manifest))
    logger.info(
        "expanded %s -> %s (%d -> %d layers)", model_dir, output_dir, plan.source_num_layers, plan.num_hidden_layers
    )
    return output_dir


# Files of the source folder that go with its tokenizer and generation settings, not its weights.
_CARRIED_FILES = (
    "tokenizer",
    "special_tokens_map",
    "added_tokens",
    "vocab",
    "merges",
    "generation_config",
    "chat_template",
    "preprocessor_config",
    "spiece",
    "sentencepiece",
)


def _describes_the_model(name: str) -> bool:
    """True for files that describe the source weights (model card, measurements, summaries, weights).

    Only tokenizer and generation files are carried over; everything else (README.md,
    measurements.json, training_summary.json, .bin weights, ...) would describe another model.
    """
    if name.startswith(".") or name.endswith((".safetensors", ".bin", ".pt", ".pth", ".gguf")):
        return True
    return not name.lower().startswith(_CARRIED_FILES)


def build_manifest(
    model_dir: Path, config, plan: ExpansionPlan, initialized: dict[str, float], selection: dict[str, Any] | None
) -> dict[str, Any]:
    """The manifest training reads to know which layers are new (never guessed from weights).

    ``initialized_tensors`` maps every tensor of a copy that was set rather than copied to the
    constant it holds (0 for output projections, the norm's zero gain on post-norm models).
    """
    return {
        **artifact_header("expansion"),
        "source_model": str(model_dir),
        "model_type": config.model_type,
        "source_num_layers": plan.source_num_layers,
        "num_hidden_layers": plan.num_hidden_layers,
        "source_layers": list(plan.source_layers),
        "inserted_layers": [asdict(layer) for layer in plan.inserted],
        "layer_map": {str(old): new for old, new in enumerate(plan.layer_map)},
        "initialized_tensors": initialized,
        "selection": selection or {"method": "layers"},
    }


def model_card(manifest: Mapping[str, Any]) -> str:
    """README.md of an expanded checkpoint: where it comes from and what was inserted, and why."""
    selection = manifest["selection"]
    how = {
        "layers": "given explicitly",
        "uniform": f"spread uniformly ({selection.get('num_new_layers')} copies, LLaMA-Pro style; importance plays "
        "no part)",
        "importance": f"the {selection.get('num_new_layers')} layers least important for general competence "
        f"by `{selection.get('metric')}` in `{selection.get('importance')}`",
        "trainable_fraction": f"the least important layers by `{selection.get('metric')}` in "
        f"`{selection.get('importance')}` "
        f"that fit in {selection.get('trainable_fraction')} of the expanded model",
    }.get(selection.get("method"), str(selection.get("method")))
    rows = "\n".join(f"| {layer['layer_idx']} | {layer['source_layer_idx']} |" for layer in manifest["inserted_layers"])
    values = sorted(set(manifest["initialized_tensors"].values()))
    modules = sorted({key.split(".", 3)[-1].rsplit(".", 1)[0] for key in manifest["initialized_tensors"]})
    return f"""---
library_name: transformers
tags: [adept-cpt, layer-expansion]
---

# Expanded checkpoint

Made by `adept expand` from `{manifest["source_model"]}` ({manifest["model_type"]}): {manifest["source_num_layers"]}
decoder layers became {manifest["num_hidden_layers"]}. Each inserted layer is a copy of its source layer placed right
after it; source layers were chosen {how}.

| inserted layer_idx | copy of source layer |
|---:|---:|
{rows}

In every copy, {", ".join(f"`{m}`" for m in modules)} {"were" if len(modules) > 1 else "was"} set to
{" / ".join(str(v) for v in values)} so that the copy adds nothing to the residual stream: this model computes
the same function as its source until it is trained. `expansion.json` lists every set tensor and its value; it is
what `adept train` reads to know which layers are new. Load it as any checkpoint:

```python
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")
```

The source model's own card and measurements are not copied here: they describe other weights.
"""


def load_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``expansion.json`` from a checkpoint directory or a direct path."""
    from adept.artifacts import read_json

    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    return read_json(path, kind="expansion")


# --- the stage runner: checkpoint (and importance.json) in, expanded checkpoint out ---


def layer_param_counts(model_path: str | os.PathLike) -> tuple[list[int], int]:
    """Parameters per decoder layer and in total, read from safetensors headers only."""
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
    from adept.importance import ImportanceResult, load_importance

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
