"""The ``redflow`` command line (typer): retrain, demo, promote, rollback, versions, history, evaluate, serve,
bundle, params, bench.

Exit codes (also in ``redflow --help`` and the README)::

    0  success
    1  the command ran, and the answer is no: the gate rejected a promotion, or retrain tasks failed
    2  a usage or configuration error you can fix: the message's last sentence says how
    3  an unexpected error (a bug or a broken environment): the traceback is in the log file it names
    130 interrupted (Ctrl-C)
    143 terminated (SIGTERM: ``kill``, systemd, Kubernetes, a Prefect worker cancelling the flow run)

Ctrl-C and SIGTERM stop training at the next optimizer step, leave the attempt resumable, and exit after
the temporary Prefect server and any Dask cluster the command started are stopped. A retrain whose task
is already being trained by another live process (a twin run) reports it ``busy`` and exits 0.

Errors are one line on stderr; ``--debug`` also prints the traceback, which is always written to a log
file under ``$REDFLOW_LOG_DIR`` (default: ``<temp dir>/redflow-logs``). Data (JSON, tables) goes to
stdout, notes such as which MLflow store is used go to stderr.

Registry commands (promote, rollback, versions, history, evaluate) run as plain functions unless a
Prefect API is configured (then promote, rollback and evaluate run as flow runs); retrain and demo are
Prefect flow runs, with a temporary server given time to start (``flows/orchestrator.py``).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

EXIT_OK, EXIT_NO, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 3, 130, 143

EPILOG = (
    "Exit codes: 0 success; 1 the command ran and the answer is no (the gate rejected a promotion, "
    "retrain tasks failed); 2 usage or configuration error, fixable (the message says how); "
    "3 unexpected error (traceback in the log file named; --debug prints it); 130 interrupted (Ctrl-C); "
    "143 terminated (SIGTERM). A retrain whose task another live run is training says 'busy' and exits 0.\n\n"
    "MLflow store: --tracking-uri, else the config's tracking_uri, else $REDFLOW_TRACKING_URI or "
    "$MLFLOW_TRACKING_URI, else sqlite:///RUNS_DIR/mlflow.db. Commands that only read never create a store."
)

app = typer.Typer(add_completion=False, no_args_is_help=True, epilog=EPILOG,
                  help="redflow: scheduled multi-task fine-tuning with RED edits (Prefect + MLflow).")
bench_app = typer.Typer(no_args_is_help=True, help="Quality benchmarks (the paper's tables on local data).")
app.add_typer(bench_app, name="bench")
console = Console()                 # data: tables, JSON
err = Console(stderr=True)          # notes and errors
_state = {"debug": False}


class Negative(Exception):
    """The command ran and the answer is no (exit 1): a rejected promotion, failed retrain tasks."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (exit 143). A KeyboardInterrupt, so that Prefect's engine and every ``except Exception``
    on the way let it through, as they let Ctrl-C through, and the process unwinds normally: context managers
    close the task runner (Dask cluster) and ``atexit`` stops the temporary Prefect server. The default SIGTERM
    action would end the process on the spot and leave both running."""


# ---------------------------------------------------------------------------------------------
# errors, exit codes, notes
# ---------------------------------------------------------------------------------------------
def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors a user fixes (exit 2): ConfigError and pydantic's errors are ValueErrors, ModelNotFound a
    LookupError, StoreNotFound a FileNotFoundError; registry's own are imported lazily (they need mlflow)."""
    kinds: list[type[BaseException]] = [LookupError, ValueError, FileNotFoundError, PermissionError]
    try:
        from registry.aliases import RollbackError
        from registry.locks import LockTimeout

        kinds += [RollbackError, LockTimeout]
    except ImportError:  # pragma: no cover - registry needs mlflow, which redflow requires
        pass
    return tuple(kinds)


def _log_file(exc: BaseException) -> Path | None:
    """Write the traceback under ``$REDFLOW_LOG_DIR`` (default ``<temp>/redflow-logs``); None if impossible."""
    folder = Path(os.environ.get("REDFLOW_LOG_DIR") or Path(tempfile.gettempdir()) / "redflow-logs")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"redflow-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        path.write_text("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        return path
    except OSError:
        return None


