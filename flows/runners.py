"""Task runners by name: threads (default), Dask (prefect-dask), Ray (prefect-ray)."""
from __future__ import annotations

import os


def make_task_runner(kind: str, max_workers: int = 2):
    """Scale-out goes through Prefect's task runners; redflow has no scheduler of its own.

    ``dask`` starts a local cluster unless ``REDFLOW_DASK_ADDRESS`` names a running scheduler;
    ``ray`` connects to ``REDFLOW_RAY_ADDRESS`` (or starts a local Ray).
    """
    if kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=max_workers)
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:
            raise ValueError("task_runner: dask needs prefect-dask: pip install prefect-dask") from exc
        address = os.environ.get("REDFLOW_DASK_ADDRESS")
        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": max_workers, "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None})
    if kind == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError as exc:
            raise ValueError("task_runner: ray needs prefect-ray: pip install 'redflow[ray]'") from exc
        address = os.environ.get("REDFLOW_RAY_ADDRESS")
        return RayTaskRunner(address=address) if address else RayTaskRunner()
    raise ValueError(f"unknown task_runner {kind!r}; use threads, dask or ray")
