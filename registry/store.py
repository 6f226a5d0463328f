"""Where the MLflow store is: one documented resolution order, and no empty store created by reading.

Resolution order (the first that is set wins)::

    1. an explicit URI: the ``--tracking-uri`` flag (commands merge it over the config)
    2. the config's ``tracking_uri``
    3. ``$REDFLOW_TRACKING_URI``, then ``$MLFLOW_TRACKING_URI`` (what MLflow users export to reach the
       team's server)
    4. ``sqlite:///<runs_dir>/mlflow.db`` (artifacts in ``<runs_dir>/mlartifacts``)

``mlflow.set_tracking_uri`` exports ``MLFLOW_TRACKING_URI`` into this process's environment (so that
subprocesses inherit it). A value redflow exported itself is therefore not a configuration: it is
only honoured when it equals what the environment held when this module was imported (the user's
own export, or the parent process's resolution for a Dask/Ray worker).

The legacy file store (``file:`` URIs, plain directories) is refused: it lacks the model registry's
transactional guarantees the promotion logic relies on and MLflow deprecates it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import mlflow
from filelock import FileLock
from mlflow.tracking import MlflowClient

from .reachability import Unreachable, server_error

DEFAULT_RUNS_DIR = "runs"
ARTIFACTS_DIRNAME = "mlartifacts"
DB_FILENAME = "mlflow.db"
ENV_REDFLOW = "REDFLOW_TRACKING_URI"
ENV_MLFLOW = "MLFLOW_TRACKING_URI"

_ENV_AT_IMPORT = os.environ.get(ENV_MLFLOW)   # the user's (or the parent process's) export
_EXPORTED: set[str] = set()                    # URIs this process exported through mlflow.set_tracking_uri
_SCHEMA_READY: set[str] = set()                # SQLite URIs whose schema this process has opened under the lock
SCHEMA_LOCK_SUFFIX = ".schema.lock"
SCHEMA_LOCK_TIMEOUT_S = 600.0                  # a migration of a large store takes minutes, never more


class StoreNotFound(FileNotFoundError):
    """A command that only reads found no MLflow store where the tracking URI points."""


class StoreUnreachable(Unreachable):
    """Nothing answers at the tracking server's address (refused, no such host, no connection in time).

    A user error (the CLI exits 2): the message names the URI, where it came from and the fix."""


@dataclass(frozen=True)
class TrackingTarget:
    """A resolved tracking URI and where it came from (``flag``, ``config``, an env var, ``default``)."""

    uri: str
    source: str

    def describe(self) -> str:
        return f"MLflow store: {self.uri} (from {self.source})"


def default_tracking_uri(runs_dir: str | Path = DEFAULT_RUNS_DIR) -> str:
    """``sqlite:///<abs runs_dir>/mlflow.db``."""
    return f"sqlite:///{Path(runs_dir).expanduser().resolve() / DB_FILENAME}"


