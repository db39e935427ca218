"""Scale rehearsal on CPU: `adept run` on a Qwen3-1.7B-shaped model in bf16, fed by a corpus of 1 GB or more.

Builds, with no download, a random-weight checkpoint of Qwen3-1.7B's shape (28 layers, hidden 2048,
vocabulary 151,936) in bf16, paired with the demo model's tokenizer; repeats the demo's Gene
Ontology training documents into a JSONL corpus of ``--corpus-gb`` GB; then runs the whole
pipeline (`adept run`) in a child process: importance on a small probe, expansion by 4 layers,
2 ADEPT training steps and evaluation on a few blocks, everything in bf16 with SDPA. The child's
peak resident memory (VmHWM, sampled) is printed next to `adept.memory.estimate_training_memory`'s
estimate of the training stage, and the estimate for full CPT at the same shape.

Usage: python benchmarks/scale_rehearsal.py [--work runs/rehearsal] [--corpus-gb 1.0] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from adept.memory import estimate_training_memory, reference_configs

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DOCS = ROOT / "data" / "demo" / "domain" / "train.jsonl"
TOKENIZER = ROOT / "models" / "adept-demo-base"
BLOCK_SIZE = 256
NEW_LAYERS = 4


def qwen3_1p7b_config():
    """Qwen3-1.7B's published shape (`adept.memory.reference_configs`), no special tokens of its own."""
    config = reference_configs()["Qwen3-1.7B"]
    config.bos_token_id = config.eos_token_id = None
    return config


def build_checkpoint(path: Path) -> None:
    """Random weights of the real shape, in bf16, with the demo tokenizer (its ids are a subset of the vocabulary)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (path / "config.json").is_file():
        return
    config = qwen3_1p7b_config()
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER, local_files_only=True)
    config.eos_token_id, config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model


def build_corpus(path: Path, gigabytes: float) -> int:
    """Repeat the demo's domain documents (numbered, so repeats differ) until the file holds ``gigabytes``."""
    target = int(gigabytes * 1e9)
    if path.is_file() and path.stat().st_size >= target:
        return path.stat().st_size
    lines = SOURCE_DOCS.read_text().splitlines()
    tmp = path.with_suffix(".tmp")
    written, copy = 0, 0
    with open(tmp, "w") as handle:
        while written < target:
            for line in lines:
                text = json.loads(line)["text"]
                row = json.dumps({"text": f"[{copy}] {text}"}) + "\n"
                handle.write(row)
                written += len(row.encode())
            copy += 1
    os.replace(tmp, path)
    return written


def write_config(work: Path) -> Path:
    config = work / "rehearsal.yaml"
    config.write_text(f"""# Written by benchmarks/scale_rehearsal.py
model: {work / "base"}
run_dir: {work / "run"}
device: cpu
dtype: bfloat16
attn_implementation: sdpa
data:
  domain_train: {work / "corpus.jsonl"}
  domain_heldout: {ROOT / "data/demo/domain/heldout.jsonl"}
  general_probe: {ROOT / "data/demo/general/probe.jsonl"}
  general_heldout: {ROOT / "data/demo/general/heldout.jsonl"}
  block_size: {BLOCK_SIZE}
importance: {{max_tokens: 512, max_length: 256, batch_size: 2, metrics: [masking, grad_weight]}}
expansion: {{num_new_layers: {NEW_LAYERS}}}
train:
  methods: [adept]
  reestimate_every: 1
  probe: {{max_tokens: 256, max_length: 256, batch_size: 1}}
  training_args: {{max_steps: 2, per_device_train_batch_size: 1, learning_rate: 1.0e-3, logging_steps: 1,
                  save_steps: 100, disable_tqdm: true}}
evaluation: {{batch_size: 2, max_blocks: 4, shift: false}}
""")
    return config


def run_with_peak_rss(cmd: list[str], log: Path) -> tuple[int, int, float]:
    """Run ``cmd``; returns (exit code, the child's peak RSS in bytes from VmHWM, seconds)."""
    start = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        peak = [0]

        def sample() -> None:
            while child.poll() is None:
                try:
                    for line in Path(f"/proc/{child.pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            peak[0] = max(peak[0], int(line.split()[1]) * 1024)
                except OSError:
                    pass
                time.sleep(0.5)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        code = child.wait()
        thread.join()
    return code, peak[0], time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "rehearsal")
    parser.add_argument("--corpus-gb", type=float, default=1.0)
    parser.add_argument("--json", type=Path, default=None, help="Also write the numbers here.")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    build_checkpoint(args.work / "base")
    corpus_bytes = build_corpus(args.work / "corpus.jsonl", args.corpus_gb)
    config = write_config(args.work)
    setup_s = time.perf_counter() - started
    code, peak, seconds = run_with_peak_rss(
        [sys.executable, "-m", "adept.cli", "run", str(config)], args.work / "run.log"
    )
    if code != 0:
        print(f"adept run failed (exit {code}); see {args.work / 'run.log'}")
        return code

    shape = qwen3_1p7b_config()
    settings = dict(dtype="bfloat16", micro_batch_size=1, block_size=BLOCK_SIZE, gradient_checkpointing=False)
    adept = estimate_training_memory(shape, method="adept", trainable_layers=NEW_LAYERS, **settings)
    full = estimate_training_memory(shape, method="full", **settings)
    full_fp32 = estimate_training_memory(shape, method="full", **{**settings, "dtype": "float32"})
    data = json.loads((args.work / "run" / "data" / "data.json").read_text())["corpora"]["domain_train"]
    records = json.loads((args.work / "run" / "pipeline.json").read_text())["stages"]
    result = {
        "shape": "Qwen3-1.7B (random weights, bf16, SDPA)",
        "new_layers": NEW_LAYERS,
        "block_size": BLOCK_SIZE,
        "corpus_bytes": corpus_bytes,
        "corpus_documents": data["documents"],
        "corpus_tokens": data["stream_tokens"],
        "peak_rss_bytes": peak,
        "run_seconds": round(seconds, 1),
        "setup_seconds": round(setup_s, 1),
        "stage_seconds": {stage: record.get("seconds") for stage, record in records.items()},
        "estimate_adept_bytes": adept.total,
        "estimate_full_bytes": full.total,
        "estimate_full_fp32_bytes": full_fp32.total,
        "estimate_adept": adept.as_dict(),
        "estimate_full": full.as_dict(),
    }
    gib = 2**30
    print(
        f"| corpus | {corpus_bytes / 1e9:.2f} GB, {data['documents']:,} documents, {data['stream_tokens']:,} tokens |"
    )
    print(f"| adept run (importance, expansion, 2 steps, evaluation) | {seconds / 60:.1f} min |")
    print(f"| peak RSS of the whole run | {peak / gib:.2f} GiB |")
    print(f"| estimate, ADEPT training (bf16 base, fp32 copies + Adam) | {adept.total / gib:.2f} GiB |")
    print(f"| estimate, full CPT (bf16 autocast, fp32 master + Adam) | {full.total / gib:.2f} GiB |")
    print(f"| estimate, full CPT (fp32) | {full_fp32.total / gib:.2f} GiB |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
