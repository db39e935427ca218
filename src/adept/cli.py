"""Command-line interface: parse arguments, dispatch to stage runners.

Heavy libraries (torch, transformers) are imported inside the handlers so ``adept --help``
stays instant. Errors from bad input are printed as one line and exit with status 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="adept",
    help="Domain-adaptive continual pretraining: importance-guided layer expansion and decoupled tuning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)


def _fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(code=2)


def _model_path(path: Path) -> Path:
    """A checkpoint folder for a model option: a ``.gguf`` file is converted once (cached) and its folder used."""
    from adept.checkpoints import is_gguf, resolve_model_path

    return resolve_model_path(path) if is_gguf(path) else path


def _parse_layers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--layers must be comma-separated integers such as 3,7, got '{text}'") from None


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True
    )


@app.command()
def importance(
    model: Annotated[Path, typer.Option(help="Local Hugging Face checkpoint directory or .gguf file.")],
    probe: Annotated[Path, typer.Option(help="General-domain probe corpus: .txt, .jsonl, .json or a dataset directory.")],
    output: Annotated[Path, typer.Option(help="Directory for importance.json and the PNG plots.")],
    metrics: Annotated[str, typer.Option(help="Comma-separated: masking, grad_weight, rank, fisher.")] = "masking,grad_weight,rank,fisher",
    max_tokens: Annotated[int, typer.Option(help="Probe token budget (target tokens).")] = 20_000,
    max_length: Annotated[int, typer.Option(help="Sequence length of probe examples.")] = 256,
    batch_size: Annotated[int, typer.Option(help="Probe batch size.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed for sampling probe documents.")] = 0,
    txt_split: Annotated[str, typer.Option(help="How .txt files split into documents: paragraph or line.")] = "paragraph",
    device: Annotated[str, typer.Option(help="cpu, cuda[:N] or auto.")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16, float16 or auto.")] = "float32",
) -> None:
    """Score how much each layer and unit matters for general competence.

    Probe defaults are the pipeline's: 20,000 tokens, length 256, batch 8 (this command used 50,000, 512 and 4 before).
    """
    from adept.config import ImportanceSection
    from adept.stages import run_importance

    try:
        settings = ImportanceSection(max_tokens=max_tokens, max_length=max_length, batch_size=batch_size, seed=seed,
                                     metrics=[m.strip() for m in metrics.split(",") if m.strip()])
        path = run_importance(_model_path(model), probe, output, settings, txt_split=txt_split, device=device, dtype=dtype)
    except _USER_ERRORS as err:
        _fail(err)
    typer.echo(f"importance: {path}")


@app.command()
def expand(
    model: Annotated[Path, typer.Option(help="Local Hugging Face checkpoint directory (safetensors) or .gguf file.")],
    output: Annotated[Path, typer.Option(help="Directory for the expanded checkpoint.")],
    layers: Annotated[Optional[str], typer.Option(help="0-based source layers to duplicate, e.g. 3,7.")] = None,
    importance: Annotated[Optional[Path], typer.Option(help="importance.json used to pick layers.")] = None,
    num_new_layers: Annotated[Optional[int], typer.Option(help="Duplicate the K least important layers.")] = None,
    trainable_fraction: Annotated[
        Optional[float], typer.Option(help="Duplicate as many least important layers as fit in this share of the expanded model.")
    ] = None,
    uniform: Annotated[
        Optional[int], typer.Option(help="LLaMA-Pro baseline: K copies spread evenly, ignoring importance.")
    ] = None,
    metric: Annotated[str, typer.Option(help="Layer metric from importance.json: masking, grad_weight, rank, fisher.")] = "masking",
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty output directory.")] = False,
) -> None:
    """Duplicate the least important layers with zeroed output projections (function preserving)."""
    from adept.stages import run_expansion

    try:
        path = run_expansion(
            _model_path(model),
            output,
            layers=_parse_layers(layers) if layers is not None else None,
            importance_path=importance,
            num_new_layers=num_new_layers,
            trainable_fraction=trainable_fraction,
            uniform=uniform,
            metric=metric,
            overwrite=overwrite,
        )
    except _USER_ERRORS as err:
        _fail(err)
    typer.echo(f"expanded checkpoint: {path}")


def _parse_assignments(items: list[str] | None, option: str) -> dict:
    """``key=value`` pairs; values parsed as YAML so numbers and booleans keep their type."""
    from adept.config import parse_assignment

    parsed = {}
    for item in items or []:
        try:
            key, value = parse_assignment(item)
        except ValueError as err:
            raise ValueError(f"{option} {err}") from None
        parsed[key] = value
    return parsed


@app.command()
def train(
    model: Annotated[Path, typer.Option(help="Expanded checkpoint (adept, llama-pro, adept-no-stage2) or base model (folder or .gguf).")],
    data: Annotated[list[Path], typer.Option(help="Domain corpus; repeat for several.")],
    output: Annotated[Path, typer.Option(help="Run directory: checkpoints, unit_rates.jsonl, model/, training_summary.json.")],
    method: Annotated[str, typer.Option(help="adept, full, llama-pro, adept-no-stage1, adept-no-stage2, freeze or lora.")] = "adept",
    probe: Annotated[Optional[Path], typer.Option(help="General-domain probe corpus for importance (adept, adept-no-stage1).")] = None,
    eval_data: Annotated[Optional[list[Path]], typer.Option(help="Held-out corpus evaluated during training; repeatable.")] = None,
    importance: Annotated[
        Optional[Path], typer.Option(help="importance.json: layers for freeze / adept-no-stage1; adept's step-0 rates (default: the one named in expansion.json).")
    ] = None,
    num_layers: Annotated[Optional[int], typer.Option(help="Number of least important layers freeze / adept-no-stage1 train.")] = None,
    layer_metric: Annotated[str, typer.Option(help="Layer metric used with --importance.")] = "masking",
    replay_data: Annotated[Optional[list[Path]], typer.Option(help="General-domain corpus mixed into training.")] = None,
    replay_ratio: Annotated[float, typer.Option(help="Share of replay blocks in the training stream.")] = 0.0,
    block_size: Annotated[int, typer.Option(help="Tokens per packed training block.")] = 256,
    tokenize_workers: Annotated[Optional[int], typer.Option(help="Processes that tokenise the corpora (cached once).")] = None,
    learning_rate: Annotated[float, typer.Option(help="Base learning rate (multipliers scale it per unit).")] = 3e-4,
    max_steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 200,
    batch_size: Annotated[int, typer.Option(help="Per-device training batch size.")] = 8,
    gradient_accumulation_steps: Annotated[int, typer.Option(help="Micro-batches per optimizer step.")] = 1,
    reestimate_every: Annotated[
        Optional[int], typer.Option(help="Refresh importance every N steps (0: only at step 0; default: 10 refreshes per run).")
    ] = None,
    reestimate_fraction: Annotated[Optional[float], typer.Option(help="Refresh interval as a fraction of max steps.")] = None,
    rule: Annotated[str, typer.Option(help="Multiplier rule: linear (m = scale*(1-I)) or inverse.")] = "linear",
    scale: Annotated[float, typer.Option(help="Multiplier scale (2.0 in the paper).")] = 2.0,
    normalization: Annotated[str, typer.Option(help="Importance normalisation over all units: minmax, rank, none.")] = "minmax",
    unit_score: Annotated[str, typer.Option(help="Unit score: mean (the paper's) or sum of |w*dL/dw| over the tensor.")] = "mean",
    floor: Annotated[float, typer.Option(help="Smallest multiplier.")] = 0.05,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    bf16: Annotated[bool, typer.Option(help="bf16 mixed precision.")] = False,
    gradient_checkpointing: Annotated[bool, typer.Option(help="Gradient checkpointing.")] = False,
    resume: Annotated[bool, typer.Option(help="Resume from the newest checkpoint in --output.")] = True,
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", help="Any TrainingArguments field, e.g. --set save_steps=50 --set report_to=tensorboard.")
    ] = None,
) -> None:
    """Continual pretraining with decoupled per-unit learning rates, or a baseline method."""
    from adept.config import MultiplierRule, TrainConfig
    from adept.training import run_training

    try:
        training_args = {
            "learning_rate": learning_rate,
            "max_steps": max_steps,
            "per_device_train_batch_size": batch_size,
            "gradient_accumulation_steps": gradient_accumulation_steps,
            "seed": seed,
            "data_seed": seed,
            "bf16": bf16,
            "gradient_checkpointing": gradient_checkpointing,
            **_parse_assignments(set_, "--set"),
        }
        cfg = TrainConfig(
            model=str(_model_path(model)), data=[str(p) for p in data], output_dir=str(output), method=method,
            probe_data=str(probe) if probe else None, eval_data=[str(p) for p in eval_data or []],
            importance=str(importance) if importance else None, num_layers=num_layers, layer_metric=layer_metric,
            replay_data=[str(p) for p in replay_data or []], replay_ratio=replay_ratio, block_size=block_size,
            tokenize_workers=tokenize_workers,
            reestimate_every=reestimate_every, reestimate_fraction=reestimate_fraction,
            rule=MultiplierRule(rule=rule, scale=scale, normalization=normalization, unit_score=unit_score, floor=floor),
            resume=resume, training_args=training_args,
        )
        path = run_training(cfg)
    except _USER_ERRORS as err:
        _fail(err)
    finally:
        _close_process_group()
    typer.echo(f"trained model: {path}")


@app.command("run")
def run_command(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML, e.g. configs/demo.yaml.")],
    overrides: Annotated[
        Optional[list[str]], typer.Argument(help="key=value overrides with dotted keys, e.g. train.training_args.max_steps=50.")
    ] = None,
    compare: Annotated[
        Optional[str], typer.Option(help="Comma-separated methods or variants to train side by side, e.g. adept,full,llama-pro.")
    ] = None,
    run_dir: Annotated[Optional[Path], typer.Option(help="Run directory (overrides run_dir in the config).")] = None,
) -> None:
    """Importance -> expansion -> training -> evaluation -> report in one run directory, resumable."""
    from adept.config import load_config
    from adept.evaluation import benchmark_markdown, comparison_markdown, read_results
    from adept.pipeline import run_pipeline

    try:
        extra = list(overrides or [])
        if compare:
            extra.append(f"train.methods=[{compare}]")
        if run_dir is not None:
            extra.append(f"run_dir={run_dir}")
        cfg = load_config(config, extra)
        report_path, pipeline = run_pipeline(cfg)
        results = read_results(Path(cfg.run_dir) / "eval" / "results.json")
    except _USER_ERRORS as err:
        _fail(err)
    typer.echo("")
    typer.echo(comparison_markdown(results))
    typer.echo("")
    if any(entry.get("acc_ci") for run in results["runs"] for entry in run["benchmarks"].values()):
        typer.echo(benchmark_markdown(results))
    if pipeline.skipped:
        typer.echo(f"up to date, skipped: {', '.join(pipeline.skipped)}")
    run = Path(cfg.run_dir)
    typer.echo(f"run directory: {run}")
    for name, what in (("importance", "layer and unit importance + plots"), ("expanded", "expanded checkpoints + expansion.json"),
                       ("train", "per-method checkpoints, unit_rates.jsonl, model/"), ("shift", "token-distribution shift")):
        if (run / name).is_dir():
            typer.echo(f"  {run / name}/: {what}")
    typer.echo(f"results: {run / 'eval' / 'results.json'}")
    typer.echo(f"report: {report_path}")


def _close_process_group() -> None:
    """Under torchrun/accelerate the process group must be closed or the launcher waits forever."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR", help="Pipeline run directories; several (e.g. seeds) merge into one report.")],
    output: Annotated[Optional[Path], typer.Option(help="Report directory (default RUN_DIR/report; required with several run directories).")] = None,
) -> None:
    """Self-contained HTML report (and Markdown) built from the artifacts of one or more runs."""
    from adept.report import build_report

    try:
        paths = build_report(run_dirs, output)
    except _USER_ERRORS as err:
        _fail(err)
    typer.echo(str(paths["html"]))


