"""What a training was made from: data, resolved config, base checkpoint and code, as one identity.

A nightly retrain compares the identity of tonight's inputs with the identity recorded
on the task's latest registered version: equal means nothing changed and nothing is
retrained (``unchanged``); different means a fresh training, and :meth:`Identity.diff`
says why. The same identity decides whether a crashed training may be resumed: only a
training of exactly the same inputs (see :mod:`tasks.lifecycle.attempts`).

- ``data_hash``:   content hash of the prepared data (:func:`tasks.data.prepare_data`).
- ``config_hash``: sha256 of the *resolved* training config (preset and defaults applied;
                   fields that cannot change the result, such as logging, excluded).
- ``base_id``:     content identity of the base checkpoint: sha256 of a local folder's
                   weight and config files (cached by size and mtime), or the hub commit.
- ``code_version``: sha256 of the sources of ``red/`` and ``tasks/`` (the method and the trainer), so
                   a real code change retrains and a docs, config or registry change does not.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")
_CONFIG_FILES = ("config.json", "generation_config.json")


CODE_PACKAGES = ("red", "tasks")  # what decides a trained edit: the method, data preparation, training


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``src:<sha256 of the Python sources of red/ and tasks/>`` (16 hex): the code that decides a trained edit.

    A content hash, not the git state: a clone, a reinstall or a commit that only touches configs, docs,
    the registry or the flows leaves it unchanged (no retraining), while any edit of the method's or the
    trainer's code, committed or not, changes it. Cached per process (a run does not change its code).
    """
    return source_hash(Path(__file__).resolve().parents[2])


def source_hash(root: Path, packages: tuple[str, ...] = CODE_PACKAGES) -> str:
    """``src:`` + sha256 (16 hex) of the ``*.py`` files of ``packages`` under ``root`` (paths and bytes)."""
    digest = hashlib.sha256()
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            digest.update(f"\0{path.relative_to(root).as_posix()}\0".encode())
            digest.update(path.read_bytes())
    return f"src:{digest.hexdigest()[:16]}"


@functools.lru_cache(maxsize=1)
def code_revision() -> str:
    """``git:<commit>[+dirty]`` of the checkout holding this package, else ``redflow==<version>`` (shown on runs
    and versions for people; the training identity uses :func:`code_version`)."""
    repo = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        if sha.returncode == 0 and sha.stdout.strip():
            dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10)
            return f"git:{sha.stdout.strip()}" + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version

        return f"redflow=={version('redflow')}"
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "unknown"


def config_hash(resolved: dict[str, Any]) -> str:
    """sha256 (16 hex) of a resolved training config, independent of key order."""
    text = json.dumps(resolved, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def base_id(model: str, revision: str | None = None, cache_dir: str | Path | None = None) -> str:
    """Content identity of a base checkpoint (16 hex for local folders, ``hub:<repo>@<commit>`` for hub ids).

    A local folder is hashed over its config and weight files' bytes; the result is cached in
    ``cache_dir`` keyed by each file's path, size and mtime, so a nightly run re-reads nothing
    unchanged. A hub id is identified by its commit (pass ``revision`` to pin it): looked up online,
    else from the local hub cache; if neither answers, by its name and revision alone.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return _folder_id(path.resolve(), Path(cache_dir) if cache_dir else None)
    return f"hub:{model}@{_hub_commit(model, revision) or revision or 'main'}"


def _folder_id(folder: Path, cache_dir: Path | None) -> str:
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.name in _CONFIG_FILES))
    stat_key = hashlib.sha256(json.dumps(
        [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]).encode()).hexdigest()[:24]
    cached = cache_dir / f"{stat_key}.json" if cache_dir else None
    if cached is not None and cached.is_file():
        try:
            return json.loads(cached.read_text())["base_id"]
        except (OSError, ValueError, KeyError):
            pass
    digest = hashlib.sha256()
    for p in files:
        digest.update(f"\0{p.name}\0".encode())
        with open(p, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    value = digest.hexdigest()[:16]
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"base_id": value, "folder": str(folder)}))
            tmp.replace(cached)
        except OSError as exc:  # a cache is an optimisation, never a failure
            log.debug("could not cache the base id of %s: %s", folder, exc)
    return value


def _hub_commit(repo: str, revision: str | None) -> str | None:
    try:
        import huggingface_hub as hub

        if not hub.constants.HF_HUB_OFFLINE:
            try:
                return hub.HfApi().model_info(repo, revision=revision).sha
            except Exception:  # noqa: BLE001 - fall back to the local cache
                pass
        snapshot = hub.snapshot_download(repo, revision=revision, local_files_only=True,
                                         allow_patterns=["config.json"])
        return Path(snapshot).name
    except Exception:  # noqa: BLE001 - not cached either
        return None


@dataclass(frozen=True)
class Identity:
    """The inputs of one training; equal identities train the same edit."""

    data_hash: str
    config_hash: str
    base_id: str
    code_version: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "Identity | None":
        """The identity in ``data`` (e.g. a version's tags), or None when any part is missing."""
        if not data:
            return None
        values = {k: data.get(k) for k in cls.__dataclass_fields__}
        if not all(isinstance(v, str) and v for v in values.values()):
            return None
        return cls(**values)  # type: ignore[arg-type]

    def diff(self, other: "Identity | None") -> list[str]:
        """Human-readable differences from ``other`` (empty when equal)."""
        if other is None:
            return ["no earlier training to compare with"]
        names = {"data_hash": "data", "config_hash": "training config", "base_id": "base model",
                 "code_version": "code"}
        return [f"{label} changed ({getattr(other, key)} -> {getattr(self, key)})"
                for key, label in names.items() if getattr(self, key) != getattr(other, key)]


def recipe_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``["learning_rate 0.01 -> 0.05", "edit.kind scale+bias -> scale"]``: what changed between two recipes."""
    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in (d or {}).items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    a, b = flat(old), flat(new)
    return [f"{k} {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
