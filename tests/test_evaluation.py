"""Held-out perplexity, lm-eval benchmarks, results.json and ``adept eval`` on tiny checkpoints."""

from __future__ import annotations

import json
import math
import socket

import pytest
import torch
from conftest import PROBE_TEXT, byte_tokenizer, save_tiny_checkpoint

from adept.artifacts import artifact_header, write_json
from adept.checkpoints import load_model_and_tokenizer
from adept.cli import main
from adept.data import build_packed_dataset
from adept.evaluation import (
    comparison_markdown,
    evaluate_perplexity,
    load_training_summary,
    read_results,
    run_benchmarks,
    run_evaluation,
    validate_benchmark_file,
)
from adept.expansion import expand_checkpoint, plan_expansion

DOMAIN_TEXT = (
    "The enzyme binds its substrate and lowers the activation energy of the reaction.\n\n"
    "Ribosomes translate messenger RNA into a chain of amino acids.\n\n"
    "A kinase adds a phosphate group to a protein and changes its activity.\n\n"
    "Mitochondria produce most of the ATP a cell needs through oxidative phosphorylation.\n"
)

GENERAL_MC = [
    {"question": "What colour is the sky?", "choices": ["blue", "green", "red"], "answer": 0},
    {"question": "How many legs has a cat?", "choices": ["two", "four"], "answer": 1},
    {"question": "Which is a fruit?", "choices": ["stone", "apple", "chair", "river"], "answer": 1},
    {"question": "Where do fish live?", "choices": ["in water", "in trees"], "answer": 0},
    {"question": "What do bees make?", "choices": ["milk", "honey", "bread"], "answer": 1},
]
DOMAIN_MC = [
    {"question": "What makes ATP?", "choices": ["mitochondria", "ribosome", "nucleus"], "answer": 0},
    {"question": "What translates mRNA?", "choices": ["kinase", "ribosome"], "answer": 1},
    {"question": "What adds a phosphate?", "choices": ["kinase", "lipase", "membrane"], "answer": 0},
    {"question": "What lowers activation energy?", "choices": ["heat", 'an enzyme\'s "site"'], "answer": 1},
]


def write_jsonl(path, items):
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Held-out corpora with colliding stems and two benchmark files."""
    root = tmp_path_factory.mktemp("eval-data")
    (root / "general").mkdir()
    (root / "domain").mkdir()
    general = root / "general" / "heldout.txt"
    general.write_text(PROBE_TEXT)
    domain = root / "domain" / "heldout.txt"
    domain.write_text(DOMAIN_TEXT)
    return {
        "general": general,
        "domain": domain,
        "general_mc": write_jsonl(root / "general_mc.jsonl", GENERAL_MC),
        "domain_mc": write_jsonl(root / "domain_mc.jsonl", DOMAIN_MC),
    }


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny base model, its function-preserving expansion and a perturbed copy."""
    root = tmp_path_factory.mktemp("eval-models")
    base = root / "base"
    model = save_tiny_checkpoint(base)
    expanded = expand_checkpoint(base, root / "expanded", plan_expansion(4, [1, 3]))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
        # Sharper logits on a random model push the loss well above that of the base.
        model.lm_head.weight.mul_(10.0)
    model.save_pretrained(root / "perturbed")
    byte_tokenizer().save_pretrained(root / "perturbed")
    return {"base": base, "expanded": expanded, "perturbed": root / "perturbed"}


@pytest.fixture
def no_network(monkeypatch):
    """Record (and refuse) every outgoing connection."""
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def _loglikelihoods(scores):
    return [resp[0] for sample in scores["samples"] for resp in sample["filtered_resps"]]


def test_lm_eval_offline_accuracy_preserved_by_expansion(checkpoints, files, no_network):
    tasks = {"general_mc": files["general_mc"]}
    results = {}
    for name in ("base", "expanded", "perturbed"):
        model, tokenizer = load_model_and_tokenizer(checkpoints[name], device="cpu")
        if name == "expanded":
            assert model.config.num_hidden_layers == 6
        results[name] = run_benchmarks(model, tokenizer, tasks, batch_size=4, log_samples=True)["general_mc"]
    assert no_network == []

    base, expanded, perturbed = results["base"], results["expanded"], results["perturbed"]
    assert base["n"] == len(GENERAL_MC)
    assert base["path"] == str(files["general_mc"])
    assert 0.0 <= base["acc"] <= 1.0 and 0.0 <= base["acc_norm"] <= 1.0 and base["acc_stderr"] is not None
    for key in ("acc", "acc_norm", "acc_stderr", "n"):
        assert expanded[key] == base[key]
    # Function preservation seen through lm-eval: every per-choice log-likelihood is unchanged ...
    n_choices = sum(len(item["choices"]) for item in GENERAL_MC)
    assert len(_loglikelihoods(base)) == n_choices
    assert _loglikelihoods(expanded) == pytest.approx(_loglikelihoods(base), abs=1e-5)
    # ... while a real change of the weights does show up.
    assert _loglikelihoods(perturbed) != pytest.approx(_loglikelihoods(base), abs=1e-3)


