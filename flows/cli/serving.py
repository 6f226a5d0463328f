"""``redflow serve`` (many registered tasks behind one server) and ``redflow bundle`` (the same as an MLflow model)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from .common import RUNS_DIR_HELP, TRACKING_HELP, guard, note, print_json, split_commas


MODELS_HELP = "Registered model names and/or glob patterns, comma-separated (e.g. 'red-*' or red-a,red-b)."


def _serving_config(config: Optional[Path], **flags: Any):
    # lazy: loads MLflow; --help stays instant
    from registry.serving.serving_config import load_serving_config, serving_config

    return load_serving_config(config, **flags) if config is not None else serving_config(None, **flags)


def _serving_store(tracking_uri: Optional[str], runs_dir: str, cfg) -> str:
    """The store a serving config reads: --tracking-uri > the config's tracking_uri > env > default (never created)."""
    from registry.store import resolve_tracking_uri, use_tracking  # lazy: loads MLflow; --help stays instant

    target = resolve_tracking_uri(tracking_uri, runs_dir, config_uri=cfg.tracking_uri, source="--tracking-uri")
    use_tracking(target, create=False)
    note(target.describe())
    return target.uri


def serve(config: Optional[Path] = typer.Argument(None, help="YAML serving config (models, alias, poll_interval, "
                                                               "batch_size, ...); flags override it."),
          models: Optional[str] = typer.Option(None, help=MODELS_HELP),
          alias: Optional[str] = typer.Option(None, help="Alias to serve and follow (default: production)."),
          poll_interval: Optional[float] = typer.Option(None, help="Seconds between registry checks; 0 = never "
                                                                    "(default: 30). POST /reload checks at once."),
          batch_size: Optional[int] = typer.Option(None, help="Rows per forward pass (default: 16)."),
          device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N (default: auto)."),
          max_rows: Optional[int] = typer.Option(None, help="Most rows per request; more: HTTP 413 (default: "
                                                            "$REDFLOW_SERVE_MAX_ROWS, else 10000)."),
          max_body_mb: Optional[float] = typer.Option(None, help="Largest request body in MB; larger: HTTP 413 "
                                                                 "(default: $REDFLOW_SERVE_MAX_BODY_MB, else 20)."),
          max_text_chars: Optional[int] = typer.Option(None, help="Most characters per text field; more: HTTP 413 "
                                                                  "(default: $REDFLOW_SERVE_MAX_TEXT_CHARS, else "
                                                                  "100000)."),
          request_timeout: Optional[float] = typer.Option(None, help="Seconds a request may compute; past them it "
                                                                     "stops at its next batch, HTTP 504 (default: "
                                                                     "$REDFLOW_SERVE_REQUEST_TIMEOUT, else MLflow's "
                                                                     "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT, 60)."),
          host: str = typer.Option("127.0.0.1", help="Address to listen on."),
          port: int = typer.Option(5001, help="Port to listen on."),
          tracking_uri: Optional[str] = typer.Option(None, help=TRACKING_HELP),
          runs_dir: str = typer.Option("runs", help=RUNS_DIR_HELP)) -> None:
    """Serve many registered tasks from one base model, following their 'production' alias.

    Answers /ping, /health and /invocations as `mlflow models serve` does; each request row names its `task`.
    Requests over --max-rows, --max-body-mb or --max-text-chars are refused (HTTP 413).
    Also POST /reload (check the registry now) and GET /tasks (what is served). See docs/serving.md.
    """
    # lazy: loads MLflow; --help stays instant
    from registry.serving.serve_app import check_port, serve as serve_forever

    with guard():
        cfg = _serving_config(config, models=split_commas(models), alias=alias, poll_interval=poll_interval,
                              batch_size=batch_size, device=device, max_rows=max_rows, max_body_mb=max_body_mb,
                              max_text_chars=max_text_chars, request_timeout=request_timeout)
        cfg.request_limits()  # a bad REDFLOW_SERVE_* value is refused before anything loads
        check_port(host, port)
        cfg = cfg.model_copy(update={"tracking_uri": _serving_store(tracking_uri, runs_dir, cfg)})
        follow = f"checks the registry every {cfg.poll_interval:g} s" if cfg.poll_interval else "does not poll"
        note(f"serving {', '.join(cfg.models)} @{cfg.alias} on http://{host}:{port} ({follow}; POST /reload "
             "checks now)")
        serve_forever(cfg, host=host, port=port)


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
    from registry.serving.bundle import register_bundle  # lazy: loads MLflow; --help stays instant

    with guard():
        cfg = _serving_config(config, models=split_commas(models), alias=alias, poll_interval=poll_interval,
                              batch_size=batch_size)
        uri = _serving_store(tracking_uri, runs_dir, cfg)
        result = register_bundle(name, cfg, promote=promote)
        print_json(result)
        note(f"serve it: MLFLOW_TRACKING_URI={uri} mlflow models serve -m {result['uri']} --env-manager local "
             "--port 5001")
