"""The embedded default: committed data rebuilds byte for byte; the pipeline runs on a slice of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adept.config import load_config
from adept.pipeline import run_pipeline

ROOT = Path(__file__).parent.parent
DEMO = ROOT / "data" / "demo"
SOURCES = Path(os.environ.get("ADEPT_DEMO_SOURCES", Path.home() / ".cache" / "adept-demo-sources"))


@pytest.mark.skipif(
    not (SOURCES / "r-bioc-go.db").is_dir(), reason="Debian sources not unpacked (bash scripts/install_demo_sources.sh)"
)
def test_demo_data_rebuilds_byte_identical(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_demo_data.py"), "--out", str(tmp_path / "demo")],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    committed = sorted(p.relative_to(DEMO) for p in DEMO.rglob("*.jsonl"))
    assert committed == sorted(p.relative_to(tmp_path / "demo") for p in (tmp_path / "demo").rglob("*.jsonl"))
    for rel in committed:
        assert (tmp_path / "demo" / rel).read_bytes() == (DEMO / rel).read_bytes(), rel


def _head(src: Path, dst: Path, lines: int) -> str:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(src.read_text().splitlines(keepends=True)[:lines]))
    return str(dst)


def test_pipeline_on_a_slice_of_the_embedded_default(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    s = tmp_path / "slice"
    overrides = [
        f"run_dir={tmp_path / 'run'}",
        f"data.domain_train={_head(DEMO / 'domain/train.jsonl', s / 'domain_train.jsonl', 12)}",
        f"data.domain_heldout={_head(DEMO / 'domain/heldout.jsonl', s / 'domain_heldout.jsonl', 3)}",
        f"data.general_probe={_head(DEMO / 'general/probe.jsonl', s / 'probe.jsonl', 4)}",
        f"data.general_heldout={_head(DEMO / 'general/heldout.jsonl', s / 'general_heldout.jsonl', 3)}",
        f"data.general_replay={_head(DEMO / 'general/train.jsonl', s / 'general_train.jsonl', 6)}",
        f"data.general_benchmarks={_head(DEMO / 'benchmarks/general_mc.jsonl', s / 'general_mc.jsonl', 8)}",
        f"data.domain_benchmarks={_head(DEMO / 'benchmarks/domain_mc.jsonl', s / 'domain_mc.jsonl', 8)}",
        "data.block_size=128",
        "importance.max_tokens=1500",
        "train.methods=adept,full",
        "train.probe.max_tokens=600",
        "train.reestimate_every=2",
        "train.training_args.max_steps=4",
        "train.training_args.per_device_train_batch_size=4",
        "train.training_args.save_steps=1000",
        "train.training_args.eval_steps=1000",
        "evaluation.max_blocks=4",
        "evaluation.shift_max_blocks=1",
    ]
    config = load_config(ROOT / "configs" / "demo.yaml", overrides)
    report, _ = run_pipeline(config, progress=False)
    assert report.is_file()
    rows = {
        row["label"]: row for row in json.loads((tmp_path / "run" / "eval" / "results.json").read_text())["comparison"]
    }
    base = rows["base"]
    # The shipped model knows general English far better than the domain, and better than a unigram model (6.45).
    assert base["general_loss"] < 5.5 < 6.0 < base["domain_loss"]
    assert rows["full"]["domain_loss_change"] < 0  # a few steps of full CPT already learn the domain
    assert 0 < rows["adept"]["trainable_share"] < 0.3 and rows["full"]["trainable_share"] == 1.0
    manifest = json.loads((tmp_path / "run" / "expanded" / "adept" / "expansion.json").read_text())
    assert manifest["num_hidden_layers"] == 10
