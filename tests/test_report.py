"""`adept report`: every section from fixture artifacts, self-contained HTML, Markdown twin, merges, errors."""

from __future__ import annotations

import base64
import html
import json
import re
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path

from adept.artifacts import artifact_header, write_json
from adept.cli import main
from adept.plots import plot_unit_rates
from adept.report import build_report, collect_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PARTS = ("config", "importance", "expansion", "train", "eval", "shift")
SECTIONS = (
    "config",
    "importance",
    "expansion",
    "learning-rates",
    "losses",
    "comparison",
    "benchmarks",
    "token-shift",
    "missing",
)
UNITS = ("self_attn.q_proj.weight", "self_attn.o_proj.weight", "mlp.down_proj.weight")


# --- fixture builders: the schemas the stages write ---------------------------------------------


def tiny_png(width: int = 16, height: int = 12, rgb: tuple[int, int, int] = (40, 120, 200)) -> bytes:
    """A valid solid-colour PNG, without matplotlib."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_MAGIC + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def write_importance(run: Path, pngs: bool = True) -> None:
    grad = [[0.9, 0.5, 0.7], [0.1, 0.2, 0.15], [0.3, 0.25, 0.2], [0.8, 0.6, 0.9]]
    scores = {"masking": [1.25, 0.031, 0.047, 0.88], "grad_weight": [sum(r) for r in grad]}
    write_json(
        run / "importance" / "importance.json",
        {
            **artifact_header("importance"),
            "model": "models/base",
            "model_type": "qwen3",
            "probe": {"path": "data/probe.txt", "max_tokens": 5000},
            "metrics": ["masking", "grad_weight"],
            "num_layers": 4,
            "layers": [0, 1, 2, 3],
            "unit_names": list(UNITS),
            "num_tokens": 4096,
            "base_loss": 3.1416,
            "unit_grad_weight": grad,
            "unit_grad_weight_mean": grad,
            "unit_fisher": grad,
            "layer_masking": scores["masking"],
            "layer_scores": scores,
            "layer_ranking": {m: sorted(range(4), key=lambda i, v=v: -v[i]) for m, v in scores.items()},
        },
    )
    if pngs:
        (run / "importance" / "layer_importance.png").write_bytes(tiny_png(rgb=(200, 80, 40)))
        (run / "importance" / "unit_importance.png").write_bytes(tiny_png(rgb=(40, 200, 80)))


def write_expansion(run: Path) -> None:
    write_json(
        run / "expanded" / "adept" / "expansion.json",
        {
            **artifact_header("expansion"),
            "source_model": "models/base",
            "model_type": "qwen3",
            "source_num_layers": 4,
            "num_hidden_layers": 6,
            "source_layers": [1, 2],
            "inserted_layers": [{"layer_idx": 2, "source_layer_idx": 1}, {"layer_idx": 4, "source_layer_idx": 2}],
            "layer_map": {"0": 0, "1": 1, "2": 3, "3": 5},
            "initialized_tensors": {
                f"model.layers.{i}.{n}.weight": 0.0 for i in (2, 4) for n in ("self_attn.o_proj", "mlp.down_proj")
            },
            "selection": {"method": "num_new_layers", "metric": "masking", "num_new_layers": 2},
        },
    )


def write_training(run: Path, method: str, offset: float = 0.0, rates: bool = False) -> None:
    history = [{"loss": 3.0 - 0.02 * step + offset, "step": step, "learning_rate": 1e-3} for step in range(10, 60, 10)]
    history += [
        {"eval_general_loss": 3.3 + offset, "eval_domain_loss": 2.6 + offset, "step": step} for step in (25, 50)
    ]
    history.append({"train_loss": 2.5 + offset, "step": 50})
    write_json(
        run / "train" / method / "training_summary.json",
        {
            **artifact_header("training"),
            "method": method,
            "model": "expanded/adept",
            "trainable_parameters": 123456,
            "total_parameters": 1000000,
            "trainable_share": 0.123456,
            "trainable_layers": [2, 4] if method == "adept" else None,
            "train_loss": 2.5 + offset,
            "global_step": 50,
            "wall_seconds": 61.5,
            "tokens_per_second": 2048.0,
            "peak_memory_bytes": 3 * 2**30,
            "reestimation_seconds": 4.2,
            "config": {"method": method},
            "log_history": history,
        },
    )
    if rates:
        lines = []
        for step in (0, 20, 40):
            names = [f"model.layers.{layer}.{unit}" for layer in (2, 4) for unit in UNITS]
            multipliers = {name: round(0.2 + 0.1 * i + 0.01 * step, 4) for i, name in enumerate(names)}
            lines.append(
                json.dumps(
                    {
                        "step": step,
                        "importance": {n: 1 - m for n, m in multipliers.items()},
                        "multipliers": multipliers,
                        "lr": {n: 1e-3 * m for n, m in multipliers.items()},
                    }
                )
            )
        (run / "train" / method / "unit_rates.jsonl").write_text("\n".join(lines) + "\n")


def comparison_row(label, method, general, domain, base=(3.3, 2.9), acc=(0.61, 0.42)):
    return {
        "label": label,
        "method": method,
        "general_loss": general,
        "domain_loss": domain,
        "general_loss_change": None if method is None else round(general - base[0], 4),
        "general_loss_change_pct": None if method is None else round(100 * (general - base[0]) / base[0], 4),
        "domain_loss_change": None if method is None else round(domain - base[1], 4),
        "domain_loss_change_pct": None if method is None else round(100 * (domain - base[1]) / base[1], 4),
        "general_acc": acc[0],
        "domain_acc": acc[1],
        "general_acc_change": None if method is None else round(acc[0] - 0.61, 4),
        "domain_acc_change": None if method is None else round(acc[1] - 0.42, 4),
        "benchmarks": {
            "arc_easy": {"acc": acc[0], "change": None if method is None else round(acc[0] - 0.61, 4)},
            "medqa": {"acc": acc[1], "change": None if method is None else round(acc[1] - 0.42, 4)},
        },
        "trainable_parameters": None if method is None else 123456,
        "trainable_share": None if method is None else 0.123456,
        "wall_seconds": None if method is None else 61.5,
        "tokens_per_second": None if method is None else 2048.0,
        "peak_memory_bytes": None if method is None else 3 * 2**30,
    }


def write_evaluation(run: Path, offset: float = 0.0) -> None:
    rows = [
        comparison_row("base", None, 3.3, 2.9),
        comparison_row("adept", "adept", 3.3125 + offset, 2.4871 + offset, acc=(0.605, 0.47)),
        comparison_row("full", "full", 3.5602 + offset, 2.4203 + offset, acc=(0.55, 0.48)),
    ]
    runs = []
    for row in rows:
        runs.append(
            {
                "label": row["label"],
                "model": f"train/{row['label']}/model",
                "seconds": 12.0,
                "perplexity": {
                    "wiki": {
                        "loss": row["general_loss"],
                        "perplexity": 2.718 ** row["general_loss"],
                        "tokens": 2048,
                        "path": "data/wiki.txt",
                        "domain": "general",
                    },
                    "med": {
                        "loss": row["domain_loss"],
                        "perplexity": 2.718 ** row["domain_loss"],
                        "tokens": 2048,
                        "path": "data/med.txt",
                        "domain": "domain",
                    },
                },
                "benchmarks": {
                    "arc_easy": {
                        "acc": row["general_acc"],
                        "acc_norm": 0.6,
                        "acc_stderr": 0.0101,
                        "n": 500,
                        "path": "data/arc.jsonl",
                        "domain": "general",
                    },
                    "medqa": {
                        "acc": row["domain_acc"],
                        "acc_norm": None,
                        "acc_stderr": 0.0202,
                        "n": 300,
                        "path": "data/medqa.jsonl",
                        "domain": "domain",
                    },
                },
            }
        )
    write_json(
        run / "eval" / "results.json",
        {**artifact_header("evaluation"), "base": "base", "runs": runs, "comparison": rows},
    )


def write_shift(run: Path, method: str = "adept") -> None:
    write_json(
        run / "shift" / method / "shift.json",
        {
            **artifact_header("shift"),
            "base": "models/base",
            "tuned": f"train/{method}/model",
            "data": "data/med.txt",
            "positions": 8192,
            "changed_top1_share": 0.0734,
            "categories": {"unshifted": 0.8125, "marginal": 0.1141, "shifted": 0.0734},
            "rank_histogram": {"1": 7590, "2-3": 400, ">3": 202},
            "top_shifted_tokens": [
                {"token": "<script>alert(1)</script>", "token_id": 17, "count": 41, "share_of_shifted": 0.0682},
                {"token": " patient", "token_id": 901, "count": 33, "share_of_shifted": 0.0549},
            ],
        },
    )
    (run / "shift" / method / "shift.png").write_bytes(tiny_png(rgb=(120, 40, 160)))


def make_run_dir(root: Path, name: str = "run", parts: tuple[str, ...] = PARTS, offset: float = 0.0) -> Path:
    """A pipeline run directory holding the chosen artifacts, with the stages' file layout."""
    run = root / name
    run.mkdir(parents=True, exist_ok=True)
    if "config" in parts:
        (run / "config.yaml").write_text("model: models/base\ntrain:\n  methods: [adept, full]\n  max_steps: 50\n")
    if "importance" in parts:
        write_importance(run)
    if "expansion" in parts:
        write_expansion(run)
    if "train" in parts:
        write_training(run, "adept", offset, rates=True)
        write_training(run, "full", offset + 0.05)
    if "eval" in parts:
        write_evaluation(run, offset)
    if "shift" in parts:
        write_shift(run)
    return run


