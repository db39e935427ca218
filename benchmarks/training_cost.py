"""Training cost of ADEPT vs full continual pretraining, and of dynamic re-estimation, side by side.

Builds a random Llama config in code (16 layers, hidden 512, vocab 8192 by default; or, with
``--shape qwen2.5-0.5b``, Qwen2.5-0.5B's published shape from `adept.memory.reference_configs`,
nothing downloaded), saves it with a byte-level tokenizer, and expands 4 of its layers (LLaMA-Pro's
uniform placement, 25% new layers of the default 16). Then runs `adept.training.run_training`
unchanged, each run in a fresh process, alternating the kinds (order reversed every other round)
so machine load hits each alike:

* ``full``     full CPT of the base model (every parameter trains);
* ``static``   ``adept`` on the expanded model with ``reestimate_every`` 0: only the step-0 rates;
* ``dynamic``  the same ``adept`` run re-estimating every ``--interval`` steps.

Step time is the time of optimizer steps only, as `adept train` reports it (`StepTimer`: forward,
backward, clipping, optimizer and scheduler; not data loading, evaluation, saves or probes), the
first ``--warmup-steps`` excluded, per token; the probes are timed on their own. On CPU the runs are
single-threaded and both wall and process CPU time are shown; targets are judged on CPU time,
which is what the wall time is on an idle machine (on a shared one, wall time also counts waiting
for a core). On CUDA they are judged on wall time.

Peak memory: on CPU the whole-process peak RSS (VmHWM) through the end of training (before the
final save), also over the RSS after imports (the target is judged on this one: like
``torch.cuda.max_memory_allocated`` it counts weights, gradients, optimizer state and
activations, not the Python runtime) and over the RSS with the model loaded (read when training
starts; fp32 safetensors weights are memory-mapped and only become resident when first touched,
so this baseline is close to the one after imports); on CUDA ``torch.cuda.max_memory_allocated``.
The probe batch defaults to the training batch: a larger probe batch holds more activations than
a training step and then sets adept's peak.

Re-estimation overhead at the default schedule (ten refreshes per run) = one probe pass /
(interval x one adept step), both measured, quoted for a run of 200 steps (interval
20) and of 10,000 steps (interval 1,000), with the probe budget and step size scaled linearly in
tokens to the defaults (20000 probe tokens, 8 x 256-token steps) when they differ; and measured
directly as the probe time of the ``dynamic`` run over its optimizer-step time, rescaled alike.

Precision: ``--dtype`` is the runs' `TrainConfig.dtype`, float32 (the default) or bfloat16, or a
comma list (``float32,bfloat16``) to run each kind in each dtype, alternating all of them alike.
The base checkpoint is saved in the dtype under test (a bf16 base for bf16 runs), so a bf16 run
holds the frozen base in bf16, fp32 master weights for what trains, and bf16 autocast (see
`run_training`). Each kind's measured peak is printed next to `adept.memory.estimate_training_memory`
for the same settings (an estimate of one step's tensors: not the probe pass, the data or the
allocator); with both dtypes the issue's target, ADEPT bf16 peak <= 0.30x full CPT fp32's, is judged
on the same memory measure. With several dtypes the JSON's ``measured``, ``ratios`` and
``memory_estimates`` are keyed by dtype and ``cross_dtype`` holds the bf16-vs-fp32 ratios.

Runs are instrumented by subclassing the library's own callbacks inside the child process;
nothing else of the training path changes.

Usage: python benchmarks/training_cost.py [--layers 32 --hidden 1024] [--device cuda --bf16] [--json PATH]
       python benchmarks/training_cost.py --shape qwen2.5-0.5b --dtype float32,bfloat16 --batch-size 1 ...
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from adept.config import DEFAULT_REFRESHES, DEFAULT_TRAINING_ARGS, DataSection, ProbeConfig

TARGET_TIME = 0.55
TARGET_MEMORY = 0.45
# ADEPT with a bf16 frozen base against full CPT with everything fp32 (fp32 master weights).
TARGET_MEMORY_BF16_VS_FP32 = 0.30
TARGET_OVERHEAD = 0.03
# The overhead is quoted for the defaults of `adept train` (TrainConfig, DEFAULT_TRAINING_ARGS):
# ten refreshes per run, for a short run of 200 steps and for a long one. (Not DEFAULT_TRAINING_ARGS'
# max_steps: that is -1 now, one epoch by default.)
QUOTED_RUNS = (200, 10_000)
DEFAULT_PROBE_TOKENS = ProbeConfig().max_tokens
DEFAULT_STEP_TOKENS = DEFAULT_TRAINING_ARGS["per_device_train_batch_size"] * DataSection().block_size
RUNS = ("full", "static", "dynamic")
DTYPES = ("float32", "bfloat16")
# --shape: the name of a real shape in `adept.memory.reference_configs` (built in code, random weights).
SHAPES = {"qwen2.5-0.5b": "Qwen2.5-0.5B"}


# --- workspace ------------------------------------------------------------------------------


def synthetic_text(num_tokens: int, seed: int, words_per_doc: int = 400) -> str:
    """Paragraphs of pseudo-words, about ``num_tokens`` bytes (= byte-level tokens) in all."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    lexicon = ["".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(3000)]
    docs, size = [], 0
    while size < num_tokens:
        doc = " ".join(rng.choices(lexicon, k=words_per_doc)) + "."
        docs.append(doc)
        size += len(doc) + 2
    return "\n\n".join(docs)


