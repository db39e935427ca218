"""adept.fronts and benchmarks/fronts.py (the docs' grid on top of it).

Run order, label budgets, efficient fronts, interpolation and the targets' verdicts.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

import adept.fronts as analysis
from adept.artifacts import artifact_header, read_json, write_json
from adept.config import load_config

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import fronts  # noqa: E402
from fronts import GRID, check_targets, efficient, interpolate, label_of, label_overrides, run_order  # noqa: E402

RATES = {f.name: f.rates for f in GRID}
PAST = (12, 3.0)  # a rate with less gain and more forgetting than another of its front


def _data(
    points: dict[str, list[tuple[float, float]]], tokens_per_second: dict[str, list[float]] | None = None
) -> dict:
    """Fake collected runs: ``{front: [(gain %, forgetting %) per rate, in its grid's order]}``."""
    rows = {}
    for name, values in points.items():
        speeds = (tokens_per_second or {}).get(name, [100.0] * len(values))
        for rate, (gain, forgetting), speed in zip(RATES[name], values, speeds):
            rows[f"{name}@{analysis.rate_name(rate)}"] = {
                "gain_pct": gain,
                "domain_loss_change_pct": -gain,
                "forgetting_pct": forgetting,
                "general_acc_change": {
                    "diff": -forgetting / 100,
                    "ci": [-forgetting / 100 - 0.03, -forgetting / 100 + 0.03],
                },
                "domain_acc_change": {"diff": gain / 100, "ci": [gain / 100 - 0.05, gain / 100 + 0.05]},
                "tokens_per_second": speed,
                "peak_memory_bytes": 2**30,
                "train_seconds": 100.0,
                "reestimation_seconds": 0.0,
                "curve": [],
            }
    return {"seeds": {0: rows}, "base": {0: {"general_loss": 4.0, "domain_loss": 2.0}}}


def test_run_order_covers_the_grid_once_group_by_group():
    order = [label_of(front, rate) for front, rate in run_order()]
    assert sorted(order) == sorted(label_of(f, r) for f in GRID for r in f.rates)
    position = {label: i for i, label in enumerate(order)}
    groups = [GRID[start:end] for start, end in zip((0, *fronts.GROUPS[:-1]), fronts.GROUPS)]
    for earlier, later in zip(groups, groups[1:]):
        assert max(position[label_of(f, r)] for f in earlier for r in f.rates) < min(
            position[label_of(f, r)] for f in later for r in f.rates
        )
    # Middle rates first: every front of the first group has a point before any group runs its ends.
    assert order[:4] == [label_of(f, f.rates[1]) for f in groups[0]]


def test_replay_labels_get_the_same_domain_tokens_and_full_cpt_its_curve():
    cfg = load_config(ROOT / "configs" / "fronts_smollm2.yaml")
    steps = int(cfg.train.training_args["max_steps"])
    replay = next(f for f in GRID if f.replay_ratio)
    label = label_of(replay, replay.rates[0])
    point = load_config(ROOT / "configs" / "fronts_smollm2.yaml", label_overrides(replay, replay.rates[0], cfg))
    assert point.train.methods == [label]
    settings = point.method_settings(label)
    replay_steps = int(settings.training_args["max_steps"])
    assert replay_steps * (1 - replay.replay_ratio) >= steps > (replay_steps - 1) * (1 - replay.replay_ratio)
    assert settings.training_args["learning_rate"] == replay.rates[0]
    assert (settings.method, settings.replay_ratio) == (replay.method, replay.replay_ratio)
    full = load_config(ROOT / "configs" / "fronts_smollm2.yaml", label_overrides(GRID[0], 3e-4, cfg))
    assert full.train.variants["full@3e-4"]["training_args"] == {"learning_rate": 3e-4, "eval_steps": steps // 4}
    assert full.method_settings("full@3e-4").training_args["max_steps"] == steps


def test_a_rate_past_the_useful_range_is_not_interpolated():
    points = [(1e-4, 10.0, 1.0), (3e-4, 20.0, 2.0), (1e-3, 8.0, 15.0)]  # 1e-3: less gain, more forgetting
    assert [p[0] for p in efficient(points)] == [1e-4, 3e-4]
    assert interpolate(points, 15.0) == pytest.approx(1.5)
    assert interpolate(points, 25.0) is None  # never extrapolated
    assert analysis.at_gain(points, 5.0) == (1.0, "upper")
    assert analysis.at_gain(points, 25.0) == (None, "not reached")


def test_notes_name_past_and_still_rising_fronts():
    text = "\n".join(
        fronts.notes(
            _data(
                {
                    "full": [(10, 1), (20, 4), (12, 9)],
                    "adept": [(10, 0.2), (15, 0.5), (21, 1.0), (24, 1.6)],
                    "llama-pro": [(8, 0.5), (14, 1.0)],
                }
            )
        )
    )
    assert "useful range" in text and "full 1e-3" in text
    # llama-pro's grid is not complete, full's peaks lower; the note says by how much adept still gains.
    assert "highest rate of its grid: adept (+3.00 points of domain-loss gain over 3e-3)." in text


def test_budget_note_says_where_full_cpt_clearly_forgets():
    # Accuracy intervals are diff +- 3 points: clear (below zero) from 4% forgetting on.
    text = fronts.budget_note(_data({"full": [(18, -1), (20, 2), (8, 15)]}), 32768)[0]
    assert "32,768 domain tokens" in text and "clearly (accuracy interval below zero) only at 1e-3." in text
    assert "1e-3 (past its range): domain loss -8.0%" in text
    assert "leaves little forgetting to prevent" in text  # 1e-3 is not on full CPT's front
    text = fronts.budget_note(_data({"full": [(18, 1), (20, 4), (22, 15)]}), 32768)[0]
    assert "only at 3e-4, 1e-3." in text and "little forgetting" not in text
    text = fronts.budget_note(_data({"full": [(22, 5)]}), 524288)[0]
    assert "at every rate run (1e-4)." in text and "little forgetting" not in text
    assert fronts.budget_note(_data({"adept": [(10, 1)]}), 32768) == []


def test_seeds_are_averaged_and_their_spread_is_kept(tmp_path):
    data = _data({"full": [(10, 1), (20, 4), (12, 9)], "adept": [(10, 0.2), (15, 0.5)]})
    second = _data({"full": [(14, 3)]})["seeds"][0]
    data["seeds"][1], data["base"][1] = second, data["base"][0]
    assert analysis.front_points(data, GRID[0], "forgetting_pct")[0] == (1e-4, 12.0, 2.0)
    assert analysis.seed_range(data, GRID[0], 1e-4, "forgetting_pct") == (1, 3)
    assert analysis.seed_range(data, GRID[0], 3e-4, "forgetting_pct") is None  # one seed: no bar
    data["seeds"][0]["full@1e-4"]["curve"], second["full@1e-4"]["curve"] = [[8, 4.1], [32, 4.2]], [[8, 4.0], [32, 4.3]]
    text = "\n".join(fronts.notes(data))
    assert "1 of 5 rates so far have 2 seeds, the others fewer" in text and "One seed so far" not in text
    assert "Full CPT at 1e-4 (seed 0): general loss 4.000 at step 0, 4.100 at step 8, 4.200 at step 32." in text
    assert "Full CPT at 1e-4 (seed 1): general loss 4.000 at step 0, 4.000 at step 8, 4.300 at step 32." in text
    assert fronts.plot_fronts(data, tmp_path / "f.png").stat().st_size > 0
    data["seeds"][1] = {label: {**row, "curve": []} for label, row in data["seeds"][0].items()}
    assert "all 5 rates have 2 seeds." in "\n".join(fronts.notes(data))


def test_targets_undecided_until_the_fronts_are_complete():
    data = _data({"full": [(10, 1), (20, 4)], "adept": [(10, 0.1), (15, 0.5), (21, 0.8)]})
    verdicts = {t["target"]: t for t in check_targets(data)}
    assert all(t["status"] == "undecided" for t in verdicts.values())
    quarter = next(t for name, t in verdicts.items() if "at most" in name)
    assert "full 2/3" in quarter["detail"]


def test_targets_met_and_missed_with_their_numbers():
    # The expansion fronts' fourth rate (1e-2) lies past their useful range: it changes no verdict.
    complete = {
        "full": [(10, 1), (20, 4), (12, 9)],
        "llama-pro": [(8, 0.5), (14, 1.0), (22, 2.0), PAST],
        "adept-no-stage2": [(8, 0.1), (14, 0.2), (22, 0.4), PAST],
        "full-replay": [(10, 0.5), (19, 1.0), (12, 5.0)],
        "adept-replay": [(9, 0.1), (15, 0.3), (21, 0.5), PAST],
    }
    # ADEPT: below llama-pro everywhere, above adept-no-stage2; at full's gain (20%) it forgets
    # 0.92% (interpolated), under a quarter of full CPT's 4%.
    data = _data({**complete, "adept": [(10, 0.2), (15, 0.5), (21, 1.0), PAST]})
    verdicts = {t["target"]: t for t in check_targets(data)}
    below = {rival: next(t for name, t in verdicts.items() if f"below {rival}'s" in name) for rival in fronts.RIVALS}
    assert below["llama-pro"]["status"] == "met"
    assert below["adept-no-stage2"]["status"] == "missed"
    quarter = next(t for name, t in verdicts.items() if "at most" in name)
    assert quarter["status"] == "met"
    assert "+0.92%" in quarter["detail"] and "+4.00%" in quarter["detail"] and "+1.00%" in quarter["detail"]
    replay = next(t for name, t in verdicts.items() if "replay" in name)
    assert replay["status"] == "met" and "gain 19.0%" in replay["detail"]
    # adept-replay short of full-replay's best gain: missed, and compared at its own best gain too.
    data = _data(
        {
            **complete,
            "adept": [(10, 0.2), (15, 0.5), (21, 1.0), PAST],
            "adept-replay": [(9, 0.1), (15, 0.3), (17, 0.5), PAST],
        }
    )
    replay = next(t for t in check_targets(data) if "replay" in t["target"])
    assert replay["status"] == "missed" and "at most 17.0%" in replay["detail"]
    assert "own best gain (17.0%, 3e-3): adept-replay +0.50% vs full-replay +0.89%" in replay["detail"]

    # ADEPT forgetting more than a quarter of full CPT at its gain: missed.
    data = _data({**complete, "adept": [(10, 0.2), (15, 0.5), (21, 2.0), PAST]})
    quarter = next(t for t in check_targets(data) if "at most" in t["target"])
    assert quarter["status"] == "missed" and "+1.75%" in quarter["detail"]

    # ADEPT never reaching full CPT's gain: missed, saying how far it got.
    data = _data({**complete, "adept": [(10, 0.2), (15, 0.5), (18, 1.0), PAST]})
    quarter = next(t for t in check_targets(data) if "at most" in t["target"])
    assert quarter["status"] == "missed" and "at most 18.0%" in quarter["detail"]


def test_front_comparison_checks_every_rate_not_a_few_samples():
    # ADEPT jumps above llama-pro only between gains 14.1% and ~14.3%: evenly spaced samples of
    # the shared range (10, 12.5, 15, 17.5, 20) all see ADEPT below; its rate at 14.1% does not.
    data = _data(
        {
            "adept": [(10, 0.2), (13.8, 0.3), (14.1, 3.0), (20, 3.8)],
            "llama-pro": [(10, 1.0), (14.2, 1.2), (14.4, 3.5), (20, 4.0)],
        }
    )
    target = next(t for t in check_targets(data) if "below llama-pro's" in t["target"])
    assert target["status"] == "missed"
    assert "gain 14.1%: ADEPT +3.00% vs +1.20%" in target["detail"]
    assert analysis.shared_breakpoints(
        analysis.front_points(data, fronts._front("adept"), "forgetting_pct"),
        analysis.front_points(data, fronts._front("llama-pro"), "forgetting_pct"),
        10,
        20,
    ) == [10, 13.8, 14.1, 14.2, 14.4, 20]
    # A narrow shared range prints gains to two decimals, so distinct gains read as distinct.
    data = _data(
        {
            "adept": [(28.9, 0.5), (29.01, 1.09), (29.17, 2.51), (29.19, 2.54)],
            "llama-pro": [(27.28, 0.68), (30.91, 1.70), (32.09, 2.51), (32.10, 2.56)],
        }
    )
    target = next(t for t in check_targets(data) if "below llama-pro's" in t["target"])
    assert target["status"] == "missed" and "gain 29.17%: ADEPT +2.51%" in target["detail"]


def test_a_past_range_rate_below_the_rivals_gains_does_not_widen_the_shared_range():
    # ADEPT's lowest rate gains less *and* forgets more than its next: the shared range starts at
    # the next rate's gain, not at the rival's lowest, where ADEPT's front has no value.
    data = _data(
        {
            "adept": [(8, 2.0), (10, 0.5), (12, 1.0), (12.1, 1.1)],
            "llama-pro": [(9, 0.5), (11, 1.5), (13, 2.5), (13, 2.6)],
        }
    )
    verdict = next(t for t in check_targets(data) if "llama-pro" in t["target"])
    assert verdict["status"] == "met"
    assert verdict["detail"].startswith("gain 10.0%: ADEPT +0.50% vs +1.00%")


def test_matched_accuracy_follows_the_loss_front():
    # full 1e-4: less gain, less forgetting in loss and in accuracy; 3e-4 more of both; 1e-3 past the range.
    data = _data({"full": [(18.0, -1.0), (20.0, 2.0), (8.0, 15.0)], "adept": [(10, 0.2), (15, 0.5), (17.0, 1.0)]})
    lines, table = fronts.matched_table(data)
    full = table["rows"]["full"]
    assert full["adept"]["kind"] == "upper"  # adept's 17% is below full's smallest gain on its front (18%)
    assert full["adept"]["general_loss_change_pct"] == pytest.approx(-1.0)
    assert full["adept"]["general_acc_change"] == pytest.approx(0.01)  # 1e-4's accuracy, not 3e-4's
    assert full["full"]["general_acc_change"] == pytest.approx(-0.02)


def test_time_per_token_takes_each_fronts_fastest_run():
    data = _data(
        {"full": [(10, 1), (20, 4), (12, 9)], "adept": [(10, 0.2), (15, 0.5), (21, 1.0)]},
        tokens_per_second={"full": [60.0, 100.0, 90.0], "adept": [150.0, 200.0, 120.0]},
    )
    _, table = fronts.matched_table(data)
    assert table["rows"]["adept"]["time_per_token_vs_full"] == pytest.approx(0.5)
    assert table["rows"]["full"]["time_per_token_vs_full"] == pytest.approx(1.0)


def test_toy_comparison_names_the_pairs_the_two_order_differently(tmp_path):
    def stats(general, domain):
        return {"general_loss_change_pct": {"mean": general}, "domain_loss_change_pct": {"mean": domain}}

    toy = tmp_path / "results.json"
    write_json(
        toy,
        {
            **artifact_header("method-comparison"),
            "config": str(ROOT / "configs" / "compare.yaml"),
            "budget": ["adept, full: 204,800 domain tokens = 100 steps"],
            "methods": {"full": stats(20.0, -40.0), "adept": stats(15.0, -10.0), "lora": stats(5.0, -10.0)},
        },
    )
    rate = float(load_config(ROOT / "configs" / "compare.yaml").train.training_args["learning_rate"])
    assert any(math.isclose(rate, r) for r in RATES["full"]) and any(math.isclose(rate, r) for r in RATES["adept"])
    # Real, at that rate: adept forgets least per gain, full most; lora has no run at it.
    full = [
        (gain, forgetting) if math.isclose(r, rate) else (1, 1)
        for r, (gain, forgetting) in zip(RATES["full"], [(20, 2.0)] * 3)
    ]
    adept = [(15, -0.3) if math.isclose(r, rate) else (1, 1) for r in RATES["adept"]]
    lines = fronts.toy_comparison(_data({"full": full, "adept": adept}), toy)
    text = "\n".join(lines)
    assert "| full | +20.00 | -40.00 | 0.50 | +2.00 | -20.00 | 0.10 |" in text
    assert "| adept | +15.00 | -10.00 | 1.50 | -0.30 | -15.00 | -0.02 |" in text
    assert "lora" not in text
    assert "toy full < adept; real adept < full" in text
    assert "differently (toy's better one first): full / adept." in text
    assert fronts.toy_comparison(_data({"full": full}), tmp_path / "missing.json") == []


def test_list_runs_only_the_fronts_and_rates_asked_for(tmp_path, capsys):
    root = ["--output-root", str(tmp_path), "--docs", str(tmp_path / "page.md")]
    assert fronts.main([*root, "--fronts", "adept,full", "--rates", "3e-3,3e-4", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines] == ["full@3e-4", "adept@3e-3", "adept@3e-4"]
    assert all(line.endswith("todo") for line in lines)
    assert fronts.main([*root, "--fronts", "full", "--rates", "3e-3", "--list"]) == 2
    assert "--rates: 3e-3 not all in the grid" in capsys.readouterr().err


def test_labels_select_exact_runs(tmp_path, capsys):
    root = ["--output-root", str(tmp_path), "--docs", str(tmp_path / "page.md")]
    assert fronts.main([*root, "--labels", "adept@3e-3, full@3e-4", "--list"]) == 0
    assert [line.split()[2] for line in capsys.readouterr().out.splitlines()] == ["full@3e-4", "adept@3e-3"]
    assert fronts.main([*root, "--labels", "full@3e-3", "--list"]) == 2
    assert "--labels: full@3e-3 not in the grid" in capsys.readouterr().err
    assert fronts.main([*root, "--labels", "full@3e-4", "--rates", "3e-4", "--list"]) == 2
    assert "without --fronts and --rates" in capsys.readouterr().err
    args = fronts.parse_args([*root, "--labels", "full@3e-4,adept@3e-3"])
    assert "--labels full@3e-4,adept@3e-3" in fronts.regenerate_command(args)


def test_cpu_time_counts_shared_stages_and_the_reported_runs_only():
    stages = {
        "data": {"seconds": 1.0},
        "importance": {"seconds": 10.0},
        "expand:adept": {"seconds": 2.0},
        "eval:base": {"seconds": 20.0},
        "train:full@3e-4": {"seconds": 100.0},
        "eval:full@3e-4": {"seconds": 30.0},
        "train:adept@3e-3": {"seconds": None, "status": "running"},
        "train:lora@1e-3": {"seconds": 500.0},
    }
    assert fronts.stage_seconds(stages, {"full@3e-4"}) == 163.0
    assert fronts.stage_seconds(stages, {"full@3e-4", "adept@3e-3", "lora@1e-3"}) == 663.0


X4 = [
    "--labels",
    "full@3e-4,adept@3e-3",
    "--set",
    "train.training_args.max_steps=128",
    "--set",
    "train.training_args.save_steps=32",
]


def _x4_record(tmp_path: Path) -> Path:
    """The 4x page's committed record (two real runs), placed beside a scratch page."""
    record = tmp_path / "page_fronts.json"
    record.write_text((ROOT / "docs" / "results_budget_fronts.json").read_text())
    return record


def test_a_page_is_rebuilt_from_its_record_alone(tmp_path, capsys):
    _x4_record(tmp_path)
    root = ["--output-root", str(tmp_path / "runs"), "--docs", str(tmp_path / "page.md"), *X4]
    assert fronts.main([*root, "--list"]) == 0
    assert all("done (in" in line for line in capsys.readouterr().out.splitlines())
    assert fronts.main([*root, "--report-only"]) == 0
    committed = (ROOT / "docs" / "results_budget.md").read_text()
    rebuilt = (tmp_path / "page.md").read_text()
    generated = [text[text.index(fronts.START) :] for text in (committed, rebuilt)]  # the page's own intro is kept
    tables = [[line for line in text.splitlines() if line.startswith("| ")] for text in generated]
    assert tables[0] and tables[0] == tables[1]
    runs = read_json(tmp_path / "page_fronts.json", kind="fronts")["runs"]["0"]
    assert sorted(runs) == ["adept@3e-3", "full@3e-4"]


def test_the_main_results_page_is_rebuilt_from_its_record_line_for_line(tmp_path):
    """docs/results.md, regenerated through adept.fronts from its committed JSON: every table and note the same."""
    (tmp_path / "page_fronts.json").write_text((ROOT / "docs" / "results_fronts.json").read_text())
    (tmp_path / "page.json").write_text((ROOT / "docs" / "results.json").read_text())  # the toy comparison
    argv = ["--seeds", "0,1", "--output-root", str(tmp_path / "runs"), "--docs", str(tmp_path / "page.md")]
    assert fronts.main([*argv, "--report-only"]) == 0
    committed = (ROOT / "docs" / "results.md").read_text()
    committed = committed[committed.index(fronts.START) : committed.index(fronts.END)]
    rebuilt = (tmp_path / "page.md").read_text().replace("](page_fronts", "](results_fronts")
    rebuilt = rebuilt[rebuilt.index(fronts.START) : rebuilt.index(fronts.END)]
    kept = [line for line in committed.splitlines() if not line.startswith("python benchmarks/fronts.py")]
    assert kept == [line for line in rebuilt.splitlines() if not line.startswith("python benchmarks/fronts.py")]


def test_a_record_from_other_settings_is_refused_by_name(tmp_path, capsys):
    record = _x4_record(tmp_path)
    written = read_json(record, kind="fronts")
    written.pop("overrides")  # a record without its overrides: each label's steps are checked instead
    write_json(record, written)
    docs = ["--output-root", str(tmp_path / "runs"), "--docs", str(tmp_path / "page.md")]
    assert fronts.main([*docs, *X4[:2], "--set", "train.training_args.max_steps=64", "--list"]) == 2
    assert "page_fronts.json: runs.0.full@3e-4.steps: recorded 128, this config trains 64" in capsys.readouterr().err
    assert fronts.main([*docs, *X4, "--config", "configs/demo.yaml", "--list"]) == 2
    assert "page_fronts.json: config: the recorded runs used configs/fronts_smollm2.yaml" in capsys.readouterr().err
    text = record.read_text().replace(
        '"config": "configs/fronts_smollm2.yaml"',
        '"config": "configs/fronts_smollm2.yaml", "overrides": ["train.training_args.max_steps=128"]',
    )
    record.write_text(text)
    assert fronts.main([*docs, *X4, "--list"]) == 2
    assert "page_fronts.json: overrides: the recorded runs used --set" in capsys.readouterr().err


def test_recorded_rows_need_the_base_evaluated_here(tmp_path):
    record = read_json(_x4_record(tmp_path), kind="fronts")
    base = record["base"]["0"]
    fresh = {"seeds": {0: {"full@3e-4": {"label": "full@3e-4", "fresh": True}}}, "base": {0: dict(base)}}
    kept = fronts.merge_record(fresh, record, tmp_path / "r.json", [0, 1])
    assert [row["label"] for row in kept] == ["adept@3e-3"]  # the label run here wins over its record
    assert fresh["seeds"][0]["full@3e-4"] == {"label": "full@3e-4", "fresh": True}
    other = {"seeds": {0: {}}, "base": {0: {**base, "general_loss": base["general_loss"] * 1.01}}}
    with pytest.raises(ValueError, match=r"r.json: base.0.general_loss: recorded .* evaluated here"):
        fronts.merge_record(other, record, tmp_path / "r.json", [0])
    moved = {
        "seeds": {0: {}},
        "base": {0: {**base, "benchmarks": {**base["benchmarks"], "piqa": {"acc": 0.0, "acc_norm": 0.0, "n": 100}}}},
    }
    with pytest.raises(ValueError, match=r"r.json: base.0.benchmarks"):
        fronts.merge_record(moved, record, tmp_path / "r.json", [0])


class Trained(Exception):
    """Raised in place of training, to show how far a grid got."""


@pytest.mark.parametrize("drift", [1.0, 1.01])
def test_the_base_is_checked_against_the_record_before_any_training(tmp_path, capsys, monkeypatch, drift):
    import adept.pipeline
    import adept.sweep

    base = read_json(_x4_record(tmp_path), kind="fronts")["base"]["0"]

    def evaluate_base(self):  # the base model "evaluated here": the recorded one, its general loss times ``drift``
        sides = {"general": base["general_loss"] * drift, "domain": base["domain_loss"]}
        out = Path(self.config.run_dir) / "eval" / "base" / "results.json"
        write_json(
            out,
            {
                **artifact_header("evaluation"),
                "runs": [
                    {
                        "perplexity": {
                            side: {"domain": side, "loss": loss, "tokens": 100} for side, loss in sides.items()
                        },
                        "benchmarks": base["benchmarks"],
                    }
                ],
            },
        )
        return out

    def run_pipeline(cfg):
        raise Trained(cfg.train.methods)

    monkeypatch.setattr(adept.pipeline.Pipeline, "evaluate_base", evaluate_base)
    monkeypatch.setattr(adept.sweep, "run_pipeline", run_pipeline)
    argv = [
        "--output-root",
        str(tmp_path / "runs"),
        "--docs",
        str(tmp_path / "page.md"),
        "--labels",
        "full@3e-4,adept@3e-3,llama-pro@3e-3",
        *X4[2:],
    ]
    if drift == 1.0:
        with pytest.raises(Trained, match="llama-pro@3e-3"):  # the recorded labels are skipped, the new one trains
            fronts.main(argv)
    else:
        assert fronts.main(argv) == 2
        assert "page_fronts.json: base.0.general_loss: recorded" in capsys.readouterr().err
