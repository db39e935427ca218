"""The expanded checkpoint on disk: streamed safetensors shards, the manifest and the model card.

Reads a safetensors checkpoint shard by shard and writes the expanded one with peak memory of a
copy buffer, plus ``expansion.json`` (which layers were inserted, copied from where, which
tensors were set) that later stages read instead of guessing from weights, and a README.md
that says what the checkpoint is. The mapping itself is `adept.expansion_plan`'s. torch (to encode
a fill value) and tqdm are imported inside the functions that use them: reading a manifest needs
neither.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from adept.architectures import get_architecture
from adept.artifacts import artifact_header, atomic_directory, read_json, write_json
from adept.checkpoints import INDEX_NAME, checkpoint_shards, read_model_config, read_safetensors_header
from adept.expansion_plan import ExpansionPlan, TensorCopy, expand_config, map_tensor_keys, plan_tensor_copies

logger = logging.getLogger(__name__)

MANIFEST_NAME = "expansion.json"
MODEL_CARD_NAME = "README.md"
_COPY_CHUNK = 16 * 1024 * 1024


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
            copies = map_tensor_keys(keys, plan, spec)
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
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    return read_json(path, kind="expansion")
