"""The options of the multiplier rule and what a run records about its rates: the budget-neutral
rescaling (parameter-weighted mean exactly 1, the paper's order kept), the shuffled-rate ablation
(a seeded permutation, the same on every rank), the multipliers' distribution and its report table."""

from __future__ import annotations

import json
import math
import random

import pytest
from conftest import PROBE_TEXT, save_tiny_checkpoint
from safetensors import safe_open

from adept.cli import main
from adept.config import ConfigError, MultiplierRule, load_config
from adept.expansion import expand_checkpoint, plan_expansion
from adept.report_training import multiplier_distribution_table
from adept.stage2 import read_rate_log
from adept.tuning import (
    multiplier_distribution,
    multipliers_from_importance,
    rescale_to_parameter_budget,
    shuffle_multipliers,
)

SIZES = (32, 32 * 32, 32 * 64, 64 * 32, 8 * 32)  # a norm, square and rectangular projections


def _random_units(rng: random.Random, n: int) -> tuple[dict[str, float], dict[str, int]]:
    # Scores over several orders of magnitude, as per-element scores of norms and matrices are.
    scores = {f"model.layers.{i // 9}.unit{i % 9}": rng.random() * 10 ** rng.uniform(-3, 1) for i in range(n)}
    sizes = {name: rng.choice(SIZES) for name in scores}
    return scores, sizes


def _weighted_mean(multipliers, sizes) -> float:
    return sum(multipliers[n] * sizes[n] for n in multipliers) / sum(sizes[n] for n in multipliers)


@pytest.mark.parametrize("seed", range(20))
def test_parameter_budget_gives_a_weighted_mean_of_one_with_floor_and_ceiling_active(seed):
    rng = random.Random(seed)
    scores, sizes = _random_units(rng, rng.randint(3, 80))
    floor, ceiling = rng.choice([(0.0, 10.0), (0.05, 10.0), (0.3, 1.5), (0.5, 2.0)])
    rule = MultiplierRule(floor=floor, ceiling=ceiling, scale=rng.choice([2.0, 4.0]), rate_budget="parameters")
    m = multipliers_from_importance(scores, rule, sizes)
    assert _weighted_mean(m, sizes) == pytest.approx(1.0, abs=1e-6)
    assert floor <= min(m.values()) and max(m.values()) <= ceiling


def test_budget_rescaling_with_clamping_solves_exactly():
    """Ceiling and floor both bind after the rescaling: a plain rescale, or one clamp after it, would miss 1."""
    multipliers = {"norm": 2.0, "tiny": 0.01, "big": 0.5, "mid": 1.0}
    sizes = {"norm": 32, "tiny": 32, "big": 4096, "mid": 1024}
    out = rescale_to_parameter_budget(multipliers, sizes, floor=0.2, ceiling=3.0)
    assert _weighted_mean(out, sizes) == pytest.approx(1.0, abs=1e-12)
    assert out["norm"] == 3.0 and out["tiny"] == 0.2  # both clamps active
    assert out["mid"] == pytest.approx((5184 - 0.2 * 32 - 3.0 * 32) / (4096 * 0.5 + 1024 * 1.0))  # solved exactly
    assert out["big"] / multipliers["big"] == pytest.approx(out["mid"] / multipliers["mid"])  # one factor
    with pytest.raises(ValueError, match="out of"):
        rescale_to_parameter_budget(multipliers, sizes, floor=1.5, ceiling=3.0)
    with pytest.raises(ValueError, match="no rescaling reaches"):
        rescale_to_parameter_budget({"a": 0.0, "b": 0.5}, {"a": 10, "b": 10}, floor=0.0, ceiling=1.0)


@pytest.mark.parametrize("seed", range(10))
def test_budget_keeps_the_order_of_the_units(seed):
    rng = random.Random(100 + seed)
    scores, sizes = _random_units(rng, 60)
    paper = multipliers_from_importance(scores, MultiplierRule())
    budget = multipliers_from_importance(scores, MultiplierRule(rate_budget="parameters"), sizes)
    names = list(scores)
    for a in names:
        for b in names:
            if paper[a] < paper[b]:
                assert budget[a] <= budget[b], (a, b)  # clamping may tie neighbours, never swap them
    assert _weighted_mean(paper, sizes) > 1.05  # the paper's rule raises the overall rate here...
    assert _weighted_mean(budget, sizes) == pytest.approx(1.0, abs=1e-9)  # ...the budget takes it back to 1