def _parse_limit(limit: float | None) -> int | float | None:
    """lm-eval reads a limit below 1 as a fraction of each benchmark, else as a question count."""
    if limit is None:
        return None
    if limit <= 0:
        raise ValueError(f"--limit must be positive, got {limit}")
    return limit if limit < 1 else int(limit)


@app.command("eval")
def evaluate(
    model: Annotated[list[Path], typer.Option(help="Checkpoint directory or .gguf file; repeat, the first is the base the others are compared with.")],
    output: Annotated[Path, typer.Option(help="Directory for results.json.")],
    label: Annotated[Optional[list[str]], typer.Option(help="Name of each --model, in order (default: run or checkpoint directory name).")] = None,
    general: Annotated[Optional[list[Path]], typer.Option(help="General-domain held-out corpus (forgetting); repeatable.")] = None,
    domain: Annotated[Optional[list[Path]], typer.Option(help="Domain held-out corpus (gain); repeatable.")] = None,
    general_benchmark: Annotated[
        Optional[list[str]],
        typer.Option(help="General multiple-choice JSONL file, named benchmark (arc_easy, arc_challenge, hellaswag, piqa, sciq, winogrande, boolq, openbookqa) or lm-eval task; repeatable."),
    ] = None,
    domain_benchmark: Annotated[
        Optional[list[str]], typer.Option(help="Domain multiple-choice JSONL file, named benchmark or lm-eval task name; repeatable.")
    ] = None,
    block_size: Annotated[int, typer.Option(help="Tokens per packed held-out block.")] = 256,
    batch_size: Annotated[int, typer.Option(help="Blocks or benchmark requests per forward pass.")] = 8,
    max_blocks: Annotated[Optional[int], typer.Option(help="Evaluate at most N blocks of each held-out corpus.")] = None,
    limit: Annotated[Optional[float], typer.Option(help="At most N questions per benchmark (below 1: a fraction); named benchmarks take a seeded subset.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the named benchmarks' item subset under --limit (the same items for every model).")] = 1234,
    device: Annotated[str, typer.Option(help="cpu, cuda[:N] or auto.")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16, float16 or auto.")] = "float32",
) -> None:
    """Held-out loss and benchmark accuracy (95% intervals, paired differences) of a base model and adapted ones."""
    from adept.evaluation import benchmark_markdown, comparison_markdown, default_label, read_results, run_evaluation

    try:
        if label and len(label) != len(model):
            raise ValueError(f"give one --label per --model ({len(model)} models, {len(label)} labels)")
        labels = list(label) if label else [path.stem if path.suffix.lower() == ".gguf" else default_label(path) for path in model]
        path = run_evaluation(
            list(zip(labels, [_model_path(path) for path in model])),
            output,
            general=general or [],
            domain=domain or [],
            general_benchmarks=general_benchmark or [],
            domain_benchmarks=domain_benchmark or [],
            block_size=block_size,
            batch_size=batch_size,
            max_blocks=max_blocks,
            limit=_parse_limit(limit),
            device=device,
            dtype=dtype,
            seed=seed,
        )
    except _USER_ERRORS as err:
        _fail(err)
    results = read_results(path)
    typer.echo(comparison_markdown(results))
    if benchmark_markdown(results):
        typer.echo(benchmark_markdown(results))
    typer.echo(f"results: {path}")


@app.command()
def convert(
    gguf_file: Annotated[Path, typer.Argument(metavar="MODEL.gguf", help="GGUF file (any quantization transformers reads).")],
    output: Annotated[Path, typer.Option(help="Directory for the checkpoint (safetensors, tokenizer, conversion.json).")],
    dtype: Annotated[str, typer.Option(help="Weights dtype: float32, bfloat16 or float16.")] = "float32",
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty output directory.")] = False,
) -> None:
    """Dequantize a GGUF file into an ordinary Hugging Face checkpoint folder."""
    from adept.checkpoints import convert_gguf

    try:
        path = convert_gguf(gguf_file, output, dtype=dtype, overwrite=overwrite)
    except _USER_ERRORS as err:
        _fail(err)
    typer.echo(f"checkpoint: {path}")


analyze_app = typer.Typer(help="Analyses of trained models.", no_args_is_help=True)
app.add_typer(analyze_app, name="analyze")


@analyze_app.command("shift")
def analyze_shift(
    base: Annotated[Path, typer.Option(help="Base checkpoint directory or .gguf file.")],
    tuned: Annotated[Path, typer.Option(help="Adapted checkpoint directory or .gguf file (same tokenizer).")],
    data: Annotated[Path, typer.Option(help="Held-out corpus: .txt, .jsonl, .json or a dataset directory.")],
    output: Annotated[Path, typer.Option(help="Directory for shift.json and shift.png.")],
    block_size: Annotated[int, typer.Option(help="Tokens per packed block.")] = 256,
    max_blocks: Annotated[int, typer.Option(help="Compare at most N blocks.")] = 64,
    top_k: Annotated[int, typer.Option(help="How many of the most often shifted tokens to list.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Blocks per forward pass.")] = 8,
    device: Annotated[str, typer.Option(help="cpu, cuda[:N] or auto.")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16, float16 or auto.")] = "float32",
) -> None:
    """Where the adapted model's top-1 token ranks in the base model's distribution (paper Fig. 5)."""
    from adept.shift import run_shift

    try:
        path = run_shift(
            _model_path(base), _model_path(tuned), data, output, block_size=block_size, max_blocks=max_blocks, top_k=top_k,
            batch_size=batch_size, device=device, dtype=dtype,
        )
    except _USER_ERRORS as err:
        _fail(err)
    typer.echo(f"token shift: {path}")


def main(argv: list[str] | None = None) -> int:
    """Entry point for the console script and for in-process tests."""
    try:
        code = app(args=argv if argv is not None else sys.argv[1:], standalone_mode=False)
    except typer.Exit as exit_:
        return exit_.exit_code
    except SystemExit as exit_:  # click usage errors
        return int(exit_.code or 0)
    except Exception as err:  # usage errors (typer ships its own copy of click's exception classes)
        if callable(getattr(err, "show", None)) and isinstance(getattr(err, "exit_code", None), int):
            err.show()
            return err.exit_code
        raise
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