def model_config(args):
    """The base model's config: a Llama from the size flags, or the ``--shape`` named (byte tokenizer's special ids)."""
    special = {"bos_token_id": 256, "eos_token_id": 257, "pad_token_id": 258}
    positions = max(args.block_size, args.probe_length)
    if args.shape != "llama":
        from adept.memory import reference_configs

        config = reference_configs()[SHAPES[args.shape]]
        for key, value in special.items():
            setattr(config, key, value)
        config.max_position_embeddings = max(config.max_position_embeddings, positions)
        return config
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=positions,
        tie_word_embeddings=False,
        **special,
    )


def apply_shape(args) -> None:
    """Copy a ``--shape``'s sizes into the size flags, which the layer choice, FLOPs count and printout read."""
    from adept.memory import model_shape

    shape = model_shape(model_config(args))
    args.layers, args.hidden, args.intermediate = shape.num_hidden_layers, shape.hidden_size, shape.intermediate_size
    args.heads, args.kv_heads, args.vocab = shape.num_attention_heads, shape.num_key_value_heads, shape.vocab_size


def checkpoint_dir(workdir: Path, kind: str, dtype: str) -> Path:
    """``base``/``expanded`` checkpoint saved in ``dtype`` (plain names for float32, as before --dtype)."""
    return workdir / (kind if dtype == "float32" else f"{kind}-{dtype}")


def build_workspace(workdir: Path, args) -> tuple[list[int], dict[str, int]]:
    """Random base checkpoint saved in each dtype under test, its expansions, and the domain and probe corpora."""
    import torch
    from transformers import AutoModelForCausalLM

    from adept.data import byte_tokenizer
    from adept.expansion import expand_checkpoint, plan_expansion, select_uniform
    from adept.training import count_parameters

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config(args), dtype=torch.float32)
    _, base_params = count_parameters(model)
    layer_params = sum(p.numel() for p in model.model.layers[0].parameters())
    source = (
        [int(x) for x in args.source_layers.split(",")]
        if args.source_layers
        else select_uniform(args.layers, args.new_layers)
    )
    plan = plan_expansion(args.layers, source)
    # float32 first: the bf16 base is the fp32 one rounded (the cast is in place).
    for dtype in sorted(args.dtype, key=DTYPES.index):
        base = checkpoint_dir(workdir, "base", dtype)
        model.to(getattr(torch, dtype)).save_pretrained(base)
        byte_tokenizer().save_pretrained(base)
        expand_checkpoint(base, checkpoint_dir(workdir, "expanded", dtype), plan)
    del model
    steps = args.warmup_steps + args.steps
    (workdir / "domain.txt").write_text(synthetic_text(2 * steps * args.batch_size * args.block_size + 10_000, seed=1))
    (workdir / "probe.txt").write_text(synthetic_text(2 * args.probe_tokens + 10_000, seed=2))
    counts = {
        "base": base_params,
        "expanded": base_params + len(source) * layer_params,
        "trainable_adept": len(source) * layer_params,
    }
    return source, counts


# --- one run, in its own process -------------------------------------------------------------


