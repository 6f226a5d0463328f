"""Run logging: one MLflow run per task training.

Storage layout (local default; which store is used is decided in ``registry.store``)::

    <runs_dir>/mlflow.db                     SQLite backend store (runs, registry)
    <runs_dir>/mlartifacts/<experiment>/...   run artifacts and logged models

Remote tracking servers (``http(s)://``) keep their own artifact store (``mlflow server
--artifacts-destination``; see ``registry.serving.server``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import socket
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from red import read_edit
from red.utils import slug
from tasks.lifecycle.identity import code_revision, code_version  # noqa: F401 - part of this module's API
from tasks.training.model_names import display_name

from .plots import edit_heatmap_figure, training_curves_figure
from .store import (ARTIFACTS_DIRNAME, DB_FILENAME, DEFAULT_RUNS_DIR, default_tracking_uri,  # noqa: F401 - re-exported
                    local_artifact_root, setup_tracking, sqlite_path)

if TYPE_CHECKING:  # tasks is only needed for type hints
    from tasks.training import TrainResult

_MAX_PARAM_VALUE = 6000        # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
_MAX_TAG_VALUE = 8000          # mlflow.utils.validation.MAX_TAG_VAL_LENGTH
_MAX_KEY = 250
_BATCH_METRICS = 1000          # log_batch limits
_BATCH_PARAMS = 100


# MLflow's experiment kind: the UI opens a "custom model development" experiment on its training runs
# rather than on the GenAI (traces) pages. MLflow 3.17's UI takes the view from its own workflow switch,
# so links redflow prints also carry ``?workflowType=machine_learning`` (flows/cli/retraining.py experiment_url).
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
PRIMARY = "primary"  # test_primary, validation_primary, epoch/validation_primary: one name across tasks


def get_or_create_experiment(name: str, client: MlflowClient | None = None) -> str:
    """Experiment id of ``name``, creating it (artifacts under ``<runs_dir>/mlartifacts/<name>``
    for SQLite backends) if needed. Safe when two processes create it at once."""
    client = client or MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    root = local_artifact_root(client.tracking_uri)
    location = (root / slug(name, default="default")).resolve().as_uri() if root is not None else None
    try:
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
    except MlflowException as exc:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise exc
        return exp.experiment_id


# ---------------------------------------------------------------------------------------------
# small helpers shared with registry.models and registry.studies
# ---------------------------------------------------------------------------------------------
def mlflow_key(name: str) -> str:
    """A valid MLflow param/metric key (alphanumerics, _ - . / space :)."""
    key = re.sub(r"[^\w.\- :/]", "_", str(name)).strip("/") or "_"
    key = re.sub(r"/{2,}", "/", key).replace("/./", "/")
    return key[:_MAX_KEY]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def flatten(data: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are kept as values (JSON-encoded when logged)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key, sep))
        else:
            out[key] = v
    return out


def param_text(value: Any) -> str:
    """A param value as MLflow stores it: a string (JSON for non-strings), cut to MLflow's length limit."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= _MAX_PARAM_VALUE else text[: _MAX_PARAM_VALUE - 3] + "..."


def as_dict(report: Any) -> dict[str, Any]:
    """A report (dict, dataclass, pydantic model or object with ``to_dict``) as a plain dict."""
    if isinstance(report, Mapping):
        return dict(report)
    for attr in ("to_dict", "model_dump"):
        if callable(getattr(report, attr, None)):
            return dict(getattr(report, attr)())
    if dataclasses.is_dataclass(report) and not isinstance(report, type):
        return dataclasses.asdict(report)
    raise TypeError(f"an evaluation report must be a dict, a dataclass or a pydantic model, not {type(report).__name__}")


def report_name(report: Mapping[str, Any], index: int = 0) -> str:
    for key in ("name", "benchmark", "dataset", "task"):
        if report.get(key):
            return slug(str(report[key]), default="default")
    return f"report{index}"


def report_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """Numeric metrics of a report: its ``metrics`` mapping (flattened), else its numeric top-level fields."""
    source = report.get("metrics")
    if not isinstance(source, Mapping):
        source = {k: v for k, v in report.items() if _is_number(v)}
    return {mlflow_key(k): float(v) for k, v in flatten(source, sep="/").items() if _is_number(v)}


def report_markdown(name: str, report: Mapping[str, Any], original: Any = None) -> str:
    """The report's own ``to_markdown()`` if it has one, else a metric table plus the other fields."""
    if callable(getattr(original, "to_markdown", None)):
        return str(original.to_markdown())
    lines = [f"# Evaluation: {name}", ""]
    metrics = report_metrics(report)
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.6g} |" for k, v in sorted(metrics.items())]
        lines.append("")
    rest = {k: v for k, v in report.items() if k != "metrics" and not _is_number(v)}
    if rest:
        lines += ["```json", json.dumps(rest, indent=2, default=str), "```", ""]
    return "\n".join(lines)


