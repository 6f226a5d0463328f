"""The ``redflow`` command line (typer): retrain, demo, promote, approve, reject, rollback, versions, history,
evaluate, diff, serve, bundle, params, bench, config.

Exit codes (also in ``redflow --help`` and the README)::

    0  success
    1  the command ran, and the answer is no: the gate kept a version out, or retrain tasks failed
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

Registry commands (promote, approve, reject, rollback, versions, history, evaluate) run as plain functions unless
a Prefect API is configured (then all but versions and history run as flow runs); retrain and demo are
Prefect flow runs, with a temporary server given time to start (``flows/orchestrator.py``).

This package builds the root ``app`` from one module per command group: ``retraining`` (retrain, demo),
``versions`` (promote, approve, reject, rollback, versions, history, evaluate), ``diffs`` (diff), ``serving`` (serve, bundle),
``benchmarks`` (params, bench), ``config`` (config schema, config docs),
and ``common`` (consoles, exit codes, errors, the root options). A command imports its stack
(torch, MLflow, Prefect) when it runs, so ``redflow --help`` stays instant.
"""
from __future__ import annotations

import typer

from . import benchmarks, config, diffs, retraining, serving, versions
from .common import main_options

EPILOG = (
    "Exit codes: 0 success; 1 the command ran and the answer is no (the gate kept a version out, "
    "retrain tasks failed); 2 usage or configuration error, fixable (the message says how); "
    "3 unexpected error (traceback in the log file named; --debug prints it); 130 interrupted (Ctrl-C); "
    "143 terminated (SIGTERM). A retrain whose task another live run is training says 'busy' and exits 0.\n\n"
    "MLflow store: --tracking-uri, else the config's tracking_uri, else $REDFLOW_TRACKING_URI or "
    "$MLFLOW_TRACKING_URI, else sqlite:///RUNS_DIR/mlflow.db. Commands that only read never create a store."
)

app = typer.Typer(add_completion=False, no_args_is_help=True, epilog=EPILOG,
                  help="redflow: scheduled multi-task fine-tuning with RED edits (Prefect + MLflow).")
app.callback()(main_options)
for command in (retraining.retrain, retraining.demo, versions.promote, versions.approve, versions.reject,
                versions.rollback, versions.versions,
                versions.history, versions.evaluate, diffs.diff, serving.serve, serving.bundle, benchmarks.params):
    app.command()(command)
app.add_typer(benchmarks.bench_app, name="bench")
app.add_typer(config.config_app, name="config")


def main() -> None:
    """Run the ``redflow`` command line (``python -m flows.cli``)."""
    app()
