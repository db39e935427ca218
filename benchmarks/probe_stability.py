"""Is Stage 1 stable? The masking ranking of SmolLM2-135M's layers from probes of several sizes and samples.

For every probe size (``--tokens``, default 1k, 4k and 20k target tokens) and every probe sample
(``--seeds``: `importance.seed`, which draws the probe's documents), runs `adept.importance.run_importance`
with the masking metric on the fronts' probe corpus (State of the Union addresses), one run
directory per point, skipped when its ``importance.json`` exists (resumable point by point).
Then, per size: how often each layer is among the four least important (the layers ADEPT would
copy), the mean pairwise overlap of the chosen four between samples, and the mean pairwise
Spearman correlation of the full rankings. Writes ``docs/results_probe_stability.md`` and its JSON.

Usage: python benchmarks/probe_stability.py [--tokens 1024,4096,20000] [--seeds 0,1,2,3,4] [--points-only]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

from adept.config import ImportanceSection
from adept.expansion import select_least_important
from adept.importance import load_importance, run_importance

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "real" / "smollm2-135m"
PROBE = ROOT / "data" / "real" / "general" / "sotu_probe.jsonl"
CHOSEN = 4  # layers copied by the fronts' runs
DOC = ROOT / "docs" / "results_probe_stability.md"


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation of two score lists (no ties expected in loss increases)."""

    def ranks(values):
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0] * len(values)
        for rank, index in enumerate(order):
            out[index] = rank
        return out

    ra, rb = ranks(a), ranks(b)
    n = len(a)
    return 1 - 6 * sum((x - y) ** 2 for x, y in zip(ra, rb)) / (n * (n * n - 1))


def point(work: Path, tokens: int, seed: int) -> dict:
    """One importance run (cached): its masking scores and the seconds it took."""
    out = work / f"tokens-{tokens}" / f"seed-{seed}"
    path = out / "importance.json"
    if not path.is_file():
        start = time.perf_counter()
        settings = ImportanceSection(max_tokens=tokens, max_length=256, batch_size=4, metrics=["masking"], seed=seed)
        run_importance(MODEL, PROBE, out, settings, device="cpu", dtype="float32", progress=False)
        (out / "seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
    payload = load_importance(path)
    seconds = float((out / "seconds.txt").read_text()) if (out / "seconds.txt").is_file() else None
    return {
        "tokens": tokens,
        "seed": seed,
        "masking": payload["layer_masking"],
        "probe_tokens": payload["num_tokens"],
        "seconds": seconds,
    }


def summarize(points: list[dict]) -> dict:
    """Per size: chosen layers per sample, their frequency, pairwise overlap and rank correlation."""
    by_size: dict[int, list[dict]] = {}
    for p in points:
        by_size.setdefault(p["tokens"], []).append(p)
    summary = {}
    for tokens, runs in sorted(by_size.items()):
        chosen = {p["seed"]: sorted(select_least_important(p["masking"], CHOSEN)) for p in runs}
        pairs = list(itertools.combinations(runs, 2))
        overlap = [len(set(chosen[a["seed"]]) & set(chosen[b["seed"]])) for a, b in pairs]
        rho = [spearman(a["masking"], b["masking"]) for a, b in pairs]
        counts: dict[int, int] = {}
        for layers in chosen.values():
            for layer in layers:
                counts[layer] = counts.get(layer, 0) + 1
        summary[tokens] = {
            "samples": len(runs),
            "chosen": chosen,
            "frequency": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
            "overlap_mean": statistics.mean(overlap) if overlap else None,
            "overlap_min": min(overlap) if overlap else None,
            "spearman_mean": statistics.mean(rho) if rho else None,
            "spearman_min": min(rho) if rho else None,
            "cpu_minutes": sum(p["seconds"] or 0 for p in runs) / 60,
        }
    return summary


def recommendation(summary: dict) -> str:
    """The smallest probe whose samples all chose the same layers, else the one whose pairs agree most."""
    sized = [(tokens, s) for tokens, s in summary.items() if s["overlap_min"] is not None]
    if not sized:
        return "none yet: fewer than two samples per size"
    same = [tokens for tokens, s in sized if s["overlap_min"] == CHOSEN]
    if same:
        return f"probes of at least {min(same):,} tokens: every sample of that size chose the same {CHOSEN} layers"
    tokens, s = max(sized, key=lambda ts: (ts[1]["overlap_min"], ts[1]["overlap_mean"], -ts[0]))
    return (
        f"probes of {tokens:,} tokens, where samples agree most ({s['overlap_mean']:.2f} of {CHOSEN} in common, "
        f"min {s['overlap_min']}); no size tried chose the same {CHOSEN} in every sample"
    )


def render(summary: dict, command: str) -> str:
    lines = [
        "# Is Stage 1 stable? Layer masking from probes of several sizes",
        "",
        "Question: does Stage 1 choose the same four layers to copy when the probe is another sample of the same "
        f"corpus? Answer, per probe size. Recommendation: {recommendation(summary)}.",
        "",
    ]
    lines += [
        "| probe tokens | samples | chosen four in common, mean of pairs (min) | Spearman of the rankings, mean "
        "(min) | "
        "layers chosen (times of the samples) |",
        "|---:|---:|---:|---:|---|",
    ]
    for tokens, s in summary.items():
        freq = ", ".join(f"{layer} ({n})" for layer, n in s["frequency"].items())
        overlap = f"{s['overlap_mean']:.2f} of {CHOSEN} ({s['overlap_min']})" if s["overlap_mean"] is not None else "–"
        rho = f"{s['spearman_mean']:.3f} ({s['spearman_min']:.3f})" if s["spearman_mean"] is not None else "–"
        lines.append(f"| {tokens:,} | {s['samples']} | {overlap} | {rho} | {freq} |")
    lines += [
        "",
        "SmolLM2-135M-Instruct (`models/real/smollm2-135m`, fp32, CPU), masking metric (loss increase when a layer "
        "is skipped), the fronts' probe corpus `data/real/general/sotu_probe.jsonl`; each sample draws its documents "
        "with `importance.seed`. The chosen four are the four least important layers, which `adept run` copies "
        "(the fronts used 1,024 tokens, seed 0). Regenerate (resumable, one run directory per point):",
        "",
        "```bash",
        command,
        "```",
        "",
    ]
    lines += ["| probe tokens | sample | chosen four |", "|---:|---:|---|"]
    for tokens, s in summary.items():
        for seed, layers in s["chosen"].items():
            lines.append(f"| {tokens:,} | {seed} | {', '.join(map(str, layers))} |")
    cpu = ", ".join(f"{tokens:,}: {s['cpu_minutes']:.0f} min" for tokens, s in summary.items())
    lines += ["", f"CPU time (2 cores) per size, all samples: {cpu}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="1024,4096,20000")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "probe_stability")
    parser.add_argument("--points-only", action="store_true", help="Run missing points; do not write the docs.")
    args = parser.parse_args(argv)
    if not (MODEL / "config.json").is_file():
        print(f"{MODEL}: not found (make real-setup)")
        return 2
    points = []
    for tokens in [int(t) for t in args.tokens.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            points.append(point(args.work, tokens, seed))
            print(f"done: {tokens} tokens, seed {seed}", flush=True)
    if args.points_only:
        return 0
    summary = summarize(points)
    command = f"python benchmarks/probe_stability.py --tokens {args.tokens} --seeds {args.seeds}"
    DOC.write_text(render(summary, command))
    DOC.with_suffix(".json").write_text(json.dumps({"points": points, "summary": summary}, indent=2) + "\n")
    print(render(summary, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