def number_metric(key: str, value: Any, step: int, ts: int) -> Metric | None:
    """A ``Metric`` under a valid key for a number (bools excluded), None for anything else (left unlogged)."""
    if not _is_number(value):
        return None
    return Metric(key=mlflow_key(key), value=float(value), timestamp=ts, step=int(step))


def log_batches(client: MlflowClient, run_id: str, metrics: Iterable[Metric] = (),
                params: Iterable[Param] = (), tags: Iterable[RunTag] = ()) -> None:
    """Log ``metrics``, ``params`` and ``tags`` to ``run_id`` in batches within MLflow's per-call limits."""
    metrics, params, tags = list(metrics), list(params), list(tags)
    for i in range(0, len(metrics), _BATCH_METRICS):
        client.log_batch(run_id, metrics=metrics[i:i + _BATCH_METRICS])
    for i in range(0, len(params), _BATCH_PARAMS):
        client.log_batch(run_id, params=params[i:i + _BATCH_PARAMS])
    for i in range(0, len(tags), _BATCH_PARAMS):
        client.log_batch(run_id, tags=tags[i:i + _BATCH_PARAMS])


def final_metric_key(split: str, name: str) -> str:
    return name if name.startswith(f"{split}_") else f"{split}_{name}"


def _read_edit_meta(path: str | None) -> tuple[dict | None, dict | None]:
    """(tensors, meta) of a redflow edit file, or (None, None) for adapters/checkpoints."""
    if not path or not str(path).endswith(".safetensors") or not Path(path).is_file():
        return None, None
    return read_edit(path)


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------
# log_training
# ---------------------------------------------------------------------------------------------
_REFT = ("loreft", "direft")
_METHOD_PARAMS = {  # parameter prefix -> the methods it belongs to (others do not log it)
    "lora_": ("lora",),
    "edit.position": ("red",), "edit.kind": ("red",),
    "edit.rank": _REFT, "edit.positions": _REFT, "edit.share_weights": _REFT, "edit.dropout": _REFT,
    "edit.": ("red",) + _REFT,
}


def _belongs(key: str, method: str) -> bool:
    """Whether parameter ``key`` is one of ``method``'s (a RED run logs no LoRA rank, a LoRA run no edit kind)."""
    prefix = next((p for p in _METHOD_PARAMS if key == p.rstrip(".") or key.startswith(p)), None)
    return prefix is None or method in _METHOD_PARAMS[prefix]


