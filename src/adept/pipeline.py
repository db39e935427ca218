"""`adept run`: data -> importance -> expansion -> training -> evaluation -> report, resumable.

Every stage writes into one run directory (laid out in `adept.run_directory`) and is recorded in
``pipeline.json`` (`adept.stage_records`) with a fingerprint of its settings, its input files and
the fingerprints of the stages it depends on. A stage whose record matches and whose outputs exist
is skipped, so rerunning after a crash continues where it stopped (training resumes from its
newest checkpoint), and changing a training key re-runs training and what follows but not
importance or expansion.

Under torchrun or ``accelerate launch`` every rank runs this same sequence: rank 0 alone runs
the data, importance, expansion, evaluation, shift and report stages while the others wait, and
all ranks train together (DDP, or FSDP2/DeepSpeed through ``training_args``). Every rank reads
the same stage records, so all skip or run the same stages, and a rerun resumes alike. The run
directory must be on a filesystem every rank sees.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from adept.artifacts import artifact_header, read_json, write_json
from adept.benchmarks import check_benchmark_source
from adept.checkpoints import is_gguf, load_tokenizer, resolve_model_path
from adept.config import (
    EXPANDED_METHODS,
    GUIDED_EXPANSION_METHODS,
    MethodSettings,
    PipelineConfig,
    TrainConfig,
    save_config,
)
from adept.corpus_sources import resolve_corpus
from adept.distributed import is_main_process, join_launched_processes, wait_for_main
from adept.evaluation import run_evaluation
from adept.expansion import count_new_layers, run_expansion
from adept.importance import run_importance
from adept.interpolation import run_interpolation
from adept.packing import pack_corpus
from adept.report import HTML_NAME, REPORT_DIR, build_report
from adept.results import SUMMARY_NAME, read_results, write_results
from adept.run_directory import BASE_LABEL, comparison_path, dial_label, expanded_dir, results_path, train_dir
from adept.shift import run_shift
from adept.stage_records import ResumableStages, StageRecords, fingerprint
from adept.training import FINAL_MODEL_DIR, run_training

logger = logging.getLogger(__name__)


class Pipeline(ResumableStages):
    """Runs the stages of one config in ``config.run_dir``; see the module docstring."""

    def __init__(self, config: PipelineConfig, progress: bool = True):
        self.config = config
        self.run_dir = Path(config.run_dir)
        self.progress = progress
        super().__init__()

    def _open(self) -> None:
        """Write the resolved config, read the stage records and check the inputs exist.

        Under a launcher, the process group is joined here and rank 0 writes (and converts a
        GGUF model) before the other ranks read.
        """
        cfg = self.config
        join_launched_processes(cfg.device)
        self.main = is_main_process()
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
            if is_gguf(cfg.model):  # every stage then reads the cached plain checkpoint
                self.config = replace(cfg, model=str(resolve_model_path(cfg.model)))
            self._check_inputs()
        wait_for_main()
        if not self.main and is_gguf(cfg.model):
            self.config = replace(cfg, model=str(resolve_model_path(cfg.model)))  # converted by rank 0
        self.records = StageRecords(self.run_dir, write=self.main)

    def run(self) -> Path:
        """Run every stage; returns the HTML report's path."""
        self._open()
        cfg = self.config
        labels = list(cfg.train.methods)
        settings = {label: cfg.method_settings(label) for label in labels}
        methods = {label: s.method for label, s in settings.items()}

        self.data_stage()
        if cfg.data.general_probe:  # config validation requires it for every importance-guided method
            self.importance_stage()
        new_layers = self.expansion_count()
        if any(m in GUIDED_EXPANSION_METHODS for m in methods.values()):
            self.expansion_stage("adept", new_layers)
        if "llama-pro" in methods.values():
            self.expansion_stage("uniform", new_layers)
        for label in labels:
            self.train_stage(label, settings[label], new_layers)
        for label in [BASE_LABEL, *labels]:
            self.eval_stage(label)
        self.compare_stage([BASE_LABEL, *labels])
        if cfg.evaluation.shift:
            for label in labels:
                self.shift_stage(label)
        return self.report_stage()

    def evaluate_base(self) -> Path:
        """Evaluate the starting model alone and return its results' path; a caller can check it
        before hours of training. Recorded like any stage, so a later `run` skips it."""
        self._open()
        return self.eval_stage(BASE_LABEL)

    def _check_inputs(self) -> None:
        cfg = self.config
        if not (Path(cfg.model) / "config.json").is_file():
            raise FileNotFoundError(
                f"model: {cfg.model}/config.json not found (a local Hugging Face checkpoint directory)"
            )
        data = asdict(cfg.data)
        corpora = [
            (f"data.{key}[{idx}]", path)
            for key in ("domain_train", "domain_heldout", "general_heldout", "general_replay")
            for idx, path in enumerate(data[key])
        ]
        if cfg.data.general_probe:
            corpora.append(("data.general_probe", cfg.data.general_probe))
        for key, path in corpora:
            try:
                resolve_corpus(path)
            except (FileNotFoundError, ValueError) as err:
                raise type(err)(f"{key}: {err}") from None
        for key in ("general_benchmarks", "domain_benchmarks"):
            for source in data[key]:
                check_benchmark_source(source)

    def data_stage(self) -> None:
        """Tokenise and pack every corpus once (cached for the later stages) and record sizes."""
        cfg = self.config
        corpora = {
            "domain_train": cfg.data.domain_train,
            "domain_heldout": cfg.data.domain_heldout,
            "general_heldout": cfg.data.general_heldout,
            "general_replay": cfg.data.general_replay,
        }
        out = self.run_dir / "data" / "data.json"
        print_ = fingerprint(
            model=self._identity(cfg.model),
            block_size=cfg.data.block_size,
            text_field=cfg.data.text_field,
            corpora={k: self._identity(v) for k, v in corpora.items()},
        )

        def work() -> None:
            tokenizer = load_tokenizer(cfg.model)
            sizes = {}
            for key, paths in corpora.items():
                if not paths:
                    continue
                packed = pack_corpus(
                    paths,
                    tokenizer,
                    cfg.data.block_size,
                    cache_dir=self.cache_dir,
                    num_proc=cfg.data.tokenize_workers,
                    text_field=cfg.data.text_field,
                )
                sizes[key] = {
                    "paths": list(paths),
                    "documents": packed.documents,
                    "blocks": packed.blocks,
                    "tokens": packed.blocks * cfg.data.block_size,
                    "stream_tokens": packed.stream_tokens,
                    "dropped_tokens": packed.dropped_tokens,
                }
            write_json(out, {**artifact_header("data"), "block_size": cfg.data.block_size, "corpora": sizes})

        self._stage("data", print_, [out], work)

    @property
    def cache_dir(self) -> str:
        return str(self.run_dir / ".cache")

    def importance_stage(self) -> None:
        cfg = self.config
        out = self.run_dir / "importance"
        print_ = fingerprint(
            model=self._identity(cfg.model),
            probe=self._identity(cfg.data.general_probe),
            settings=asdict(cfg.importance),
            device=cfg.device,
            **self._loading,
        )
        self._stage(
            "importance",
            print_,
            [out / "importance.json"],
            lambda: run_importance(
                cfg.model,
                cfg.data.general_probe,
                out,
                cfg.importance,
                device=cfg.device,
                progress=self.progress,
                **self._loading,
            ),
        )

    @property
    def _loading(self) -> dict[str, str]:
        """How every stage loads models and reads corpora: the run's dtype, attention kernel and text column."""
        cfg = self.config
        return {"dtype": cfg.dtype, "attn_implementation": cfg.attn_implementation, "text_field": cfg.data.text_field}

    def expansion_count(self) -> int:
        """How many layers every expansion-style method adds (see `adept.expansion.count_new_layers`)."""
        return count_new_layers(self.config.model, self.config.expansion)

    def expansion_stage(self, variant: str, new_layers: int) -> None:
        cfg = self.config
        out = expanded_dir(self.run_dir, variant)
        if variant == "uniform":
            kwargs: dict[str, Any] = {"uniform": new_layers}
            upstream = None
        elif cfg.expansion.layers is not None:
            kwargs = {"layers": list(cfg.expansion.layers)}
            upstream = None
        else:
            importance = self.run_dir / "importance" / "importance.json"
            kwargs = {"importance_path": importance, "metric": cfg.expansion.metric}
            if cfg.expansion.trainable_fraction is not None:
                kwargs["trainable_fraction"] = cfg.expansion.trainable_fraction
            else:
                kwargs["num_new_layers"] = new_layers
            upstream = self._prints["importance"]
        print_ = fingerprint(model=self._identity(cfg.model), kwargs=kwargs, upstream=upstream)
        self._stage(
            f"expand:{variant}",
            print_,
            [out / "expansion.json"],
            lambda: run_expansion(cfg.model, out, overwrite=True, **kwargs),
            clean=[out],
        )

    def train_stage(self, label: str, settings: MethodSettings, new_layers: int) -> None:
        cfg = self.config
        method = settings.method
        out = train_dir(self.run_dir, label)
        if method in EXPANDED_METHODS:
            variant = "uniform" if method == "llama-pro" else "adept"
            model = str(expanded_dir(self.run_dir, variant))
            upstream = self._prints[f"expand:{variant}"]
        else:
            model = cfg.model
            upstream = self._identity(cfg.model)
        importance = None
        unit_scores = bool(set(cfg.importance.metrics) & {"grad_weight", "rank", "fisher"})
        if method in ("freeze", "adept-no-stage1") or (method == "adept" and unit_scores):
            # freeze / adept-no-stage1 choose their layers from it; adept's copies start from
            # their source layers' unit scores in it at step 0.
            importance = str(self.run_dir / "importance" / "importance.json")
            upstream = [upstream, self._prints["importance"]]
        training_args = dict(settings.training_args)
        if cfg.device == "cpu":
            training_args.setdefault("use_cpu", True)
        train_cfg = TrainConfig(
            **{**vars(settings), "training_args": training_args},
            model=model,
            data=list(cfg.data.domain_train),
            output_dir=str(out),
            probe_data=cfg.data.general_probe,
            eval_data=[*cfg.data.general_heldout, *cfg.data.domain_heldout],
            eval_max_blocks=cfg.evaluation.max_blocks,
            importance=importance,
            num_layers=new_layers if method in ("freeze", "adept-no-stage1") else None,
            replay_data=list(cfg.data.general_replay) if settings.replay_ratio > 0 else [],
            block_size=cfg.data.block_size,
            tokenize_workers=cfg.data.tokenize_workers,
            cache_dir=self.cache_dir,
            resume=True,
            **self._loading,
        )
        data_print = self._identity(
            [
                *cfg.data.domain_train,
                *train_cfg.replay_data,
                *train_cfg.eval_data,
                *([cfg.data.general_probe] if cfg.data.general_probe else []),
            ]
        )
        print_ = fingerprint(
            settings=asdict(settings),
            data=data_print,
            block_size=cfg.data.block_size,
            eval_max_blocks=cfg.evaluation.max_blocks,
            upstream=upstream,
            device=cfg.device,
            **self._loading,
        )
        self._stage(
            f"train:{label}",
            print_,
            [out / FINAL_MODEL_DIR / "config.json", out / SUMMARY_NAME],
            lambda: run_training(train_cfg, progress=self.progress),
            clean=[out],
            every_rank=True,
        )

    def model_of(self, label: str) -> str:
        if label == BASE_LABEL:
            return self.config.model
        return str(train_dir(self.run_dir, label) / FINAL_MODEL_DIR)

    def _upstream_of(self, label: str) -> Any:
        return self._identity(self.config.model) if label == BASE_LABEL else self._prints[f"train:{label}"]

    def eval_stage(self, label: str) -> Path:
        """Evaluate one model (skipped when its record is current); returns its results' path."""
        cfg = self.config
        ev = cfg.evaluation
        path = results_path(self.run_dir, label)
        out = path.parent
        sets = {
            k: getattr(cfg.data, k)
            for k in ("general_heldout", "domain_heldout", "general_benchmarks", "domain_benchmarks")
        }
        # An empty evaluation.limits (the default) leaves the print as it was before that key existed,
        # so evaluations finished then stay current.
        settings = {key: value for key, value in asdict(ev).items() if key != "limits" or value}
        print_ = fingerprint(
            settings=settings,
            sets={k: self._identity(v) for k, v in sets.items()},
            block_size=cfg.data.block_size,
            upstream=self._upstream_of(label),
            device=cfg.device,
            **self._loading,
        )
        self._stage(
            f"eval:{label}",
            print_,
            [path],
            lambda: run_evaluation(
                [(label, self.model_of(label))],
                out,
                general=sets["general_heldout"],
                domain=sets["domain_heldout"],
                general_benchmarks=sets["general_benchmarks"],
                domain_benchmarks=sets["domain_benchmarks"],
                block_size=cfg.data.block_size,
                batch_size=ev.batch_size,
                max_blocks=ev.max_blocks,
                limit=ev.limit,
                limits=ev.limits,
                device=cfg.device,
                summaries={label: None},
                progress=self.progress,
                seed=ev.benchmark_seed,
                **self._loading,
            ),
        )
        return path

    def dial_stage(self, label: str, alpha: float) -> str:
        """``label``'s trained model (its stages seen by ``run``) moved back towards its start by ``alpha``
        (`adept interpolate`) and evaluated like any model: a point of the forgetting dial, ``label~alpha``."""
        dial = dial_label(label, alpha)
        out = train_dir(self.run_dir, dial)
        model = Path(self.model_of(dial))

        def interpolate() -> None:
            run_interpolation(self.config.model, self.model_of(label), model, alpha, overwrite=True)
            # the dial costs what its run cost: the report reads time and memory from here
            shutil.copy2(train_dir(self.run_dir, label) / SUMMARY_NAME, out / SUMMARY_NAME)

        print_ = fingerprint(alpha=alpha, upstream=self._prints[f"train:{label}"])
        self._stage(f"train:{dial}", print_, [model / "config.json", out / SUMMARY_NAME], interpolate)
        self.eval_stage(dial)
        return dial

    def compare_stage(self, labels: list[str]) -> Path:
        """Merge the per-model evaluations into ``eval/results.json`` (cheap: always rebuilt, by the main process)."""
        if not self.main:
            wait_for_main()
            return comparison_path(self.run_dir)
        runs, summaries = [], {}
        for label in labels:
            runs.append(read_results(results_path(self.run_dir, label))["runs"][0])
            summary = train_dir(self.run_dir, label) / SUMMARY_NAME
            summaries[label] = read_json(summary, kind="training") if summary.is_file() else None
        path = write_results(runs, summaries, comparison_path(self.run_dir))
        wait_for_main()
        return path

    def shift_stage(self, label: str) -> None:
        cfg = self.config
        ev = cfg.evaluation
        data = cfg.data.general_heldout if ev.shift_data == "general" else cfg.data.domain_heldout
        if not data:
            logger.warning("stage shift:%s: no %s held-out corpus, skipped", label, ev.shift_data)
            return
        out = self.run_dir / "shift" / label
        print_ = fingerprint(
            data=self._identity(data[0]),
            max_blocks=ev.shift_max_blocks,
            block_size=cfg.data.block_size,
            upstream=self._upstream_of(label),
            device=cfg.device,
            **self._loading,
        )
        self._stage(
            f"shift:{label}",
            print_,
            [out / "shift.json"],
            lambda: run_shift(
                cfg.model,
                self.model_of(label),
                data[0],
                out,
                block_size=cfg.data.block_size,
                max_blocks=ev.shift_max_blocks,
                batch_size=ev.batch_size,
                device=cfg.device,
                progress=self.progress,
                **self._loading,
            ),
        )

    def report_stage(self) -> Path:
        """The HTML and Markdown report, written by the main process; every rank returns its path."""
        path = build_report([self.run_dir])["html"] if self.main else self.run_dir / REPORT_DIR / HTML_NAME
        wait_for_main()
        return path


def run_pipeline(config: PipelineConfig, progress: bool = True) -> tuple[Path, Pipeline]:
    """Run (or resume) the whole method for ``config``; returns the report path and the pipeline."""
    pipeline = Pipeline(config, progress=progress)
    report = pipeline.run()
    return report, pipeline