class _PageParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.ids: list[str] = []
        self.links: list[tuple[str, str]] = []
        self.best: list[str] = []
        self._in_best = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src") or "")
        if attrs.get("id"):
            self.ids.append(attrs["id"])
        for key in ("href", "src"):
            if key in attrs and tag != "img":
                self.links.append((tag, attrs[key]))
        self._in_best = tag == "td" and "best" in (attrs.get("class") or "")

    def handle_data(self, data):
        if self._in_best:
            self.best.append(data)
            self._in_best = False


def parse_page(path: Path) -> _PageParser:
    parser = _PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def assert_images_embedded(page: _PageParser) -> None:
    assert page.images
    for src in page.images:
        assert src.startswith("data:image/png;base64,"), src[:60]
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(PNG_MAGIC)


# --- tests -------------------------------------------------------------------------------------


def test_full_run_has_every_section_and_is_self_contained(tmp_path):
    run = make_run_dir(tmp_path)
    paths = build_report([run])
    assert paths["html"] == run / "report" / "index.html" and paths["markdown"] == run / "report" / "report.md"
    text = paths["html"].read_text(encoding="utf-8")
    page = parse_page(paths["html"])
    assert set(SECTIONS) <= set(page.ids)
    # importance bars + heatmap, rates, losses, scatter, shift
    assert len(page.images) == 6
    assert_images_embedded(page)
    # Nothing outside the file: only in-page anchors and the empty data: favicon.
    assert all(value.startswith("#") or value.startswith("data:") for _, value in page.links), page.links
    assert "<script" not in text and "http://" not in text and "https://" not in text
    # Numbers from the comparison rows, formatted.
    for number in (
        "3.3125",
        "2.4871",
        "3.5602",
        "2.4203",
        "+0.0125",
        "-0.4129",
        "+0.38%",
        "-14.24%",
        "123,456",
        "12.35%",
        "61.5 s",
        "2,048",
        "3.00 GiB",
    ):
        assert number in text, number
    # Best values among the adapted models: adept forgets least, full gains most in domain.
    assert {"3.3125", "+0.0125", "+0.38%", "2.4203", "0.4800"} <= set(page.best)
    # Artifact text is escaped, the config is collapsible.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "<script>alert" not in text
    assert "<details><summary>config.yaml" in text and "max_steps: 50" in text
    # Expansion: copies at 2 and 4 of source layers 1 and 2.
    assert "0 1 1* 2 2* 3" in text
    assert "Every artifact was found." in text


