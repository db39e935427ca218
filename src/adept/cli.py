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
    model: Annotated[Path, typer.Option(help="Local Hugging Face checkpoint directory.")],
    probe: Annotated[Path, typer.Option(help="General-domain probe corpus: .txt, .jsonl, .json or a dataset directory.")],
    output: Annotated[Path, typer.Option(help="Directory for importance.json and the PNG plots.")],
    metrics: Annotated[str, typer.Option(help="Comma-separated: masking, grad_weight, rank, fisher.")] = "masking,grad_weight,rank,fisher",
    max_tokens: Annotated[int, typer.Option(help="Probe token budget (target tokens).")] = 50_000,
    max_length: Annotated[int, typer.Option(help="Sequence length of probe examples.")] = 512,
    batch_size: Annotated[int, typer.Option(help="Probe batch size.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed for sampling probe documents.")] = 0,
    txt_split: Annotated[str, typer.Option(help="How .txt files split into documents: paragraph or line.")] = "paragraph",
    device: Annotated[str, typer.Option(help="cpu, cuda[:N] or auto.")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16, float16 or auto.")] = "float32",
) -> None:
    """Score how much each layer and unit matters for general competence."""
    from adept.stages import ProbeSettings, run_importance

    try:
        path = run_importance(
            model,
            probe,
            output,
            probe=ProbeSettings(max_tokens=max_tokens, max_length=max_length, batch_size=batch_size, seed=seed, txt_split=txt_split),
            metrics=tuple(m.strip() for m in metrics.split(",") if m.strip()),
            device=device,
            dtype=dtype,
        )
    except _USER_ERRORS as err:
        _fail(err)
    typer.echo(f"importance: {path}")


@app.command()
def expand(
    model: Annotated[Path, typer.Option(help="Local Hugging Face checkpoint directory (safetensors).")],
    output: Annotated[Path, typer.Option(help="Directory for the expanded checkpoint.")],
    layers: Annotated[Optional[str], typer.Option(help="0-based source layers to duplicate, e.g. 3,7.")] = None,
    importance: Annotated[Optional[Path], typer.Option(help="importance.json used to pick layers.")] = None,
    num_new_layers: Annotated[Optional[int], typer.Option(help="Duplicate the K least important layers.")] = None,
    trainable_fraction: Annotated[
        Optional[float], typer.Option(help="Duplicate as many least important layers as fit in this share of the expanded model.")
    ] = None,
    metric: Annotated[str, typer.Option(help="Layer metric from importance.json: masking, grad_weight, rank, fisher.")] = "masking",
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty output directory.")] = False,
) -> None:
    """Duplicate the least important layers with zeroed output projections (function preserving)."""
    from adept.stages import run_expansion

    try:
        path = run_expansion(
            model,
            output,
            layers=_parse_layers(layers) if layers is not None else None,
            importance_path=importance,
            num_new_layers=num_new_layers,
            trainable_fraction=trainable_fraction,
            metric=metric,
            overwrite=overwrite,
        )
    except _USER_ERRORS as err:
        _fail(err)
    typer.echo(f"expanded checkpoint: {path}")


def _parse_assignments(items: list[str] | None, option: str) -> dict:
    """``key=value`` pairs; values parsed as YAML scalars so numbers and booleans keep their type."""
    import yaml

    parsed = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} expects key=value, got '{item}'")
        parsed[key.strip()] = yaml.safe_load(value)
    return parsed


@app.command()
def train(
    model: Annotated[Path, typer.Option(help="Expanded checkpoint (adept, llama-pro, adept-no-stage2) or base model.")],
    data: Annotated[list[Path], typer.Option(help="Domain corpus; repeat for several.")],
    output: Annotated[Path, typer.Option(help="Run directory: checkpoints, unit_rates.jsonl, model/, training_summary.json.")],
    method: Annotated[str, typer.Option(help="adept, full, llama-pro, adept-no-stage1, adept-no-stage2, freeze or lora.")] = "adept",
    probe: Annotated[Optional[Path], typer.Option(help="General-domain probe corpus for importance (adept, adept-no-stage1).")] = None,
    eval_data: Annotated[Optional[list[Path]], typer.Option(help="Held-out corpus evaluated during training; repeatable.")] = None,
    importance: Annotated[Optional[Path], typer.Option(help="importance.json choosing layers for freeze / adept-no-stage1.")] = None,
    num_layers: Annotated[Optional[int], typer.Option(help="Number of least important layers freeze / adept-no-stage1 train.")] = None,
    layer_metric: Annotated[str, typer.Option(help="Layer metric used with --importance.")] = "masking",
    replay_data: Annotated[Optional[list[Path]], typer.Option(help="General-domain corpus mixed into training.")] = None,
    replay_ratio: Annotated[float, typer.Option(help="Share of replay blocks in the training stream.")] = 0.0,
    block_size: Annotated[int, typer.Option(help="Tokens per packed training block.")] = 256,
    learning_rate: Annotated[float, typer.Option(help="Base learning rate (multipliers scale it per unit).")] = 1e-3,
    max_steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 200,
    batch_size: Annotated[int, typer.Option(help="Per-device training batch size.")] = 8,
    gradient_accumulation_steps: Annotated[int, typer.Option(help="Micro-batches per optimizer step.")] = 1,
    reestimate_every: Annotated[int, typer.Option(help="Refresh importance every N steps (0: only at step 0).")] = 500,
    reestimate_fraction: Annotated[Optional[float], typer.Option(help="Refresh interval as a fraction of max steps.")] = None,
    rule: Annotated[str, typer.Option(help="Multiplier rule: linear (m = scale*(1-I)) or inverse.")] = "linear",
    scale: Annotated[float, typer.Option(help="Multiplier scale (2.0 in the paper).")] = 2.0,
    normalization: Annotated[str, typer.Option(help="Importance normalisation over all units: minmax, rank, none.")] = "minmax",
    unit_score: Annotated[str, typer.Option(help="Unit score: sum or mean of |w*dL/dw| over the tensor.")] = "sum",
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
    from adept.training import TrainConfig, run_training
    from adept.tuning import MultiplierRule

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
            model=str(model), data=[str(p) for p in data], output_dir=str(output), method=method,
            probe=str(probe) if probe else None, eval_data=[str(p) for p in eval_data or []],
            importance=str(importance) if importance else None, num_layers=num_layers, layer_metric=layer_metric,
            replay_data=[str(p) for p in replay_data or []], replay_ratio=replay_ratio, block_size=block_size,
            reestimate_every=reestimate_every, reestimate_fraction=reestimate_fraction,
            rule=MultiplierRule(rule=rule, scale=scale, normalization=normalization, unit_score=unit_score, floor=floor),
            resume=resume, training_args=training_args,
        )
        path = run_training(cfg)
    except _USER_ERRORS as err:
        _fail(err)
    typer.echo(f"trained model: {path}")


def main(argv: list[str] | None = None) -> int:
    """Entry point for the console script and for in-process tests."""
    try:
        code = app(args=argv if argv is not None else sys.argv[1:], standalone_mode=False)
    except typer.Exit as exit_:
        return exit_.exit_code
    except SystemExit as exit_:  # click usage errors
        return int(exit_.code or 0)
    except Exception as err:  # click.UsageError and friends
        import click

        if isinstance(err, click.ClickException):
            err.show()
            return err.exit_code
        raise
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