def test_benchmark_limit(checkpoints, files):
    model, tokenizer = load_model_and_tokenizer(checkpoints["base"], device="cpu")
    scores = run_benchmarks(model, tokenizer, {"domain": files["domain_mc"]}, batch_size=2, limit=2)
    assert scores["domain"]["n"] == 2


def test_benchmark_limits_per_benchmark(checkpoints, files):
    """evaluation.limits: each benchmark its own limit, the rest the common one; the items are those each
    would get alone, and a name that is not a benchmark is refused before anything runs."""
    model, tokenizer = load_model_and_tokenizer(checkpoints["base"], device="cpu")
    tasks = {"general": files["general_mc"], "domain": files["domain_mc"]}
    scores = run_benchmarks(model, tokenizer, tasks, batch_size=2, limit=None, limits={"domain": 3})
    assert (scores["general"]["n"], scores["domain"]["n"]) == (len(GENERAL_MC), 3)
    alone = run_benchmarks(model, tokenizer, {"domain": files["domain_mc"]}, batch_size=2, limit=3)["domain"]
    assert scores["domain"]["items"] == alone["items"]
    mixed = run_benchmarks(model, tokenizer, tasks, batch_size=2, limit=2, limits={"general": 4})
    assert (mixed["general"]["n"], mixed["domain"]["n"]) == (4, 2)
    with pytest.raises(ValueError, match=r"evaluation.limits names \['hellaswag'\]"):
        run_benchmarks(model, tokenizer, tasks, limits={"hellaswag": 2000})


