"""Commands on registered versions: promote, approve, reject, rollback, versions, history, evaluate.

They run as plain functions (``flows/operations.py``, ``flows/promotion.py``, ``flows/manage.py``) unless a Prefect
API is configured; then promote, approve, reject, rollback and evaluate run as flow runs (``flows/manage.py``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich import box
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from .common import (EXIT_NO, JSON_HELP, RUNS_DIR_HELP, TRACKING_HELP, answer, console, guard, note,
                     print_json)


def _open(tracking_uri: Optional[str], runs_dir: str = "runs", cfg=None) -> str:
    """Point MLflow at the existing store and say which. Loads only ``registry.store``: ``versions`` and ``history``
    stay off the gate's and the training's imports (their CPU is about a bare MLflow client script's)."""
    from registry.store import open_target  # lazy: loads MLflow; --help stays instant

    target = open_target(tracking_uri, cfg.runs_dir if cfg is not None else runs_dir,
                         config_uri=cfg.tracking_uri if cfg is not None else None)
    note(target.describe())
    return target.uri


def _prefect_api() -> Optional[str]:
    """The configured Prefect API (probed: ``PrefectApiUnreachable`` if it does not answer), or None."""
    from ..orchestrator import require_prefect_api  # lazy: loads Prefect; --help stays instant

    return require_prefect_api()


def _recorded(model_name: str, prefect: Optional[str]) -> str:
    """The line that says where a move or a gate decision was recorded."""
    flow = f"; it ran as a flow run on the Prefect API {prefect}" if prefect else ""
    return f"recorded in the alias history of {model_name} (redflow history {model_name}){flow}"


def _no(text: str) -> Text:
    return Text.assemble(("no: ", "bold yellow"), text)


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
            runs_dir: str = typer.Option("runs", help=RUNS_DIR_HELP),
            as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Move 'production' to VERSION if it passes the gate (compare-and-set; recorded). Exit 1 if kept out.

    With the config's ``promotion.approval: required`` a version that passes stays 'awaiting approval' (exit 0)
    until ``redflow approve`` or ``redflow reject``.

    Prints the decision and where it was recorded; ``--json`` the gate's full decision (numbers, interval, policy).
    """
    from ..operations import promotion_policy, task_for_model  # lazy: loads MLflow; --help stays instant
    from ..promotion import promote_version  # lazy: loads torch; --help stays instant

    with guard():
        cfg = None
        if config is not None:
            from ..config import load_config  # lazy: loads torch; --help stays instant

            cfg = load_config(config)
        uri = _open(tracking_uri, runs_dir, cfg)
        spec = task_for_model(cfg, model_name, task) if cfg is not None else None
        policy = promotion_policy(cfg, spec, margin=margin, minimum=minimum, metric=metric,
                                  higher_is_better=higher_is_better)
        prefect = _prefect_api()
        if prefect:
            from ..manage import promote as promote_flow  # lazy: loads Prefect; --help stays instant

            result = promote_flow(model_name, version, force=force, margin=margin, minimum=minimum, metric=metric,
                                  tracking_uri=uri, higher_is_better=higher_is_better,
                                  config=str(config) if config else None, task=spec.name if spec else None)
        else:
            result = promote_version(model_name, version, force=force, policy=policy, cfg=cfg, task=spec).to_dict()
        previous = result.get("previous")
        if previous == version and not result.get("promoted"):  # the state asked for: success, nothing moved
            answer(result, [f"{model_name}: v{version} is already production (nothing moved)"], as_json)
        elif not force and result.get("outcome") == "awaiting approval":
            answer(result, [f"{model_name} v{version} awaiting approval: {result.get('reason')}",
                            _recorded(model_name, prefect)], as_json)
        elif not force and not result.get("promoted"):
            stays = f"production stays v{previous}" if previous is not None else "no version is production"
            answer(result, [_no(f"{model_name} v{version} kept out: {result.get('reason')}; {stays}"),
                            _recorded(model_name, prefect)], as_json)
            raise typer.Exit(EXIT_NO)
        else:
            moved = f"v{previous} -> v{version}" if previous is not None else f"-> v{version}"
            why = "forced: " if force else "promoted: "
            answer(result, [f"{model_name}: production {moved} ({why}{result.get('reason') or 'by hand'})",
                            _recorded(model_name, prefect)], as_json)


def rollback(model_name: str = typer.Argument(..., help="Registered model, e.g. red-sentiment."),
             to_version: Optional[int] = typer.Option(None, help="Version to put back (default: the version the "
                                                                 "current production replaced)."),
             reason: str = typer.Option("", help="Why (recorded in the alias history)."),
             tracking_uri: Optional[str] = typer.Option(None, help=TRACKING_HELP),
             runs_dir: str = typer.Option("runs", help=RUNS_DIR_HELP),
             as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Move 'production' back to the previous production version (recorded in the alias history)."""
    from ..operations import rollback_version  # lazy: loads MLflow; --help stays instant

    with guard():
        uri = _open(tracking_uri, runs_dir)
        prefect = _prefect_api()
        if prefect:
            from ..manage import rollback as rollback_flow  # lazy: loads Prefect; --help stays instant

            move = rollback_flow(model_name, to_version, reason, tracking_uri=uri)
        else:
            move = rollback_version(model_name, to_version, reason).to_dict()
        answer(move, [f"{model_name}: production v{move.get('previous')} -> v{move.get('version')} "
                      f"(rolled back: {move.get('reason') or 'rollback'})", _recorded(model_name, prefect)], as_json)


def _decide(model_name: str, version: int, approve: bool, reason: str, tracking_uri: Optional[str], runs_dir: str,
            as_json: bool) -> None:
    """``approve`` and ``reject``: a person's compare-and-set decision on a version awaiting approval."""
    from registry.approval import decide_approval  # lazy: loads MLflow; --help stays instant
    from registry.decisions import person  # lazy: registry's package loads MLflow; --help stays instant

    with guard():
        uri = _open(tracking_uri, runs_dir)
        prefect = _prefect_api()
        if prefect:
            from ..manage import approve_version  # lazy: loads Prefect; --help stays instant

            result = approve_version(model_name, version, "approve" if approve else "reject", reason,
                                     approver=person(), tracking_uri=uri)
        else:
            result = decide_approval(model_name, version, approve, reason).to_dict()
        previous = result.get("previous")
        if approve:
            moved = f"v{previous} -> v{version}" if previous is not None else f"-> v{version}"
            verdict = f"{model_name}: production {moved} (approved by {result['by']}: {result['reason']})"
        else:
            stays = f"production stays v{previous}" if previous is not None else "no version is production"
            verdict = f"{model_name} v{version} rejected by {result['by']}: {result['reason']}; {stays}"
        answer(result, [verdict, _recorded(model_name, prefect)], as_json)


def _decision_command(approve: bool, doc: str):
    """The ``approve`` or ``reject`` command: one signature, ``_decide`` with ``approve`` fixed."""
    def command(model_name: str = typer.Argument(..., help="Registered model, e.g. red-sentiment."),
                version: int = typer.Argument(..., help="The version awaiting approval."),
                reason: str = typer.Option("", help="Why (recorded in the alias history with your user@host)."),
                tracking_uri: Optional[str] = typer.Option(None, help=TRACKING_HELP),
                runs_dir: str = typer.Option("runs", help=RUNS_DIR_HELP),
                as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
        _decide(model_name, version, approve, reason, tracking_uri, runs_dir, as_json)

    command.__name__ = command.__qualname__ = "approve" if approve else "reject"  # the command's name in typer
    command.__doc__ = doc
    return command


approve = _decision_command(True, """
    Move 'production' to VERSION, which passed the gate and awaits approval (promotion.approval: required).

    Refused (exit 2) when VERSION is not awaiting approval, or when production moved since the gate compared
    VERSION with it: gate it again then (``redflow promote MODEL VERSION --config ...``). Recorded with who
    ($REDFLOW_USER, else user@host) and why.
    """)
reject = _decision_command(False, """
    Keep VERSION, which passed the gate and awaits approval, out of production (recorded as rejected).

    Refused (exit 2) as ``approve`` is: VERSION not awaiting approval, or production moved since the gate.
    """)


def _fmt(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.4f}"


def _who(by: Any) -> str:
    """The person of a history entry's ``by``: ``user@host`` (entries written before redflow recorded the person
    hold the lock owner ``user@host:pid:thread:nonce``)."""
    return str(by or "").split(":", 1)[0]


def _rows(fetch, model_name: str, tracking_uri: Optional[str], runs_dir: str, as_json: bool) -> Optional[list]:
    """Open the store and fetch rows; with ``as_json`` print them and return None."""
    _open(tracking_uri, runs_dir)
    rows = fetch(model_name)
    if as_json:
        print_json(rows)
        return None
    return rows


def versions(model_name: str = typer.Argument(..., help="Registered model, e.g. red-sentiment."),
             tracking_uri: Optional[str] = typer.Option(None, help=TRACKING_HELP),
             runs_dir: str = typer.Option("runs", help=RUNS_DIR_HELP),
             as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the versions of MODEL_NAME: aliases, status, method, key metrics and each one's decision (promoted,
    kept out, awaiting approval, approved, rejected, forced, rolled back) with its reason."""
    from registry.views import version_rows  # lazy: loads MLflow; --help stays instant

    with guard():
        rows = _rows(version_rows, model_name, tracking_uri, runs_dir, as_json)
        if rows is None:
            return
        metric = next((r["metric"] for r in rows if r["metric"]), "metric")
        table = Table(title=f"{escape(model_name)}: {len(rows)} version(s); test/val = {escape(metric)}",
                      box=box.SIMPLE_HEAD, padding=(0, 1))
        labels_of = {r["version"]: r["aliases"] + ([f"({r['status']})"] if r["status"] != "ready" else []) for r in rows}
        widest = max((len(label) + 1 for labels in labels_of.values() for label in labels), default=7)
        for col, justify in (("ver", "right"), ("aliases", "left"), ("method", "left"), ("test", "right"),
                             ("val", "right"), ("decision", "left"), ("registered (UTC)", "left")):
            # at 80 columns the date wraps first: an alias ("production") is never cut to "pro…"
            table.add_column(col, justify=justify, no_wrap=col not in ("aliases", "registered (UTC)"),  # type: ignore[arg-type]
                             min_width=max(widest, 7) if col == "aliases" else None)
        for r in rows:
            labels = labels_of[r["version"]]
            table.add_row(str(r["version"]), escape(", ".join(labels)), escape(r["method"]), _fmt(r["test"]),
                          _fmt(r["validation"]), escape(r["decision"]), r["created"].removesuffix(" UTC"))
        console.print(table)
        for r in rows:
            if r["reason"]:
                console.print(Padding(Text(f"v{r['version']} {r['decision']}: {r['reason']}"), (0, 0, 0, 2)),
                              highlight=False)


def history(model_name: str = typer.Argument(..., help="Registered model, e.g. red-sentiment."),
            tracking_uri: Optional[str] = typer.Option(None, help=TRACKING_HELP),
            runs_dir: str = typer.Option("runs", help=RUNS_DIR_HELP),
            limit: int = typer.Option(20, min=1, help="Show the newest LIMIT entries."),
            as_json: bool = typer.Option(False, "--json", help="Print JSON (all entries) instead of text.")) -> None:
    """Alias moves and gate decisions of MODEL_NAME, newest first: when, what, who and why."""
    from registry.views import history_rows  # lazy: loads MLflow; --help stays instant

    with guard():
        rows = _rows(history_rows, model_name, tracking_uri, runs_dir, as_json)
        if rows is None:
            return
        console.print(Text(f"{model_name}: alias history, newest first ({min(limit, len(rows))} of {len(rows)})",
                           style="bold"))
        for e in rows[:limit]:
            if e.get("action") in ("kept out", "awaiting approval", "rejected"):  # decisions that moved nothing
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


def evaluate(model_name: str = typer.Argument(..., help="Registered model, e.g. red-sentiment."),
             version: str = typer.Option("production", help="Version number or alias."),
             suite: list[str] = typer.Option(["test"], help="Suites: test, openllm-v1, lm-eval:TASKS (repeatable)."),
             config: Optional[Path] = typer.Option(None, help="Retrain config (the 'test' suite's data, the store)."),
             task: Optional[str] = typer.Option(None, help="Task in --config (default: the one registering "
                                                           "MODEL_NAME)."),
             tracking_uri: Optional[str] = typer.Option(None, help=TRACKING_HELP),
             as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Re-evaluate a version or alias on suites and record the result on that version.

    Prints which version VERSION resolved to with its scores, and where the result was recorded (the version's
    ``redflow.evaluations`` tag and one MLflow run per suite); ``--json`` all of it as one document.
    """
    from mlflow import MlflowClient  # lazy: loads MLflow; --help stays instant

    from registry.models import resolve_version  # lazy: loads MLflow; --help stays instant
    from registry.tracking import report_name  # lazy: loads MLflow; --help stays instant
    from registry.version_tags import evaluations  # lazy: the CLI's modules load nothing at import
    from registry.views import require_model  # lazy: loads MLflow; --help stays instant

    with guard():
        cfg = None
        if config is not None:
            from ..config import load_config  # lazy: loads torch; --help stays instant

            cfg = load_config(config)
        uri = _open(tracking_uri, cfg=cfg)
        require_model(model_name)
        number = resolve_version(model_name, version)  # evaluated as a number: what is reported is what ran
        cfg_arg = str(config) if config else None
        prefect = _prefect_api()
        if prefect:
            from ..manage import evaluate as evaluate_flow  # lazy: loads Prefect; --help stays instant

            metrics = evaluate_flow(model_name, str(number), list(suite), cfg_arg, task, uri)
        else:
            from ..manage import evaluate_reports  # lazy: loads Prefect; --help stays instant

            reports = evaluate_reports(model_name, str(number), list(suite), cfg_arg, task, uri)
            metrics = {r.name: r.metrics for r in reports}
        client = MlflowClient()
        tags = client.get_model_version(model_name, str(number)).tags
        recorded = evaluations(tags)
        runs = {name: recorded.get(report_name({"name": name}), {}).get("run_id", "") for name in metrics}
        experiments = sorted({client.get_experiment(client.get_run(r).info.experiment_id).name
                              for r in runs.values() if r})
        document = {"model_name": model_name, "requested": version, "version": number, "metrics": metrics,
                    "runs": runs, "experiments": experiments, "tracking_uri": uri}
        which = f"{model_name}@{version} is v{number}" if str(version).lstrip("v") != str(number) else \
            f"{model_name} v{number}"
        scores = "; ".join(f"{name}: " + ", ".join(f"{k}={_score(v)}" for k, v in m.items())
                           for name, m in metrics.items())
        where = (f"recorded on {model_name} v{number} (tag redflow.evaluations) and as MLflow run(s) "
                 f"{', '.join(r for r in runs.values() if r)} in experiment {', '.join(experiments)}")
        if prefect:
            where += f"; it ran as a flow run on the Prefect API {prefect}"
        answer(document, [f"{which}: {scores}", where], as_json)


def _score(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