def normalize_uri(uri: str) -> str:
    """Accept a database URI, an http(s) server, or a path to a ``.db`` file; refuse the file store."""
    uri = uri.strip()
    if uri.startswith("file:"):
        raise ValueError(
            f"tracking URI {uri!r} is MLflow's legacy file store, which redflow does not use. "
            "Use a database (e.g. 'sqlite:///runs/mlflow.db') or a tracking server ('http://host:5000')."
        )
    if "://" in uri or uri.startswith(("databricks", "sqlite:")):
        return uri
    path = Path(uri).expanduser()
    if path.suffix == ".db" or (path.is_file() and not path.is_dir()):
        return f"sqlite:///{path.resolve()}"
    raise ValueError(
        f"tracking URI {uri!r} looks like a directory (MLflow's legacy file store), which redflow does not use. "
        f"Pass a database such as 'sqlite:///{path / DB_FILENAME}' or an http(s) tracking server."
    )


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other URIs or in-memory SQLite).

    SQLAlchemy convention: ``sqlite:///rel/path.db`` is relative, ``sqlite:////abs/path.db`` absolute.
    """
    if not uri.startswith("sqlite://"):
        return None
    rest = uri[len("sqlite://"):].split("?", 1)[0]
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        return None
    return Path(rest[1:])


def local_artifact_root(uri: str | None = None) -> Path | None:
    """For a SQLite backend, ``<db dir>/mlartifacts``; None for remote servers."""
    db = sqlite_path(uri or mlflow.get_tracking_uri())
    return db.parent / ARTIFACTS_DIRNAME if db is not None else None


def _user_mlflow_env() -> str | None:
    value = os.environ.get(ENV_MLFLOW)
    if value and value in _EXPORTED and value != _ENV_AT_IMPORT:
        return None  # exported by this process's own setup_tracking, not configured by anyone
    return value or None


def resolve_tracking_uri(uri: str | None = None, runs_dir: str | Path = DEFAULT_RUNS_DIR, *,
                         config_uri: str | None = None, source: str = "flag") -> TrackingTarget:
    """The tracking URI to use, by the order in the module docstring, normalized, with its source.

    ``uri`` is the explicit value (reported as ``source``); ``config_uri`` the config's. Raises
    ``ValueError`` for a file-store URI.
    """
    for value, origin in ((uri, source), (config_uri, "config tracking_uri"),
                          (os.environ.get(ENV_REDFLOW), f"${ENV_REDFLOW}"), (_user_mlflow_env(), f"${ENV_MLFLOW}")):
        if value:
            return TrackingTarget(normalize_uri(value), origin)
    return TrackingTarget(default_tracking_uri(runs_dir), f"default under runs_dir {runs_dir}")


def require_store(target: TrackingTarget) -> None:
    """Raise ``StoreNotFound`` if ``target`` is a SQLite file that does not exist (reading must not create it)."""
    db = sqlite_path(target.uri)
    if db is not None and not db.is_file():
        raise StoreNotFound(
            f"no MLflow store at {db} (tracking URI from {target.source}). Fix: pass --tracking-uri "
            "(e.g. sqlite:///path/to/runs/mlflow.db), set MLFLOW_TRACKING_URI, or run from the folder that holds runs/")


def require_reachable(target: TrackingTarget) -> None:
    """Raise ``StoreUnreachable`` within seconds if ``target`` is an http(s) tracking server nothing answers at.

    MLflow's client would retry a refused connection for about four minutes and then fail as an internal
    error; this probe (``registry/reachability.py``: connection failures only, a slow server passes) runs
    once per server and process. Other URIs (SQLite, databricks) are not probed."""
    if not target.uri.startswith(("http://", "https://")):
        return
    reason = server_error(target.uri.rstrip("/") + "/health")
    if reason is not None:
        raise StoreUnreachable(
            f"no MLflow tracking server answers at {target.uri} (from {target.source}): {reason}. Fix: start the "
            "server (e.g. `mlflow server --host 127.0.0.1 --port 5000`), or point --tracking-uri, "
            "MLFLOW_TRACKING_URI or the config's tracking_uri at a running one")


def schema_lock_path(db: Path) -> Path:
    """The file lock beside a SQLite store that serialises its schema creation and migrations."""
    return db.with_name(f"{db.name}{SCHEMA_LOCK_SUFFIX}")


def _open_schema(uri: str, db: Path) -> None:
    """Create or migrate the SQLite store's schema, one process at a time.

    MLflow creates (and migrates) a SQLite store's tables when a process first opens its tracking or registry
    store, and two processes doing so at once (a schedule firing twice, a manual run beside the nightly one)
    fail with ``table ... already exists`` or ``Online migration expected to match one row``. Each process
    opens both stores under a file lock beside the database; MLflow caches the opened stores per process, so
    later calls never touch the schema again.
    """
    with FileLock(str(schema_lock_path(db)), timeout=SCHEMA_LOCK_TIMEOUT_S):
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)


def use_tracking(target: TrackingTarget, *, create: bool = True) -> str:
    """Point MLflow (tracking and registry) at ``target``; with ``create=False`` the store must exist.

    A SQLite store's schema is created or migrated here, under a file lock (:func:`_open_schema`); an http(s)
    server is probed first (:func:`require_reachable`: ``StoreUnreachable`` within seconds, not minutes)."""
    db = sqlite_path(target.uri)
    require_reachable(target)
    if not create:
        require_store(target)
    elif db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        (db.parent / ARTIFACTS_DIRNAME).mkdir(parents=True, exist_ok=True)
    if db is not None and target.uri not in _SCHEMA_READY:
        _open_schema(target.uri, db)
        _SCHEMA_READY.add(target.uri)
    mlflow.set_tracking_uri(target.uri)
    mlflow.set_registry_uri(target.uri)
    _EXPORTED.add(target.uri)
    return target.uri


def open_target(uri: str | None = None, runs_dir: str | Path = DEFAULT_RUNS_DIR, *, config_uri: str | None = None,
                create: bool = False, source: str = "--tracking-uri") -> TrackingTarget:
    """Resolve the store (``uri`` > ``config_uri`` > env > default under ``runs_dir``) and point MLflow at it.

    What every command that works on existing models does first (``create=False``: ``StoreNotFound`` rather than an
    empty SQLite store; ``StoreUnreachable`` for a tracking server that does not answer)."""
    target = resolve_tracking_uri(uri, runs_dir, config_uri=config_uri, source=source)
    use_tracking(target, create=create)
    return target


def setup_tracking(uri: str | None = None, runs_dir: str | Path = DEFAULT_RUNS_DIR, *, create: bool = True) -> str:
    """Point MLflow (tracking and registry) at ``uri`` (or the resolved default) and return the normalized URI.

    ``uri`` None: ``$REDFLOW_TRACKING_URI``, then ``$MLFLOW_TRACKING_URI`` (when the user set it), else
    ``sqlite:///<runs_dir>/mlflow.db``. ``create=False`` (commands that only read) raises
    ``StoreNotFound`` instead of creating an empty SQLite store. File-store URIs raise ``ValueError``.
    The URI is process-wide (MLflow keeps it global and exports it to subprocesses).
    """
    return use_tracking(resolve_tracking_uri(uri, runs_dir), create=create)
