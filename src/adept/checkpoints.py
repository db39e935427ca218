"""Model paths: GGUF files in, ordinary Hugging Face checkpoints out.

A ``.gguf`` file given wherever a model is expected (``--model``, ``model:`` in a config) is
dequantized once through transformers' GGUF loading into a safetensors folder with its
tokenizer and a ``conversion.json`` (``convert_gguf``). Conversions are cached under
``$ADEPT_CACHE_DIR/checkpoints`` (default ``~/.cache/adept``), keyed by the file's SHA-256, and
reused (``resolve_model_path``); `adept convert` writes one to a folder of your choice. torch and
transformers are imported inside the functions that use them, so the path, shard and safetensors
header helpers import neither; gguf is optional and only checked for where a GGUF file is read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import time
from pathlib import Path
from typing import Any

from adept.architectures import get_architecture
from adept.artifacts import artifact_header, atomic_directory, read_json, write_json
from adept.config import DTYPES
from adept.defaults import CONVERT_DTYPE, DEFAULT_ATTN_IMPLEMENTATION, DEFAULT_DTYPE

logger = logging.getLogger(__name__)

CONVERSION_NAME = "conversion.json"
INDEX_NAME = "model.safetensors.index.json"
_SINGLE_NAME = "model.safetensors"
GGUF_SUFFIX = ".gguf"
CONVERT_DTYPES = ("float32", "bfloat16", "float16")


def is_gguf(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a GGUF file (by its suffix)."""
    return Path(path).suffix.lower() == GGUF_SUFFIX


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 2**22) -> str:
    """SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def cache_root() -> Path:
    """Where converted GGUF checkpoints are kept: ``$ADEPT_CACHE_DIR`` or ``~/.cache/adept``."""
    return Path(os.environ.get("ADEPT_CACHE_DIR") or Path.home() / ".cache" / "adept") / "checkpoints"


def _check_gguf(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: GGUF file not found")
    with open(path, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")


def load_gguf(path: str | os.PathLike, dtype: str = CONVERT_DTYPE):
    """Dequantize a GGUF file into a transformers model and tokenizer (in memory).

    The model comes back as an ordinary model: transformers' GGUF quantizer marker and the
    ``quantization_config`` it leaves on the config are removed, so ``save_pretrained`` writes
    plain safetensors that load without the ``gguf`` package.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    _check_gguf(path)
    if dtype not in CONVERT_DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(CONVERT_DTYPES)}, got '{dtype}'")
    try:
        import gguf  # noqa: F401  (transformers needs it; say so in our words)
    except ImportError:
        raise ValueError(
            f"{path}: reading GGUF files needs the 'gguf' package (pip install 'adept-cpt[real]')"
        ) from None
    folder, name = str(path.parent.resolve()), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=getattr(torch, dtype), local_files_only=True
    )
    get_architecture(model.config.model_type)  # fail early, naming the model type, if we cannot expand it
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = path.stem
    return model.eval(), tokenizer


