"""``redflow retrain`` and ``redflow demo``: a retrain flow run with a live line per task, then its summary.

Ctrl-C and SIGTERM stop training at the next optimizer step and leave the attempt resumable
(``_stop_training_on_interrupt``); the full log goes to a file beside the runs.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
import yaml
from rich import box
from rich.table import Table
from rich.text import Text

from .common import Negative, Terminated, console, err, guard, note, split_commas


def _check_only(cfg, config: Path, only: Optional[list[str]]) -> None:
    names = [t.name for t in cfg.tasks]
    unknown = [n for n in only or [] if n not in names]
    if unknown:
        raise LookupError(f"--only names unknown task(s) {unknown}; {config} has {names}. "
                          "Fix: pass --only with names from that list")


def _announce_store(cfg, tracking_uri: Optional[str] = None) -> str:
    """Say which MLflow store the retrain uses; a tracking server that does not answer is an error now, not after
    minutes of retries inside the flow (``StoreUnreachable``, exit 2)."""
    from registry.store import require_reachable, resolve_tracking_uri  # lazy: loads MLflow; --help stays instant

    target = resolve_tracking_uri(tracking_uri, cfg.runs_dir, config_uri=cfg.tracking_uri, source="--tracking-uri")
    note(target.describe())
    require_reachable(target)
    return target.uri


@contextmanager
def _stop_training_on_interrupt(trains_in_process: bool = True) -> Iterator[None]:
    """Ctrl-C (exit 130) and SIGTERM (exit 143) stop training at the next optimizer step (it runs in worker threads,
    which the main thread's exception does not reach); the attempt is left resumable.

    SIGTERM becomes :class:`Terminated` rather than the default action (the process ending on the spot), so the
    command unwinds: Prefect's flow engine (which replaces this handler while a flow runs, and hands the signal
    back to it once the flow has stopped) ends the flow run, the task runner shuts down, and ``atexit`` stops
    the temporary Prefect server this command started. ``trains_in_process``: False when the trainings run in
    the task runner's worker processes (Dask, Ray), which this process cannot see (``Terminated.stopped_training``).
    """
    from tasks.training import clear_stop, request_stop, stopped_a_training  # lazy: loads torch; --help instant

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def interrupted(signum, frame):
        request_stop()
        signal.default_int_handler(signum, frame)

    def terminated(signum, frame):
        request_stop()
        raise Terminated(f"signal {signum}", stopped_training=stopped_a_training() if trains_in_process else None)

    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        clear_stop()


def _run_retrain(config: Path, overrides: dict, only: Optional[list[str]], force: bool = False) -> None:
    """Run the retrain flow with a live status line per task, full logs in a file; print the summary.

    The summary is printed also when tasks failed (then the command exits 1 after it).
    """
    from ..config import load_config  # lazy: loads torch; --help stays instant
    from ..console import logging_to, reporting  # lazy: loads torch; --help stays instant
    from ..ephemeral_servers import reap_orphaned_servers  # lazy: loads Prefect; --help stays instant
    from ..orchestrator import ephemeral_server_grace, require_prefect_api  # lazy: loads Prefect; --help instant
    from ..retrain import RetrainFailed, retrain as retrain_flow  # lazy: loads Prefect; --help stays instant

    cfg = load_config(config, overrides)
    require_prefect_api()  # a configured API that does not answer: exit 2 now, not minutes of client retries
    given = config
    if overrides:  # the flow reads its config from a file: write the overridden one beside the runs

        tmp = Path(cfg.runs_dir) / f".{Path(config).stem}.effective.yaml"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())))
        config = tmp
    log_path = Path(cfg.runs_dir) / cfg.name / "logs" / f"retrain-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    failure: RetrainFailed | None = None
    with logging_to(log_path), ephemeral_server_grace(), reporting(err), \
            _stop_training_on_interrupt(trains_in_process=cfg.task_runner == "threads"):
        reap_orphaned_servers()  # temporary Prefect servers of redflow commands that were SIGKILLed
        try:
            summary = retrain_flow(config=str(config), only=only, force=force)
        except RetrainFailed as exc:
            summary, failure = exc.summary, exc
    if summary:
        print_summary(summary)
    note(f"full log: {relative(log_path)}")
    if failure is not None:  # what to look at next is the failure (the summary and the log), not the registry
        raise Negative(str(failure)) from failure
    print_next_steps(cfg, given)


def retrain(config: Path = typer.Argument(..., help="Retrain YAML (see configs/)."),
            only: Optional[str] = typer.Option(None, help="Comma-separated task names to run (default: all)."),
            force: bool = typer.Option(False, help="Also retrain tasks whose data, config, base model and code did "
                                                   "not change since their latest version."),
            tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI; overrides the config's "
                                                                  "tracking_uri and the environment."),
            task_runner: Optional[str] = typer.Option(None, help="threads | dask | ray (overrides the config).")
            ) -> None:
    """Prepare, train, evaluate, register and gate every task of CONFIG (a Prefect flow run)."""
    from ..config import load_config  # lazy: loads torch; --help stays instant

    with guard():
        overrides = {k: v for k, v in {"tracking_uri": tracking_uri, "task_runner": task_runner}.items() if v}
        cfg = load_config(config, overrides)
        _check_only(cfg, config, split_commas(only))
        _announce_store(cfg, tracking_uri)
        _run_retrain(config, overrides, split_commas(only), force)


def demo(config: Path = typer.Option(Path("configs/demo.yaml"), help="The demo config."),
         runs_dir: Optional[Path] = typer.Option(None, help="Where runs, MLflow DB and edits go.")) -> None:
    """Run the offline demo: generate data, retrain three tasks on MiniLM, register and promote."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from ..config import load_config  # lazy: loads torch; --help stays instant

    with guard():
        overrides = {"runs_dir": str(runs_dir)} if runs_dir else {}
        cfg = load_config(config, overrides)
        _announce_store(cfg)
        _run_retrain(config, overrides, None)