def test_shuffle_is_a_seeded_permutation():
    rng = random.Random(7)
    scores, sizes = _random_units(rng, 40)
    plain = multipliers_from_importance(scores, MultiplierRule())
    shuffled_rule = MultiplierRule(shuffle=True)
    shuffled = multipliers_from_importance(scores, shuffled_rule, seed=3, step=10)
    assert shuffled.keys() == plain.keys()
    assert sorted(shuffled.values()) == sorted(plain.values())
    assert list(shuffled.values()) != list(plain.values())
    # Same seed and step: the same permutation (every rank, every rerun); another step: another one.
    assert multipliers_from_importance(scores, shuffled_rule, seed=3, step=10) == shuffled
    assert multipliers_from_importance(scores, shuffled_rule, seed=3, step=20) != shuffled
    assert multipliers_from_importance(scores, shuffled_rule, seed=4, step=10) != shuffled
    # The permutation depends on the unit names, not on the order the mapping lists them in.
    reordered = dict(reversed(list(plain.items())))
    assert shuffle_multipliers(reordered, 3, 10) == shuffle_multipliers(plain, 3, 10)
    # With the budget, the shuffled rates are rescaled after the permutation: mean 1 again.
    both = multipliers_from_importance(scores, MultiplierRule(shuffle=True, rate_budget="parameters"), sizes, 3, 10)
    assert _weighted_mean(both, sizes) == pytest.approx(1.0, abs=1e-9)


def test_default_rule_is_unchanged_by_the_new_options():
    rule = MultiplierRule()
    assert (rule.rate_budget, rule.shuffle) == ("none", False)
    scores = {"a": 0.0, "b": 1.0, "c": 3.0, "d": 4.0}
    sizes = {"a": 10, "b": 20, "c": 30, "d": 40}
    m = multipliers_from_importance(scores, MultiplierRule(floor=0.0), sizes, seed=5, step=9)
    assert m == {"a": 2.0, "b": 1.5, "c": 0.5, "d": 0.0}
    # Equal scores: all ones, already a weighted mean of 1.
    assert multipliers_from_importance(
        {"a": 1.0, "b": 1.0}, MultiplierRule(rate_budget="parameters"), {"a": 1, "b": 9}
    ) == {"a": 1.0, "b": 1.0}


def test_rule_validation_of_the_new_options():
    with pytest.raises(ValueError, match="tuning.rate_budget must be one of none, parameters"):
        MultiplierRule(rate_budget="units")
    with pytest.raises(ValueError, match="floor <= 1 <= tuning.ceiling"):
        MultiplierRule(rate_budget="parameters", floor=1.5, ceiling=3.0)
    with pytest.raises(ValueError, match="needs the size of every unit"):
        multipliers_from_importance({"a": 0.0, "b": 1.0}, MultiplierRule(rate_budget="parameters"))


def test_config_file_and_override_reach_the_rule(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "model: m\ndata: {domain_train: d.txt, general_probe: p.txt}\ntrain: {rule: {rate_budget: parameters}}\n"
    )
    config = load_config(path, ["train.rule.shuffle=true"])
    assert config.train.rule.rate_budget == "parameters" and config.train.rule.shuffle is True
    with pytest.raises(ConfigError, match="'train.rule'"):
        load_config(path, ["train.rule.rate_budget=tokens"])


def test_distribution_per_unit_type():
    multipliers = {"model.layers.2.q.weight": 2.0, "model.layers.4.q.weight": 1.0, "model.layers.2.norm.weight": 0.05}
    sizes = {"model.layers.2.q.weight": 100, "model.layers.4.q.weight": 300, "model.layers.2.norm.weight": 10}
    types = {name: name.split(".", 3)[3] for name in multipliers}
    spread = multiplier_distribution(multipliers, sizes, types)
    assert spread["units"] == 3 and spread["parameters"] == 410
    assert spread["unit_mean"] == pytest.approx((2.0 + 1.0 + 0.05) / 3)
    assert spread["parameter_mean"] == pytest.approx((200 + 300 + 0.5) / 410)
    assert (spread["min"], spread["median"], spread["max"]) == (0.05, 1.0, 2.0)
    assert list(spread["by_type"]) == ["q.weight", "norm.weight"]
    q = spread["by_type"]["q.weight"]
    assert (q["units"], q["parameters"], q["unit_mean"], q["median"]) == (2, 400, 1.5, 1.5)
    assert q["parameter_mean"] == pytest.approx(500 / 400)
    assert multiplier_distribution(multipliers, sizes)["by_type"].keys() == multipliers.keys()  # no types: one per unit
    with pytest.raises(ValueError, match="no size"):
        multiplier_distribution(multipliers, {})