def training_params(result: "TrainResult", meta: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Flat run params: the hyperparameters of the method that ran, method, base model (by name), data, edit config."""
    params: dict[str, Any] = {
        "task": result.task,
        "method": result.method,
        "task_type": result.task_type,
        "base_model": display_name(result.base_model),
        "base_revision": result.base_revision,
        "primary_metric": result.primary_metric,
        "data_hash": result.data_hash,
    }
    params.update({k: v for k, v in flatten(result.params or {}).items() if k not in ("model", "method")})
    if meta:
        params.update(flatten(meta.get("config") or {}, prefix="edit"))
        params["edit.targets"] = len(meta.get("targets") or {})
    return {mlflow_key(k): param_text(v) for k, v in params.items()
            if v is not None and v != "" and _belongs(k, result.method)}


def default_run_name(result: "TrainResult", when: float | None = None) -> str:
    """``<task> <method> <UTC date time>``: runs of one task tell apart at a glance."""
    return f"{result.task} {result.method} {time.strftime('%Y-%m-%d %H:%M', time.gmtime(when))}"


def training_start_ms(result: "TrainResult") -> int:
    """When the training began (epoch ms): the run starts there, so its Duration in the MLflow UI spans the training
    (``train_seconds``) rather than only the logging after it. A result without ``started_at`` (written before it
    was recorded) starts ``seconds`` before now."""
    started = result.started_at or (time.time() - float(result.seconds or 0.0))
    return int(started * 1000)


def versioned_run_name(task: str, method: str, version: int | str) -> str:
    """``sentiment · red · v2``: the name of a training run once its edit is registered as that version."""
    return f"{task} · {method} · v{version}"


def training_metrics(result: "TrainResult", ts: int | None = None) -> list[Metric]:
    """Per-step (``train/<k>``, step=step), per-epoch (``epoch/<k>``, step=epoch) and final metrics."""
    ts = ts or int(time.time() * 1000)
    out: list[Metric | None] = []
    for row in result.steps or []:
        step = int(row.get("step", 0))
        out += [number_metric(f"train/{k}", v, step, ts) for k, v in row.items() if k != "step"]
    for row in result.epochs or []:
        epoch = int(row.get("epoch", 0))
        out += [number_metric(f"epoch/{k}", v, epoch, ts) for k, v in row.items() if k != "epoch"]
    best = int(result.best_epoch or 0)
    primary = result.primary_metric
    for row in result.epochs or []:  # the primary metric's curve under one name for every task
        out.append(number_metric(f"epoch/validation_{PRIMARY}", row.get(f"validation_{primary}"),
                                 int(row.get("epoch", 0)), ts))
    for split, values in (("validation", result.validation), ("test", result.test)):
        out += [number_metric(final_metric_key(split, k), v, best, ts) for k, v in (values or {}).items()]
        out.append(number_metric(f"{split}_{PRIMARY}", (values or {}).get(primary), best, ts))
    out += [
        number_metric("best_epoch", result.best_epoch, 0, ts),
        number_metric("trainable_parameters", result.trainable_parameters, 0, ts),
        number_metric("edit_parameters", result.edit_parameters, 0, ts),
        number_metric("train_seconds", result.seconds, 0, ts),
    ]
    out += [number_metric(f"truncated/{k}", v, 0, ts) for k, v in (result.truncated or {}).items()]
    return [m for m in out if m is not None]


def _owner_alive(owner: str | None) -> bool | None:
    """Whether the process that tagged itself ``host:pid`` still runs (None: another host, cannot tell)."""
    host, _, pid = (owner or "").rpartition(":")
    if not host or host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_tag() -> str:
    """``host:pid`` of this process: what ``_owner_alive`` checks to tell a crashed writer from a live one."""
    return f"{socket.gethostname()}:{os.getpid()}"


STALE_AFTER_S = 6 * 3600.0  # a RUNNING training run whose owner is on another host: dead after this long
LIVE_RUN_WAIT_S = 600.0     # how long log_training waits for a live process logging the same training


def is_orphaned(owner: str | None, started_ms: float | None, *, stale_after: float = STALE_AFTER_S) -> bool:
    """Whether a record (a RUNNING run, a ``registering`` version) tagged ``owner`` was abandoned.

    Its owner process on this host is gone: yes. Its owner is alive on this host: never, however old (a twin
    retrain, a long registration). Its owner is on another host (or unreadable), where liveness cannot be
    checked: only after ``stale_after`` seconds, far longer than any logging or registration takes.
    """
    alive = _owner_alive(owner)
    if alive is not None:
        return not alive
    now_ms = time.time() * 1000
    return (now_ms - (started_ms or now_ms)) / 1000 > stale_after


def close_orphaned_runs(client: MlflowClient, experiment_id: str, *, stale_after: float = STALE_AFTER_S) -> list[str]:
    """Mark FAILED the training runs left RUNNING by a process that died (:func:`is_orphaned`): they are tagged
    ``redflow.orphaned`` and never look like live runs. A run whose owner is alive is never touched."""
    closed = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING' and "
                                  "tags.`redflow.run_kind` = 'train'"):
        if is_orphaned(run.data.tags.get("redflow.owner"), run.info.start_time, stale_after=stale_after):
            client.set_tag(run.info.run_id, "redflow.orphaned", "true")
            client.set_terminated(run.info.run_id, "FAILED")
            closed.append(run.info.run_id)
    return closed


def _settled(client: MlflowClient, run: Any, timeout: float | None = None) -> Any:
    """``run`` once it is no longer being logged by a live process (at most ``timeout`` seconds, default
    ``LIVE_RUN_WAIT_S``).

    Another live process (or thread) that logs the same training right now owns its run: it is waited for,
    never deleted under it. Raises ``TimeoutError`` (a transient error: the step is retried) if it never ends.
    """
    timeout = LIVE_RUN_WAIT_S if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while run.info.status == "RUNNING" and not is_orphaned(run.data.tags.get("redflow.owner"), run.info.start_time):
        if time.monotonic() > deadline:
            raise TimeoutError(f"MLflow run {run.info.run_id} of this training is still being logged by "
                               f"{run.data.tags.get('redflow.owner')} after {timeout:.0f} s")
        time.sleep(1.0)
        run = client.get_run(run.info.run_id)
    return run


def training_key(result: "TrainResult") -> str:
    """A stable id of one training: its output folder (one per attempt) and what it produced."""
    text = json.dumps([str(Path(result.output_dir).resolve()), result.edit_path, result.global_step])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _finished_run(client: MlflowClient, experiment_id: str, training_id: str) -> str | None:
    """The id of the FINISHED run of training ``training_id``, if an earlier try logged one; the runs earlier tries
    left half-logged are deleted on the way (a live owner's run is waited for first, never deleted)."""
    earlier = client.search_runs([experiment_id], filter_string=f"tags.`redflow.training_id` = '{training_id}'")
    for run in earlier:
        run = _settled(client, run)  # a live owner's run is waited for, never deleted
        if run.info.status == "FINISHED":
            return run.info.run_id
        client.delete_run(run.info.run_id)  # half-logged by a try that failed (its owner ended it or died)
    return None


def _training_run_tags(result: TrainResult, meta: dict | None, training_id: str, run_name: str | None,
                       tags: Mapping[str, str] | None) -> dict[str, str]:
    """A training run's tags: what trained on what (task, method, base, data, code) and who logs it; ``tags`` last."""
    run_tags = {
        "redflow.training_id": training_id,
        "redflow.owner": owner_tag(),
        "mlflow.runName": run_name or default_run_name(result),
        "redflow.run_kind": "train",
        "task": result.task,
        "method": result.method,
        "base_model": display_name(result.base_model),
        "base_model_path": result.base_model,
        "primary_metric": result.primary_metric,
        "data_hash": result.data_hash,
        "code_version": code_version(),
        "code_revision": code_revision(),
    }
    if result.base_fingerprint or meta:
        run_tags["base_fingerprint"] = result.base_fingerprint or meta["base_model"].get("fingerprint", "")
    if meta:
        run_tags["edit_sha256"] = meta.get("tensors_sha256", "")
    run_tags.update(tags or {})
    return {k: str(v)[:_MAX_TAG_VALUE] for k, v in run_tags.items()}


def _log_edit(client: MlflowClient, run_id: str, edit_path: str | None) -> None:
    """The edit under ``edit/``: the file and its metadata JSON, or a folder (adapters) up to 256 MiB."""
    if not edit_path:
        return
    edit = Path(edit_path)
    if edit.is_file():
        client.log_artifact(run_id, str(edit), "edit")
        if edit.with_suffix(".json").is_file():
            client.log_artifact(run_id, str(edit.with_suffix(".json")), "edit")
    elif edit.is_dir() and _dir_size(edit) <= 256 * 2**20:  # adapters yes, full checkpoints no
        client.log_artifacts(run_id, str(edit), "edit")


def _log_eval_reports(client: MlflowClient, run_id: str, eval_reports: list) -> None:
    """Each report as ``evaluation/<name>.json|.md`` and its numbers as metrics ``eval/<name>/<metric>``."""
    ts = int(time.time() * 1000)
    for i, report in enumerate(eval_reports):
        data = as_dict(report)
        name = report_name(data, i)
        client.log_dict(run_id, json.loads(json.dumps(data, default=str)), f"evaluation/{name}.json")
        client.log_text(run_id, report_markdown(name, data, report), f"evaluation/{name}.md")
        metrics = [number_metric(f"eval/{name}/{k}", v, 0, ts) for k, v in report_metrics(data).items()]
        log_batches(client, run_id, metrics=[m for m in metrics if m is not None])


def _log_plots(client: MlflowClient, run_id: str, result: TrainResult, tensors: dict | None,
               meta: dict | None) -> None:
    """``plots/training_curves.png`` and, for an edit file, ``plots/edit_heatmap.png`` (each when there is data)."""
    curves = training_curves_figure(result)
    if curves is not None:
        client.log_figure(run_id, curves, "plots/training_curves.png")
    if tensors is not None:
        heatmap = edit_heatmap_figure((tensors, meta))
        if heatmap is not None:
            client.log_figure(run_id, heatmap, "plots/edit_heatmap.png")


def log_training(
    result: "TrainResult",
    *,
    experiment: str,
    eval_reports: list | None = None,
    config: dict | None = None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Log one task training as one MLflow run and return its run id.

    The run starts when the training did (:func:`training_start_ms`: its Duration is the training's) and is
    named ``<task> <method> <UTC time>`` until its edit is registered (then ``<task> · <method> · v<N>``); tags
    ``base_model`` (its name: hub id,
    ``all-MiniLM-L6-v2``, else the folder's name) and ``base_model_path``. Logs params (the
    hyperparameters of the method that ran, base model, edit config), per-step and per-epoch
    metrics, the final ``validation_*``/``test_*`` metrics (the primary one also as
    ``validation_primary``/``test_primary``, and its curve as ``epoch/validation_primary``), the edit file with its metadata
    JSON (``edit/``), the TrainResult JSON, evaluation reports (``evaluation/<name>.json|.md``,
    metrics as ``eval/<name>/<metric>``), the run config (``config.json``) and plots
    (``plots/training_curves.png``, ``plots/edit_heatmap.png``). The run ends FINISHED, or
    FAILED (and the error is re-raised) if logging breaks midway.

    Idempotent: one training is one run whatever retries happen. The run carries
    ``redflow.training_id`` (from the training's output folder); if a FINISHED run with it exists
    it is returned as is, and a run left half-logged by an earlier try is deleted and logged anew. A run
    another live process is still logging is never deleted or ended: it is waited for (:func:`_settled`).
    """
    client = MlflowClient()
    experiment_id = get_or_create_experiment(experiment, client)
    training_id = training_key(result)
    close_orphaned_runs(client, experiment_id)
    finished = _finished_run(client, experiment_id, training_id)
    if finished is not None:
        return finished
    tensors, meta = _read_edit_meta(result.edit_path)
    run = client.create_run(experiment_id, start_time=training_start_ms(result),
                            tags=_training_run_tags(result, meta, training_id, run_name, tags))
    run_id = run.info.run_id
    try:
        params = [Param(k, v) for k, v in training_params(result, meta).items()]
        log_batches(client, run_id, metrics=training_metrics(result), params=params)
        client.log_dict(run_id, result.to_dict(), "train_result.json")
        if config:
            client.log_dict(run_id, json.loads(json.dumps(config, default=str)), "config.json")
        _log_edit(client, run_id, result.edit_path)
        _log_eval_reports(client, run_id, eval_reports or [])
        _log_plots(client, run_id, result, tensors, meta)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


GATE_TABLE = "gate/disagreements.json"
GATE_METRICS = {"challenger": "challenger", "champion": "champion", "difference": "difference",
                "ci_low": "ci_low", "ci_high": "ci_high", "n": "rows"}  # comparison key -> gate/<name>
GATE_TABLE_ROWS = 1000  # enough to read, small enough for the UI's table view


def log_gate_comparison(run_id: str, comparison: Mapping[str, Any], challenger: Any = None, champion: Any = None,
                        texts: Mapping[str, list] | None = None, label_names: list[str] | None = None,
                        client: MlflowClient | None = None) -> int:
    """The gate's paired comparison on the challenger's training run, where the UI charts and compares it.

    Metrics ``gate/challenger``, ``gate/champion``, ``gate/difference``, ``gate/ci_low``, ``gate/ci_high`` and
    ``gate/rows`` (``comparison``: ``tasks.evaluate.paired.Comparison.to_dict()``); with both sides' per-row
    predictions (``RowScores`` of kind ``prediction``) an MLflow table ``gate/disagreements.json`` of the rows
    where they differ: ``row``, the text columns (``texts``: column -> the split's values), ``label``,
    ``challenger``, ``champion`` (label names where ``label_names`` has them). Returns how many rows disagree
    (0 when there are no per-row predictions to compare)."""
    client = client or MlflowClient()
    ts = int(time.time() * 1000)
    metrics = [number_metric(f"gate/{name}", comparison.get(key), 0, ts) for key, name in GATE_METRICS.items()]
    log_batches(client, run_id, metrics=[m for m in metrics if m is not None])
    if getattr(challenger, "kind", None) != "prediction" or getattr(champion, "kind", None) != "prediction":
        return 0
    names = label_names or []

    def named(value: float) -> Any:
        j = int(value)
        return names[j] if 0 <= j < len(names) and float(value) == j else value

    differ = [i for i, (a, b) in enumerate(zip(challenger.predictions, champion.predictions)) if a != b]
    shown = differ[:GATE_TABLE_ROWS]
    table: dict[str, list] = {"row": shown}
    table.update({column: [values[i] for i in shown] for column, values in (texts or {}).items()})
    table.update({"label": [named(challenger.labels[i]) for i in shown],
                  "challenger": [named(challenger.predictions[i]) for i in shown],
                  "champion": [named(champion.predictions[i]) for i in shown]})
    client.log_table(run_id, data=table, artifact_file=GATE_TABLE)
    return len(differ)


def is_finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(float(value))


def registered_checksum(mv, client: MlflowClient | None = None) -> str | None:
    """The ``edit_sha256`` version ``mv`` was registered with: its tag (older versions), else its training run's."""
    if mv.tags.get("edit_sha256"):
        return mv.tags["edit_sha256"]
    if not mv.run_id:
        return None
    try:
        return (client or MlflowClient()).get_run(mv.run_id).data.tags.get("edit_sha256") or None
    except MlflowException:
        return None
