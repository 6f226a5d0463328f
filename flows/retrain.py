"""The retrain flow: every task of a config, prepared, trained, evaluated, registered and gated.

Tasks fan out through the flow's task runner (threads by default, Dask or Ray
for more machines). Each task's chain is independent: one task failing never
stops the others, and whatever succeeded is registered. The flow ends Failed
when any task failed, after every other task is done, so a schedule alerts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from . import steps
from .config import RetrainConfig, TaskSpec, load_config
from .runners import make_task_runner


@task(name="prepare-data", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2, task_run_name="prepare-{task.name}",
      retry_condition_fn=lambda t, r, s: _transient(s))
def prepare_data_task(cfg: RetrainConfig, task: TaskSpec):
    return steps.prepare_step(cfg, task)


@task(name="train", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, task_run_name="train-{task.name}",
      retry_condition_fn=lambda t, r, s: _transient(s))
def train_task(cfg: RetrainConfig, task: TaskSpec, data):
    return steps.train_step(cfg, task, data)


@task(name="evaluate", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2, task_run_name="evaluate-{task.name}")
def evaluate_task(cfg: RetrainConfig, task: TaskSpec, result, data):
    return steps.evaluate_step(cfg, task, result, data)


@task(name="register", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2, task_run_name="register-{task.name}")
def register_task(cfg: RetrainConfig, task: TaskSpec, result, reports):
    return steps.register_step(cfg, task, result, reports)


@task(name="gate-and-promote", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2, task_run_name="promote-{task.name}")
def promote_task(cfg: RetrainConfig, task: TaskSpec, registered, result):
    return steps.promote_step(cfg, task, registered, result)


def _transient(state) -> bool:
    """Retry only errors that may pass (I/O, a busy database), never bad data, bad config or a NaN loss."""
    try:
        state.result()
    except (OSError, TimeoutError, ConnectionError) as exc:
        return not isinstance(exc, FileNotFoundError)
    except Exception:
        return False
    return False


class RetrainFailed(RuntimeError):
    """Some (or all) tasks failed; any others were registered. The message lists which and why."""


def _tracking(cfg: RetrainConfig) -> str:
    from registry import setup_tracking

    return setup_tracking(cfg.tracking_uri, cfg.runs_dir)


def run_tasks(cfg: RetrainConfig) -> dict[str, Any]:
    """Submit every task's chain and collect the outcome of each (the body of the flow)."""
    logger = get_run_logger()
    chains = {}
    for t in cfg.tasks:
        data = prepare_data_task.submit(cfg, t)
        result = train_task.submit(cfg, t, data)
        reports = evaluate_task.submit(cfg, t, result, data)
        registered = register_task.submit(cfg, t, result, reports)
        decision = promote_task.submit(cfg, t, registered, result)
        chains[t.name] = {"prepare": data, "train": result, "evaluate": reports, "register": registered,
                          "promote": decision}
    summary: dict[str, Any] = {}
    for name, chain in chains.items():
        for future in chain.values():
            future.wait()
        row: dict[str, Any] = {"task": name}
        failed = next(((step, f) for step, f in chain.items() if not f.state.is_completed()), None)
        if failed is not None:  # the first step that did not complete is the cause; the rest never ran
            step, future = failed
            exc = future.state.result(raise_on_failure=False)
            row.update(status="failed", step=step, error=f"{step}: {type(exc).__name__}: {exc}")
            logger.error("task %s failed at %s: %s", name, step, exc)
            summary[name] = row
            continue
        r = chain["train"].result()
        reg = chain["register"].result()
        d = chain["promote"].result()
        row.update(status="ok", method=r.method, metric=r.primary_metric,
                   validation=r.validation.get(r.primary_metric), test=r.test.get(r.primary_metric),
                   best_epoch=r.best_epoch, edit_parameters=r.edit_parameters, seconds=r.seconds,
                   model_name=reg["model_name"], version=reg["version"], run_id=reg["run_id"],
                   promoted=d.promoted, reason=d.reason)
        summary[name] = row
    return summary


@flow(name="retrain-tasks")
def retrain_tasks(cfg: RetrainConfig) -> dict[str, Any]:
    return run_tasks(cfg)


def summary_markdown(cfg: RetrainConfig, summary: dict[str, Any], tracking_uri: str) -> str:
    lines = [f"# Retrain `{cfg.name}`", "", f"MLflow: `{tracking_uri}` · experiment `{cfg.experiment}`", "",
             "| task | status | metric | validation | test | version | production? | why |",
             "|---|---|---|---:|---:|---:|---|---|"]
    for row in summary.values():
        if row["status"] != "ok":
            lines.append(f"| {row['task']} | **failed** | | | | | | {row.get('error', '')[:120]} |")
            continue
        lines.append(f"| {row['task']} | ok | {row['metric']} | {_f(row['validation'])} | {_f(row['test'])} | "
                     f"{row['version']} | {'yes' if row['promoted'] else 'no'} | {row['reason']} |")
    return "\n".join(lines)


def _f(x) -> str:
    return "" if x is None else f"{x:.4f}"


@flow(name="retrain")
def retrain(config: str | Path = "configs/demo.yaml", only: list[str] | None = None) -> dict[str, Any]:
    """Retrain every task in ``config`` (a YAML path); ``only`` restricts to some task names."""
    cfg = load_config(config)
    if only:
        unknown = sorted(set(only) - {t.name for t in cfg.tasks})
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; the config has {[t.name for t in cfg.tasks]}")
        cfg = cfg.model_copy(update={"tasks": [t for t in cfg.tasks if t.name in only]})
    uri = _tracking(cfg)
    runner = make_task_runner(cfg.task_runner, cfg.max_workers, cfg.runs_dir)
    summary = retrain_tasks.with_options(task_runner=runner)(cfg)
    create_markdown_artifact(key=f"retrain-{_slug(cfg.name)}", markdown=summary_markdown(cfg, summary, uri),
                             description=f"retrain {cfg.name}: per-task metrics, versions and promotion decisions")
    failed = [n for n, row in summary.items() if row["status"] != "ok"]
    if failed:
        others = "; the others were registered" if len(failed) < len(summary) else ""
        raise RetrainFailed(f"{len(failed)} of {len(summary)} tasks failed ({', '.join(failed)}){others}. "
                            + "; ".join(f"{n}: {summary[n]['error']}" for n in failed))
    return summary


def _slug(name: str) -> str:
    import re

    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "run"
