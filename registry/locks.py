"""The promotion lock: mutual exclusion for alias moves on one registered model.

MLflow has no compare-and-set on aliases or tags: ``set_registered_model_alias`` and
``set_registered_model_tag`` are last-writer-wins. Two flows that gate at the same time would
each read "production = v3", each decide "mine is better", and the slower write would win
whatever the scores - and a read-modify-write of the alias-history tag would drop an entry.
So every alias move (candidate, promote, rollback) and every history append happens under a
lock, and the gate re-reads the current production inside it.

Why not "write a lock tag with owner+expiry, then re-read it"? Because tags are
last-writer-wins, write-then-read cannot exclude: A writes, A re-reads (sees A), B writes,
B re-reads (sees B) - both "hold" the lock. A lock needs an atomic test-and-set, and the
implementation uses the strongest one each backend offers:

``file`` (SQLite backends - the local default)
    ``filelock.FileLock`` (``flock``) on ``<db>.locks/<model>.lock`` beside the database. The kernel makes
    acquisition atomic across threads (one open file description each) and processes on the
    host, and releases the lock when the holder dies, so a crashed flow never leaves a stale
    lock. Every writer of a SQLite file is on the host that has the file, so this covers
    all of them.

``model`` (remote tracking servers, other SQL databases, or ``kind="model"``)
    Creating a registered model is atomic: the name is the table's primary key, so of two
    concurrent ``create_registered_model("redflow-lock.<model>")`` calls exactly one succeeds
    (the other gets RESOURCE_ALREADY_EXISTS), through the REST API too. The lock model carries
    its owner and an expiry as tags (written in the same transaction); release deletes it.
    A holder that dies leaves it behind until it expires (``ttl``); a waiter then deletes it if
    the owner it read is still the owner (a check-then-delete: a holder that overruns its ttl
    *and* releases in that instant could race a breaker - keep ``ttl`` far above the few
    registry calls a critical section makes, and clocks roughly in sync). Lock models are named
    ``redflow-lock.<name>`` so ``red-*`` searches never see them.

All writers of one registry must use the same kind (they do when they use the same URI type).
"""
from __future__ import annotations

import os
import socket
import threading
import time
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import mlflow
from filelock import FileLock, Timeout
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from red.utils import slug

from .decisions import user_name
from .names import LOCK_MODEL_PREFIX
from .store import sqlite_path

DEFAULT_TIMEOUT = 120.0
DEFAULT_TTL = 300.0


class LockTimeout(TimeoutError):
    """The promotion lock could not be acquired in time (someone else holds it)."""


def _owner() -> str:
    """Who holds the lock: ``user@host:pid:thread:nonce`` (the process and thread make a holder unique; the alias
    history records the person, ``registry.decisions.person``, not this)."""
    return f"{user_name()}@{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex[:8]}"


def lock_kind(registry_uri: str | None = None) -> str:
    """``file`` for local SQLite registries (on POSIX), else ``model``."""
    uri = registry_uri or mlflow.get_registry_uri()
    if sqlite_path(uri) is not None and os.name == "posix":
        return "file"
    return "model"


def lock_file(model_name: str, registry_uri: str | None = None) -> Path:
    """The lock file of ``model_name``'s promotion lock beside the SQLite registry (``ValueError`` for other stores)."""
    db = sqlite_path(registry_uri or mlflow.get_registry_uri())
    if db is None:
        raise ValueError("file locks need a sqlite:/// registry URI")
    return db.parent / f"{db.name}.locks" / f"{slug(model_name, fill='_', strip='', default='')}.lock"


