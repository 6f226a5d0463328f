"""Task runners by name: threads (default), Dask (prefect-dask), Ray (prefect-ray).

``max_workers`` bounds how many task steps run at once, whatever the runner: threads in the pool,
Dask worker processes, or the CPUs of the local Ray instance (every Prefect task asks Ray for one
CPU). Against a running cluster (``REDFLOW_DASK_ADDRESS``, ``REDFLOW_RAY_ADDRESS``) the cluster's
own size decides instead.

Ray's own files stay out of the user's home where Ray allows it: the local Ray instance keeps its
session (logs, sockets, spilled objects) under ``<runs_dir>/ray`` when that path is short enough for
Ray's Unix sockets (else in Ray's default ``/tmp/ray``; ``RAY_TMPDIR`` wins), and gets an
authentication token in its environment rather than Ray writing a new one to ``~/.ray/auth_token``
(unless the user configured Ray's authentication: ``RAY_AUTH_MODE``, ``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or an existing ``~/.ray/auth_token``).
"""
from __future__ import annotations

import importlib
import os
import secrets
from pathlib import Path
from typing import Any

from prefect.context import FlowRunContext
from prefect.task_runners import ThreadPoolTaskRunner

# AF_UNIX paths stop at 107 bytes (103 on macOS); Ray puts <temp>/session_<date>_<pid>/sockets/plasma_store there
RAY_TEMP_DIR_MAX_CHARS = 40


def ray_temp_dir(runs_dir: str | Path | None) -> Path | None:
    """``<runs_dir>/ray`` (absolute) if Ray can use it, else None (Ray's default)."""
    if runs_dir is None or os.environ.get("RAY_TMPDIR"):
        return None
    path = (Path(runs_dir) / "ray").expanduser().resolve()
    return path if len(str(path).encode()) <= RAY_TEMP_DIR_MAX_CHARS else None


def ray_init_kwargs(max_workers: int, runs_dir: str | Path | None = None) -> dict[str, Any]:
    """``ray.init`` arguments for the local Ray instance a flow run starts."""
    kwargs: dict[str, Any] = {"num_cpus": max_workers, "include_dashboard": False}
    temp = ray_temp_dir(runs_dir)
    if temp is not None:
        temp.mkdir(parents=True, exist_ok=True)
        kwargs["_temp_dir"] = str(temp)
    return kwargs


def _ray_auth_configured() -> bool:
    return any(os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")) or (
        Path.home() / ".ray" / "auth_token").is_file()


def _runner_class(module: str, name: str, package: str):
    """A task runner class from an optional integration, or a ValueError that says what to install."""
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise ValueError(f"task_runner needs {module.replace('_', '-')}. Fix: pip install {package}") from exc


def _ray_runner(max_workers: int, runs_dir: str | Path | None):
    RayTaskRunner = _runner_class("prefect_ray", "RayTaskRunner", "'redflow[ray]'")  # noqa: N806 - a class
    address = os.environ.get("REDFLOW_RAY_ADDRESS")
    if address:
        return RayTaskRunner(address=address)
    if not _ray_auth_configured():
        # a local instance: its token lives in this process's environment (inherited by Ray's processes)
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    return RayTaskRunner(init_kwargs=ray_init_kwargs(max_workers, runs_dir))


def make_task_runner(kind: str, max_workers: int = 2, runs_dir: str | Path | None = None):
    """Scale-out goes through Prefect's task runners; redflow has no scheduler of its own.

    ``dask`` starts a local cluster of ``max_workers`` processes unless ``REDFLOW_DASK_ADDRESS`` names
    a running scheduler; ``ray`` starts a local Ray with ``max_workers`` CPUs (files under
    ``<runs_dir>/ray``) unless ``REDFLOW_RAY_ADDRESS`` names a running cluster.
    """
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=max_workers)
    if kind == "dask":
        DaskTaskRunner = _runner_class("prefect_dask", "DaskTaskRunner", "prefect-dask")  # noqa: N806 - a class
        address = os.environ.get("REDFLOW_DASK_ADDRESS")
        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": max_workers, "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None})
    if kind == "ray":
        return _ray_runner(max_workers, runs_dir)
    raise ValueError(f"unknown task_runner {kind!r}. Fix: use threads, dask or ray")


def subflow_task_runner(kind: str, max_workers: int = 2, runs_dir: str | Path | None = None):
    """A task runner for a subflow of a running flow (a tuned task's study) on the same resources: the
    parent's Dask cluster (by its scheduler's address), the Ray instance this process already joined, or
    a thread pool of ``max_workers``. Outside a flow run, the same as :func:`make_task_runner`."""
    if kind == "dask":
        context = FlowRunContext.get()
        parent = context.task_runner if context is not None else None
        client = getattr(parent, "client", None) if parent is not None and type(parent).__name__ == "DaskTaskRunner" \
            else None
        if client is not None:
            DaskTaskRunner = _runner_class("prefect_dask", "DaskTaskRunner", "prefect-dask")  # noqa: N806 - a class
            return DaskTaskRunner(address=client.scheduler.address)
    return make_task_runner(kind, max_workers, runs_dir)