def _say(label: str, style: str, message: str) -> None:
    """One line on stderr; ``message`` is printed as is (square brackets survive: no rich markup)."""
    err.print(Text.assemble((label, style), message), soft_wrap=True, highlight=False)


def note(message: str) -> None:
    err.print(Text(message, style="dim"), soft_wrap=True, highlight=False)


@contextmanager
def guard() -> Iterator[None]:
    """Turn exceptions into one-line errors and the documented exit codes."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except Terminated:
        _say("terminated", "bold red", " (SIGTERM): training stopped at its last step, resumable")
        raise typer.Exit(EXIT_TERMINATED) from None
    except KeyboardInterrupt:
        _say("interrupted", "bold red", "")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Negative as exc:
        _say("no: ", "bold yellow", str(exc))
        raise typer.Exit(EXIT_NO) from None
    except Exception as exc:  # noqa: BLE001 - the CLI's one place that turns errors into exit codes
        log = _log_file(exc)
        if _state["debug"]:
            err.print("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), markup=False,
                      highlight=False)
        if isinstance(exc, _user_errors()):
            _say("error: ", "bold red", str(exc))
            raise typer.Exit(EXIT_USAGE) from None
        where = f"traceback in {log}" if log else "traceback not written"
        _say("internal error: ", "bold red", f"{type(exc).__name__}: {exc} ({where}; --debug prints it)")
        raise typer.Exit(EXIT_INTERNAL) from None


def _split(value: Optional[str]) -> Optional[list[str]]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _version_callback(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    def v(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    console.print(f"redflow {v('redflow')} (mlflow {v('mlflow')}, prefect {v('prefect')}, torch {v('torch')}, "
                  f"transformers {v('transformers')})", highlight=False)
    raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print redflow's version (and MLflow's, Prefect's, torch's) and exit."),
    debug: bool = typer.Option(False, "--debug", help="On an error, also print the traceback."),
) -> None:
    """redflow: scheduled multi-task fine-tuning with RED edits (Prefect + MLflow)."""
    _state["debug"] = debug
    from .console import quiet_libraries

    quiet_libraries()


# ---------------------------------------------------------------------------------------------
# retrain, demo
# ---------------------------------------------------------------------------------------------
def _check_only(cfg, config: Path, only: Optional[list[str]]) -> None:
    names = [t.name for t in cfg.tasks]
    unknown = [n for n in only or [] if n not in names]
    if unknown:
        raise LookupError(f"--only names unknown task(s) {unknown}; {config} has {names}. "
                          "Fix: pass --only with names from that list")


def _announce_store(cfg, tracking_uri: Optional[str] = None) -> str:
    from registry.store import resolve_tracking_uri

    target = resolve_tracking_uri(tracking_uri, cfg.runs_dir, config_uri=cfg.tracking_uri, source="--tracking-uri")
    note(target.describe())
    return target.uri


@contextmanager
def _stop_training_on_interrupt() -> Iterator[None]:
    """Ctrl-C (exit 130) and SIGTERM (exit 143) stop training at the next optimizer step (it runs in worker threads,
    which the main thread's exception does not reach); the attempt is left resumable.

    SIGTERM becomes :class:`Terminated` rather than the default action (the process ending on the spot), so the
    command unwinds: Prefect's flow engine (which replaces this handler while a flow runs, and hands the signal
    back to it once the flow has stopped) ends the flow run, the task runner shuts down, and ``atexit`` stops
    the temporary Prefect server this command started.
    """
    import signal
    import threading

    from tasks.training import clear_stop, request_stop

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def interrupted(signum, frame):
        request_stop()
        signal.default_int_handler(signum, frame)

    def terminated(signum, frame):
        request_stop()
        raise Terminated(f"signal {signum}")

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
    from .config import load_config
    from .console import logging_to, reporting
    from .ephemeral_servers import reap_orphaned_servers
    from .orchestrator import ephemeral_server_grace
    from .retrain import RetrainFailed, retrain as retrain_flow

    cfg = load_config(config, overrides)
    given = config
    if overrides:  # the flow reads its config from a file: write the overridden one beside the runs
        import yaml

        tmp = Path(cfg.runs_dir) / f".{Path(config).stem}.effective.yaml"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())))
        config = tmp
    log_path = Path(cfg.runs_dir) / cfg.name / "logs" / f"retrain-{time.strftime('%Y%m%d-%H%M%S')}.log"
    failure: RetrainFailed | None = None
    with logging_to(log_path), ephemeral_server_grace(), reporting(err), _stop_training_on_interrupt():
        reap_orphaned_servers()  # temporary Prefect servers of redflow commands that were SIGKILLed
        try:
            summary = retrain_flow(config=str(config), only=only, force=force)
        except RetrainFailed as exc:
            summary, failure = exc.summary, exc
    if summary:
        print_summary(summary)
    note(f"full log: {log_path}")
    print_next_steps(cfg, given)
    if failure is not None:
        raise Negative(str(failure)) from failure


@app.command()
def retrain(config: Path = typer.Argument(..., help="Retrain YAML (see configs/)."),
            only: Optional[str] = typer.Option(None, help="Comma-separated task names to run (default: all)."),
            force: bool = typer.Option(False, help="Also retrain tasks whose data, config, base model and code did "
                                                   "not change since their latest version."),
            tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI; overrides the config's "
                                                                  "tracking_uri and the environment."),
            task_runner: Optional[str] = typer.Option(None, help="threads | dask | ray (overrides the config).")
            ) -> None:
    """Prepare, train, evaluate, register and gate every task of CONFIG (a Prefect flow run)."""
    from .config import load_config

    with guard():
        overrides = {k: v for k, v in {"tracking_uri": tracking_uri, "task_runner": task_runner}.items() if v}
        cfg = load_config(config, overrides)
        _check_only(cfg, config, _split(only))
        _announce_store(cfg, tracking_uri)
        _run_retrain(config, overrides, _split(only), force)


@app.command()
def demo(config: Path = typer.Option(Path("configs/demo.yaml"), help="The demo config."),
         runs_dir: Optional[Path] = typer.Option(None, help="Where runs, MLflow DB and edits go.")) -> None:
    """Run the offline demo: generate data, retrain three tasks on MiniLM, register and promote."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from .config import load_config

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
    from rich import box

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
            table.add_row(task, status, "0", "", "", "", version, "nothing new")
            notes.append((row["task"], row["reason"], "dim"))
            continue
        score = (lambda x: "" if x is None else f"{x:.3f}")
        decision = Text("promoted", style="green") if row["promoted"] else Text("kept out")
        table.add_row(task, status, str(row["steps_trained"]), Text(row["metric"] or ""), score(row.get("challenger")),
                      score(row.get("champion")), f"v{row['version']}", decision)
        notes.append((row["task"], f"{row['why']}. Gate: {row['reason']}", "dim"))
    console.print(table)
    for task, text, style in notes:
        console.print(Text.assemble((f"{task}: ", "bold"), (str(text), style)), soft_wrap=False)


