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
