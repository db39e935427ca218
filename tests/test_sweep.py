"""`adept sweep`: grids from the config, the run order, resuming point by point, and the fronts report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_pipeline import workspace  # noqa: F401  (the tiny model and corpora of `adept run`'s tests)

import adept.sweep as sweep
from adept.config import ConfigError, load_config
from adept.fronts import Front, compare_fronts, front_points
from adept.fronts_report import matched_table, still_gaining
from adept.pipeline import train_dir


def test_default_grid_is_the_default_rate_and_its_neighbours_on_the_ladder():
    assert sweep.default_rates(1e-3) == (3e-4, 1e-3, 3e-3)
    assert sweep.default_rates(1e-4) == (3e-5, 1e-4, 3e-4)
    assert sweep.default_rates(1e-6) == (1e-6, 3e-6)  # the ladder's end
    assert sweep.default_rates(2e-4) == pytest.approx((2e-4 / 3, 2e-4, 6e-4))


def test_fronts_come_from_the_config(workspace):  # noqa: F811
    _, config = workspace
    cfg = load_config(config, ["train.methods=[full,adept]", "sweep.rates.adept=[3e-3,1e-2]"])
    fronts = sweep.sweep_fronts(cfg)
    # full takes its default rate (the config sets 0.005 for every method) and the ladder around it
    assert [(f.name, f.method) for f in fronts] == [("full", "full"), ("adept", "adept")]
    assert fronts[0].rates == pytest.approx((0.005 / 3, 0.005, 0.015))
    assert fronts[1].rates == (3e-3, 1e-2)
    assert sweep.reference_front(cfg, fronts) == "full"
    variant = load_config(config, ["train.variants.slow={method: adept, replay_ratio: 0.5}", "sweep.methods=[slow]"])
    (front,) = sweep.sweep_fronts(variant)
    assert (front.method, front.replay_ratio) == ("adept", 0.5)
    assert sweep.point_steps(front, variant) == 8  # replay adds steps: 4 domain steps become 8
    entry = sweep.point_variant(front, 1e-3, variant)
    assert entry == {"method": "adept", "replay_ratio": 0.5, "training_args": {"learning_rate": 1e-3, "max_steps": 8}}


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "sweep.methods=[adpet]",
            "'sweep.methods' names 'adpet', which is neither a method nor a variant (did you mean",
        ),
        ("sweep.rates.full=[1e-3]", "'sweep.rates.full': not a swept method"),
        ("sweep.rates.adept=[1e-3,0.001]", "'sweep.rates.adept': [0.001, 0.001] name the same rate twice"),
        ("sweep.rates.adept=[0]", "'sweep.rates.adept' must be a non-empty list of positive learning rates"),
        ("sweep.reference=full", "'sweep.reference' is 'full', not a swept method"),
        ("sweep.keep_models=some", "'sweep.keep_models' must be one of all, best, none, got 'some'"),
    ],
)
def test_bad_sweep_settings_name_their_key(workspace, override, message):  # noqa: F811
    _, config = workspace
    with pytest.raises(ConfigError) as err:
        sweep.sweep_fronts(load_config(config, [override]), str(config))
    assert str(err.value).startswith(f"{config}: ") and message in str(err.value)


def test_run_order_takes_each_fronts_middle_rate_first_and_covers_the_grid_once():
    fronts = [Front("a", "full", (1.0, 2.0, 3.0)), Front("b", "adept", (1.0, 2.0, 3.0, 4.0))]
    order = sweep.points(fronts, [0, 1])
    assert order[:4] == [(0, fronts[0], 2.0), (0, fronts[1], 2.0), (1, fronts[0], 2.0), (1, fronts[1], 2.0)]
    assert order[4:6] == [(0, fronts[0], 3.0), (0, fronts[1], 3.0)]  # then the next rate out, every seed
    assert sorted((s, f.name, r) for s, f, r in order) == sorted(
        (s, f.name, r) for s in (0, 1) for f in fronts for r in f.rates
    )


def _data(fronts: dict[str, list[tuple[float, float, float]]]) -> dict:
    rows = {}
    for name, points in fronts.items():
        for rate, gain, forgetting in points:
            rows[f"{name}@{rate:.0e}".replace("e-0", "e-")] = {
                "gain_pct": gain,
                "forgetting_pct": forgetting,
                "general_acc_change": {"diff": -forgetting / 100, "ci": None},
                "tokens_per_second": {"full": 100.0, "adept": 250.0}[name],
                "peak_memory_bytes": {"full": 4e9, "adept": 1e9}[name],
            }
    return {"seeds": {0: rows}, "base": {0: {"general_loss": 3.0}}}


def test_fronts_compare_only_where_both_reach_and_matched_gain_reads_off_the_reference():
    full, adept = Front("full", "full", (1e-4, 3e-4, 1e-3)), Front("adept", "adept", (1e-3, 3e-3))
    data = _data(
        {"full": [(1e-4, 10, 1.0), (3e-4, 20, 3.0), (1e-3, 30, 8.0)], "adept": [(1e-3, 15, 1.0), (3e-3, 25, 2)]}
    )
    verdict = compare_fronts(*(front_points(data, f, "forgetting_pct") for f in (adept, full)))
    assert verdict["range"] == (15, 25) and verdict["below"] is True
    assert verdict["gaps"][0] == (15, 1.0, 2.0)  # full at gain 15: halfway from 1.0 to 3.0
    columns, rows, table = matched_table(data, [full, adept], ["full", "adept"], "full")
    assert columns[2] == "general loss Δ% at full's gain (30.0%)"
    assert rows[1][2] == "not reached (max 25.0%)"  # adept never reaches full's best gain
    assert rows[0][2] == "+8.00" and rows[0][4] == "+5.50"  # full at adept's best gain, 25: halfway from 3 to 8
    assert table["rows"]["adept"]["time_per_token_vs_full"] == pytest.approx(0.4)
    assert table["rows"]["adept"]["peak_memory_vs_full"] == pytest.approx(0.25)
    assert still_gaining(data, [full, adept]) == [
        "full (+10.00 points of domain-loss gain over 3e-4)",
        "adept (+10.00 points of domain-loss gain over 1e-3)",
    ]


@pytest.mark.slow
def test_sweep_trains_point_by_point_resumes_and_writes_the_fronts(workspace, monkeypatch, capsys):  # noqa: F811
    tmp_path, config = workspace
    overrides = [
        "train.methods=[full,adept]",
        "sweep.rates.full=[1e-3,1e-2]",
        "sweep.rates.adept=[1e-2]",
        "evaluation.shift=false",
        f"sweep.output={tmp_path / 'sweep'}",
    ]
    assert sweep.run_sweep(config, overrides, dry_run=True) is None
    out = capsys.readouterr().out
    assert "3 of 3 points to train; time unknown until the first point finishes" in out

    trained = []
    real = sweep.run_pipeline
    monkeypatch.setattr(sweep, "run_pipeline", lambda cfg: trained.append(cfg.train.methods) or real(cfg))
    paths = sweep.run_sweep(config, overrides, max_runs=1)
    assert trained == [["full@1e-3"]]  # full's middle rate (of two: the lower) first
    front = json.loads(paths["json"].read_text())
    assert [p["rate"] for p in front["fronts"]["full"]] == [1e-3] and front["fronts"]["adept"] == []

    sweep.run_sweep(config, overrides, dry_run=True)
    out = capsys.readouterr().out
    assert "seed 0  full@1e-3                done" in out and "2 of 3 points to train, about" in out

    paths = sweep.run_sweep(config, overrides)
    assert trained == [["full@1e-3"], ["adept@1e-2"], ["full@1e-2"]]
    front = json.loads(paths["json"].read_text())
    rows = front["runs"]["0"]
    assert set(rows) == {"full@1e-3", "full@1e-2", "adept@1e-2"}
    for row in rows.values():  # real measures, each against the base model's evaluation
        assert row["domain_loss_change_pct"] != 0 and row["general_loss"] > 0 and row["steps"] == 4
    assert rows["adept@1e-2"]["trainable_share"] < rows["full@1e-2"]["trainable_share"] == 1.0
    html, markdown = paths["html"].read_text(), paths["markdown"].read_text()
    assert "Matched gain" in html and "fronts.png" in markdown and paths["plot"].stat().st_size > 0
    assert "| full | 1e-3 |" in markdown.replace("\\", "")

    sweep.run_sweep(config, overrides)  # everything done: nothing trains again
    assert len(trained) == 3
    assert not list(train_dir(tmp_path / "sweep" / "seed0", "full@1e-3").glob("checkpoint-*"))  # tidied
    assert (train_dir(tmp_path / "sweep" / "seed0", "full@1e-3") / "trainer_state.json").is_file()

    # Another machine: only fronts.json travels. Its points are not retrained, the base is checked.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "fronts.json").write_text(paths["json"].read_text())
    moved = sweep.run_sweep(config, [*overrides[:-1], f"sweep.output={elsewhere}"])
    assert len(trained) == 3
    assert json.loads(moved["json"].read_text())["runs"] == front["runs"]
    with pytest.raises(ValueError, match=r"fronts.json: overrides: the recorded runs used --set"):
        sweep.run_sweep(config, [*overrides[:-1], f"sweep.output={elsewhere}", "train.training_args.max_steps=2"])

    # A second grid sharing the run directories, with its own record and report: what both grids hold at the
    # same settings is not trained again, and the first grid's record is left as it was.
    first_record = paths["json"].read_text()
    other = [*overrides[:2], "sweep.rates.adept=[1e-2,3e-2]", *overrides[3:], f"sweep.report_dir={tmp_path / 'other'}"]
    shared = sweep.run_sweep(config, other)
    assert trained[3:] == [["adept@3e-2"]]
    assert shared["json"] == tmp_path / "other" / "fronts.json" and shared["html"].is_relative_to(tmp_path / "other")
    rows = json.loads(shared["json"].read_text())["runs"]["0"]
    assert set(rows) == {"full@1e-3", "full@1e-2", "adept@1e-2", "adept@3e-2"}
    assert paths["json"].read_text() == first_record


def test_sweep_flags_override_the_config_and_absent_ones_keep_it(workspace, capsys):  # noqa: F811
    tmp_path, config = workspace
    from adept.cli import main

    argv = ["sweep", str(config), "train.methods=[full,adept]", "--dry-run"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "seed 0  full@2e-3" in out and "6 of 6 points to train" in out  # the config's seeds ([0])
    assert main([*argv, "--methods", "adept", "--seeds", "1,2"]) == 0
    out = capsys.readouterr().out
    assert "seed 2  adept@5e-3" in out and "full@" not in out and "6 of 6 points to train" in out
    assert main([*argv, "--methods", "adpet"]) == 2
    assert "'sweep.methods' names 'adpet'" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_on_the_demo_model_writes_its_fronts_and_trains_nothing_twice(tmp_path, capsys):
    """The shipped demo config, a tiny grid: three points of two methods (about a minute on one core)."""
    from adept.cli import main

    root = Path(__file__).parent.parent
    argv = [
        "sweep",
        str(root / "configs" / "demo.yaml"),
        f"run_dir={tmp_path}",
        "importance.max_tokens=2000",
        "importance.metrics=[masking,grad_weight]",
        "train.probe.max_tokens=1000",
        "train.training_args.max_steps=3",
        "train.training_args.per_device_train_batch_size=2",
        "evaluation.max_blocks=2",
        "evaluation.limit=8",
        "evaluation.shift=false",
        "sweep.rates.full=[1e-4]",
        "sweep.rates.adept=[1e-3,3e-3]",
        "--methods",
        "full,adept",
    ]
    assert main(argv) == 0
    fronts = json.loads((tmp_path / "sweep" / "fronts.json").read_text())
    rows = fronts["runs"]["0"]
    assert sorted(rows) == ["adept@1e-3", "adept@3e-3", "full@1e-4"]
    assert all(row["gain_pct"] > 0 for row in rows.values())  # three steps on the domain lower its loss
    assert rows["adept@3e-3"]["trainable_share"] < 0.25 < rows["full@1e-4"]["trainable_share"]
    markdown = (tmp_path / "sweep" / "report" / "report.md").read_text()
    assert "## Matched gain" in markdown and "3 of 3 points done" in markdown
    results = tmp_path / "sweep" / "seed0" / "eval" / "adept@3e-3" / "results.json"
    stamp = results.stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0
    assert results.stat().st_mtime_ns == stamp  # resumed: every point was done


@pytest.mark.slow
def test_the_dial_moves_each_fronts_best_run_back_and_reports_it_as_a_front(workspace):  # noqa: F811
    tmp_path, config = workspace
    overrides = [
        "train.methods=[full,adept]",
        "sweep.rates.full=[1e-2]",
        "sweep.rates.adept=[1e-2]",
        "sweep.alphas=[0.5]",
        "evaluation.shift=false",
    ]
    paths = sweep.run_sweep(config, overrides)
    front = json.loads(paths["json"].read_text())
    rows = front["runs"]["0"]
    assert sorted(rows) == ["adept@1e-2", "adept@1e-2~0.5", "full@1e-2", "full@1e-2~0.5"]
    for label in ("full@1e-2", "adept@1e-2"):  # half the update keeps part of the gain, not all of it
        assert 0 < rows[f"{label}~0.5"]["gain_pct"] < rows[label]["gain_pct"]
        assert rows[f"{label}~0.5"]["steps"] == rows[label]["steps"]  # the run's cost, copied
    assert [p["rate"] for p in front["fronts"]["full@1e-2 dial"]] == [0.5, 1.0]
    assert "| full@1e-2 dial | α0.5 |" in paths["markdown"].read_text().replace("\\", "")
    results = tmp_path / "run" / "sweep" / "seed0" / "eval" / "full@1e-2~0.5" / "results.json"
    stamp = results.stat().st_mtime_ns
    sweep.run_sweep(config, overrides)
    assert results.stat().st_mtime_ns == stamp


def test_keep_models_best_leaves_only_each_complete_fronts_best_model(workspace):  # noqa: F811
    tmp_path, config = workspace
    overrides = [
        "train.methods=[full]",
        "sweep.rates.full=[1e-4,1e-2]",
        "sweep.alphas=[0.5]",
        "sweep.keep_models=best",
        "evaluation.shift=false",
    ]
    paths = sweep.run_sweep(config, overrides)
    front = json.loads(paths["json"].read_text())
    rows = front["runs"]["0"]
    assert sorted(rows) == ["full@1e-2", "full@1e-2~0.5", "full@1e-4"]  # 1e-2 gains more: the dialled rate
    seed = tmp_path / "run" / "sweep" / "seed0"
    kept = {label: (train_dir(seed, label) / "model").is_dir() for label in rows}
    assert kept == {"full@1e-2": True, "full@1e-2~0.5": False, "full@1e-4": False}
    assert all((train_dir(seed, label) / "training_summary.json").is_file() for label in rows)
    results = seed / "eval" / "full@1e-4" / "results.json"
    stamp = results.stat().st_mtime_ns
    again = json.loads(sweep.run_sweep(config, overrides)["json"].read_text())
    assert results.stat().st_mtime_ns == stamp and again["runs"]["0"] == rows  # done without its model


def test_keep_models_none_drops_each_model_once_evaluated_and_refuses_a_dial(workspace):  # noqa: F811
    tmp_path, config = workspace
    overrides = [
        "train.methods=[full]",
        "sweep.rates.full=[1e-3,1e-2]",
        "sweep.keep_models=none",
        "evaluation.shift=false",
    ]
    rows = json.loads(sweep.run_sweep(config, overrides)["json"].read_text())["runs"]["0"]
    assert sorted(rows) == ["full@1e-2", "full@1e-3"]  # the second point runs beside the first one's missing model
    for label in rows:
        trained = train_dir(tmp_path / "run" / "sweep" / "seed0", label)
        assert (trained / "training_summary.json").is_file() and rows[label]["gain_pct"] > 0
        assert not (trained / "model").exists() and not list(trained.glob("checkpoint-*"))
    with pytest.raises(ConfigError, match="'sweep.keep_models' none leaves no model for the dial"):
        load_config(config, ["sweep.keep_models=none", "sweep.alphas=[0.5]"])


def _seeded(fronts: dict[str, list[list[tuple[float, float, float]]]]) -> dict:
    """``{front: [per seed: [(rate, gain, forgetting), ...]]}`` as collected rows."""
    data: dict = {"seeds": {}, "base": {}}
    for name, seeds in fronts.items():
        for seed, points in enumerate(seeds):
            rows = data["seeds"].setdefault(seed, {})
            data["base"][seed] = {"general_loss": 3.0}
            for rate, gain, forgetting in points:
                rows[f"{name}@{rate:.0e}".replace("e-0", "e-")] = {"gain_pct": gain, "forgetting_pct": forgetting}
    return data


def test_gaps_to_the_reference_are_measured_seed_by_seed_with_t_intervals():
    from adept.fronts import gap_verdict, seed_gap
    from adept.fronts_report import reference_gaps

    ref, a = Front("ref", "adept-no-stage2", (1e-3, 3e-3)), Front("a", "adept", (1e-3, 3e-3))
    below = _seeded(
        {
            "ref": [[(1e-3, 10, 2.0), (3e-3, 20, 4.0)]] * 3,
            "a": [[(1e-3, 10, 1.0 + d), (3e-3, 20, 3.0 + d)] for d in (0.0, 0.1, -0.1)],
        }
    )
    gap = seed_gap(below, a, ref, 15.0)
    assert gap["diffs"] == pytest.approx([-1.0, -0.9, -1.1]) and gap["mean"] == pytest.approx(-1.0)
    assert gap["ci"] == pytest.approx([-1.0 - 4.303 * 0.1 / 3**0.5, -1.0 + 4.303 * 0.1 / 3**0.5])
    columns, rows, table = reference_gaps(below, [ref, a], "ref")
    assert rows == [["a", "10.0–20.0", *(["-1.00 [-1.25, -0.75] (n=3)"] * 3), "below, beyond seed noise"]]
    noisy = _seeded(
        {
            "ref": [[(1e-3, 10, 2.0), (3e-3, 20, 4.0)]] * 3,
            "a": [[(1e-3, 10, 2.0 + d), (3e-3, 20, 4.0 + d)] for d in (-1.0, 0.5, 0.3)],
        }
    )
    assert reference_gaps(noisy, [ref, a], "ref")[1][0][-1] == "no difference beyond seed noise"
    one = {"seeds": {0: below["seeds"][0]}, "base": {0: below["base"][0]}}
    assert reference_gaps(one, [ref, a], "ref")[1][0][-1] == "fewer than two seeds: no interval"
    single = {"mean": -1.0, "ci": None, "n": 1}
    partly = [single, {"mean": -1.0, "ci": [-1.3, -0.7], "n": 3}, single]
    assert gap_verdict(partly) == "below, beyond seed noise (the low end and high end: fewer than two seeds, not read)"


def test_a_front_and_its_dial_are_read_as_one_against_another_front():
    from adept.fronts import dial_front, front_gaps

    full, adept = Front("full", "full", (1e-3, 3e-3)), Front("adept", "adept", (1e-3, 3e-3))
    dial = dial_front(full, 3e-3, [0.5])  # full@3e-3 moved halfway back: 15% gain at 2.0% forgetting
    data = _seeded(
        {
            "full": [[(1e-3, 10, 3.0), (3e-3, 20, 4.0)]] * 3,
            "adept": [[(1e-3, 10, 2.0 + d), (3e-3, 20, 3.0 + d)] for d in (0.0, 0.1, -0.1)],
        }
    )
    for seed, shift in zip(data["seeds"], (0.0, 0.2, -0.2)):
        data["seeds"][seed]["full@3e-3~0.5"] = {"gain_pct": 15, "forgetting_pct": 2.0 + shift}
    alone = front_gaps(data, adept, full)  # adept below full CPT's rates everywhere
    assert alone["verdict"] == "below, beyond seed noise"
    assert alone["gaps"][1]["mean"] == pytest.approx(-1.0)
    # Read as one, full CPT's front is its dial's point (it beats full@1e-3 on both) and full@3e-3: from 15% on,
    # where the dial's point lies under adept's front, so the two cross.
    with_dial = front_gaps(data, adept, (full, dial))
    assert with_dial["range"] == [15, 20]
    assert with_dial["gaps"][0]["diffs"] == pytest.approx([0.5, 0.4, 0.6])
    assert with_dial["gaps"][2]["mean"] == pytest.approx(-1.0)
    assert with_dial["verdict"] == "no difference beyond seed noise"
    assert front_gaps(data, adept, Front("none", "full", (1e-2,))) is None


def test_fronts_apart_are_read_over_the_lower_ones_gains_against_the_higher_ones_first_point():
    from adept.fronts import front_gaps

    full, adept = Front("full", "full", (1e-4, 3e-4)), Front("adept", "adept", (1e-3, 3e-3))
    data = _seeded(  # full's smallest gain (17%) lies above adept's largest (16%), at less forgetting
        {
            "full": [[(1e-4, 17 + d, -1.0 + d), (3e-4, 19, 1.0)] for d in (0.0, 0.1, -0.1)],
            "adept": [[(1e-3, 11, -0.5 + d), (3e-3, 16, 0.5 + d)] for d in (0.0, 0.2, -0.2)],
        }
    )
    gaps = front_gaps(data, adept, full)
    assert gaps["apart"] and gaps["range"] == [11, 16]
    assert gaps["gaps"][0]["diffs"] == pytest.approx([0.5, 0.6, 0.4])  # -0.5+d against full@1e-4's -1.0+d'
    assert gaps["gaps"][2]["diffs"] == pytest.approx([1.5, 1.6, 1.4])
    assert gaps["verdict"] == "above, beyond seed noise"
    assert front_gaps(data, full, adept)["gaps"][2]["mean"] == pytest.approx(-1.5)  # read from either side
    overlapping = _seeded({"full": [[(1e-4, 15, 0.0)]] * 3, "adept": [[(1e-3, 11, 0.0), (3e-3, 16, 1.0)]] * 3})
    assert front_gaps(overlapping, adept, full) is None  # one point inside the other's range: no front to read


def test_a_loss_only_sweep_at_fixed_copies_scores_units_only_and_still_gives_stage2_its_rates(workspace):  # noqa: F811
    """E2's fixed placements: no benchmarks, explicit source layers, importance without layer masking."""
    tmp_path, config = workspace
    overrides = [
        "train.methods=[adept,adept-no-stage2]",
        "sweep.rates.adept=[1e-2]",
        "sweep.rates.adept-no-stage2=[1e-2]",
        "expansion.num_new_layers=null",
        "expansion.layers=[3]",
        "importance.metrics=[grad_weight]",
        "data.general_benchmarks=[]",
        "data.domain_benchmarks=[]",
        "evaluation.shift=false",
    ]
    rows = json.loads(sweep.run_sweep(config, overrides)["json"].read_text())["runs"]["0"]
    assert sorted(rows) == ["adept-no-stage2@1e-2", "adept@1e-2"]
    assert all(row["gain_pct"] > 0 and row["general_acc_change"] is None for row in rows.values())
    seed = tmp_path / "run" / "sweep" / "seed0"
    importance = json.loads((seed / "importance" / "importance.json").read_text())
    assert importance["layer_masking"] is None and importance["unit_grad_weight_mean"]
    expansion = json.loads((seed / "expanded" / "adept" / "expansion.json").read_text())
    assert expansion["source_layers"] == [3]
    summary = json.loads((train_dir(seed, "adept@1e-2") / "training_summary.json").read_text())
    first = summary["multiplier_distribution"]["first"]  # step 0 from the unit scores, by the paper's rule
    assert first["step"] == 0 and "importance.json" in first["source"] and first["min"] < first["max"]