def test_markdown_links_images_next_to_it(tmp_path):
    run = make_run_dir(tmp_path)
    paths = build_report([run], tmp_path / "out")
    markdown = paths["markdown"].read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(links) == 6
    for link in links:
        assert "/" not in link and (tmp_path / "out" / link).read_bytes().startswith(PNG_MAGIC)
    for heading in (
        "## Configuration",
        "## Layer importance",
        "## Expansion",
        "## Learning rates over training",
        "## Losses",
        "## Forgetting vs. domain gain",
        "## Benchmarks",
        "## Token shift",
        "## Missing artifacts",
    ):
        assert heading in markdown
    assert "| **3.3125** |" in markdown and "&lt;script&gt;" in markdown


def test_partial_run_lists_what_is_missing(tmp_path):
    run = tmp_path / "run"
    write_importance(run, pngs=False)
    paths = build_report([run])
    page = parse_page(paths["html"])
    assert set(SECTIONS) <= set(page.ids)
    assert len(page.images) == 2  # bars and heatmap redrawn from importance.json
    assert_images_embedded(page)
    text = paths["html"].read_text(encoding="utf-8")
    for missing in (
        "config.yaml",
        "importance/layer_importance.png",
        "expanded/*/expansion.json",
        "train/*/training_summary.json",
        "train/*/unit_rates.jsonl",
        "eval/results.json",
        "shift/*/shift.json",
    ):
        assert f"<li>{missing}</li>" in text, missing


