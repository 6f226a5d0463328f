"""The ``redflow`` command line (typer): retrain, evaluate, promote, rollback, params, bench, demo."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="redflow: scheduled multi-task fine-tuning with RED edits (Prefect + MLflow).")
bench_app = typer.Typer(no_args_is_help=True, help="Quality benchmarks (the paper's tables on local data).")
app.add_typer(bench_app, name="bench")
console = Console()


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


def _split(value: Optional[str]) -> Optional[list[str]]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@app.command()
def retrain(config: Path = typer.Argument(..., help="Retrain YAML (see configs/)."),
            only: Optional[str] = typer.Option(None, help="Comma-separated task names to run."),
            force: bool = typer.Option(False, help="Retrain tasks whose data, config, base model and code did not "
                                                   "change since their latest version."),
            tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default sqlite under runs/)."),
            task_runner: Optional[str] = typer.Option(None, help="threads | dask | ray")) -> None:
    """Prepare, train, evaluate, register and gate every task of CONFIG (a Prefect flow run)."""
    from .config import ConfigError, load_config

    overrides = {k: v for k, v in {"tracking_uri": tracking_uri, "task_runner": task_runner}.items() if v}
    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        _fail(str(exc))
    summary = _run_retrain(config, overrides, _split(only), force)
    print_summary(summary)
    print_next_steps(cfg)


def _run_retrain(config: Path, overrides: dict, only: Optional[list[str]], force: bool = False):
    from .retrain import RetrainFailed, retrain as retrain_flow

    if overrides:  # the flow reads its config from a file: write the overridden one beside the runs
        import yaml

        from .config import load_config

        cfg = load_config(config, overrides)
        tmp = Path(cfg.runs_dir) / f".{Path(config).stem}.effective.yaml"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())))
        config = tmp
    try:
        return retrain_flow(config=str(config), only=only, force=force)
    except RetrainFailed as exc:
        _fail(str(exc))


def print_summary(summary: dict) -> None:
    """One row per task (trained / unchanged / failed), then the reasons, which are too long for a cell."""
    table = Table(title="retrain summary")
    for col in ("task", "status", "steps", "metric", "new", "prod", "version", "decision"):
        table.add_column(col)
    notes = []
    for row in summary.values():
        status = row["status"]
        if status in ("failed", "diverged"):
            table.add_row(row["task"], f"[red]{status}[/]", "", "", "", "", "", "")
            notes.append((row["task"], row.get("error", "")))
            continue
        if status == "unchanged":
            table.add_row(row["task"], "unchanged", "0", "", "", "", f"v{row['version']}", "-")
            notes.append((row["task"], row["reason"]))
            continue
        champion = "" if row.get("champion") is None else f"{row['champion']:.3f}"
        table.add_row(row["task"], "trained", str(row["steps_trained"]), row["metric"],
                      "" if row.get("challenger") is None else f"{row['challenger']:.3f}", champion,
                      f"v{row['version']}", "[green]promoted[/]" if row["promoted"] else "kept")
        notes.append((row["task"], row["reason"]))
    console.print(table)
    for task, note in notes:
        console.print(f"  {task}: ", Text(str(note)), sep="")


def print_next_steps(cfg) -> None:
    from registry import setup_tracking

    uri = setup_tracking(cfg.tracking_uri, cfg.runs_dir)
    console.print(
        "\n[bold]Look at the results[/]\n"
        f"  MLflow UI (compare runs, see aliases):  mlflow ui --backend-store-uri {uri} --port 5000\n"
        "     then open http://127.0.0.1:5000 → experiment "
        f"'{cfg.experiment}' (select runs → Compare) and Models → red-<task> (aliases candidate/production)\n"
        "  Prefect UI (flow runs, artifacts):     prefect server start   then open http://127.0.0.1:4200\n"
        "  Serve a task:  mlflow models serve -m models:/red-<task>@production --env-manager local --port 5001\n"
        "  Promote / roll back:  redflow promote red-<task> <version>   ·   redflow rollback red-<task>"
    )


@app.command()
def evaluate(model_name: str = typer.Argument(..., help="Registered model, e.g. red-sentiment."),
             version: str = typer.Option("production", help="Version number or alias."),
             suite: list[str] = typer.Option(["test"], help="Suites: test, openllm-v1, lm-eval:<tasks> (repeatable)."),
             config: Optional[Path] = typer.Option(None, help="Retrain config (needed for the 'test' suite's data)."),
             task: Optional[str] = typer.Option(None, help="Task name in the config (default: model name minus red-)."),
             tracking_uri: Optional[str] = typer.Option(None)) -> None:
    """Re-evaluate a version or alias on suites and record the result on that version."""
    from .manage import evaluate as evaluate_flow

    if task is None and model_name.startswith("red-"):
        task = model_name[len("red-"):]
    try:
        metrics = evaluate_flow(model_name, version, list(suite), str(config) if config else None, task, tracking_uri)
    except Exception as exc:  # noqa: BLE001 - a CLI shows the reason, not a traceback
        _fail(f"{type(exc).__name__}: {exc}")
    console.print_json(data=metrics)


@app.command()
def promote(model_name: str = typer.Argument(...), version: int = typer.Argument(...),
            force: bool = typer.Option(False, help="Skip the quality gate (recorded as a forced promotion)."),
            margin: float = typer.Option(0.0, help="Required improvement over the current production."),
            minimum: Optional[float] = typer.Option(None, help="Floor for a first production version."),
            metric: Optional[str] = typer.Option(None, help="Metric to compare (default: the primary test metric)."),
            tracking_uri: Optional[str] = typer.Option(None), runs_dir: str = typer.Option("runs")) -> None:
    """Move 'production' to VERSION if it passes the gate (compare-and-set; recorded on the model)."""
    from .manage import promote as promote_flow

    try:
        decision = promote_flow(model_name, version, force, margin, minimum, metric, tracking_uri, runs_dir)
    except Exception as exc:  # noqa: BLE001
        _fail(f"{type(exc).__name__}: {exc}")
    console.print_json(data=decision)


@app.command()
def rollback(model_name: str = typer.Argument(...),
             to_version: Optional[int] = typer.Option(None, help="Default: the version production replaced."),
             reason: str = typer.Option("", help="Why (recorded in the alias history)."),
             tracking_uri: Optional[str] = typer.Option(None), runs_dir: str = typer.Option("runs")) -> None:
    """Move 'production' back to the previous production version."""
    from .manage import rollback as rollback_flow

    try:
        move = rollback_flow(model_name, to_version, reason, tracking_uri, runs_dir)
    except Exception as exc:  # noqa: BLE001
        _fail(f"{type(exc).__name__}: {exc}")
    console.print_json(data=move)


@app.command()
def params(model: str = typer.Argument(..., help="Hub name, local checkpoint/config.json, or a paper model "
                                                  "(roberta-base, gpt2-medium, t5-base, meta-llama/Llama-2-7b-hf ...)."),
           position: str = typer.Option("ffn", help="ffn | attn | ffn+attn"),
           method: str = typer.Option("red", help="red | loreft | direft"),
           rank: int = typer.Option(4, help="ReFT rank."),
           lora_rank: int = typer.Option(8, help="LoRA rank for the comparison (query/value).")) -> None:
    """Trainable parameters of RED vs LoRA vs full fine-tuning, from the config alone (no weights)."""
    from red import EditConfig, count_parameters
    from tasks.models import resolve_model

    try:
        counts = count_parameters(resolve_model(model), EditConfig(method=method, position=position, rank=rank),
                                  lora_rank=lora_rank)
    except Exception as exc:  # noqa: BLE001 - shown to the user with its type
        _fail(f"cannot read a config for {model!r}: {type(exc).__name__}: {exc}")
    table = Table(title=f"trainable parameters: {model}")
    table.add_column("method")
    table.add_column("parameters", justify="right")
    table.add_column(f"vs {method}", justify="right")
    for name, n in counts.items():
        table.add_row(name, f"{n:,}", f"{n / counts[method]:,.1f}x")
    console.print(table)


@app.command()
def demo(config: Path = typer.Option(Path("configs/demo.yaml"), help="The demo config."),
         runs_dir: Optional[Path] = typer.Option(None, help="Where runs, MLflow DB and edits go.")) -> None:
    """Run the offline demo: generate data, retrain three tasks on MiniLM, register and promote."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from .config import ConfigError, load_config

    overrides = {"runs_dir": str(runs_dir)} if runs_dir else {}
    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        _fail(str(exc))
    summary = _run_retrain(config, overrides, None)
    print_summary(summary)
    print_next_steps(cfg)


