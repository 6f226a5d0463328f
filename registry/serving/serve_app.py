"""``redflow serve``: the multi-task pyfunc behind MLflow's own scoring server, plus ``/reload`` and ``/tasks``.

The model is the bundle's pyfunc (``registry/serving/bundle_code.py`` with the serving config as its
``model_config``), saved as models-from-code into a temporary folder and loaded with
``mlflow.pyfunc.load_model`` - exactly what ``mlflow models serve`` loads for a registered bundle. The
HTTP app is ``mlflow.pyfunc.scoring_server.init(model)``, so ``/ping``, ``/health``, ``/version`` and
``/invocations`` (JSON ``dataframe_records``/``dataframe_split``/``instances``/``inputs``, CSV, Parquet;
errors as MLflow's JSON with a 4xx/5xx status) are MLflow's own, behind a guard that refuses malformed bodies
in one paragraph before MLflow parses them (``request_guard``: no 500s, no tracebacks). Two routes are added:

* ``POST /reload``: read every model's alias now and swap in what moved (the poller does this every
  ``poll_interval`` seconds); answers what changed, what was refused and what is served.
* ``GET /tasks``: what is served (task, registered model, version, columns, labels), the base models
  and the refused versions.
"""
from __future__ import annotations

import asyncio
import math
import os
import socket
import tempfile
import warnings
from pathlib import Path

import mlflow
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from mlflow.pyfunc import PyFuncModel, scoring_server

from .bundle import BUNDLE_CODE
from .multitask import bundle_signature
from .limits import MLFLOW_TIMEOUT
from .request_guard import BadRequest, BoundedBody, check_body, plain_refusal
from .requirements import pip_requirements
from .serving_config import ServingConfig, ServingConfigError


def build_model(config: ServingConfig) -> PyFuncModel:
    """The multi-task pyfunc as MLflow loads it (a ``PyFuncModel``), following the registry if configured."""
    with tempfile.TemporaryDirectory(prefix="redflow-bundle-") as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")  # no input example, no type hints
        path = Path(tmp) / "bundle"
        mlflow.pyfunc.save_model(path=str(path), python_model=str(BUNDLE_CODE), model_config=config.to_dict(),
                                 signature=bundle_signature(config), pip_requirements=pip_requirements())
        return mlflow.pyfunc.load_model(str(path))


def create_app(pyfunc_model: PyFuncModel) -> FastAPI:
    """MLflow's scoring app for ``pyfunc_model`` with ``POST /reload`` and ``GET /tasks`` added, behind the request
    guard and the body limit (``BoundedBody``, outermost: a body over the limit never reaches MLflow)."""
    app = scoring_server.init(pyfunc_model)
    model = pyfunc_model.unwrap_python_model()

    @app.middleware("http")
    async def guard_invocations(request: Request, call_next) -> Response:
        """Bodies MLflow would answer with a 500 or a traceback are refused first; its own refusals are made
        one paragraph (see ``request_guard``)."""
        if request.url.path != "/invocations" or request.method != "POST":
            return await call_next(request)
        try:
            await asyncio.to_thread(check_body, await request.body(), request.headers.get("content-type"),
                                    model.limits)
        except BadRequest as refused:
            return Response(refused.body(), status_code=refused.status, media_type="application/json")
        response = await call_next(request)
        stopped = response.status_code == 504  # DeadlineExceeded: one paragraph too
        if not (400 <= response.status_code < 500 or stopped) or "json" not in response.headers.get("content-type", ""):
            return response
        body = b"".join([chunk async for chunk in response.body_iterator])
        return Response(plain_refusal(body), status_code=response.status_code, media_type="application/json")

    app.add_middleware(BoundedBody, limits=model.limits)  # added last: the outermost

    @app.post("/reload")
    async def reload() -> JSONResponse:
        try:
            result = await asyncio.to_thread(model.refresh)
        except Exception as exc:  # noqa: BLE001 - the registry is unreachable: say so, keep serving
            return JSONResponse({"error": f"{type(exc).__name__}: {exc}", **model.status()}, status_code=503)
        return JSONResponse(result)

    @app.get("/tasks")
    async def tasks() -> JSONResponse:
        return JSONResponse(model.status())

    return app


def check_port(host: str, port: int) -> None:
    """``ServingConfigError`` if ``host:port`` cannot be listened on (checked before the models load)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ServingConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}). Fix: pass another "
                                     "--port, or stop the process that uses it") from exc


def serve(config: ServingConfig, *, host: str = "127.0.0.1", port: int = 5001, log_level: str = "info") -> None:
    """Load the tasks and serve them until interrupted (SIGINT/SIGTERM end it cleanly)."""
    check_port(host, port)
    timeout = config.request_limits().request_timeout
    if timeout:  # MLflow answers 504 at its own timeout: make it redflow's, so --request-timeout raises both
        os.environ[MLFLOW_TIMEOUT] = str(math.ceil(timeout))
    pyfunc_model = build_model(config)
    try:
        uvicorn.run(create_app(pyfunc_model), host=host, port=port, log_level=log_level, workers=1)
    finally:
        pyfunc_model.unwrap_python_model().close()