def test_distribution_table_for_the_report():
    first = {
        "step": 0,
        "units": 2,
        "parameters": 400,
        "unit_mean": 1.5,
        "parameter_mean": 1.25,
        "by_type": {"q.weight": {"units": 2, "parameters": 400, "unit_mean": 1.5, "parameter_mean": 1.25}},
    }
    last = {
        **first,
        "step": 40,
        "parameter_mean": 1.0,
        "by_type": {"q.weight": {"unit_mean": 1.2, "parameter_mean": 1.0}},
    }
    table = multiplier_distribution_table({"first": first, "last": last})
    assert table.columns == [
        "unit type",
        "units",
        "parameters",
        "step 0: unit mean",
        "step 0: parameter mean",
        "step 40: unit mean",
        "step 40: parameter mean",
    ]
    assert table.rows == [
        ["all trainable units", "2", "400", "1.5", "1.25", "1.5", "1"],
        ["q.weight", "2", "400", "1.5", "1.25", "1.2", "1"],
    ]
    assert multiplier_distribution_table(None) is None
    assert multiplier_distribution_table({"first": "odd"}) is None


@pytest.fixture(scope="module")
def expanded(tmp_path_factory):
    root = tmp_path_factory.mktemp("rates")
    save_tiny_checkpoint(root / "base", "llama")
    expand_checkpoint(root / "base", root / "expanded", plan_expansion(4, [1, 2]))
    (root / "probe.txt").write_text(PROBE_TEXT)
    (root / "domain.txt").write_text(
        "\n\n".join(f"Lemma {i}: a closed subset of a compact space is compact." for i in range(40))
    )
    return root


def test_budget_and_shuffle_in_a_run_are_logged_and_summarised(expanded, tmp_path):
    """`adept train --rate-budget parameters --shuffle`: every logged assignment has a parameter-weighted
    mean of 1 and is a permutation of the paper's multipliers scaled by one factor; the summary keeps
    the distribution at step 0 and at the last refresh."""
    out = tmp_path / "run"
    argv = [
        "train",
        "--model",
        str(expanded / "expanded"),
        "--data",
        str(expanded / "domain.txt"),
        "--output",
        str(out),
        "--probe",
        str(expanded / "probe.txt"),
        "--block-size",
        "32",
        "--batch-size",
        "2",
        "--max-steps",
        "3",
        "--rate-budget",
        "parameters",
        "--shuffle",
        "--set",
        "disable_tqdm=true",
    ]
    assert main(argv) == 0
    log = read_rate_log(out / "unit_rates.jsonl")
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["config"]["rule"]["rate_budget"] == "parameters" and summary["config"]["rule"]["shuffle"] is True
    with safe_open(str(expanded / "expanded" / "model.safetensors"), "pt") as handle:
        sizes = {name: handle.get_slice(name).get_shape() for name in log[0]["multipliers"]}
    sizes = {name: math.prod(shape) for name, shape in sizes.items()}
    for entry in log:
        assert _weighted_mean(entry["multipliers"], sizes) == pytest.approx(1.0, abs=1e-6)
        assert entry["distribution"]["parameter_mean"] == pytest.approx(1.0, abs=1e-6)
        if "rates kept" in entry["source"]:
            continue
        paper = multipliers_from_importance(entry["importance"], MultiplierRule())
        shuffled = shuffle_multipliers(paper, 0, entry["step"])  # the training seed is 0
        assert entry["multipliers"] == pytest.approx(
            rescale_to_parameter_budget(shuffled, sizes, 0.05, 10.0), rel=1e-12
        )
    spread = summary["multiplier_distribution"]
    assert spread["first"]["step"] == 0 and spread["last"]["step"] == log[-1]["step"]
    assert spread["first"]["parameter_mean"] == pytest.approx(1.0, abs=1e-6)
    assert (
        "self_attn.q_proj.weight" in spread["first"]["by_type"]
        and "input_layernorm.weight" in spread["first"]["by_type"]
    )
    assert spread["first"]["by_type"]["self_attn.q_proj.weight"]["units"] == 2  # one per copy
