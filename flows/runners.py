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

What one training needs (the config's ``resources``, :class:`flows.config.Resources`) goes to the engine with
the training's submission (:func:`requesting`): Ray task options (``num_gpus``, ``num_cpus``, ``memory``; Ray then
sets the task's ``CUDA_VISIBLE_DEVICES`` to the GPUs it assigned) or a Dask annotation (``resources={"GPU": n}``: the
training waits for a worker that declares that many GPUs). The local clusters redflow starts declare the GPUs that
exist (:func:`local_gpu_ids`): Ray gets ``num_gpus``; Dask gets one worker per GPU slice, each with its own
``CUDA_VISIBLE_DEVICES`` and a ``GPU`` resource, and the other workers see no GPU. The threads runner ignores
``resources``: its trainings share one process (and its devices) and take turns anyway.
"""
from __future__ import annotations

import contextlib
import importlib
import math
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from prefect.context import FlowRunContext
from prefect.task_runners import ThreadPoolTaskRunner

from .config import Resources

# AF_UNIX paths stop at 107 bytes (103 on macOS); Ray puts <temp>/session_<date>_<pid>/sockets/plasma_store there
RAY_TEMP_DIR_MAX_CHARS = 40


def ray_temp_dir(runs_dir: str | Path | None) -> Path | None:
    """``<runs_dir>/ray`` (absolute) if Ray can use it, else None (Ray's default)."""
    if runs_dir is None or os.environ.get("RAY_TMPDIR"):
        return None
    path = (Path(runs_dir) / "ray").expanduser().resolve()
    return path if len(str(path).encode()) <= RAY_TEMP_DIR_MAX_CHARS else None


def local_gpu_ids() -> list[str]:
    """The GPUs a local cluster started by redflow hands out, as ``CUDA_VISIBLE_DEVICES`` names them.

    ``$REDFLOW_GPUS`` (a count) overrides what torch sees: to hold GPUs back, or to declare logical GPUs on a
    machine without any (tests). Ids are this process's ``CUDA_VISIBLE_DEVICES`` entries when it is set (no more
    than those), else 0, 1, ...
    """
    wanted = os.environ.get("REDFLOW_GPUS", "").strip()
    if wanted and not (wanted.isdigit()):
        raise ValueError(f"REDFLOW_GPUS={wanted!r} is not a count of GPUs. Fix: set it to 0, 1, 2, ... or unset it "
                         "(then the GPUs torch sees)")
    count = int(wanted) if wanted else torch.cuda.device_count()  # torch counts only the visible ones
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return (visible or [str(i) for i in range(count)])[:count]


def ray_options(resources: Resources) -> dict[str, Any]:
    """Ray task options for one training: only what ``resources`` sets (Ray's defaults: 1 CPU, no GPU)."""
    options: dict[str, Any] = {}
    if resources.gpus:
        options["num_gpus"] = resources.gpus
    if resources.cpus is not None:
        options["num_cpus"] = resources.cpus
    if resources.memory_gb is not None:
        options["memory"] = int(resources.memory_gb * 2**30)
    return options


def dask_resources(resources: Resources) -> dict[str, float]:
    """Dask resources for one training: whole GPUs (a fraction takes a whole one); CPUs and memory are the
    worker's (one step at a time each, within its memory_limit)."""
    return {"GPU": math.ceil(resources.gpus)} if resources.gpus else {}


@contextlib.contextmanager
def requesting(kind: str, resources: Resources | None) -> Iterator[None]:
    """Tasks submitted inside ask the engine of task runner ``kind`` for ``resources`` (threads: nothing)."""
    if resources is None or kind == "threads":
        yield
    elif kind == "ray" and ray_options(resources):
        from prefect_ray.context import remote_options  # optional: the ray extra

        with remote_options(**ray_options(resources)):
            yield
    elif kind == "dask" and dask_resources(resources):
        import dask  # optional: the dask extra

        with dask.annotate(resources=dask_resources(resources)):
            yield
    else:
        yield


def _check_fits(kind: str, needs: float, gpus: int) -> None:
    """A ValueError before anything starts when a training asks a local cluster for more GPUs than it has (the
    engine would keep it waiting forever)."""
    if needs > gpus:
        raise ValueError(
            f"a training asks for {needs:g} GPU(s) (resources.gpus) but the local {kind} cluster has {gpus} "
            "(torch.cuda.device_count(); $REDFLOW_GPUS overrides). Fix: lower resources.gpus, run where the GPUs "
            f"are, or set $REDFLOW_{kind.upper()}_ADDRESS to a cluster that has them")


def ray_init_kwargs(max_workers: int, runs_dir: str | Path | None = None,
                    requests: Sequence[Resources] = ()) -> dict[str, Any]:
    """``ray.init`` arguments for the local Ray instance a flow run starts: ``max_workers`` CPUs (more when one
    training asks for more), the GPUs of :func:`local_gpu_ids`."""
    cpus = max([max_workers, *(math.ceil(r.cpus) for r in requests if r.cpus)])
    gpus = len(local_gpu_ids())
    _check_fits("ray", max((r.gpus for r in requests), default=0), gpus)
    kwargs: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus, "include_dashboard": False}
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