def convert_gguf(
    gguf_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    dtype: str = CONVERT_DTYPE,
    overwrite: bool = False,
    sha256: str | None = None,
) -> Path:
    """Write a GGUF file as a Hugging Face checkpoint folder (safetensors + tokenizer).

    Args:
        gguf_path: the ``.gguf`` file (any quantization transformers can dequantize).
        output_dir: the checkpoint folder; written atomically (temporary sibling, then renamed).
        dtype: dtype of the saved weights.
        overwrite: replace a non-empty ``output_dir``.
        sha256: the file's hash when the caller has it already.

    Returns:
        ``output_dir``, holding ``config.json``, ``model.safetensors``, the tokenizer files and
        ``conversion.json`` (source file, its SHA-256, dtype, parameter count, seconds).
    """
    gguf_path = Path(gguf_path)
    _check_gguf(gguf_path)
    output_dir = Path(output_dir)
    start = time.perf_counter()
    sha256 = sha256 or file_sha256(gguf_path)
    logger.info("dequantizing %s (%s) to %s", gguf_path, dtype, output_dir)
    model, tokenizer = load_gguf(gguf_path, dtype=dtype)
    with atomic_directory(output_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(
            tmp / CONVERSION_NAME,
            {
                **artifact_header("conversion"),
                "source": str(gguf_path.resolve()),
                "source_sha256": sha256,
                "source_bytes": gguf_path.stat().st_size,
                "dtype": dtype,
                "model_type": model.config.model_type,
                "num_hidden_layers": model.config.num_hidden_layers,
                "parameters": sum(p.numel() for p in model.parameters()),
                "seconds": round(time.perf_counter() - start, 2),
            },
        )
    logger.info("converted %s in %.1f s", gguf_path.name, time.perf_counter() - start)
    return output_dir


def read_conversion(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """``conversion.json`` of a converted checkpoint, or None for any other folder."""
    path = Path(checkpoint) / CONVERSION_NAME
    return read_json(path, kind="conversion") if path.is_file() else None


def resolve_model_path(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A checkpoint folder for ``path``: itself, or for a ``.gguf`` file its cached fp32 conversion.

    The cache entry is named after the file and the first 16 hex digits of its SHA-256, so an
    edited or replaced file is converted again and an unchanged one never is.
    """
    path = Path(path)
    if not is_gguf(path):
        return path
    _check_gguf(path)
    sha256 = file_sha256(path)
    target = Path(cache_dir) if cache_dir is not None else cache_root()
    target = target / f"{path.stem}-{sha256[:16]}"
    done = read_conversion(target) if (target / "config.json").is_file() else None
    if done is not None and done.get("source_sha256") == sha256:
        logger.info("%s: using the converted checkpoint %s", path, target)
        return target
    return convert_gguf(path, target, dtype="float32", overwrite=True, sha256=sha256)


# --- reading a local checkpoint's files ---


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """Return the header dict and the byte offset where tensor data starts."""
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (too short)")
        (header_len,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(handle.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{path}: not a safetensors file (unreadable header)") from None
    return header, 8 + header_len


def checkpoint_shards(model_dir: Path) -> dict[str, list[str]]:
    """Map shard file name -> tensor keys, in file order, for a safetensors checkpoint."""
    index_path = model_dir / INDEX_NAME
    if index_path.is_file():
        weight_map = json.loads(index_path.read_text())["weight_map"]
        shards: dict[str, list[str]] = {}
        for key, shard in weight_map.items():
            shards.setdefault(shard, []).append(key)
        for shard in shards:
            if not (model_dir / shard).is_file():
                raise FileNotFoundError(f"{model_dir / shard}: shard listed in {INDEX_NAME} is missing")
        return shards
    single = model_dir / _SINGLE_NAME
    if single.is_file():
        header, _ = read_safetensors_header(single)
        return {_SINGLE_NAME: [key for key in header if key != "__metadata__"]}
    if any(model_dir.glob("*.bin")):
        raise ValueError(
            f"{model_dir}: only PyTorch .bin weights found; re-save the model with "
            f"save_pretrained(..., safe_serialization=True) to get safetensors"
        )
    raise FileNotFoundError(f"{model_dir}: no {_SINGLE_NAME} or {INDEX_NAME} found")


def read_model_config(model_dir: str | os.PathLike):
    """Load a local checkpoint's config, with a one-line error when it is missing."""
    from transformers import AutoConfig

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir / 'config.json'}: not found (expected a local Hugging Face checkpoint)")
    return AutoConfig.from_pretrained(model_dir, local_files_only=True)


# --- loading a local checkpoint for any stage ---


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


def load_tokenizer(model_path: str | os.PathLike):
    """A local checkpoint's tokenizer; never reaches a hub."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path, local_files_only=True)


def load_model(model_path: str | os.PathLike, dtype, attn_implementation: str = DEFAULT_ATTN_IMPLEMENTATION):
    """A local checkpoint as a causal LM in ``dtype`` (a torch dtype), on the CPU; never reaches a hub.

    ``attn_implementation`` (sdpa, eager, flash_attention_2) is passed to every load, so a run
    uses one attention kernel in every stage.
    """
    from transformers import AutoModelForCausalLM

    kernel = supported_attn_implementation(read_model_config(model_path), attn_implementation)
    return AutoModelForCausalLM.from_pretrained(
        model_path, dtype=dtype, attn_implementation=kernel, local_files_only=True
    )


def supported_attn_implementation(config, requested: str) -> str:
    """``requested``, or ``eager`` when the architecture has no such kernel (Gemma2 has no SDPA path: its
    attention logits are soft-capped), said once in the log."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    flag = {"sdpa": "_supports_sdpa", "flash_attention_2": "_supports_flash_attn"}.get(requested)
    if model_class is None or flag is None or getattr(model_class, flag, True):
        return requested
    logger.info("%s has no %s attention: using eager", model_class.__name__, requested)
    return "eager"


def load_model_and_tokenizer(
    model_path: str | os.PathLike,
    device: str = "cpu",
    dtype: str = DEFAULT_DTYPE,
    attn_implementation: str = DEFAULT_ATTN_IMPLEMENTATION,
):
    """Load a local checkpoint and its tokenizer onto ``device``, checking its architecture first."""
    model_path = Path(model_path)
    config = read_model_config(model_path)
    get_architecture(config.model_type)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    tokenizer = load_tokenizer(model_path)
    model = load_model(model_path, torch_dtype, attn_implementation)
    return model.to(device), tokenizer


_SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


def checkpoint_dtype(model_path: str | os.PathLike) -> str:
    """The dtype a checkpoint's floating-point weights are stored in (``float32``, ``bfloat16``, ...).

    Read from the first floating-point tensor of its safetensors header, which is what the file
    holds; ``config.json``'s ``dtype`` only says what it was saved from, and may be absent.
    """
    model_dir = Path(model_path)
    for shard in checkpoint_shards(model_dir):
        header, _ = read_safetensors_header(model_dir / shard)
        for key, info in header.items():
            if key != "__metadata__" and info["dtype"] in _SAFETENSORS_DTYPES:
                return _SAFETENSORS_DTYPES[info["dtype"]]
    return "float32"
