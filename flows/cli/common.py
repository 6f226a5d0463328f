"""What every ``redflow`` command shares: the two consoles, exit codes, one-line errors, notes, the root options.

Data (JSON, tables) goes to ``console`` (stdout); notes and errors to ``err`` (stderr). ``guard()`` turns exceptions
into one-line errors and the documented exit codes (see ``flows/cli/__init__.py``), writing the traceback to a
log file. Nothing here imports the training, MLflow or Prefect stack: ``redflow --help`` stays instant.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.console import Console
from rich.text import Text

EXIT_OK, EXIT_NO, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 3, 130, 143

console = Console()                 # data: tables, JSON
err = Console(stderr=True)          # notes and errors
_state = {"debug": False}

TRACKING_HELP = "MLflow tracking URI (default: the config's, then $REDFLOW_TRACKING_URI / $MLFLOW_TRACKING_URI, " \
                "then sqlite:///RUNS_DIR/mlflow.db)."
RUNS_DIR_HELP = "Runs folder whose mlflow.db is the default store (when no URI is given anywhere)."


class Negative(Exception):
    """The command ran and the answer is no (exit 1): a rejected promotion, failed retrain tasks."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (exit 143). A KeyboardInterrupt, so that Prefect's engine and every ``except Exception``
    on the way let it through, as they let Ctrl-C through, and the process unwinds normally: context managers
    close the task runner (Dask cluster) and ``atexit`` stops the temporary Prefect server. The default SIGTERM
    action would end the process on the spot and leave both running.

    ``stopped_training``: whether the stop found a training of this process running (True), none (False), or
    cannot tell because trainings run in the task runner's worker processes (None); see :func:`terminated_message`.
    """

    def __init__(self, message: str = "", stopped_training: bool | None = None):
        super().__init__(message)
        self.stopped_training = stopped_training


def terminated_message(stopped_training: bool | None) -> str:
    """What ``redflow`` says after ``terminated`` when SIGTERM ended it: a training stopped at its last step and
    resumable only when one was running (``stopped_training`` as in :class:`Terminated`)."""
    if stopped_training is None:
        return " (SIGTERM): trainings in the task runner's worker processes ended with them; one that saved a " \
               "checkpoint resumes from it on the next run"
    if stopped_training:
        return " (SIGTERM): training stopped at its last step, resumable"
    return " (SIGTERM) while no training was running; nothing to resume"


#: Errors a user fixes that need no import to recognise: a config error is told without loading MLflow or torch.
PLAIN_USER_ERRORS: tuple[type[BaseException], ...] = (LookupError, ValueError, FileNotFoundError, PermissionError)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors a user fixes (exit 2): ConfigError and pydantic's errors are ValueErrors, ModelNotFound a
    LookupError, StoreNotFound a FileNotFoundError, an unreachable tracking server or Prefect API an
    ``Unreachable``; registry's own are recognised when their module is loaded (they need mlflow)."""
    kinds: list[type[BaseException]] = list(PLAIN_USER_ERRORS)
    # An error of these classes exists only if its module was imported: reading sys.modules imports nothing
    # (registry.aliases would load torch), so the error of a light command stays quick.
    for module, name in (("registry.aliases", "RollbackError"), ("registry.locks", "LockTimeout"),
                         ("registry.reachability", "Unreachable")):
        loaded = sys.modules.get(module)
        if loaded is not None:
            kinds.append(getattr(loaded, name))
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
    """A note on stderr (dim): which store is used, where the log is, what happened when it is not data."""
    err.print(Text(message, style="dim"), soft_wrap=True, highlight=False)


@contextmanager
def guard() -> Iterator[None]:
    """Turn exceptions into one-line errors and the documented exit codes."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except Terminated as exc:
        _say("terminated", "bold red", terminated_message(exc.stopped_training))
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


def split_commas(value: Optional[str]) -> Optional[list[str]]:
    """``"a, b,,c"`` as ``["a", "b", "c"]`` (an option's comma-separated names); None for None or ``""``."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout (what the command answers); values JSON cannot hold as their ``str``."""
    console.print_json(data=json.loads(json.dumps(data, default=str)))


JSON_HELP = "Print the full document as JSON, alone on stdout (the summary lines go to stderr)."


def answer(document: Any, lines: list[Text | str], as_json: bool = False) -> None:
    """What a command that acts on versions (promote, rollback, evaluate, approve, reject) prints.

    By default the few ``lines`` (at most three: the verdict, the version moved or resolved, where it was recorded)
    on stdout; with ``--json`` (``as_json``) ``document`` alone on stdout, parseable by ``json.loads`` (the lines go
    to stderr, where a person running it still sees them).
    """
    if as_json:
        print_json(document)
    for line in lines:
        (err if as_json else console).print(line if isinstance(line, Text) else Text(line), soft_wrap=True,
                                            highlight=False)


def _version_callback(value: bool) -> None:
    """``--version``: redflow's version and its main dependencies', then exit."""
    if not value:
        return

    def v(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    console.print(f"redflow {v('redflow')} (mlflow {v('mlflow')}, prefect {v('prefect')}, torch {v('torch')}, "
                  f"transformers {v('transformers')})", highlight=False)
    raise typer.Exit()


def main_options(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print redflow's version (and MLflow's, Prefect's, torch's) and exit."),
    debug: bool = typer.Option(False, "--debug", help="On an error, also print the traceback."),
) -> None:
    """redflow: scheduled multi-task fine-tuning with RED edits (Prefect + MLflow)."""
    _state["debug"] = debug
    quiet_libraries()


def quiet_libraries() -> None:
    """No third-party progress bars or load reports on the console (the log file keeps the detail).

    transformers prints a bar and a "LOAD REPORT" for every model it loads (the head it reports
    as "newly initialized" is trained and saved with the edit), datasets a bar per map/save, and
    MLflow one per artifact download; a retrain loads several models per task. The environment is set before
    those libraries load (tqdm reads ``TQDM_DISABLE`` when it is first imported, transformers
    ``TRANSFORMERS_VERBOSITY``, the hub and datasets their ``*_DISABLE_PROGRESS_BARS``), so that nothing heavy is
    imported here: a config error is reported before torch and transformers load. A library already loaded (a
    test, an in-process caller) is told directly.
    """
    for key, value in {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
                       "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # "View run ..." per finished run
                       "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                       "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}.items():
        os.environ.setdefault(key, value)
    transformers = sys.modules.get("transformers")
    if transformers is not None:
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    datasets = sys.modules.get("datasets")
    if datasets is not None:
        datasets.disable_progress_bars()
