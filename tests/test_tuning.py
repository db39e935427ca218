"""Per-unit learning rates: the rule, the groups, and re-assignment under a live scheduler."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from transformers import get_cosine_schedule_with_warmup

from adept.training import freeze_all_but, layer_parameter_names
from adept.tuning import (
    MultiplierRule,
    build_param_groups,
    multipliers_from_importance,
    normalize_importance,
    set_unit_multipliers,
)


def test_paper_rule_with_minmax_over_all_units():
    scores = {"a": 0.0, "b": 1.0, "c": 3.0, "d": 4.0}
    m = multipliers_from_importance(scores, MultiplierRule(floor=0.0))
    assert m == {"a": 2.0, "b": 1.5, "c": 0.5, "d": 0.0}
    floored = multipliers_from_importance(scores, MultiplierRule(floor=0.1))
    assert floored["d"] == 0.1 and floored["a"] == 2.0
    inverse = multipliers_from_importance(scores, MultiplierRule(rule="inverse", floor=0.0))
    assert inverse == {"a": 2.0, "b": pytest.approx(2 / 1.25), "c": pytest.approx(2 / 1.75), "d": 1.0}


def test_equal_importance_gives_all_ones():
    assert multipliers_from_importance({"a": 0.0, "b": 0.0}, MultiplierRule()) == {"a": 1.0, "b": 1.0}
    assert multipliers_from_importance({"a": 0.3}, MultiplierRule()) == {"a": 1.0}


def test_rank_normalisation_shares_ties():
    assert normalize_importance({"a": 5.0, "b": 1.0, "c": 5.0, "d": 0.0}, "rank") == {
        "a": pytest.approx(2.5 / 3),
        "b": pytest.approx(1 / 3),
        "c": pytest.approx(2.5 / 3),
        "d": 0.0,
    }


def test_rule_validation_names_the_key():
    with pytest.raises(ValueError, match="tuning.normalization must be one of"):
        MultiplierRule(normalization="zscore")
    with pytest.raises(ValueError, match="tuning.floor"):
        MultiplierRule(floor=-1)


def _model_with_trainable_layer():
    model = tiny_model("llama")
    names = layer_parameter_names(model, [1])
    freeze_all_but(model, names)
    return model, names


def test_groups_partition_exactly_and_carry_their_rate():
    model, names = _model_with_trainable_layer()
    multipliers = {name: 0.5 + i for i, name in enumerate(names)}
    groups = build_param_groups(model, names, base_lr=1e-3, weight_decay=0.1, multipliers=multipliers)
    assert [g["unit"] for g in groups] == names
    assert all(len(g["params"]) == 1 for g in groups)
    for g in groups:
        assert g["lr"] == pytest.approx(1e-3 * multipliers[g["unit"]])
        assert g["weight_decay"] == (0.0 if g["params"][0].ndim < 2 or g["unit"].endswith(".bias") else 0.1)
    with pytest.raises(AssertionError, match="partition"):
        build_param_groups(model, names[:-1], base_lr=1e-3)  # a trainable tensor left out
    with pytest.raises(ValueError, match="not found"):
        build_param_groups(model, names + ["nope"], base_lr=1e-3)
    with pytest.raises(ValueError, match="not trainable"):
        build_param_groups(model, names, base_lr=1e-3, multipliers={"model.norm.weight": 1.0})


def test_rates_follow_scheduler_after_reassignment():
    model, names = _model_with_trainable_layer()
    optimizer = torch.optim.AdamW(build_param_groups(model, names, base_lr=1e-2))
    scheduler = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=3, num_training_steps=10)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    multipliers = {name: (i % 4) * 0.5 for i, name in enumerate(names)}
    set_unit_multipliers(optimizer, scheduler, multipliers)
    for g in optimizer.param_groups:
        assert g["lr"] == pytest.approx(1e-2 * multipliers[g["unit"]] * factor)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
        factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
        for g in optimizer.param_groups:
            assert g["lr"] == pytest.approx(1e-2 * multipliers[g["unit"]] * factor)
    assert scheduler.get_last_lr() == [g["lr"] for g in optimizer.param_groups]
    # The optimizer state dict round trip keeps the multipliers (resume relies on it).
    again = torch.optim.AdamW(build_param_groups(model, names, base_lr=1e-2))
    again.load_state_dict(optimizer.state_dict())
    assert [g["multiplier"] for g in again.param_groups] == [multipliers[n] for n in names]
    with pytest.raises(ValueError, match="no multiplier"):
        set_unit_multipliers(optimizer, scheduler, {})