def print_next_steps(cfg, config: Path | str = "<retrain config>") -> None:
    from registry import setup_tracking

    uri = setup_tracking(cfg.tracking_uri, cfg.runs_dir)
    if uri.startswith(("http://", "https://")):  # a tracking server: its own UI
        ui = [("Compare runs and see aliases", experiment_url(uri.rstrip("/"), cfg.experiment))]
    else:
        ui = [("Compare runs and see aliases (then open the link below)",
               f"mlflow ui --backend-store-uri {uri} --port 5000"),
              ("", experiment_url("http://127.0.0.1:5000", cfg.experiment))]
    steps = [
        *ui,
        ("Flow runs and their summaries", "prefect server start"),
        ("Versions and the alias history of a task", "redflow versions red-<task>; redflow history red-<task>"),
        ("Serve a task", f"MLFLOW_TRACKING_URI={uri} mlflow models serve -m models:/red-<task>@production "
                         "--env-manager local --port 5001"),
        ("Promote (both versions scored on the task's rows) or roll back",
         f"redflow promote red-<task> <version> --config {config}; redflow rollback red-<task>"),
    ]
    console.print(Text("\nNext", style="bold"))
    for what, command in steps:  # one command per line, never wrapped by us: copy-paste it whole
        if what:
            console.print(Text(f"  {what}:", style="dim"))
        console.print(Text(f"    {command}"), soft_wrap=True, highlight=False)