def print_summary(summary: dict) -> None:
    """One row per task (trained / unchanged / failed / diverged), then each task's why and gate reason.

    Fits 80 columns: names fold instead of being cut; "new"/"prod" are the candidate's and production's
    scores on the same rows (the gate's pair).
    """
    table = Table(title="retrain summary", box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    for col, justify in (("task", "left"), ("status", "left"), ("steps", "right"), ("metric", "left"),
                         ("new", "right"), ("prod", "right"), ("ver", "right"), ("decision", "left")):
        table.add_column(col, justify=justify, overflow="fold")
    notes = []
    for row in summary.values():
        status, task = row["status"], Text(row["task"])
        if status in ("failed", "diverged"):
            table.add_row(task, Text(status, style="red"), "", "", "", "", "", Text(f"at {row.get('step', '')}"))
            notes.append((row["task"], row.get("error", ""), "red"))
            continue
        if status in ("unchanged", "busy"):
            version = f"v{row['version']}" if row.get("version") else ""
            table.add_row(task, status, "0", "", "", "", version, "")  # no decision: nothing was gated
            notes.append((row["task"], row["reason"], "dim"))
            continue
        score = (lambda x: "" if x is None else f"{x:.3f}")
        decision = Text(row["decision"], style="green" if row["promoted"] else "yellow" if row["decision"] ==
                        "awaiting approval" else "")
        table.add_row(task, status, str(row["steps_trained"]), Text(row["metric"] or ""), score(row.get("challenger")),
                      score(row.get("champion")), f"v{row['version']}", decision)
        notes.append((row["task"], f"{row['why']}. Gate: {row['reason']}", "dim"))
    console.print(table)
    for task, text, style in notes:
        console.print(Text.assemble((f"{task}: ", "bold"), (str(text), style)), soft_wrap=False)


def relative(path: Path | str) -> str:
    """``path`` relative to the working directory when it lies under it (what a person types), else as it is."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def relative_uri(uri: str) -> str:
    """A ``sqlite:///`` URI whose file lies under the working directory as a relative one (``sqlite:///runs/...``)."""
    from registry.store import sqlite_path  # lazy: loads MLflow; --help stays instant

    db = sqlite_path(uri)
    if db is None:
        return uri
    short = relative(db)
    return uri if Path(short).is_absolute() else f"sqlite:///{short}"


def print_next_steps(cfg, config: Path | str = "<retrain config>") -> None:
    """What to look at after a successful retrain: the MLflow UI, Prefect, versions, serving, promote/rollback.

    One command per line (a long one continued with a backslash, so a copy-paste runs it whole); with the runs
    under the working directory the paths are relative and every line fits 80 columns."""
    from registry import setup_tracking  # lazy: loads MLflow; --help stays instant

    uri = setup_tracking(cfg.tracking_uri, cfg.runs_dir)
    short = relative_uri(uri)
    if uri.startswith(("http://", "https://")):  # a tracking server: its own UI
        ui = [("Compare runs and see aliases", [experiment_url(uri.rstrip("/"), cfg.experiment)])]
    else:
        ui = [("Compare runs and see aliases (then open the link below)",
               [f"mlflow ui --backend-store-uri {short} --port 5000"]),
              ("", [experiment_url("http://127.0.0.1:5000", cfg.experiment)])]
    steps = [
        *ui,
        ("Flow runs and their summaries", ["prefect server start"]),
        ("Versions and the alias history of a task", ["redflow versions red-<task>; redflow history red-<task>"]),
        ("Serve a task", [f"MLFLOW_TRACKING_URI={short} \\",
                          "  mlflow models serve -m models:/red-<task>@production \\",
                          "  --env-manager local --port 5001"]),
        ("Promote (both versions scored on the task's rows) or roll back",
         [f"redflow promote red-<task> <version> --config {relative(config)}", "redflow rollback red-<task>"]),
    ]
    console.print(Text("\nNext", style="bold"))
    for what, commands in steps:  # never wrapped by rich: a copy-paste must run what it shows
        if what:
            console.print(Text(f"  {what}:", style="dim"))
        for command in commands:
            console.print(Text(f"    {command}"), soft_wrap=True, highlight=False)


def experiment_url(ui: str, experiment: str) -> str:
    """The MLflow UI page of ``experiment``'s training runs (the machine-learning view, not the GenAI one)."""
    from mlflow import MlflowClient  # lazy: loads MLflow; --help stays instant

    exp = MlflowClient().get_experiment_by_name(experiment)
    if exp is None:
        return ui
    return f"{ui}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