@contextmanager
def _file_lock(path: Path, timeout: float, what: str, poll: float = 0.02) -> Iterator[str]:
    """``filelock.FileLock`` on ``path`` (``flock`` on POSIX: atomic, released by the kernel when the holder dies);
    the holder is written beside it (``<lock>.owner``) so a waiter that times out can say who holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = _owner()
    holder_file = path.with_name(path.name + ".owner")
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=timeout, poll_interval=poll)
    except Timeout:
        try:
            holder = holder_file.read_text().strip() or "unknown"
        except OSError:
            holder = "unknown"
        raise LockTimeout(
            f"could not acquire the promotion lock for {what} within {timeout:.0f}s; it is held by "
            f"{holder} (lock file {path}). If no redflow process is running, the holder is gone and "
            "the lock is already free: retry."
        ) from None
    try:
        holder_file.write_text(owner)
        yield owner
    finally:
        try:
            holder_file.write_text("")
        finally:
            lock.release()


def _already_exists(exc: MlflowException) -> bool:
    return exc.error_code in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")


def _not_found(exc: MlflowException) -> bool:
    return exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


@contextmanager
def _model_lock(client: MlflowClient, model_name: str, timeout: float, ttl: float,
                poll: float = 0.1) -> Iterator[str]:
    lock_name = LOCK_MODEL_PREFIX + model_name
    owner = _owner()
    deadline = time.monotonic() + timeout
    while True:
        expires = time.time() + ttl
        try:
            client.create_registered_model(
                lock_name,
                tags={"redflow.lock.owner": owner, "redflow.lock.expires": f"{expires:.3f}",
                      "redflow.lock.for": model_name},
                description=f"redflow promotion lock for {model_name}, held by {owner}; "
                            "deleted on release. Safe to delete if expired.",
            )
            break
        except MlflowException as exc:
            if not (_already_exists(exc) or _not_found(exc)):  # not found: taken, then released meanwhile
                raise
        wait = poll
        holder = "unknown (no owner tag)"
        try:
            held = client.get_registered_model(lock_name)
            owner_seen = held.tags.get("redflow.lock.owner")
            expires_seen = float(held.tags.get("redflow.lock.expires") or 0)
        except MlflowException as exc:
            if not _not_found(exc):
                raise
            owner_seen, wait = None, 0.0  # released meanwhile: try again at once
        if owner_seen is None:
            # Also a torn read: the store loads a model and its tags in two SELECTs, so a lock
            # released (deleted) in between looks tag-less. Not stale: look again soon.
            wait = min(wait, poll / 10)
        elif time.time() > expires_seen:
            # stale (its holder died): break it if it is still that holder's
            try:
                if client.get_registered_model(lock_name).tags.get("redflow.lock.owner") == owner_seen:
                    client.delete_registered_model(lock_name)
            except MlflowException as exc:
                if not _not_found(exc):
                    raise
            continue
        else:
            holder = (f"{owner_seen} until "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(expires_seen))}")
        if time.monotonic() >= deadline:
            raise LockTimeout(
                f"could not acquire the promotion lock for registered model {model_name!r} within {timeout:.0f}s: "
                f"registered model {lock_name!r} is held by {holder}. If that process is gone, delete "
                f"{lock_name!r} or wait for it to expire."
            )
        time.sleep(wait)
    try:
        yield owner
    finally:
        try:
            held = client.get_registered_model(lock_name)
            if held.tags.get("redflow.lock.owner") == owner:
                client.delete_registered_model(lock_name)
            else:
                warnings.warn(f"promotion lock {lock_name} expired and was taken over while held by {owner}; "
                              f"raise ttl (now {ttl}s)", RuntimeWarning, stacklevel=2)
        except MlflowException as exc:
            if not _not_found(exc):
                raise


@contextmanager
def registry_lock(model_name: str, *, client: MlflowClient | None = None, kind: str = "auto",
                  timeout: float = DEFAULT_TIMEOUT, ttl: float = DEFAULT_TTL) -> Iterator[str]:
    """Hold the promotion lock of ``model_name``; yields the owner id written into it.

    ``kind``: ``auto`` (file lock for local SQLite, lock model otherwise), ``file`` or ``model``
    (see the module docstring). Raises ``LockTimeout`` after ``timeout`` seconds.
    """
    client = client or MlflowClient()
    registry_uri = getattr(client, "_registry_uri", None) or mlflow.get_registry_uri()
    if kind == "auto":
        kind = os.environ.get("REDFLOW_REGISTRY_LOCK") or lock_kind(registry_uri)
    if kind == "file":
        with _file_lock(lock_file(model_name, registry_uri), timeout, repr(model_name)) as owner:
            yield owner
    elif kind == "model":
        with _model_lock(client, model_name, timeout, ttl) as owner:
            yield owner
    else:
        raise ValueError(f"lock kind must be 'auto', 'file' or 'model', not {kind!r}")


def is_lock_model(name: str) -> bool:
    return name.startswith(LOCK_MODEL_PREFIX)


def describe_lock(model_name: str) -> dict:
    """Who holds the lock of ``model_name`` right now (for diagnostics); empty if free."""
    client = MlflowClient()
    if lock_kind() == "file":
        path = lock_file(model_name)
        holder = path.with_name(path.name + ".owner")
        text = holder.read_text().strip() if holder.is_file() else ""
        return {"kind": "file", "path": str(path), "owner": text} if text else {}
    try:
        held = client.get_registered_model(LOCK_MODEL_PREFIX + model_name)
    except MlflowException:
        return {}
    return {"kind": "model", **{k.split(".")[-1]: v for k, v in held.tags.items()}}


__all__ = ["LockTimeout", "registry_lock", "lock_kind", "lock_file", "is_lock_model", "describe_lock"]