def experiment_url(ui: str, experiment: str) -> str:
    """The MLflow UI page of ``experiment``'s training runs (the machine-learning view, not the GenAI one)."""
    from mlflow import MlflowClient

    exp = MlflowClient().get_experiment_by_name(experiment)
    if exp is None:
        return ui
    return f"{ui}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"


# ---------------------------------------------------------------------------------------------
# registry commands
# ---------------------------------------------------------------------------------------------
TRACKING_HELP = "MLflow tracking URI (default: the config's, then $REDFLOW_TRACKING_URI / $MLFLOW_TRACKING_URI, " \
                "then sqlite:///RUNS_DIR/mlflow.db)."
RUNS_DIR_HELP = "Runs folder whose mlflow.db is the default store (when no URI is given anywhere)."


def _open(tracking_uri: Optional[str], runs_dir: str = "runs", cfg=None) -> str:
    from .operations import open_store

    target = open_store(tracking_uri, runs_dir, cfg=cfg)
    note(target.describe())
    return target.uri


def _prefect_api() -> Optional[str]:
    from .orchestrator import prefect_api_url

    url = prefect_api_url()
    if url:
        note(f"Prefect API: {url} (this runs as a flow run)")
    return url


def _print_json(data: Any) -> None:
    console.print_json(data=json.loads(json.dumps(data, default=str)))


@app.command()
def promote(model_name: str = typer.Argument(..., help="Registered model, e.g. red-sentiment."),
            version: int = typer.Argument(..., help="Version number to move 'production' to."),
            force: bool = typer.Option(False, help="Skip the quality gate (recorded as a forced promotion)."),
            config: Optional[Path] = typer.Option(None, help="Retrain config: the task's promotion settings and "
                                                             "store; VERSION and production are then scored on the "
                                                             "task's current test rows (without it production is "
                                                             "never replaced, only a first version promoted)."),
            task: Optional[str] = typer.Option(None, help="Task in --config (default: the one registering "
                                                          "MODEL_NAME)."),
            margin: Optional[float] = typer.Option(None, help="Required improvement over the current production "
                                                              "(default: the config's, else 0)."),
            minimum: Optional[float] = typer.Option(None, help="Floor a version must reach (default: the config's)."),
            metric: Optional[str] = typer.Option(None, help="Metric to compare (default: the config's, else the "
                                                            "version's primary test metric)."),
            higher_is_better: Optional[bool] = typer.Option(None, "--higher-is-better/--lower-is-better",
                                                            help="Metric direction (default: the config's, else "
                                                                 "from the metric: losses are lower-is-better)."),
            tracking_uri: Optional[str] = typer.Option(None, help=TRACKING_HELP),
            runs_dir: str = typer.Option("runs", help=RUNS_DIR_HELP)) -> None:
    """Move 'production' to VERSION if it passes the gate (compare-and-set; recorded). Exit 1 if rejected."""
    from .operations import promotion_policy, task_for_model
    from .promotion import promote_version

    with guard():
        cfg = None
        if config is not None:
            from .config import load_config

            cfg = load_config(config)
        uri = _open(tracking_uri, runs_dir, cfg)
        spec = task_for_model(cfg, model_name, task) if cfg is not None else None
        policy = promotion_policy(cfg, spec, margin=margin, minimum=minimum, metric=metric,
                                  higher_is_better=higher_is_better)
        if _prefect_api():
            from .manage import promote as promote_flow

            result = promote_flow(model_name, version, force=force, margin=margin, minimum=minimum, metric=metric,
                                  tracking_uri=uri, higher_is_better=higher_is_better,
                                  config=str(config) if config else None, task=spec.name if spec else None)
        else:
            result = promote_version(model_name, version, force=force, policy=policy, cfg=cfg, task=spec).to_dict()
        _print_json(result)
        if result.get("previous") == version and not result.get("promoted"):
            note(f"{model_name}: v{version} is already production")  # the state asked for: success
        elif not force and not result.get("promoted"):
            raise Negative(f"{model_name} v{version} not promoted: {result.get('reason')}")
        else:
            note(f"{model_name}: production -> v{version}" + (" (forced)" if force else ""))


