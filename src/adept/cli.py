"""Command-line interface: parse arguments, dispatch to stage runners.

The settings flags of `adept train` and `adept importance` are made from the fields of
`adept.config` (`TrainConfig`, `ImportanceSection`): name, type, default and help are defined
there once. Heavy libraries (torch, transformers) are imported inside the handlers so ``adept
--help`` stays instant. Errors from bad input are printed as one line and exit with status 2.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from adept.config import (
    DEFAULT_LEARNING_RATES,
    DEFAULT_TRAINING_ARGS,
    DataSection,
    ImportanceSection,
    PipelineConfig,
    TrainConfig,
    default_of,
    parse_assignment,
    set_dotted,
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


def _parse_layers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--layers must be comma-separated integers such as 3,7, got '{text}'") from None


@dataclasses.dataclass(frozen=True)
class SettingOption:
    """One generated flag, ``--name`` (underscores as dashes), and the config field it sets."""

    name: str
    path: str  # dotted key inside the settings dataclass
    field: dataclasses.Field
    hint: Any
    comma: bool = False  # a list given as one comma-separated value


def setting_options(
    cls: type,
    *,
    only: tuple[str, ...] = (),
    skip: tuple[str, ...] = (),
    rename: dict[str, str] | None = None,
    nested: dict[str, str] | None = None,
    comma: tuple[str, ...] = (),
    first: tuple[str, ...] = (),
) -> list[SettingOption]:
    """One flag per field of dataclass ``cls``: required ones, then ``first``, then the others in field order.

    A field is ``--field-name`` unless ``rename`` maps it to another name; the fields of a nested
    section (``rule``, ``probe``) get ``nested[section]`` in front of their own names.
    """
    hints = typing.get_type_hints(cls)
    options = []
    for f in dataclasses.fields(cls):
        if f.name in skip or (only and f.name not in only):
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            prefix = (nested or {})[f.name]
            options += [
                dataclasses.replace(o, name=prefix + o.name, path=f"{f.name}.{o.path}")
                for o in setting_options(hints[f.name])
            ]
        else:
            options.append(SettingOption((rename or {}).get(f.name, f.name), f.name, f, hints[f.name], f.name in comma))
    return sorted(options, key=lambda o: (default_of(o.field) is not MISSING, o.name not in first))


def _parameter(option: SettingOption) -> inspect.Parameter:
    hint, default = option.hint, default_of(option.field)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        # typing.Optional, not `inner | None`: built at runtime for typer, kept a typing.Union as before.
        hint = Optional[inner]  # noqa: UP045
    if option.comma:
        hint, default = str, ",".join(default)
    elif typing.get_origin(hint) is list and default is not MISSING:
        hint, default = Optional[hint], None  # repeatable; absent: the field's default  # noqa: UP045
    annotation = Annotated[hint, typer.Option(help=option.field.metadata["help"])]
    return inspect.Parameter(
        option.name,
        inspect.Parameter.KEYWORD_ONLY,
        annotation=annotation,
        default=inspect.Parameter.empty if default is MISSING else default,
    )


def _with_options(*groups: list[SettingOption], extra: list[inspect.Parameter] = ()) -> Callable:
    """Give a handler taking ``**values`` the generated flags and ``extra`` ones.

    In --help: the handler's own required options, the generated ones, ``extra``, then the
    handler's own options that have a default.
    """

    def decorate(func: Callable) -> Callable:
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in inspect.signature(func, eval_str=True).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        required = [p for p in own if p.default is inspect.Parameter.empty]
        optional = [p for p in own if p.default is not inspect.Parameter.empty]
        generated = [_parameter(option) for group in groups for option in group]
        func.__signature__ = inspect.Signature(required + generated + list(extra) + optional)
        return func

    return decorate


def settings_from_options(cls: type, options: list[SettingOption], values: dict[str, Any], **fixed: Any) -> Any:
    """The dataclass ``cls`` from the values of its generated flags (taken out of ``values``) and ``fixed``."""
    tree: dict[str, Any] = dict(fixed)
    for option in options:
        value = values.pop(option.name)
        if option.comma:
            value = [part.strip() for part in value.split(",") if part.strip()]
        elif value is None and typing.get_origin(option.hint) is list:
            value = default_of(option.field)
        set_dotted(tree, option.path, value)
    return _instantiate(cls, tree)


def _instantiate(cls: type, tree: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    return cls(
        **{
            key: _instantiate(hints[key], value) if dataclasses.is_dataclass(hints[key]) else value
            for key, value in tree.items()
        }
    )


IMPORTANCE_OPTIONS = setting_options(ImportanceSection, comma=("metrics",))
TRAIN_OPTIONS = setting_options(
    TrainConfig,
    skip=("training_args",),
    rename={"output_dir": "output", "probe_data": "probe"},
    nested={"rule": "", "probe": "probe_"},
    first=("method", "probe"),
)
DEVICE_OPTIONS = setting_options(PipelineConfig, only=("device", "dtype", "attn_implementation"))
TEXT_OPTIONS = setting_options(DataSection, only=("text_field",))
_HELP = {f.name: f.metadata["help"] for cls in (PipelineConfig, DataSection) for f in dataclasses.fields(cls)}
# `adept train` flags for the most used TrainingArguments fields (any other goes through --set):
# flag -> (field, help); each defaults to DEFAULT_TRAINING_ARGS[field], the learning rate to the method's.
_RATES = ", ".join(f"{method} {value:g}" for method, value in DEFAULT_LEARNING_RATES.items())
TRAINING_ARG_FLAGS = {
    "learning_rate": (
        "learning_rate",
        f"Base learning rate (multipliers scale it per unit); default by method: {_RATES}, "
        f"others {DEFAULT_TRAINING_ARGS['learning_rate']:g}.",
    ),
    "max_steps": ("max_steps", "Optimizer steps (-1: num_train_epochs, or --max-tokens, decides)."),
    "batch_size": ("per_device_train_batch_size", "Per-device training batch size."),
    "gradient_accumulation_steps": ("gradient_accumulation_steps", "Micro-batches per optimizer step."),
    "seed": ("seed", "Training seed: initialisation, data order (data_seed) and the re-estimation's probe sample."),
    "bf16": ("bf16", "bf16 autocast (default: on with --dtype bfloat16, else off)."),
    "gradient_checkpointing": ("gradient_checkpointing", "Gradient checkpointing."),
}
# Flags whose default depends on other settings (the method's rate; bf16 on with a bf16 dtype): None leaves them out.
_DERIVED_DEFAULTS = {"learning_rate": float, "bf16": bool}
_TRAINING_ARG_PARAMS = [
    inspect.Parameter(
        flag,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[_DERIVED_DEFAULTS[name] | None, typer.Option(help=help_)],
    )
    if name in _DERIVED_DEFAULTS
    else inspect.Parameter(
        flag,
        inspect.Parameter.KEYWORD_ONLY,
        default=DEFAULT_TRAINING_ARGS[name],
        annotation=Annotated[type(DEFAULT_TRAINING_ARGS[name]), typer.Option(help=help_)],
    )
    for flag, (name, help_) in TRAINING_ARG_FLAGS.items()
]


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    # Under torchrun / accelerate launch only rank 0 logs progress; the others report warnings.
    replica = int(os.environ.get("RANK", "0")) != 0
    level = logging.WARNING if replica else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)


@app.command()
@_with_options(IMPORTANCE_OPTIONS, DEVICE_OPTIONS, TEXT_OPTIONS)
def importance(
    model: Annotated[Path, typer.Option(help="Local Hugging Face checkpoint directory or .gguf file.")],
    probe: Annotated[
        Path, typer.Option(help="General-domain probe corpus: .txt, .jsonl, .json or a dataset directory.")
    ],
    output: Annotated[Path, typer.Option(help="Directory for importance.json and the PNG plots.")],
    txt_split: Annotated[
        str, typer.Option(help="How .txt files split into documents: paragraph or line.")
    ] = "paragraph",
    **values: Any,
) -> None:
    """Score how much each layer and unit matters for general competence.

    Probe defaults are the pipeline's: 20,000 tokens, length 256, batch 8 (this command used 50,000, 512 and 4 before).
    """
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
def expand(
    model: Annotated[Path, typer.Option(help="Local Hugging Face checkpoint directory (safetensors) or .gguf file.")],
    output: Annotated[Path, typer.Option(help="Directory for the expanded checkpoint.")],
    layers: Annotated[str | None, typer.Option(help="0-based source layers to duplicate, e.g. 3,7.")] = None,
    importance: Annotated[Path | None, typer.Option(help="importance.json used to pick layers.")] = None,
    num_new_layers: Annotated[int | None, typer.Option(help="Duplicate the K least important layers.")] = None,
    trainable_fraction: Annotated[
        float | None,
        typer.Option(help="Duplicate as many least important layers as fit in this share of the expanded model."),
    ] = None,
    uniform: Annotated[
        int | None, typer.Option(help="LLaMA-Pro baseline: K copies spread evenly, ignoring importance.")
    ] = None,
    metric: Annotated[
        str, typer.Option(help="Layer metric from importance.json: masking, grad_weight, rank, fisher.")
    ] = "masking",
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty output directory.")] = False,
) -> None:
    """Duplicate the least important layers with zeroed output projections (function preserving)."""
    from adept.expansion import run_expansion

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


@app.command()
@_with_options(TRAIN_OPTIONS, extra=_TRAINING_ARG_PARAMS)
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
        training_args = {name: values.pop(flag) for flag, (name, _) in TRAINING_ARG_FLAGS.items()}
        for name in _DERIVED_DEFAULTS:  # the method's rate (default_training_args); autocast by --dtype
            if training_args[name] is None:
                del training_args[name]
        training_args["data_seed"] = training_args["seed"]
        for item in set_ or []:
            try:
                key, value = parse_assignment(item)
            except ValueError as err:
                raise ValueError(f"--set {err}") from None
            training_args[key] = value
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
    from adept.config import load_config
    from adept.evaluation import benchmark_markdown, comparison_markdown, read_results
    from adept.pipeline import comparison_path, run_pipeline

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
    run = Path(cfg.run_dir)
    typer.echo(f"run directory: {run}")
    for name, what in (
        ("importance", "layer and unit importance + plots"),
        ("expanded", "expanded checkpoints + expansion.json"),
        ("train", "per-method checkpoints, unit_rates.jsonl, model/"),
        ("shift", "token-distribution shift"),
    ):
        if (run / name).is_dir():
            typer.echo(f"  {run / name}/: {what}")
    typer.echo(f"results: {run / 'eval' / 'results.json'}")
    typer.echo(f"report: {report_path}")


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


def _parse_limit(limit: float | None) -> int | float | None:
    """lm-eval reads a limit below 1 as a fraction of each benchmark, else as a question count."""
    if limit is None:
        return None
    if limit <= 0:
        raise ValueError(f"--limit must be positive, got {limit}")
    return limit if limit < 1 else int(limit)


@app.command("eval")
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
    general: Annotated[
        list[Path] | None, typer.Option(help="General-domain held-out corpus (forgetting); repeatable.")
    ] = None,
    domain: Annotated[list[Path] | None, typer.Option(help="Domain held-out corpus (gain); repeatable.")] = None,
    general_benchmark: Annotated[
        list[str] | None,
        typer.Option(
            help="General multiple-choice JSONL file, named benchmark (arc_easy, arc_challenge, hellaswag, piqa, "
            "sciq, winogrande, boolq, openbookqa) or lm-eval task; repeatable."
        ),
    ] = None,
    domain_benchmark: Annotated[
        list[str] | None,
        typer.Option(help="Domain multiple-choice JSONL file, named benchmark or lm-eval task name; repeatable."),
    ] = None,
    block_size: Annotated[int, typer.Option(help="Tokens per packed held-out block.")] = 256,
    batch_size: Annotated[int, typer.Option(help="Blocks or benchmark requests per forward pass.")] = 8,
    max_blocks: Annotated[int | None, typer.Option(help="Evaluate at most N blocks of each held-out corpus.")] = None,
    limit: Annotated[
        float | None,
        typer.Option(
            help="At most N questions per benchmark (below 1: a fraction); named benchmarks take a seeded subset."
        ),
    ] = None,
    seed: Annotated[
        int,
        typer.Option(help="Seed of the named benchmarks' item subset under --limit (the same items for every model)."),
    ] = 1234,
    device: Annotated[str, typer.Option(help="cpu, cuda[:N] or auto.")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16, float16 or auto.")] = "float32",
    attn_implementation: Annotated[str, typer.Option(help=_HELP["attn_implementation"])] = "sdpa",
    text_field: Annotated[str, typer.Option(help=_HELP["text_field"])] = "text",
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
            attn_implementation=attn_implementation,
            text_field=text_field,
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
    gguf_file: Annotated[
        Path, typer.Argument(metavar="MODEL.gguf", help="GGUF file (any quantization transformers reads).")
    ],
    output: Annotated[
        Path, typer.Option(help="Directory for the checkpoint (safetensors, tokenizer, conversion.json).")
    ],
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
    attn_implementation: Annotated[str, typer.Option(help=_HELP["attn_implementation"])] = "sdpa",
    text_field: Annotated[str, typer.Option(help=_HELP["text_field"])] = "text",
) -> None:
    """Where the adapted model's top-1 token ranks in the base model's distribution (paper Fig. 5)."""
    from adept.shift import run_shift

    try:
        path = run_shift(
            _model_path(base),
            _model_path(tuned),
            data,
            output,
            block_size=block_size,
            max_blocks=max_blocks,
            top_k=top_k,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            attn_implementation=attn_implementation,
            text_field=text_field,
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