def _manual_loss(model, dataset):
    losses = []
    with torch.no_grad():
        for row in dataset:
            ids = torch.tensor([row["input_ids"]])
            logits = model(input_ids=ids).logits[0, :-1]
            losses.append(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
    return float(torch.stack(losses).sum()) / (len(dataset) * (len(dataset[0]["input_ids"]) - 1))


def test_perplexity_matches_manual_loss_and_expansion(checkpoints, files, tmp_path):
    base, tokenizer = load_model_and_tokenizer(checkpoints["base"], device="cpu")
    expanded, _ = load_model_and_tokenizer(checkpoints["expanded"], device="cpu")
    dataset = build_packed_dataset(files["general"], tokenizer, 32)
    assert len(dataset) >= 4

    result = evaluate_perplexity(
        base, tokenizer, files["general"], block_size=32, batch_size=3, progress=False, cache_dir=tmp_path
    )
    assert result["tokens"] == len(dataset) * 31
    assert result["path"] == str(files["general"])
    assert result["loss"] == pytest.approx(_manual_loss(base, dataset), rel=1e-5)
    assert result["perplexity"] == pytest.approx(torch.tensor(result["loss"]).exp().item(), rel=1e-5)

    same = evaluate_perplexity(expanded, tokenizer, files["general"], block_size=32, batch_size=3, progress=False)
    assert same["loss"] == pytest.approx(result["loss"], abs=1e-6)
    assert same["tokens"] == result["tokens"]

    first = evaluate_perplexity(base, tokenizer, files["general"], block_size=32, max_blocks=2, progress=False)
    assert first["tokens"] == 2 * 31
    assert first["loss"] == pytest.approx(_manual_loss(base, dataset.select(range(2))), rel=1e-5)


def test_run_evaluation_schema_and_comparison(checkpoints, files, tmp_path):
    summary = {
        "method": "full",
        "trainable_parameters": 1000,
        "trainable_share": 0.25,
        "wall_seconds": 12.0,
        "tokens_per_second": 345.0,
        "peak_memory_bytes": 2**30,
    }
    path = run_evaluation(
        [("base", checkpoints["base"]), ("noisy", checkpoints["perturbed"])],
        tmp_path / "eval",
        general=[files["general"]],
        domain=[files["domain"]],
        general_benchmarks=[files["general_mc"]],
        domain_benchmarks=[files["domain_mc"]],
        block_size=32,
        batch_size=4,
        device="cpu",
        summaries={"noisy": summary},
        progress=False,
    )
    assert path == tmp_path / "eval" / "results.json"
    results = read_results(path)
    assert results == json.loads(path.read_text())
    assert read_results(path.parent) == results
    assert list(results) == ["schema_version", "kind", "adept_version", "base", "runs", "comparison"]
    assert results["kind"] == "evaluation" and results["base"] == "base"

    runs = {run["label"]: run for run in results["runs"]}
    assert list(runs) == ["base", "noisy"]
    for run in runs.values():
        assert set(run) == {"label", "model", "seconds", "perplexity", "benchmarks"}
        assert set(run["perplexity"]) == {"general/heldout", "domain/heldout"}  # colliding stems disambiguated
        assert run["perplexity"]["general/heldout"]["domain"] == "general"
        assert run["perplexity"]["domain/heldout"]["domain"] == "domain"
        for entry in run["perplexity"].values():
            assert set(entry) == {"loss", "perplexity", "tokens", "bytes", "bits_per_byte", "path", "domain"}
            # Byte-level test tokenizer: one byte per predicted token except the EOS between documents.
            assert entry["tokens"] - 8 <= entry["bytes"] <= entry["tokens"]
            assert entry["bits_per_byte"] == pytest.approx(
                entry["loss"] * entry["tokens"] / math.log(2) / entry["bytes"]
            )
        assert set(run["benchmarks"]) == {"general_mc", "domain_mc"}
        assert run["benchmarks"]["domain_mc"]["domain"] == "domain"
        for entry in run["benchmarks"].values():
            assert set(entry) == {
                "acc",
                "acc_norm",
                "acc_stderr",
                "acc_ci",
                "acc_norm_ci",
                "n",
                "path",
                "domain",
                "items",
            }
            assert len(entry["items"]["acc"]) == entry["n"] and entry["acc_ci"][0] <= entry["acc"] <= entry["acc_ci"][1]
    assert runs["base"]["benchmarks"]["general_mc"]["n"] == len(GENERAL_MC)

    base_row, noisy_row = results["comparison"]
    assert set(base_row) == {
        "label", "method", "general_loss", "domain_loss", "general_loss_change", "general_loss_change_pct",
        "domain_loss_change", "domain_loss_change_pct", "general_acc", "domain_acc", "general_acc_change",
        "domain_acc_change", "benchmarks", "trainable_parameters", "trainable_share", "wall_seconds",
        "tokens_per_second", "peak_memory_bytes",
    }  # fmt: skip
    assert base_row["method"] == "base" and base_row["trainable_share"] is None
    for key in (
        "general_loss_change",
        "general_loss_change_pct",
        "domain_loss_change",
        "general_acc_change",
        "domain_acc_change",
    ):
        assert base_row[key] == 0
    assert base_row["benchmarks"]["general_mc"]["change"] == 0

    def loss(label, key):
        return runs[label]["perplexity"][key]["loss"]

    def acc(label, key):
        return runs[label]["benchmarks"][key]["acc"]

    assert base_row["general_loss"] == pytest.approx(loss("base", "general/heldout"))
    assert noisy_row["method"] == "full" and noisy_row["label"] == "noisy"
    change = loss("noisy", "general/heldout") - loss("base", "general/heldout")
    assert noisy_row["general_loss_change"] == pytest.approx(change)
    assert noisy_row["general_loss_change"] > 0  # the perturbed model forgot
    assert noisy_row["general_loss_change_pct"] == pytest.approx(100 * change / loss("base", "general/heldout"))
    domain_change = loss("noisy", "domain/heldout") - loss("base", "domain/heldout")
    assert noisy_row["domain_loss_change"] == pytest.approx(domain_change)
    assert noisy_row["general_acc"] == pytest.approx(acc("noisy", "general_mc"))
    assert noisy_row["domain_acc_change"] == pytest.approx(acc("noisy", "domain_mc") - acc("base", "domain_mc"))
    assert noisy_row["benchmarks"]["general_mc"]["change"] == pytest.approx(
        acc("noisy", "general_mc") - acc("base", "general_mc")
    )
    for key, value in summary.items():
        if key != "method":
            assert noisy_row[key] == value

    table = comparison_markdown(results).splitlines()
    assert table[0].startswith("| method | general loss (Δ%) | domain loss (Δ%) | general acc (Δ) | domain acc (Δ)")
    assert len(table) == 4
    assert table[3].startswith("| full (noisy) |") and "25.0%" in table[3] and "1.00" in table[3]


def test_comparison_without_loss_sets_gives_nulls(checkpoints, files, tmp_path):
    path = run_evaluation(
        [("base", checkpoints["base"])],
        tmp_path,
        domain_benchmarks=[files["domain_mc"]],
        device="cpu",
        limit=2,
        progress=False,
    )
    row = read_results(path)["comparison"][0]
    assert row["general_loss"] is None and row["domain_loss"] is None and row["general_acc"] is None
    assert row["domain_acc_change"] == 0
    assert "–" in comparison_markdown(read_results(path))


def test_load_training_summary(tmp_path):
    (tmp_path / "run" / "model").mkdir(parents=True)
    assert load_training_summary(tmp_path / "run" / "model") is None
    write_json(tmp_path / "run" / "training_summary.json", {**artifact_header("training"), "method": "adept"})
    assert load_training_summary(tmp_path / "run" / "model")["method"] == "adept"
    assert load_training_summary(tmp_path / "run")["method"] == "adept"


def test_foreign_training_summary_is_ignored(tmp_path, files, capsys):
    # The shipped demo base model carries its pretraining script's training_summary.json (no kind).
    model = tmp_path / "pretrained"
    save_tiny_checkpoint(model)
    (model / "training_summary.json").write_text(json.dumps({"parameters": 123, "heldout_loss": 4.7}))
    assert load_training_summary(model) is None
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(model), "--output", str(out), "--general", str(files["general"])]
    assert (
        main([*argv, "--domain", str(files["domain"]), "--block-size", "32", "--max-blocks", "2", "--device", "cpu"])
        == 0
    )
    assert read_results(out / "results.json")["runs"][0]["label"] == "pretrained"
    # A file that claims to be another adept artifact is still refused.
    write_json(model / "training_summary.json", artifact_header("evaluation"))
    with pytest.raises(ValueError, match="expected an artifact of kind 'training', found 'evaluation'"):
        load_training_summary(model)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"question": "q", "choices": ["a", "b"], "answer": 1', "invalid JSON"),
        ('{"question": "q", "answer": 0}', "missing key 'choices'"),
        ('{"question": "q", "choices": ["a", "b"], "answer": 2}', "'answer' 2 is out of range for 2 choices"),
        ('{"question": "q", "choices": ["a", "b"], "answer": true}', "'answer' must be an integer"),
        ('{"question": "q", "choices": ["a"], "answer": 0}', "at least two strings"),
        ('["q", "a"]', "expected a JSON object"),
    ],
)
def test_bad_benchmark_file_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GENERAL_MC[0]) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=rf"bad\.jsonl:2: .*{message[:12]}") as info:
        validate_benchmark_file(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_benchmark_fails_before_loading_models(tmp_path, capsys):
    bad = tmp_path / "mc.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 5}\n')
    with pytest.raises(ValueError, match=r"mc\.jsonl:1: 'answer' 5 is out of range"):
        run_evaluation([("base", tmp_path / "missing")], tmp_path / "out", general_benchmarks=[bad], device="cpu")
    code = main(
        [
            "eval",
            "--model",
            str(tmp_path / "missing"),
            "--general-benchmark",
            str(bad),
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "mc.jsonl:1:" in err and "\n" not in err


def test_cli_eval(checkpoints, files, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(checkpoints["base"]), "--model", str(checkpoints["expanded"]), "--output", str(out)]
    argv += ["--general", str(files["general"]), "--domain", str(files["domain"])]
    argv += ["--general-benchmark", str(files["general_mc"]), "--domain-benchmark", str(files["domain_mc"])]
    argv += ["--block-size", "32", "--batch-size", "4", "--max-blocks", "3", "--limit", "3", "--device", "cpu"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| method |" in printed and f"results: {out / 'results.json'}" in printed
    results = read_results(out / "results.json")
    assert [run["label"] for run in results["runs"]] == ["base", "expanded"]
    expanded = results["comparison"][1]
    assert expanded["general_loss_change"] == pytest.approx(0, abs=1e-6)
    assert expanded["domain_acc_change"] == 0
    assert results["runs"][0]["perplexity"]["general/heldout"]["tokens"] == 3 * 31
    assert results["runs"][0]["benchmarks"]["general_mc"]["n"] == 3

    assert main(argv[:5] + ["--label", "a", "--label", "b", "--label", "c", "--output", str(out)]) == 2
    assert "one --label per --model" in capsys.readouterr().err