@bench_app.command("glue")
def bench_glue(glue_dir: Path = typer.Option(..., help="Folder in the GLUE TSV layout (SST-2/, MRPC/, RTE/ ...)."),
               tasks: str = typer.Option("sst2,mrpc,rte", help="Comma-separated GLUE tasks."),
               methods: str = typer.Option("red,lora,bitfit,full", help="Comma-separated methods."),
               model: str = typer.Option("minilm", help="Base model (hub name, folder, or 'minilm')."),
               seeds: str = typer.Option("42,43,44", help="Comma-separated seeds."),
               epochs: Optional[float] = typer.Option(None, help="Override the preset's epochs."),
               max_train_samples: Optional[int] = typer.Option(None, help="Subsample training rows (seeded)."),
               max_length: int = typer.Option(128, help="Maximum tokens per example."),
               batch_size: Optional[int] = typer.Option(None, help="Override the preset's batch size."),
               preset: str = typer.Option("roberta-base-glue", help="Hyperparameter preset (paper appendix)."),
               lr: Optional[str] = typer.Option(None, help="Per-method learning rates, e.g. red=1e-2,lora=1e-3 "
                                                            "(short budgets need larger rates than the paper's)."),
               work_dir: Path = typer.Option(Path("runs/bench-glue"), help="Checkpoints and per-cell results."),
               out: Path = typer.Option(Path("results.json"), help="Where to write the table as JSON.")) -> None:
    """Rerun the paper's Table 1 comparison on a local GLUE folder and print it in the paper's format."""
    from tasks.glue_bench import run_glue_benchmark, to_markdown
    from tasks.models import resolve_model

    overrides: dict[str, dict] = {}
    for item in _split(lr) or []:
        method, _, value = item.partition("=")
        overrides[method.strip()] = {"learning_rate": float(value)}
    if batch_size:
        for method in _split(methods) or []:
            overrides.setdefault(method, {})["batch_size"] = batch_size
    result = run_glue_benchmark(glue_dir, _split(tasks), _split(methods), resolve_model(model),
                                [int(s) for s in _split(seeds)], work_dir, epochs=epochs,
                                max_train_samples=max_train_samples, preset=preset, max_length=max_length,
                                overrides=overrides)
    result["command"] = {"glue_dir": str(glue_dir), "tasks": tasks, "methods": methods, "model": model,
                         "seeds": seeds, "epochs": epochs, "max_train_samples": max_train_samples,
                         "max_length": max_length, "preset": preset, "lr": lr, "batch_size": batch_size}
    out.write_text(json.dumps(result, indent=2))
    console.print(to_markdown(result["table"]))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
