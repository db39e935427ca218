"""Command-line interface: parse arguments, dispatch to stage runners.

Every flag that sets a config key is made from its field in `adept.settings` (name, type, default
and help line are defined there once, see `adept.cli_options`); the flags written here set none.
Heavy libraries (torch, transformers) are imported inside the handlers so ``adept --help`` stays
instant. Errors from bad input are printed as one line and exit with status 2.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from adept.cli_options import (
    DEVICE_OPTIONS,
    EVAL_DATA_OPTIONS,
    EVAL_OPTIONS,
    EXPANSION_OPTIONS,
    IMPORTANCE_OPTIONS,
    SHIFT_DATA_OPTIONS,
    SHIFT_OPTIONS,
    SWEEP_OPTIONS,
    TEXT_OPTIONS,
    TRAIN_OPTIONS,
    TRAINING_ARG_PARAMS,
    config_overrides,
    option_values,
    parse_limit,
    settings_from_options,
    training_args_from_flags,
    with_options,
)
from adept.config import (
    CONVERT_DTYPE,
    DEFAULT_TXT_SPLIT,
    SHIFT_TOP_K,
    EvaluationSection,
    ImportanceSection,
    ProbeConfig,
    TrainConfig,
    load_config,
)

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


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    # Under torchrun / accelerate launch only rank 0 logs progress; the others report warnings.
    replica = int(os.environ.get("RANK", "0")) != 0
    level = logging.WARNING if replica else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)


_PROBE = ProbeConfig()


@app.command(
    help="Score how much each layer and unit matters for general competence.\n\n"
    f"Probe defaults are the pipeline's: {_PROBE.max_tokens:,} tokens, length {_PROBE.max_length}, batch "
    f"{_PROBE.batch_size} (this command used 50,000, 512 and 4 before)."
)
@with_options(IMPORTANCE_OPTIONS, DEVICE_OPTIONS, TEXT_OPTIONS)
def importance(
    model: Annotated[Path, typer.Option(help="Local Hugging Face checkpoint directory or .gguf file.")],
    probe: Annotated[
        Path, typer.Option(help="General-domain probe corpus: .txt, .jsonl, .json or a dataset directory.")
    ],
    output: Annotated[Path, typer.Option(help="Directory for importance.json and the PNG plots.")],
    txt_split: Annotated[
        str, typer.Option(help="How .txt files split into documents: paragraph or line.")
    ] = DEFAULT_TXT_SPLIT,
    **values: Any,
) -> None:
    from adept.importance import run_importance

    try:
        settings = settings_from_options(ImportanceSection, IMPORTANCE_OPTIONS, values)
        path = run_importance(
            _model_path(model),
            probe,
            output,
            settings,
            txt_split=txt_split,
            device=values["device"],
            dtype=values["dtype"],
            attn_implementation=values["attn_implementation"],
            text_field=values["text_field"],
        )
    except _USER_ERRORS as err:
        _fail(err)
    typer.echo(f"importance: {path}")


@app.command()
@with_options(EXPANSION_OPTIONS)
def expand(
    model: Annotated[Path, typer.Option(help="Local Hugging Face checkpoint directory (safetensors) or .gguf file.")],
    output: Annotated[Path, typer.Option(help="Directory for the expanded checkpoint.")],
    importance: Annotated[Path | None, typer.Option(help="importance.json used to pick layers.")] = None,
    uniform: Annotated[
        int | None, typer.Option(help="LLaMA-Pro baseline: K copies spread evenly, ignoring importance.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty output directory.")] = False,
    **values: Any,
) -> None:
    """Duplicate the least important layers with zeroed output projections (function preserving)."""
    from adept.expansion import run_expansion

    try:
        path = run_expansion(
            _model_path(model),
            output,
            importance_path=importance,
            uniform=uniform,
            overwrite=overwrite,
            **option_values(EXPANSION_OPTIONS, values),
        )
    except _USER_ERRORS as err:
        _fail(err)
    typer.echo(f"expanded checkpoint: {path}")


@app.command()
@with_options(TRAIN_OPTIONS, extra=TRAINING_ARG_PARAMS)
def train(
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Any TrainingArguments field, e.g. --set save_steps=50 --set report_to=tensorboard."
        ),
    ] = None,
    **values: Any,
) -> None:
    """Continual pretraining with decoupled per-unit learning rates, or a baseline method."""
    from adept.training import run_training

    try:
        training_args = training_args_from_flags(values, set_ or [])
        values["model"] = str(_model_path(Path(values["model"])))
        path = run_training(settings_from_options(TrainConfig, TRAIN_OPTIONS, values, training_args=training_args))
    except _USER_ERRORS as err:
        _fail(err)
    finally:
        _close_process_group()
    typer.echo(f"trained model: {path}")


@app.command("run")
def run_command(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML, e.g. configs/demo.yaml.")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="key=value overrides with dotted keys, e.g. train.training_args.max_steps=50."),
    ] = None,
    compare: Annotated[
        str | None,
        typer.Option(help="Comma-separated methods or variants to train side by side, e.g. adept,full,llama-pro."),
    ] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Run directory (overrides run_dir in the config).")] = None,
) -> None:
    """Importance -> expansion -> training -> evaluation -> report in one run directory, resumable."""
    from adept.evaluation import benchmark_markdown, comparison_markdown, read_results
    from adept.pipeline import comparison_path, run_pipeline
    from adept.run_directory import run_directory_contents

    try:
        extra = list(overrides or [])
        if compare:
            extra.append(f"train.methods=[{compare}]")
        if run_dir is not None:
            extra.append(f"run_dir={run_dir}")
        cfg = load_config(config, extra)
        try:
            report_path, pipeline = run_pipeline(cfg)
        finally:
            _close_process_group()  # under torchrun / accelerate launch
        results = read_results(comparison_path(cfg.run_dir))
    except _USER_ERRORS as err:
        _fail(err)
    if not pipeline.main:
        return
    typer.echo("")
    typer.echo(comparison_markdown(results))
    typer.echo("")
    if any(entry.get("acc_ci") for run in results["runs"] for entry in run["benchmarks"].values()):
        typer.echo(benchmark_markdown(results))
    if pipeline.skipped:
        typer.echo(f"up to date, skipped: {', '.join(pipeline.skipped)}")
    for line in run_directory_contents(Path(cfg.run_dir)):
        typer.echo(line)
    typer.echo(f"report: {report_path}")


@app.command()
@with_options(SWEEP_OPTIONS)
def sweep(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML, e.g. configs/demo.yaml.")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="key=value overrides with dotted keys, e.g. sweep.rates.adept=[1e-3,3e-3]."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option(help="Print the points, what is done and the time left; train nothing.")
    ] = False,
    max_runs: Annotated[int | None, typer.Option(help="Train at most N points in this sitting.")] = None,
    **values: Any,
) -> None:
    """Each method at each rate of its grid and each seed (resumable), then the forgetting-versus-gain fronts."""
    from adept.sweep import run_sweep

    try:
        extra = [*(overrides or []), *config_overrides(SWEEP_OPTIONS, values, "sweep")]
        paths = run_sweep(config, extra, dry_run=dry_run, max_runs=max_runs, echo=typer.echo)
    except _USER_ERRORS as err:
        _fail(err)
    if paths:
        typer.echo(f"fronts: {paths['json']}\nreport: {paths['html']} ({paths['markdown'].name} beside it)")


def _close_process_group() -> None:
    """Under torchrun/accelerate the process group must be closed or the launcher waits forever."""
    from adept.distributed import leave_launched_processes

    leave_launched_processes()


@app.command()
def report(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(metavar="RUN_DIR", help="Pipeline run directories; several (e.g. seeds) merge into one report."),
    ],
    output: Annotated[
        Path | None,
        typer.Option(help="Report directory (default RUN_DIR/report; required with several run directories)."),
    ] = None,
) -> None:
    """Self-contained HTML report (and Markdown) built from the artifacts of one or more runs."""
    from adept.report import build_report

    try:
        paths = build_report(run_dirs, output)
    except _USER_ERRORS as err:
        _fail(err)
    typer.echo(str(paths["html"]))


@app.command("eval")
@with_options(EVAL_DATA_OPTIONS, EVAL_OPTIONS, DEVICE_OPTIONS)
def evaluate(
    model: Annotated[
        list[Path],
        typer.Option(
            help="Checkpoint directory or .gguf file; repeat, the first is the base the others are compared with."
        ),
    ],
    output: Annotated[Path, typer.Option(help="Directory for results.json.")],
    label: Annotated[
        list[str] | None,
        typer.Option(help="Name of each --model, in order (default: run or checkpoint directory name)."),
    ] = None,
    **values: Any,
) -> None:
    """Held-out loss and benchmark accuracy (95% intervals, paired differences) of a base model and adapted ones."""
    from adept.evaluation import benchmark_markdown, comparison_markdown, default_label, read_results, run_evaluation

    try:
        if label and len(label) != len(model):
            raise ValueError(f"give one --label per --model ({len(model)} models, {len(label)} labels)")
        labels = (
            list(label)
            if label
            else [path.stem if path.suffix.lower() == ".gguf" else default_label(path) for path in model]
        )
        data = option_values(EVAL_DATA_OPTIONS, values)
        settings = option_values(EVAL_OPTIONS, values)
        path = run_evaluation(
            list(zip(labels, [_model_path(path) for path in model])),
            output,
            general=[Path(corpus) for corpus in data["general_heldout"]],
            domain=[Path(corpus) for corpus in data["domain_heldout"]],
            general_benchmarks=data["general_benchmarks"],
            domain_benchmarks=data["domain_benchmarks"],
            block_size=data["block_size"],
            batch_size=settings["batch_size"],
            max_blocks=settings["max_blocks"],
            limit=parse_limit(settings["limit"]),
            limits=EvaluationSection(limits=settings["limits"]).limits,  # checked as the config's key
            device=values["device"],
            dtype=values["dtype"],
            attn_implementation=values["attn_implementation"],
            text_field=data["text_field"],
            seed=settings["benchmark_seed"],
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
    gguf_file: Annotated[
        Path, typer.Argument(metavar="MODEL.gguf", help="GGUF file (any quantization transformers reads).")
    ],
    output: Annotated[
        Path, typer.Option(help="Directory for the checkpoint (safetensors, tokenizer, conversion.json).")
    ],
    dtype: Annotated[str, typer.Option(help="Weights dtype: float32, bfloat16 or float16.")] = CONVERT_DTYPE,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty output directory.")] = False,
) -> None:
    """Dequantize a GGUF file into an ordinary Hugging Face checkpoint folder."""
    from adept.checkpoints import convert_gguf

    try:
        path = convert_gguf(gguf_file, output, dtype=dtype, overwrite=overwrite)
    except _USER_ERRORS as err:
        _fail(err)
    typer.echo(f"checkpoint: {path}")


@app.command()
def interpolate(
    base: Annotated[
        Path,
        typer.Option(
            help="Where training started: the base model (for an expanded run the "
            "unexpanded base or the expanded starting checkpoint), or a .gguf file."
        ),
    ],
    tuned: Annotated[
        Path, typer.Option(help="The trained model's folder, or a training output directory (its model/).")
    ],
    alpha: Annotated[
        float, typer.Option(help="Share of the training update kept: 0 the starting model, 1 the trained one.")
    ],
    output: Annotated[Path, typer.Option(help="Directory for the interpolated checkpoint and interpolation.json.")],
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty output directory.")] = False,
) -> None:
    """Move a trained model back towards its start: w = w_start + alpha * (w_tuned - w_start) (a forgetting dial)."""
    from adept.interpolation import run_interpolation

    try:
        path = run_interpolation(_model_path(base), tuned, output, alpha, overwrite=overwrite)
    except _USER_ERRORS as err:
        _fail(err)
    typer.echo(f"interpolated checkpoint: {path}")


analyze_app = typer.Typer(help="Analyses of trained models.", no_args_is_help=True)
app.add_typer(analyze_app, name="analyze")


@analyze_app.command(
    "shift",
    help="Where the adapted model's top-1 token ranks in the base model's distribution (paper Fig. 5).\n\n"
    f"Changed default: --max-blocks is the config's evaluation.shift_max_blocks, "
    f"{EvaluationSection().shift_max_blocks} (this command used 64 before).",
)
@with_options(SHIFT_DATA_OPTIONS, SHIFT_OPTIONS, DEVICE_OPTIONS)
def analyze_shift(
    base: Annotated[Path, typer.Option(help="Base checkpoint directory or .gguf file.")],
    tuned: Annotated[Path, typer.Option(help="Adapted checkpoint directory or .gguf file (same tokenizer).")],
    data: Annotated[Path, typer.Option(help="Held-out corpus: .txt, .jsonl, .json or a dataset directory.")],
    output: Annotated[Path, typer.Option(help="Directory for shift.json and shift.png.")],
    top_k: Annotated[int, typer.Option(help="How many of the most often shifted tokens to list.")] = SHIFT_TOP_K,
    **values: Any,
) -> None:
    from adept.shift import run_shift

    try:
        corpus = option_values(SHIFT_DATA_OPTIONS, values)
        settings = option_values(SHIFT_OPTIONS, values)
        path = run_shift(
            _model_path(base),
            _model_path(tuned),
            data,
            output,
            block_size=corpus["block_size"],
            max_blocks=settings["shift_max_blocks"],
            top_k=top_k,
            batch_size=settings["batch_size"],
            device=values["device"],
            dtype=values["dtype"],
            attn_implementation=values["attn_implementation"],
            text_field=corpus["text_field"],
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
