"""``redflow params`` (trainable parameters by method, from a config alone) and ``redflow bench`` (the paper's tables
on local data)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from .common import console, guard, split_commas


def params(model: str = typer.Argument(..., help="Hub name, local checkpoint/config.json, or a paper model "
                                                  "(roberta-base, gpt2-medium, t5-base, meta-llama/Llama-2-7b-hf ...)."),
           position: str = typer.Option("ffn", help="ffn | attn | ffn+attn"),
           method: str = typer.Option("red", help="red | loreft | direft"),
           rank: int = typer.Option(4, help="ReFT rank."),
           lora_rank: int = typer.Option(8, help="LoRA rank for the comparison (query/value).")) -> None:
    """Trainable parameters of RED vs LoRA vs full fine-tuning, from the config alone (no weights)."""
    from red import EditConfig, count_parameters  # lazy: loads torch; --help stays instant
    from tasks.training.model_names import resolve_model  # lazy: loads torch; --help stays instant

    with guard():
        try:
            counts = count_parameters(resolve_model(model), EditConfig(method=method, position=position, rank=rank),
                                      lora_rank=lora_rank)
        except Exception as exc:  # noqa: BLE001 - any failure to read the config is the user's model name
            raise ValueError(f"cannot read a config for {model!r}: {type(exc).__name__}: {exc}. Fix: pass a hub "
                             "name (with network access), a local checkpoint folder, or a config.json") from exc
        table = Table(title=f"trainable parameters: {escape(model)}")
        table.add_column("method")
        table.add_column("parameters", justify="right")
        table.add_column(f"vs {method}", justify="right")
        for name, n in counts.items():
            table.add_row(name, f"{n:,}", f"{n / counts[method]:,.1f}x")
        console.print(table)


bench_app = typer.Typer(no_args_is_help=True, help="Quality benchmarks (the paper's tables on local data).")


@bench_app.command("glue")
def bench_glue(glue_dir: Path = typer.Option(..., help="Folder in the GLUE TSV layout (SST-2/, MRPC/, RTE/ ...)."),
               tasks: str = typer.Option("sst2,mrpc,rte", help="Comma-separated GLUE tasks."),
               methods: str = typer.Option("red,lora,bitfit,full", help="Comma-separated methods (head-only is "
                                                                          "added as a floor)."),
               model: str = typer.Option("minilm", help="Base model (hub name, folder, or 'minilm')."),
               seeds: str = typer.Option("42,43,44", help="Comma-separated seeds."),
               epochs: Optional[float] = typer.Option(None, help="Override the preset's epochs."),
               max_train_samples: Optional[int] = typer.Option(None, help="Subsample training rows (seeded)."),
               max_length: int = typer.Option(128, help="Maximum tokens per example."),
               batch_size: Optional[int] = typer.Option(None, help="Override the preset's batch size."),
               preset: str = typer.Option("roberta-base-glue", help="Hyperparameter preset (paper appendix)."),
               lr: Optional[str] = typer.Option(None, help="Per-method learning rates, e.g. red=1e-2,lora=1e-3 "
                                                            "(with --tune: the centre of each method's search)."),
               tune: bool = typer.Option(False, "--tune", help="Search each method's learning rate with Optuna on "
                                         "the first seed (same trial budget for every method), then train the "
                                         "best with the other seeds."),
               tune_trials: int = typer.Option(4, min=1, help="Trials per method and task (with --tune)."),
               tune_timeout: Optional[float] = typer.Option(None, help="Seconds per study; no trial starts after."),
               tune_span: float = typer.Option(10.0, help="Search [lr/span, lr*span] around each method's rate."),
               tune_pruner: str = typer.Option("median", help="median | successive_halving | none."),
               tune_sampler: str = typer.Option("qmc", help="qmc (even coverage for few trials) | tpe | random."),
               parallel: int = typer.Option(1, min=1, help="Trainings at once, each in its own process (the "
                                            "cores are shared out: 2 on a 2-core machine)."),
               head_floor: bool = typer.Option(True, help="Add the head-only floor (method 'head')."),
               work_dir: Path = typer.Option(Path("runs/bench-glue"), help="Checkpoints, the Optuna studies and "
                                             "cells.jsonl (a rerun resumes from it)."),
               out: Path = typer.Option(Path("results.json"), help="Where to write the table as JSON.")) -> None:
    """Rerun the paper's Table 1 comparison on a local GLUE folder and print it in the paper's format, with
    the majority-class and head-only floors (cells that do not beat head-only are marked)."""
    import optuna  # lazy: loads Optuna; --help stays instant

    from bench.glue_bench import run_glue_benchmark, to_markdown  # lazy: loads torch; --help stays instant
    from tasks.training.model_names import resolve_model  # lazy: loads torch; --help stays instant
    from tasks.tuning.space import TuneConfig  # lazy: loads torch; --help stays instant

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one progress line per trial comes from the benchmark
    with guard():
        overrides: dict[str, dict] = {}
        for item in split_commas(lr) or []:
            method, _, value = item.partition("=")
            overrides[method.strip()] = {"learning_rate": float(value)}
        if batch_size:
            for method in (split_commas(methods) or []) + ["head"]:
                overrides.setdefault(method, {})["batch_size"] = batch_size
        search = TuneConfig(trials=tune_trials, timeout=tune_timeout, span=tune_span, pruner=tune_pruner,
                            sampler=tune_sampler, pruner_startup_trials=1) if tune else None
        result = run_glue_benchmark(glue_dir, split_commas(tasks), split_commas(methods), resolve_model(model),
                                    [int(s) for s in split_commas(seeds)], work_dir, epochs=epochs,
                                    max_train_samples=max_train_samples, preset=preset, max_length=max_length,
                                    overrides=overrides, tune=search, parallel=parallel, head_floor=head_floor,
                                    progress=lambda text: console.print(text, markup=False, highlight=False,
                                                                        soft_wrap=True))
        result["command"] = {"glue_dir": str(glue_dir), "tasks": tasks, "methods": methods, "model": model,
                             "seeds": seeds, "epochs": epochs, "max_train_samples": max_train_samples,
                             "max_length": max_length, "preset": preset, "lr": lr, "batch_size": batch_size,
                             "tune": search.recipe() if search else None, "parallel": parallel}
        out.write_text(json.dumps(result, indent=2, default=str))
        console.print(to_markdown(result["table"]), markup=False)