def dask_cluster_kwargs(max_workers: int, requests: Sequence[Resources] = ()) -> dict[str, Any]:
    """``DaskTaskRunner`` arguments for the local cluster a flow run starts: ``max_workers`` one-thread processes.

    When a training asks for GPUs, the cluster is a ``SpecCluster`` whose first workers each hold a slice of
    :func:`local_gpu_ids` (as many GPUs as the largest request): ``resources={"GPU": n}`` for Dask's scheduler and
    that slice as the worker's ``CUDA_VISIBLE_DEVICES``, so each training sees only its own devices. The other
    workers (prepare, plan, evaluate, register: steps that ask for no GPU) see none.
    """
    local = {"n_workers": max_workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
    per_worker = max((math.ceil(r.gpus) for r in requests), default=0)
    if per_worker == 0:
        return {"cluster_kwargs": local}
    ids = local_gpu_ids()
    _check_fits("dask", per_worker, len(ids))
    from distributed import Nanny, Scheduler  # optional: the dask extra
    from distributed.system import MEMORY_LIMIT  # optional: the dask extra

    slices = [ids[i:i + per_worker] for i in range(0, len(ids) - per_worker + 1, per_worker)]
    workers = {}
    for index in range(max_workers):
        devices = slices[index] if index < len(slices) else []
        options: dict[str, Any] = {"nthreads": 1, "host": "127.0.0.1", "memory_limit": MEMORY_LIMIT // max_workers,
                                   "env": {"CUDA_VISIBLE_DEVICES": ",".join(devices)}}
        if devices:
            options["resources"] = {"GPU": len(devices)}
        workers[index] = {"cls": Nanny, "options": options}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": None}}
    return {"cluster_class": "distributed.SpecCluster", "cluster_kwargs": {"scheduler": scheduler, "workers": workers}}


def _ray_runner(max_workers: int, runs_dir: str | Path | None, requests: Sequence[Resources]):
    RayTaskRunner = _runner_class("prefect_ray", "RayTaskRunner", "'redflow[ray]'")  # noqa: N806 - a class
    address = os.environ.get("REDFLOW_RAY_ADDRESS")
    if address:
        return RayTaskRunner(address=address)
    kwargs = ray_init_kwargs(max_workers, runs_dir, requests)
    if not _ray_auth_configured():
        # a local instance: its token lives in this process's environment (inherited by Ray's processes)
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    return RayTaskRunner(init_kwargs=kwargs)


def make_task_runner(kind: str, max_workers: int = 2, runs_dir: str | Path | None = None,
                     requests: Sequence[Resources] = ()):
    """Scale-out goes through Prefect's task runners; redflow has no scheduler of its own.

    ``dask`` starts a local cluster of ``max_workers`` processes unless ``REDFLOW_DASK_ADDRESS`` names
    a running scheduler; ``ray`` starts a local Ray with ``max_workers`` CPUs (files under
    ``<runs_dir>/ray``) unless ``REDFLOW_RAY_ADDRESS`` names a running cluster. ``requests``: what each
    training will ask for (the config's ``resources``), to size a local cluster and to refuse, before anything
    starts, a request that it could never meet.
    """
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=max_workers)
    if kind == "dask":
        DaskTaskRunner = _runner_class("prefect_dask", "DaskTaskRunner", "prefect-dask")  # noqa: N806 - a class
        address = os.environ.get("REDFLOW_DASK_ADDRESS")
        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(**dask_cluster_kwargs(max_workers, requests))
    if kind == "ray":
        return _ray_runner(max_workers, runs_dir, requests)
    raise ValueError(f"unknown task_runner {kind!r}. Fix: use threads, dask or ray")


def subflow_task_runner(kind: str, max_workers: int = 2, runs_dir: str | Path | None = None,
                        requests: Sequence[Resources] = ()):
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
    return make_task_runner(kind, max_workers, runs_dir, requests)