def test_unreadable_artifact_is_reported_not_fatal(tmp_path):
    run = make_run_dir(tmp_path, parts=("config", "eval"))
    (run / "eval" / "results.json").write_text("{not json")
    (run / "shift" / "adept").mkdir(parents=True)
    write_json(run / "shift" / "adept" / "shift.json", {**artifact_header("training")})
    info = collect_run(run)
    assert info.evaluation is None and not info.shifts
    assert any("invalid JSON" in p for p in info.problems)
    assert any("expected an artifact of kind 'shift'" in p for p in info.problems)
    assert "shift/adept/shift.png" in info.missing
    text = build_report([run])["html"].read_text(encoding="utf-8")
    assert "found but not usable" in text and "invalid JSON" in text


def test_odd_values_cost_one_section_not_the_report(tmp_path):
    run = make_run_dir(tmp_path, parts=("config", "eval", "shift"))
    write_json(
        run / "eval" / "results.json", {**artifact_header("evaluation"), "base": "base", "runs": 3, "comparison": [7]}
    )
    paths = build_report([run])
    text = html.unescape(paths["html"].read_text(encoding="utf-8"))
    assert "section 'Forgetting vs. domain gain' could not be built" in text
    assert "81.25%" in text  # the token shift section still shows


def test_several_run_dirs_merge_rows(tmp_path, capsys):
    seeds = [make_run_dir(tmp_path, f"seed{i}", offset=0.01 * i) for i in range(2)]
    assert main(["report", *map(str, seeds)]) == 2
    assert "--output" in capsys.readouterr().err
    out = tmp_path / "merged"
    assert main(["report", *map(str, seeds), "--output", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "index.html")
    text = (out / "index.html").read_text(encoding="utf-8")
    for label in ("seed0/base", "seed0/adept", "seed0/full", "seed1/base", "seed1/adept", "seed1/full"):
        assert f"<td>{label}</td>" in text, label
    assert "3.3125" in text and "3.3225" in text
    page = parse_page(out / "index.html")
    assert_images_embedded(page)
    assert (out / "seed0_losses.png").is_file() and (out / "seed1_losses.png").is_file()
    assert (out / "forgetting_gain.png").is_file()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'nope'}: run directory not found"
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no pipeline artifacts found" in err and "\n" not in err


def test_cli_prints_the_html_path(tmp_path, capsys):
    run = make_run_dir(tmp_path, parts=("config", "expansion"))
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report" / "index.html")


def test_many_units_become_a_heatmap(tmp_path):
    names = [f"model.layers.{layer}.mlp.u{unit}.weight" for layer in range(4) for unit in range(8)]
    history = [{"step": s, "multipliers": {n: 0.1 + i / 40 for i, n in enumerate(names)}} for s in (0, 10)]
    path = plot_unit_rates(history, tmp_path / "rates.png", "rates")
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_truncated_rate_log_keeps_earlier_lines(tmp_path):
    run = make_run_dir(tmp_path, parts=("train",))
    log = run / "train" / "adept" / "unit_rates.jsonl"
    log.write_text(log.read_text() + '{"step": 60, "multipl')
    info = collect_run(run)
    assert len(info.unit_rates["adept"]) == 3
    assert any("line 4: invalid JSON" in p for p in info.problems)


def test_report_reads_what_the_importance_and_expansion_stages_write(tmp_path, probe_file):
    from conftest import save_tiny_checkpoint

    base, run = tmp_path / "base", tmp_path / "run"
    save_tiny_checkpoint(base, "llama", num_hidden_layers=4)
    imp = ["importance", "--model", str(base), "--probe", str(probe_file), "--output", str(run / "importance")]
    assert main(imp + ["--device", "cpu", "--max-length", "32", "--batch-size", "2", "--max-tokens", "256"]) == 0
    expand = [
        "expand",
        "--model",
        str(base),
        "--output",
        str(run / "expanded" / "adept"),
        "--importance",
        str(run / "importance"),
        "--num-new-layers",
        "1",
    ]
    assert main(expand) == 0
    info = collect_run(run)
    assert info.problems == [] and info.importance and "adept" in info.expansions
    paths = build_report([run])
    page = parse_page(paths["html"])
    assert len(page.images) == 2
    assert_images_embedded(page)
    text = paths["html"].read_text(encoding="utf-8")
    source = info.expansions["adept"]["inserted_layers"][0]["source_layer_idx"]
    assert f"adept: layer {source + 1}" in text and "4 → 5 layers" in text
