"""Corpus path at scale: tokenise + pack through `datasets` against the tokenizer's own speed, side by side.

Writes Gene Ontology documents repeated (numbered, so repeats differ) into JSONL and Parquet corpora
of each ``--sizes`` (default 250 MB and 1 GB), then measures in fresh child processes, one at a time:

* ``adept``: `adept.data.pack_corpus` into an empty cache (the path `adept run` and `adept train` take):
  tokens per second of the whole path, peak RSS of the main process and of its largest worker, and
  bytes of the published cache per token;
* ``tokenizer``: the same tokenizer's own batch encoding (`tokenizer(texts)`, 1,000 documents per
  call, Rust threads on every core) over the same JSONL, read in a stream: the speed to compare with;
* ``legacy``: the previous path (a Python list of documents, `Dataset.from_dict`, packing on lists
  with a labels column) on the smallest JSONL corpus, as the baseline.

Targets (issue "Train at the scale users train at"): adept >= 0.8x the tokenizer's speed, peak RSS
<= 1.5 GB and flat as the corpus grows 4x, cache <= 4.1 bytes per token.

Usage: python benchmarks/data_scale.py [--sizes 250e6,1e9] [--work runs/data_scale] [--tokenizer DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DOCS = ROOT / "data" / "real" / "domain" / "go_train.jsonl"
TOKENIZERS = (ROOT / "models" / "real" / "smollm2-135m", ROOT / "models" / "adept-demo-base")
BLOCK_SIZE = 1024
TARGET_SPEED, TARGET_RSS, TARGET_BYTES = 0.8, 1.5e9, 4.1


def build_corpora(work: Path, size: float) -> dict[str, Path]:
    """``{jsonl, parquet}`` corpora of ``size`` bytes of JSONL (the Parquet holds the same rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tag = f"{size / 1e6:.0f}MB"
    jsonl, parquet = work / f"corpus-{tag}.jsonl", work / f"corpus-{tag}.parquet"
    source = SOURCE_DOCS if SOURCE_DOCS.is_file() else ROOT / "data" / "demo" / "domain" / "train.jsonl"
    texts = [json.loads(line)["text"] for line in source.read_text().splitlines() if line.strip()]
    if not jsonl.is_file():
        written, copy = 0, 0
        with open(jsonl.with_suffix(".tmp"), "w") as handle:
            while written < size:
                for text in texts:
                    row = json.dumps({"text": f"[{copy}] {text}"}) + "\n"
                    handle.write(row)
                    written += len(row.encode())
                copy += 1
        os.replace(jsonl.with_suffix(".tmp"), jsonl)
    if not parquet.is_file():
        writer = None
        with open(jsonl) as handle:
            while True:
                rows = [json.loads(line)["text"] for _, line in zip(range(100_000), handle)]
                if not rows:
                    break
                table = pa.table({"text": rows})
                writer = writer or pq.ParquetWriter(parquet.with_suffix(".tmp"), table.schema)
                writer.write_table(table)
        writer.close()
        os.replace(parquet.with_suffix(".tmp"), parquet)
    return {"jsonl": jsonl, "parquet": parquet}


# --- the measured children ------------------------------------------------------------------------


def _peak_rss() -> tuple[int, int]:
    """(this process's peak RSS, the largest of its finished children's), in bytes."""
    return (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    )


def child_adept(corpus: str, tokenizer_dir: str, cache: str, workers: int) -> dict:
    from transformers import AutoTokenizer

    from adept.data import pack_corpus

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    baseline = _peak_rss()[0]
    start = time.perf_counter()
    packed = pack_corpus([corpus], tokenizer, BLOCK_SIZE, cache_dir=cache, num_proc=workers)
    seconds = time.perf_counter() - start
    cache_bytes = sum(f.stat().st_size for f in Path(packed.cache_path).rglob("*") if f.is_file())
    main, workers_peak = _peak_rss()
    return {
        "seconds": seconds,
        "tokens": packed.stream_tokens,
        "documents": packed.documents,
        "cache_bytes": cache_bytes,
        "bytes_per_token": cache_bytes / (packed.blocks * BLOCK_SIZE),
        "peak_rss": main,
        "rss_after_imports": baseline,
        "worker_peak_rss": workers_peak,
    }


def child_tokenizer(corpus: str, tokenizer_dir: str) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    tokens, start = 0, time.perf_counter()
    with open(corpus) as handle:
        while True:
            texts = [json.loads(line)["text"] for _, line in zip(range(1000), handle)]
            if not texts:
                break
            tokens += sum(len(ids) + 1 for ids in tokenizer(texts)["input_ids"])  # + EOS, as packed
    return {"seconds": time.perf_counter() - start, "tokens": tokens, "peak_rss": _peak_rss()[0]}


def child_legacy(corpus: str, tokenizer_dir: str, cache: str, workers: int) -> dict:
    """The previous path, kept here as the baseline: documents in a list, lists packed in one process."""
    import datasets
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    start = time.perf_counter()
    texts = [json.loads(line)["text"] for line in open(corpus) if line.strip()]
    eos = tokenizer.eos_token_id

    def tokenize(batch):
        return {"input_ids": [row + [eos] for row in tokenizer(batch["text"])["input_ids"]]}

    def pack(batch):
        stream = [token for row in batch["input_ids"] for token in row]
        usable = len(stream) - len(stream) % BLOCK_SIZE
        blocks = [stream[i : i + BLOCK_SIZE] for i in range(0, usable, BLOCK_SIZE)]
        return {"input_ids": blocks, "labels": [list(block) for block in blocks]}

    dataset = datasets.Dataset.from_dict({"text": texts})
    dataset = dataset.map(tokenize, batched=True, remove_columns=["text"], num_proc=workers)
    dataset = dataset.map(pack, batched=True, batch_size=2000)
    dataset.save_to_disk(cache)
    seconds = time.perf_counter() - start
    cache_bytes = sum(f.stat().st_size for f in Path(cache).rglob("*") if f.is_file())
    tokens = len(dataset) * BLOCK_SIZE
    return {
        "seconds": seconds,
        "tokens": tokens,
        "cache_bytes": cache_bytes,
        "bytes_per_token": cache_bytes / tokens,
        "peak_rss": _peak_rss()[0],
        "worker_peak_rss": _peak_rss()[1],
    }


def measure(kind: str, *args: str) -> dict:
    """One measurement in a fresh process (so peak RSS is its own)."""
    out = subprocess.run([sys.executable, __file__, "--child", kind, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} {args}: exit {out.returncode}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="250e6,1e9", help="Corpus sizes in bytes of JSONL, comma-separated.")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "data_scale")
    parser.add_argument(
        "--tokenizer", type=Path, default=None, help="Tokenizer folder (default: SmolLM2's, else the demo's)."
    )
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        runner = {"adept": child_adept, "tokenizer": child_tokenizer, "legacy": child_legacy}[kind]
        rest = [int(r) if r.isdigit() else r for r in rest]
        print(json.dumps(runner(*rest)))
        return 0

    tokenizer = args.tokenizer or next(t for t in TOKENIZERS if (t / "tokenizer.json").is_file())
    sizes = [float(s) for s in args.sizes.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    rows, results = [], {"tokenizer": str(tokenizer), "block_size": BLOCK_SIZE, "workers": args.workers, "runs": []}

    def fresh(name: str) -> str:
        path = args.work / "cache" / name
        shutil.rmtree(path, ignore_errors=True)
        return str(path)

    for size in sizes:
        corpora = build_corpora(args.work, size)
        speed = measure("tokenizer", str(corpora["jsonl"]), str(tokenizer))
        speed_tps = speed["tokens"] / speed["seconds"]
        results["runs"].append({"size": size, "kind": "tokenizer", **speed})
        rows.append(
            (f"{size / 1e6:,.0f} MB", "tokenizer batch encoding", speed_tps, 1.0, speed["peak_rss"], None, None)
        )
        for fmt, path in corpora.items():
            got = measure("adept", str(path), str(tokenizer), fresh(f"{fmt}-{size:.0f}"), str(args.workers))
            results["runs"].append({"size": size, "kind": f"adept-{fmt}", **got})
            tps = got["tokens"] / got["seconds"]
            rows.append(
                (
                    f"{size / 1e6:,.0f} MB",
                    f"adept, {fmt}",
                    tps,
                    tps / speed_tps,
                    got["peak_rss"],
                    got["worker_peak_rss"],
                    got["bytes_per_token"],
                )
            )
        if size == min(sizes):
            got = measure(
                "legacy", str(corpora["jsonl"]), str(tokenizer), fresh(f"legacy-{size:.0f}"), str(args.workers)
            )
            results["runs"].append({"size": size, "kind": "legacy-jsonl", **got})
            tps = got["tokens"] / got["seconds"]
            rows.append(
                (
                    f"{size / 1e6:,.0f} MB",
                    "previous path, jsonl",
                    tps,
                    tps / speed_tps,
                    got["peak_rss"],
                    got["worker_peak_rss"],
                    got["bytes_per_token"],
                )
            )
        shutil.rmtree(args.work / "cache", ignore_errors=True)

    print(f"tokenizer {tokenizer.name}, blocks of {BLOCK_SIZE}, {args.workers} workers / cores")
    print("| corpus | path | tokens/s | x tokenizer | peak RSS main | peak RSS worker | cache bytes/token |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for size, path, tps, ratio, rss, worker, bpt in rows:
        worker_text = f"{worker / 1e9:.2f} GB" if worker else "–"
        bpt_text = f"{bpt:.2f}" if bpt else "–"
        print(f"| {size} | {path} | {tps:,.0f} | {ratio:.2f} | {rss / 1e9:.2f} GB | {worker_text} | {bpt_text} |")
    adept_runs = [r for r in results["runs"] if r["kind"].startswith("adept")]
    worst_ratio = min(r for _, p, _, r, *_ in rows if p.startswith("adept"))
    peak = max(max(r["peak_rss"], r["worker_peak_rss"]) for r in adept_runs)
    bytes_per_token = max(r["bytes_per_token"] for r in adept_runs)
    verdict = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    print(
        f"speed: worst {worst_ratio:.2f}x the tokenizer (target >= {TARGET_SPEED}x): "
        f"{verdict(worst_ratio >= TARGET_SPEED)}"
    )
    print(f"peak RSS: {peak / 1e9:.2f} GB (target <= {TARGET_RSS / 1e9} GB): {verdict(peak <= TARGET_RSS)}")
    print(
        f"cache: {bytes_per_token:.2f} bytes/token (target <= {TARGET_BYTES}): "
        f"{verdict(bytes_per_token <= TARGET_BYTES)}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