def _rss(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(spec_path: str) -> None:
    """Run one `run_training` with timing and memory probes; write the numbers as JSON."""
    spec = json.loads(Path(spec_path).read_text())
    import torch

    import adept.training as training
    from adept.stage2 import AdeptCallback

    cuda = spec["device"] == "cuda"
    if not cuda:
        torch.set_num_threads(spec["threads"])
    record: dict = {
        "run": spec["run"],
        "step_begins": [],
        "step_begins_cpu": [],
        "step_ends": [],
        "step_ends_cpu": [],
        "estimates": [],
    }
    record["memory_after_imports"] = 0 if cuda else _rss("VmRSS")

    class Timer(training.NonFiniteLossGuard):
        """The library's NaN guard, plus step timestamps and memory readings."""

        def on_train_begin(self, args, state, control, **kwargs):
            record["memory_loaded"] = torch.cuda.memory_allocated() if cuda else _rss("VmRSS")

        def on_step_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            record["step_begins"].append(time.perf_counter())
            record["step_begins_cpu"].append(time.process_time())

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            # Runs before AdeptCallback.on_step_end, so a re-estimation is outside the step.
            record["step_ends"].append(time.perf_counter())
            record["step_ends_cpu"].append(time.process_time())

        def on_train_end(self, args, state, control, **kwargs):
            record["memory_peak"] = torch.cuda.max_memory_allocated() if cuda else _rss("VmHWM")

    class TimedAdeptCallback(AdeptCallback):
        """The library's callback, timing each estimate."""

        def reestimate(self, model, optimizer, scheduler, step, is_main):
            if cuda:
                torch.cuda.synchronize()
            start, start_cpu = time.perf_counter(), time.process_time()
            super().reestimate(model, optimizer, scheduler, step, is_main)
            if cuda:
                torch.cuda.synchronize()
            # Target tokens, as the probe budget counts them.
            tokens = sum(int((batch["labels"][:, 1:] != -100).sum()) for batch in self.probe_batches)
            record["estimates"].append(
                {
                    "step": step,
                    "seconds": time.perf_counter() - start,
                    "cpu_seconds": time.process_time() - start_cpu,
                    "probe_tokens": tokens,
                }
            )

    training.NonFiniteLossGuard = Timer
    cfg = training.TrainConfig(**{**spec["config"], "probe": ProbeConfig(**spec["config"]["probe"])})
    training.run_training(cfg, progress=False, adept_callback=TimedAdeptCallback)
    summary = json.loads((Path(cfg.output_dir) / training.SUMMARY_NAME).read_text())
    record["library_peak_memory"] = summary.get("peak_memory_bytes")  # run_training's own measure
    record["trained_dtype"], record["saved_dtype"] = summary.get("dtype"), summary.get("saved_dtype")
    record["tokens_per_step"] = spec["tokens_per_step"]
    Path(spec["result"]).write_text(json.dumps(record))


def launch(run: str, dtype: str, workdir: Path, args, interval: int, index: int) -> dict:
    method = "full" if run == "full" else "adept"
    steps = args.warmup_steps + args.steps
    out = workdir / f"run-{index}-{run}-{dtype}"
    training_args = {
        "max_steps": steps,
        "per_device_train_batch_size": args.batch_size,
        "learning_rate": 1e-4,
        "warmup_steps": 0,
        "logging_steps": 1000,
        "save_strategy": "no",
        "disable_tqdm": True,
        "use_cpu": args.device == "cpu",
        "gradient_checkpointing": args.gradient_checkpointing,
        "report_to": [],
    }
    if dtype == "float32":
        training_args["bf16"] = args.bf16  # fp32 weights, optionally under bf16 autocast
    # A bf16 dtype turns on bf16 autocast in run_training itself (turning it off is an error).
    config = {
        "model": str(checkpoint_dir(workdir, "base" if method == "full" else "expanded", dtype)),
        "data": [str(workdir / "domain.txt")],
        "dtype": dtype,
        "output_dir": str(out),
        "method": method,
        "probe_data": str(workdir / "probe.txt"),
        "block_size": args.block_size,
        "reestimate_every": interval if run == "dynamic" else 0,
        "probe": {
            "max_tokens": args.probe_tokens,
            "max_length": args.probe_length,
            "batch_size": args.probe_batch_size,
        },
        "cache_dir": str(workdir / "cache"),
        "resume": False,
        "training_args": training_args,
    }
    spec = {
        "run": run,
        "device": args.device,
        "config": config,
        "result": str(workdir / f"result-{index}.json"),
        "tokens_per_step": args.batch_size * args.block_size,
        "threads": args.threads,
    }
    spec_path = workdir / f"spec-{index}.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if args.device == "cpu":
        env |= {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(spec_path)], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        raise RuntimeError(f"{run} run failed:\n{done.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    record = json.loads(Path(spec["result"]).read_text())
    if (record["trained_dtype"], record["saved_dtype"]) != (dtype, dtype):
        raise RuntimeError(
            f"{run} run asked for {dtype} but trained in {record['trained_dtype']} from a "
            f"{record['saved_dtype']} checkpoint"
        )
    return {**record, "dtype": dtype}


# --- analysis ---------------------------------------------------------------------------------


def step_seconds(record: dict, warmup: int, clock: str) -> list[float]:
    """Optimizer-step times after warm-up (``wall``: perf_counter, ``cpu``: this process's CPU time)."""
    suffix = "" if clock == "wall" else "_cpu"
    pairs = list(zip(record["step_begins" + suffix], record["step_ends" + suffix]))
    return [end - begin for begin, end in pairs[warmup:]]


def probe_seconds(record: dict, warmup: int, clock: str) -> list[float]:
    """Times of the re-estimations made during the timed steps (after step ``warmup``)."""
    key = "seconds" if clock == "wall" else "cpu_seconds"
    return [e[key] for e in record["estimates"] if e["step"] > warmup]


def per_token(record: dict, warmup: int, clock: str) -> float:
    timed = step_seconds(record, warmup, clock)
    return sum(timed) / (len(timed) * record["tokens_per_step"])


def summarize(records: list[dict], warmup: int) -> dict:
    """Per-kind medians, paired ratios, and the re-estimation overhead (measured and derived)."""
    by_run = {run: [r for r in records if r["run"] == run] for run in RUNS}
    out: dict = {"runs": {}}
    for run, rows in by_run.items():
        out["runs"][run] = {
            "seconds_per_token": [per_token(r, warmup, "wall") for r in rows],
            "cpu_seconds_per_token": [per_token(r, warmup, "cpu") for r in rows],
            "memory_peak": [r["memory_peak"] for r in rows],
            "memory_after_imports": [r["memory_after_imports"] for r in rows],
            "memory_loaded": [r["memory_loaded"] for r in rows],
            "library_peak_memory": [r["library_peak_memory"] for r in rows],
            "estimates": [r["estimates"] for r in rows],
            "step_seconds": [step_seconds(r, 0, "wall") for r in rows],
            "step_cpu_seconds": [step_seconds(r, 0, "cpu") for r in rows],
        }
    # Runs of round i ran next to each other, so ratios are taken within a round.
    rounds = list(zip(by_run["full"], by_run["static"], by_run["dynamic"]))
    for clock in ("wall", "cpu"):
        out[f"time_ratio_{clock}"] = [per_token(s, warmup, clock) / per_token(f, warmup, clock) for f, s, _ in rounds]
        # The dynamic run's probe time over its optimizer-step time, per re-estimation per step: / interval gives
        # the overhead at that interval.
        out[f"direct_overhead_{clock}"] = [
            sum(probe_seconds(d, warmup, clock)) / sum(step_seconds(d, warmup, clock)) for _, _, d in rounds
        ]
        out[f"direct_overhead_per_reestimation_{clock}"] = [
            overhead * len(step_seconds(d, warmup, clock)) / len(probe_seconds(d, warmup, clock))
            for overhead, (_, _, d) in zip(out[f"direct_overhead_{clock}"], rounds)
        ]
        # One re-estimation (a probe pass after step 0, model warm) and one plain adept step.
        probes = [x for r in by_run["dynamic"] for x in probe_seconds(r, 0, clock)]
        steps = [x for r in by_run["static"] for x in step_seconds(r, warmup, clock)]
        out[f"probe_seconds_{clock}"] = statistics.median(probes)
        out[f"adept_step_seconds_{clock}"] = statistics.median(steps)
    out["probe_count"] = sum(1 for r in by_run["dynamic"] for e in r["estimates"] if e["step"] > 0)
    out["probe_tokens"] = by_run["dynamic"][0]["estimates"][0]["probe_tokens"]
    return out


def matmul_flops_ratio(args, source: list[int]) -> float:
    """adept / full matmul FLOPs per token, from the shapes (attention scores and optimizer ignored).

    Full CPT: forward, input gradients and weight gradients of every layer and the LM head
    (3x forward). adept: forward of every layer; input gradients only from the head down to the
    lowest inserted copy; weight gradients only of the copies.
    """
    from adept.expansion import plan_expansion

    kv = args.kv_heads * (args.hidden // args.heads)
    layer = 2 * args.hidden * args.hidden + 2 * args.hidden * kv + 3 * args.hidden * args.intermediate
    head = args.hidden * args.vocab
    inserted = plan_expansion(args.layers, source).inserted_layer_indices
    depth = args.layers + len(inserted)
    full = 3 * (args.layers * layer + head)
    adept = (depth * layer + head) + (head + (depth - 1 - min(inserted)) * layer) + len(inserted) * layer
    return adept / full


def gib(value: float) -> str:
    return f"{value / 1024**3:.2f}"


def verdict(value: float, target: float) -> str:
    return "met" if value <= target else "MISSED"


def memory_estimates(args, source: list[int], dtype: str) -> dict[str, dict]:
    """`estimate_training_memory` of each kind's training step at this run's settings (bytes by component).

    Its float32 policy has no autocast, so under ``--bf16`` a float32 run's estimate leaves out the bf16 copies.
    """
    from adept.expansion import plan_expansion
    from adept.memory import estimate_training_memory

    config = model_config(args)
    common = {
        "dtype": dtype,
        "micro_batch_size": args.batch_size,
        "block_size": args.block_size,
        "gradient_checkpointing": args.gradient_checkpointing,
    }
    full = estimate_training_memory(config, method="full", **common)
    adept = estimate_training_memory(
        config,
        method="adept",
        trainable_layers=len(source),
        lowest_trainable_layer=min(plan_expansion(args.layers, source).inserted_layer_indices),
        **common,
    )
    return {"full": full.as_dict(), "static": adept.as_dict(), "dynamic": adept.as_dict()}


def measured_memory(result: dict, run: str, over: str | None) -> float:
    """Median peak of a kind's runs, less the median-paired baseline ``over`` (None: the raw peak)."""
    peaks = result["runs"][run]["memory_peak"]
    base = [0] * len(peaks) if over is None else result["runs"][run][over]
    return statistics.median(p - b for p, b in zip(peaks, base))


def judged_memory(result: dict, args, run: str) -> float:
    """The memory the targets are judged on.

    max_memory_allocated on CUDA, peak RSS over the RSS after imports on CPU.
    """
    return measured_memory(result, run, None if args.device == "cuda" else "memory_after_imports")


def precision_label(dtype: str, bf16: bool) -> str:
    if dtype == "float32":
        return "bf16 mixed" if bf16 else "fp32"
    return f"{dtype} frozen weights, fp32 trainable masters, {dtype} autocast"


def report(result: dict, args, source: list[int], estimates: dict[str, dict]) -> dict:
    """Print the tables; return the ratios."""
    med = statistics.median
    runs = result["runs"]
    cuda = args.device == "cuda"
    step_tokens = args.batch_size * args.block_size
    probe_tokens = result["probe_tokens"]

    def memory(run: str, over: str | None) -> float:
        return measured_memory(result, run, over)

    print()
    if cuda:
        print(f"{'run':<26} {'wall s/token':>13} {'tokens/s':>9} {'max_memory_allocated GiB':>25} {'estimate GiB':>13}")
    else:
        print(
            f"{'run':<26} {'wall s/token':>13} {'tokens/s':>9} {'CPU s/token':>12} "
            f"{'peak RSS GiB':>13} {'over imports':>13} {'over loaded':>12} {'estimate GiB':>13}"
        )
    for run, label in (
        ("full", "full CPT, base model"),
        ("static", "adept, static plan"),
        ("dynamic", f"adept, every {args.interval} steps"),
    ):
        wall = med(runs[run]["seconds_per_token"])
        line = f"{label:<26} {wall * 1e3:>11.3f}ms {1 / wall:>9.0f} "
        if cuda:
            line += f"{gib(memory(run, None)):>25}"
        else:
            line += (
                f"{med(runs[run]['cpu_seconds_per_token']) * 1e3:>10.3f}ms {gib(memory(run, None)):>13} "
                f"{gib(memory(run, 'memory_after_imports')):>13} {gib(memory(run, 'memory_loaded')):>12}"
            )
        print(line + f" {gib(estimates[run]['total']):>13}")

    ratios: dict = {"matmul_flops": matmul_flops_ratio(args, source)}
    ratios["time_per_token"] = med(result["time_ratio_wall"])
    ratios["time_per_token_cpu"] = med(result["time_ratio_cpu"])
    if cuda:
        ratios["peak_memory"] = memory("static", None) / memory("full", None)
        memory_measure = "max_memory_allocated"
    else:
        ratios["peak_memory"] = memory("static", "memory_after_imports") / memory("full", "memory_after_imports")
        ratios["peak_memory_whole_process"] = memory("static", None) / memory("full", None)
        ratios["peak_memory_over_loaded"] = memory("static", "memory_loaded") / memory("full", "memory_loaded")
        memory_measure = "peak RSS over the RSS after imports"
    ratios["peak_memory_measure"] = memory_measure

    # Derived: one probe pass / (interval x one step) at the default schedule, sizes scaled
    # linearly to the defaults if they differ.
    scale = (DEFAULT_PROBE_TOKENS / probe_tokens) * (step_tokens / DEFAULT_STEP_TOKENS)
    for clock in ("wall", "cpu"):
        probe, step = result[f"probe_seconds_{clock}"], result[f"adept_step_seconds_{clock}"]
        ratios[f"reestimation_overhead_direct_{clock}"] = med(result[f"direct_overhead_{clock}"])
        for run_steps in QUOTED_RUNS:
            interval = run_steps // DEFAULT_REFRESHES
            ratios[f"reestimation_overhead_derived_{run_steps}_{clock}"] = probe / (interval * step) * scale
            ratios[f"reestimation_overhead_direct_scaled_{run_steps}_{clock}"] = (
                med(result[f"direct_overhead_per_reestimation_{clock}"]) / interval * scale
            )

    probe_w, step_w = result["probe_seconds_wall"], result["adept_step_seconds_wall"]
    print()
    print(
        f"measured: one re-estimation (probe pass over {probe_tokens} tokens, median of {result['probe_count']} after "
        f"step 0) {probe_w:.2f} s; one adept step ({step_tokens} tokens) {step_w:.3f} s: "
        f"a re-estimation costs {probe_w / step_w:.1f} steps"
    )
    print(
        f"measured: dynamic (every {args.interval} steps), probe time over optimizer-step time: "
        + ", ".join(f"{100 * x:+.1f}%" for x in result["direct_overhead_wall"])
        + " (CPU time: "
        + ", ".join(f"{100 * x:+.1f}%" for x in result["direct_overhead_cpu"])
        + ")"
    )
    if scale != 1:
        print(
            f"derived: scaled to the defaults ({DEFAULT_PROBE_TOKENS} probe tokens, steps of {DEFAULT_STEP_TOKENS} "
            "tokens) "
            f"linearly in tokens: x{scale:.3f}"
        )

    # Time verdicts: on CPU the runs are single-threaded, so process CPU time is what the wall
    # time would be on an idle machine; on a shared one wall time also counts waiting for a core.
    ratios["judged_on"] = "wall time" if cuda else "CPU time"
    time_key = "time_per_token" if cuda else "time_per_token_cpu"
    clock = "wall" if cuda else "cpu"
    print()
    print(
        f"{'adept (static plan) / full CPT':<50} {'wall':>7} {'CPU':>7} {'target':>7}  result ({ratios['judged_on']})"
    )
    rounds = ", ".join(f"{w:.2f}/{c:.2f}" for w, c in zip(result["time_ratio_wall"], result["time_ratio_cpu"]))
    print(
        f"{'time per token, median of ' + str(args.repeats) + ' paired rounds':<50} {ratios['time_per_token']:>6.2f}x "
        f"{ratios['time_per_token_cpu']:>6.2f}x {TARGET_TIME:>6.2f}x  {verdict(ratios[time_key], TARGET_TIME)} "
        f"(wall/CPU by round: {rounds})"
    )
    print(f"{'  expected from matmul FLOPs (derived)':<50} {ratios['matmul_flops']:>6.2f}x")
    print(
        f"{'peak memory, ' + memory_measure:<50} {ratios['peak_memory']:>6.2f}x {'':>7} {TARGET_MEMORY:>6.2f}x  "
        f"{verdict(ratios['peak_memory'], TARGET_MEMORY)}"
    )
    ratios["peak_memory_estimate"] = estimates["static"]["total"] / estimates["full"]["total"]
    print(f"{'  estimate_training_memory (derived)':<50} {ratios['peak_memory_estimate']:>6.2f}x")
    if not cuda:
        print(f"{'  whole-process peak RSS':<50} {ratios['peak_memory_whole_process']:>6.2f}x")
        print(f"{'  peak RSS over the RSS with the model loaded':<50} {ratios['peak_memory_over_loaded']:>6.2f}x")
        ratios["peak_memory_library"] = med(runs["static"]["library_peak_memory"]) / med(
            runs["full"]["library_peak_memory"]
        )
        print(f"{'  run_training peak_memory_bytes (sampled RSS)':<50} {ratios['peak_memory_library']:>6.2f}x")
    for run_steps in QUOTED_RUNS:
        interval = run_steps // DEFAULT_REFRESHES
        label = f"re-estimation overhead, {run_steps}-step run (every {interval}), derived"
        print(
            f"{label:<50} {100 * ratios[f'reestimation_overhead_derived_{run_steps}_wall']:>6.2f}% "
            f"{100 * ratios[f'reestimation_overhead_derived_{run_steps}_cpu']:>6.2f}% {100 * TARGET_OVERHEAD:>6.1f}%  "
            f"{verdict(ratios[f'reestimation_overhead_derived_{run_steps}_{clock}'], TARGET_OVERHEAD)}"
        )
        label = f"  from the direct run, rescaled to every {interval} steps"
        print(
            f"{label:<50} {100 * ratios[f'reestimation_overhead_direct_scaled_{run_steps}_wall']:>6.2f}% "
            f"{100 * ratios[f'reestimation_overhead_direct_scaled_{run_steps}_cpu']:>6.2f}%"
        )
    return ratios


def report_dtypes(results: dict[str, dict], ratios: dict[str, dict], estimates: dict[str, dict], args) -> dict:
    """Print adept/full by dtype and the bf16-vs-fp32 comparisons; return the cross-dtype ratios."""
    cuda = args.device == "cuda"
    clock = "wall" if cuda else "CPU"
    time_key = "time_per_token" if cuda else "time_per_token_cpu"
    measure = "max_memory_allocated" if cuda else "peak RSS over the RSS after imports"
    dtypes = list(results)
    print()
    print(
        f"{'adept (static plan) / full CPT, by dtype':<50} " + " ".join(f"{d:>9}" for d in dtypes) + f" {'target':>7}"
    )
    for key, label, target in (
        (time_key, f"time per token ({clock} time)", TARGET_TIME),
        ("peak_memory", f"peak memory, {measure}", TARGET_MEMORY),
        ("peak_memory_estimate", "  estimate_training_memory (derived)", None),
    ):
        line = f"{label:<50} " + " ".join(f"{ratios[d][key]:>8.2f}x" for d in dtypes)
        if target is not None:
            line += f" {target:>6.2f}x  " + "/".join(verdict(ratios[d][key], target) for d in dtypes)
        print(line)

    cross: dict = {}
    print()
    print(f"{'other dtype / float32, same kind':<50} {'time':>7} {'memory':>7} {'estimate':>9}")
    for dtype in dtypes:
        if dtype == "float32" or "float32" not in dtypes:
            continue
        for run, label in (("full", "full CPT"), ("static", "adept, static plan")):
            fp32, low = results["float32"], results[dtype]
            seconds = "seconds_per_token" if cuda else "cpu_seconds_per_token"
            time_ratio = statistics.median(low["runs"][run][seconds]) / statistics.median(fp32["runs"][run][seconds])
            memory_ratio = judged_memory(low, args, run) / judged_memory(fp32, args, run)
            estimate_ratio = estimates[dtype][run]["total"] / estimates["float32"][run]["total"]
            cross[f"{run}_{dtype}_over_float32"] = {
                "time_per_token": time_ratio,
                "peak_memory": memory_ratio,
                "peak_memory_estimate": estimate_ratio,
            }
            print(f"{label + ', ' + dtype:<50} {time_ratio:>6.2f}x {memory_ratio:>6.2f}x {estimate_ratio:>8.2f}x")
    if "bfloat16" in dtypes and "float32" in dtypes:
        measured = judged_memory(results["bfloat16"], args, "static") / judged_memory(results["float32"], args, "full")
        estimated = estimates["bfloat16"]["static"]["total"] / estimates["float32"]["full"]["total"]
        cross["adept_bfloat16_over_full_float32"] = {"peak_memory": measured, "peak_memory_estimate": estimated}
        print()
        print(
            f"{'ADEPT bf16 / full CPT fp32-master peak memory':<50} {'measured':>9} {'estimate':>9} {'target':>7}  "
            "result"
        )
        print(
            f"{measure:<50} {measured:>8.2f}x {estimated:>8.2f}x {TARGET_MEMORY_BF16_VS_FP32:>6.2f}x  "
            f"{verdict(measured, TARGET_MEMORY_BF16_VS_FP32)}"
        )
    return cross


def dtype_list(text: str) -> list[str]:
    """``--dtype``: one dtype or a comma list of distinct ones."""
    dtypes = [d.strip() for d in text.split(",") if d.strip()]
    if not dtypes or any(d not in DTYPES for d in dtypes) or len(set(dtypes)) != len(dtypes):
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(DTYPES)} or a comma list of them, got '{text}'")
    return dtypes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--shape",
        choices=("llama", *SHAPES),
        default="llama",
        help="llama: a random Llama from --layers ... --vocab; qwen2.5-0.5b: Qwen2.5-0.5B's shape "
        "(tied embeddings, 494M parameters), built in code, which replaces those flags.",
    )
    parser.add_argument("--layers", type=int, default=16, help="Decoder layers of the base model.")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=1408)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument(
        "--vocab", type=int, default=8192, help="Model vocabulary (the byte tokenizer uses 259 ids of it)."
    )
    parser.add_argument("--new-layers", type=int, default=4, help="Layers to copy, placed uniformly (LLaMA-Pro).")
    parser.add_argument(
        "--source-layers", default=None, help="Explicit comma-separated 0-based layers to copy instead."
    )
    parser.add_argument("--batch-size", type=int, default=2, help="Per-device training batch (adept default: 8).")
    parser.add_argument("--block-size", type=int, default=256, help="Tokens per training block (adept default: 256).")
    parser.add_argument("--steps", type=int, default=8, help="Timed optimizer steps per run.")
    parser.add_argument("--warmup-steps", type=int, default=2, help="Untimed steps at the start of each run.")
    parser.add_argument("--interval", type=int, default=4, help="reestimate_every of the dynamic run.")
    parser.add_argument(
        "--probe-tokens",
        type=int,
        default=1024,
        help=f"Probe token budget (adept default: {DEFAULT_PROBE_TOKENS}). With the defaults for this, "
        "--batch-size and --block-size the overhead needs no scaling (use them on a GPU).",
    )
    parser.add_argument("--probe-length", type=int, default=256, help="Probe sequence length (adept default: 256).")
    parser.add_argument(
        "--probe-batch-size",
        type=int,
        default=None,
        help="Probe batch size (adept default: 8; here default: --batch-size). The probe pass holds the "
        "activations of one probe batch, so a probe batch larger than the training batch sets "
        "adept's peak memory.",
    )
    parser.add_argument("--gradient-checkpointing", action="store_true", help="Gradient checkpointing in both methods.")
    parser.add_argument(
        "--repeats", type=int, default=2, help="Runs of each kind; kinds alternate, order reversed every other round."
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads per run. On a shared machine keep 1: with 2 OpenMP threads and a busy "
        "second core every op waits for a descheduled thread and runs tens of times slower.",
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="bf16 mixed precision (fp32 master weights) for float32 runs; bfloat16 runs always use it.",
    )
    parser.add_argument(
        "--dtype",
        type=dtype_list,
        default="float32",
        help="TrainConfig.dtype of the runs, the base checkpoint saved in it: float32 or bfloat16, or "
        "a comma list (float32,bfloat16) to run every kind in each, side by side.",
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="Where checkpoints go (default: a temp dir, removed)."
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write every number to this JSON file.")
    args = parser.parse_args()
    if args.probe_batch_size is None:
        args.probe_batch_size = args.batch_size
    if args.child:
        child(args.child)
        return
    if args.warmup_steps < 1:
        parser.error("--warmup-steps must be at least 1: the first step has no start time")
    if args.steps < 2 * args.interval:
        parser.error("--steps must be at least 2 x --interval so the dynamic run re-estimates inside the timed steps")

    if args.shape != "llama":
        apply_shape(args)
    import torch

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="adept-cost-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        source, params = build_workspace(workdir, args)
        device = torch.cuda.get_device_name() if args.device == "cuda" else f"{args.threads} CPU thread(s) per run"
        config = model_config(args)
        name = "Llama" if args.shape == "llama" else f"{SHAPES[args.shape]}-shaped {config.model_type}"
        print(
            f"model: random {name}, {args.layers} layers, hidden {args.hidden}, intermediate {args.intermediate}, "
            f"{args.heads} heads ({args.kv_heads} kv), vocab {args.vocab}, "
            f"{'tied' if config.tie_word_embeddings else 'untied'}; {params['base'] / 1e6:.1f}M parameters"
        )
        print(
            f"expanded: copies of layers {source} -> {args.layers + len(source)} layers, "
            f"{params['expanded'] / 1e6:.1f}M "
            f"parameters, adept trains {params['trainable_adept'] / 1e6:.1f}M "
            f"({100 * params['trainable_adept'] / params['expanded']:.1f}%)"
        )
        precision = " vs ".join(precision_label(d, args.bf16) for d in args.dtype)
        each = "kind" if len(args.dtype) == 1 else "kind and dtype"
        print(
            f"training: batch {args.batch_size} x {args.block_size} tokens, AdamW, "
            f"{precision}{', gradient checkpointing' if args.gradient_checkpointing else ''}, "
            f"{args.device} ({device}); {args.warmup_steps} warm-up + "
            f"{args.steps} timed steps per run, {args.repeats} runs of each {each}, alternating, each in a fresh "
            "process"
        )
        print(
            f"probe: {args.probe_tokens} tokens in batches of {args.probe_batch_size} x {args.probe_length}; "
            f"dynamic run re-estimates every {args.interval} steps, static run only at step 0"
        )
        records = []
        units = [(run, dtype) for dtype in args.dtype for run in RUNS]
        for round_idx in range(args.repeats):
            order = units if round_idx % 2 == 0 else units[::-1]
            for run, dtype in order:
                records.append(launch(run, dtype, workdir, args, args.interval, len(records)))
        results = {d: summarize([r for r in records if r["dtype"] == d], args.warmup_steps) for d in args.dtype}
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    estimates = {d: memory_estimates(args, source, d) for d in args.dtype}
    ratios = {}
    for dtype in args.dtype:
        if len(args.dtype) > 1:
            print(f"\n=== dtype {dtype}: {precision_label(dtype, args.bf16)} ===")
        ratios[dtype] = report(results[dtype], args, source, estimates[dtype])
    cross = report_dtypes(results, ratios, estimates, args) if len(args.dtype) > 1 else None
    print(f"\nbenchmark wall time: {time.perf_counter() - started:.0f} s")
    if args.json:
        # One dtype: the numbers at the top level, as before --dtype; several: keyed by dtype.
        single = len(args.dtype) == 1
        payload = {
            "config": {k: v for k, v in vars(args).items() if k not in ("child", "json", "workdir")},
            "source_layers": source,
            "parameters": params,
            "device": device,
            "measured": results[args.dtype[0]] if single else results,
            "ratios": ratios[args.dtype[0]] if single else ratios,
            "memory_estimates": estimates[args.dtype[0]] if single else estimates,
            "targets": {
                "time_per_token": TARGET_TIME,
                "peak_memory": TARGET_MEMORY,
                "reestimation_overhead": TARGET_OVERHEAD,
                "peak_memory_adept_bfloat16_over_full_float32": TARGET_MEMORY_BF16_VS_FP32,
            },
        }
        if cross is not None:
            payload["cross_dtype"] = cross
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