@app.command()
def rollback(model_name: str = typer.Argument(..., help="Registered model, e.g. red-sentiment."),
             to_version: Optional[int] = typer.Option(None, help="Version to put back (default: the version the "
                                                                 "current production replaced)."),
             reason: str = typer.Option("", help="Why (recorded in the alias history)."),
             tracking_uri: Optional[str] = typer.Option(None, help=TRACKING_HELP),
             runs_dir: str = typer.Option("runs", help=RUNS_DIR_HELP)) -> None:
    """Move 'production' back to the previous production version (recorded in the alias history)."""
    from .operations import rollback_version

    with guard():
        uri = _open(tracking_uri, runs_dir)
        if _prefect_api():
            from .manage import rollback as rollback_flow

            move = rollback_flow(model_name, to_version, reason, tracking_uri=uri)
        else:
            move = rollback_version(model_name, to_version, reason).to_dict()
        _print_json(move)
        note(f"{model_name}: production v{move.get('previous')} -> v{move.get('version')}")


def _fmt(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.4f}"


def _who(by: Any) -> str:
    """``user@host`` of a lock owner ``user@host:pid:thread:nonce``."""
    return str(by or "").split(":", 1)[0]


def _rows(fetch, model_name: str, tracking_uri: Optional[str], runs_dir: str, as_json: bool) -> Optional[list]:
    """Open the store and fetch rows; with ``as_json`` print them and return None."""
    _open(tracking_uri, runs_dir)
    rows = fetch(model_name)
    if as_json:
        _print_json(rows)
        return None
    return rows


@app.command()
def versions(model_name: str = typer.Argument(..., help="Registered model, e.g. red-sentiment."),
             tracking_uri: Optional[str] = typer.Option(None, help=TRACKING_HELP),
             runs_dir: str = typer.Option("runs", help=RUNS_DIR_HELP),
             as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the versions of MODEL_NAME: aliases, status, method, key metrics and the gate's decisions."""
    from rich import box

    from registry.views import version_rows

    with guard():
        rows = _rows(version_rows, model_name, tracking_uri, runs_dir, as_json)
        if rows is None:
            return
        metric = next((r["metric"] for r in rows if r["metric"]), "metric")
        table = Table(title=f"{escape(model_name)}: {len(rows)} version(s); test/val = {escape(metric)}",
                      box=box.SIMPLE_HEAD, padding=(0, 1))
        for col, justify in (("ver", "right"), ("aliases", "left"), ("method", "left"), ("test", "right"),
                             ("val", "right"), ("gate", "left"), ("registered (UTC)", "left")):
            table.add_column(col, justify=justify, no_wrap=col != "aliases")  # type: ignore[arg-type]
        for r in rows:
            labels = r["aliases"] + ([f"({r['status']})"] if r["status"] != "ready" else [])
            table.add_row(str(r["version"]), escape(", ".join(labels)), escape(r["method"]), _fmt(r["test"]),
                          _fmt(r["validation"]), escape(r["gate"]), r["created"].removesuffix(" UTC"))
        console.print(table)
        for r in rows:
            if r["gate_reason"]:
                console.print(Padding(Text(f"v{r['version']} {r['gate']}: {r['gate_reason']}"), (0, 0, 0, 2)),
                              highlight=False)


@app.command()
def history(model_name: str = typer.Argument(..., help="Registered model, e.g. red-sentiment."),
            tracking_uri: Optional[str] = typer.Option(None, help=TRACKING_HELP),
            runs_dir: str = typer.Option("runs", help=RUNS_DIR_HELP),
            limit: int = typer.Option(20, min=1, help="Show the newest LIMIT entries."),
            as_json: bool = typer.Option(False, "--json", help="Print JSON (all entries) instead of text.")) -> None:
    """Alias moves and gate decisions of MODEL_NAME, newest first: when, what, who and why."""
    from registry.views import history_rows

    with guard():
        rows = _rows(history_rows, model_name, tracking_uri, runs_dir, as_json)
        if rows is None:
            return
        console.print(Text(f"{model_name}: alias history, newest first ({min(limit, len(rows))} of {len(rows)})",
                           style="bold"))
        for e in rows[:limit]:
            if e.get("action") == "reject":
                move = f"v{e.get('version')}" + (f" (stays v{e['from']})" if e.get("from") is not None else "")
            elif e.get("from") is None:
                move = f"v{e.get('version')}"
            else:
                move = f"v{e.get('from')} -> v{e.get('version')}"
            when = str(e.get("at", ""))[:19].replace("T", " ")
            console.print(Text.assemble((f"{when} UTC  ", "dim"), (f"{e.get('alias', '')} ", "bold"),
                                        f"{e.get('action', '')}  {move}  ", (f"by {_who(e.get('by'))}", "dim")),
                          highlight=False)
            if e.get("reason"):
                console.print(Padding(Text(str(e["reason"])), (0, 0, 0, 4)), highlight=False)


@app.command()
def evaluate(model_name: str = typer.Argument(..., help="Registered model, e.g. red-sentiment."),
             version: str = typer.Option("production", help="Version number or alias."),
             suite: list[str] = typer.Option(["test"], help="Suites: test, openllm-v1, lm-eval:TASKS (repeatable)."),
             config: Optional[Path] = typer.Option(None, help="Retrain config (the 'test' suite's data, the store)."),
             task: Optional[str] = typer.Option(None, help="Task in --config (default: the one registering "
                                                           "MODEL_NAME)."),
             tracking_uri: Optional[str] = typer.Option(None, help=TRACKING_HELP)) -> None:
    """Re-evaluate a version or alias on suites and record the result on that version."""
    with guard():
        cfg = None
        if config is not None:
            from .config import load_config

            cfg = load_config(config)
        uri = _open(tracking_uri, cfg=cfg)
        cfg_arg = str(config) if config else None
        if _prefect_api():
            from .manage import evaluate as evaluate_flow

            metrics = evaluate_flow(model_name, version, list(suite), cfg_arg, task, uri)
        else:
            from .manage import evaluate_reports

            reports = evaluate_reports(model_name, version, list(suite), cfg_arg, task, uri)
            metrics = {r.name: r.metrics for r in reports}
        _print_json(metrics)


# ---------------------------------------------------------------------------------------------
# serve, bundle
# ---------------------------------------------------------------------------------------------
MODELS_HELP = "Registered model names and/or glob patterns, comma-separated (e.g. 'red-*' or red-a,red-b)."


def _serving_config(config: Optional[Path], **flags: Any):
    from registry.serving.serving_config import load_serving_config, serving_config

    return load_serving_config(config, **flags) if config is not None else serving_config(None, **flags)


def _serving_store(tracking_uri: Optional[str], runs_dir: str, cfg) -> str:
    """The store a serving config reads: --tracking-uri > the config's tracking_uri > env > default (never created)."""
    from registry.store import resolve_tracking_uri, use_tracking

    target = resolve_tracking_uri(tracking_uri, runs_dir, config_uri=cfg.tracking_uri, source="--tracking-uri")
    use_tracking(target, create=False)
    note(target.describe())
    return target.uri


@app.command()
def serve(config: Optional[Path] = typer.Argument(None, help="YAML serving config (models, alias, poll_interval, "
                                                               "batch_size, ...); flags override it."),
          models: Optional[str] = typer.Option(None, help=MODELS_HELP),
          alias: Optional[str] = typer.Option(None, help="Alias to serve and follow (default: production)."),
          poll_interval: Optional[float] = typer.Option(None, help="Seconds between registry checks; 0 = never "
                                                                    "(default: 30). POST /reload checks at once."),
          batch_size: Optional[int] = typer.Option(None, help="Rows per forward pass (default: 16)."),
          device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N (default: auto)."),
          host: str = typer.Option("127.0.0.1", help="Address to listen on."),
          port: int = typer.Option(5001, help="Port to listen on."),
          tracking_uri: Optional[str] = typer.Option(None, help=TRACKING_HELP),
          runs_dir: str = typer.Option("runs", help=RUNS_DIR_HELP)) -> None:
    """Serve many registered tasks from one base model, following their 'production' alias.

    Answers /ping, /health and /invocations as `mlflow models serve` does; each request row names its `task`.
    Also POST /reload (check the registry now) and GET /tasks (what is served). See docs/serving.md.
    """
    from registry.serving.serve_app import check_port, serve as serve_forever

    with guard():
        cfg = _serving_config(config, models=_split(models), alias=alias, poll_interval=poll_interval,
                              batch_size=batch_size, device=device)
        check_port(host, port)
        cfg = cfg.model_copy(update={"tracking_uri": _serving_store(tracking_uri, runs_dir, cfg)})
        follow = f"checks the registry every {cfg.poll_interval:g} s" if cfg.poll_interval else "does not poll"
        note(f"serving {', '.join(cfg.models)} @{cfg.alias} on http://{host}:{port} ({follow}; POST /reload "
             "checks now)")
        serve_forever(cfg, host=host, port=port)


@app.command()
def bundle(name: str = typer.Argument(..., help="The bundle's registered model name, e.g. redflow-serving."),
           config: Optional[Path] = typer.Argument(None, help="YAML serving config; flags override it."),
           models: Optional[str] = typer.Option(None, help=MODELS_HELP),
           alias: Optional[str] = typer.Option(None, help="Alias the server follows (default: production)."),
           poll_interval: Optional[float] = typer.Option(None, help="Seconds between registry checks (default: 30)."),
           batch_size: Optional[int] = typer.Option(None, help="Rows per forward pass (default: 16)."),
           promote: bool = typer.Option(True, help="Point the bundle's 'production' at the new version."),
           tracking_uri: Optional[str] = typer.Option(None, help=TRACKING_HELP),
           runs_dir: str = typer.Option("runs", help=RUNS_DIR_HELP)) -> None:
    """Register a serving config as a new version of bundle NAME, for `mlflow models serve -m models:/NAME@production`.

    The config is checked first: every model it names is loaded and checked in this process.
    """
    from registry.serving.bundle import register_bundle

    with guard():
        cfg = _serving_config(config, models=_split(models), alias=alias, poll_interval=poll_interval,
                              batch_size=batch_size)
        uri = _serving_store(tracking_uri, runs_dir, cfg)
        result = register_bundle(name, cfg, promote=promote)
        _print_json(result)
        note(f"serve it: MLFLOW_TRACKING_URI={uri} mlflow models serve -m {result['uri']} --env-manager local "
             "--port 5001")


# ---------------------------------------------------------------------------------------------
# params, bench
# ---------------------------------------------------------------------------------------------
@app.command()
def params(model: str = typer.Argument(..., help="Hub name, local checkpoint/config.json, or a paper model "
                                                  "(roberta-base, gpt2-medium, t5-base, meta-llama/Llama-2-7b-hf ...)."),
           position: str = typer.Option("ffn", help="ffn | attn | ffn+attn"),
           method: str = typer.Option("red", help="red | loreft | direft"),
           rank: int = typer.Option(4, help="ReFT rank."),
           lora_rank: int = typer.Option(8, help="LoRA rank for the comparison (query/value).")) -> None:
    """Trainable parameters of RED vs LoRA vs full fine-tuning, from the config alone (no weights)."""
    from red import EditConfig, count_parameters
    from tasks.training.model_names import resolve_model

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
    import optuna

    from bench.glue_bench import run_glue_benchmark, to_markdown
    from tasks.training.model_names import resolve_model
    from tasks.tuning.space import TuneConfig

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one progress line per trial comes from the benchmark
    with guard():
        overrides: dict[str, dict] = {}
        for item in _split(lr) or []:
            method, _, value = item.partition("=")
            overrides[method.strip()] = {"learning_rate": float(value)}
        if batch_size:
            for method in (_split(methods) or []) + ["head"]:
                overrides.setdefault(method, {})["batch_size"] = batch_size
        search = TuneConfig(trials=tune_trials, timeout=tune_timeout, span=tune_span, pruner=tune_pruner,
                            sampler=tune_sampler, pruner_startup_trials=1) if tune else None
        result = run_glue_benchmark(glue_dir, _split(tasks), _split(methods), resolve_model(model),
                                    [int(s) for s in _split(seeds)], work_dir, epochs=epochs,
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
