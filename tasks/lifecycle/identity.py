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
                   weight, config and tokenizer files (cached by size and mtime), or the hub commit.
- ``code_version``: sha256 of the normalised syntax trees of :data:`CODE_MODULES` (the method, data
                   preparation, training), so a real change of what trains retrains, while comments,
                   docstrings, formatting, evaluation, bookkeeping, registry or flows do not.

Beside them, :attr:`Identity.dependencies` records the versions of Python, torch, transformers and peft
(:func:`dependency_versions`). They are shown when they differ but, by default, do not make a task
changed (equality ignores them): :meth:`Identity.matches` counts them only when asked to (the retrain
config's ``retrain_on_dependency_change``).
"""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import logging
import os
import platform
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import huggingface_hub as hub

log = logging.getLogger(__name__)

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")
_CONFIG_FILES = ("config.json", "generation_config.json")
# What turns text into ids: a different vocabulary, merges or special tokens train a different edit.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
                    "tokenizer.model", "chat_template.jinja", "chat_template.json")

# The modules whose behaviour changes a trained edit, as paths from the repository root ("dir/": every
# module under it, less CODE_EXCLUDED). Moving a file means updating this tuple: tests/test_identity.py
# fails when a listed path is gone, or when tasks.training / tasks.data import a repository module that is
# neither listed nor excluded below.
CODE_MODULES: tuple[str, ...] = (
    "red/",                 # the method: edits, targets, hooks, ReFT, loading the base, the edit file
    "tasks/__init__.py",
    "tasks/data/",          # data preparation: prepare_data and encode, and every module they read through
    "tasks/training/",      # training: config and presets, the base's name and preparation, the Trainers, guards,
                            # co-training and its row mixing, the best epoch and what is saved (finish.py)
    "tasks/tuning/",        # a tuned task's search space, sampler and trial configs decide its edit
)

# Repository modules on (or beside) the training path that are deliberately outside the code version.
CODE_EXCLUDED: dict[str, str] = {
    "red/merge.py": "folds a finished edit into the base weights for export; never runs while training",
    "red/compare.py": "compares two finished edits layer by layer (redflow diff); never runs while training",
    "tasks/training/result.py": "the record of a finished training (what is logged), not how it trains",
    "tasks/training/floors.py": "judges a finished training against the majority-class floor ('did not learn')",
    "tasks/training/progress.py": "whether progress bars and model-load reports are printed, not how it trains",
    "tasks/evaluate/": "scores a trained edit (metrics, suites, reports); the metric formulas are standard, "
                       "so a change there fixes a measurement rather than training a different edit",
    "tasks/lifecycle/": "bookkeeping of runs: identity, attempts, the nightly plan",
    "tasks/tuning/study.py": "runs a search (storage, resume, pruning bookkeeping); tasks/tuning/space.py holds what "
                             "it searches",
}


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``src:<sha256 of the code that decides a trained edit>`` (16 hex): :data:`CODE_MODULES`, normalised.

    A content hash, not the git state: a clone, a reinstall or a commit that only touches configs, docs,
    comments, docstrings, evaluation, bookkeeping, the registry or the flows leaves it unchanged (no
    retraining), while a change of what the method, data preparation or training code does, committed or
    not, changes it. Cached per process (a run does not change its code).
    """
    return source_hash(Path(__file__).resolve().parents[2])


def code_files(root: Path, modules: tuple[str, ...] = CODE_MODULES,
               excluded: Mapping[str, str] = CODE_EXCLUDED) -> list[Path]:
    """The ``*.py`` files under ``root`` that ``modules`` name (folders expanded, ``excluded`` left out), sorted."""
    skip = tuple(excluded)
    found: set[Path] = set()
    for entry in modules:
        path = root / entry
        candidates = path.rglob("*.py") if entry.endswith("/") else [path]
        for p in candidates:
            rel = p.relative_to(root).as_posix()
            if "__pycache__" in p.parts or any(rel == s or (s.endswith("/") and rel.startswith(s)) for s in skip):
                continue
            found.add(p)
    return sorted(found)


def source_hash(root: Path, modules: tuple[str, ...] = CODE_MODULES,
                excluded: Mapping[str, str] = CODE_EXCLUDED) -> str:
    """``src:`` + sha256 (16 hex) of the normalised code of ``modules`` under ``root`` (see :func:`normalised`).

    A listed file that is missing counts as such (a marker, not a crash): the test of the list catches it.
    """
    digest = hashlib.sha256()
    for path in code_files(root, modules, excluded):
        digest.update(f"\0{path.relative_to(root).as_posix()}\0".encode())
        try:
            digest.update(normalised(path.read_bytes()))
        except OSError:
            digest.update(b"\0missing\0")
    return f"src:{digest.hexdigest()[:16]}"


def normalised(source: bytes) -> bytes:
    """What a module does, without comments, docstrings or formatting: its syntax tree with docstrings removed.

    ``ast.unparse`` of the parsed module (one canonical formatting, no comments), after dropping the leading
    string statement of the module and of every class and function. Source text rather than ``ast.dump``:
    the dump names every field of every node class, and those change between Python minor versions, so a
    Python upgrade (a dependency, recorded and counted only when asked) would retrain every task through the
    code version. A file that does not parse is taken as its bytes.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return source
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree).encode()


# The packages whose versions are recorded on every version (its training run's ``identity.json``).
DEPENDENCIES = ("torch", "transformers", "peft")


def dependency_versions() -> dict[str, str]:
    """``{"python": "3.11.7", "torch": "2.13.0", ...}``: the versions this process trains with.

    Recorded on every version and shown when they differ from the latest one's; whether a change retrains
    is the retrain config's choice (``retrain_on_dependency_change``, default no): a torch or transformers
    upgrade can shift numerics a little, but rarely enough to be worth retraining every task at once.
    """
    return {"python": platform.python_version(), **{name: installed_version(name) for name in DEPENDENCIES}}


@functools.lru_cache(maxsize=None)
def installed_version(package: str) -> str:
    """The installed version of ``package``, or ``not installed`` (cached per process: it cannot change under it)."""
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


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
        return f"redflow=={version('redflow')}"
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "unknown"


def config_hash(resolved: dict[str, Any]) -> str:
    """sha256 (16 hex) of a resolved training config, independent of key order."""
    text = json.dumps(resolved, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def base_id(model: str, revision: str | None = None, cache_dir: str | Path | None = None) -> str:
    """Content identity of a base checkpoint (16 hex for local folders, ``hub:<repo>@<commit>`` for hub ids).

    A local folder is hashed over its config, weight and tokenizer files' bytes (the tokenizer decides
    which ids a text becomes: a new vocabulary is a new base); the result is cached in
    ``cache_dir`` keyed by each file's path, size and mtime, so a nightly run re-reads nothing
    unchanged. A hub id is identified by its commit (pass ``revision`` to pin it): looked up online,
    else from the local hub cache; if neither answers, by its name and revision alone.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return _folder_id(path.resolve(), Path(cache_dir) if cache_dir else None)
    return f"hub:{model}@{_hub_commit(model, revision) or revision or 'main'}"


def _folder_id(folder: Path, cache_dir: Path | None) -> str:
    files = sorted(p for p in folder.iterdir() if p.is_file() and (
        p.suffix in _WEIGHT_SUFFIXES or p.name in _CONFIG_FILES or p.name in _TOKENIZER_FILES))
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


_HASHES = {"data_hash": "data", "config_hash": "training config", "base_id": "base model", "code_version": "code"}


@dataclass(frozen=True)
class Identity:
    """The inputs of one training; equal identities train the same edit.

    ``dependencies`` (:func:`dependency_versions`) is recorded beside the four hashes but left out of
    equality (``compare=False``), so ``==`` (also what resuming a crashed attempt asks) means "would train
    the same edit" whatever was upgraded; :meth:`matches` counts them when the config asks to.
    """

    data_hash: str
    config_hash: str
    base_id: str
    code_version: str
    dependencies: dict[str, str] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, str]:
        """The four hashes (a version's ``identity.json``, attempt files, study names); dependencies travel apart."""
        return {key: getattr(self, key) for key in _HASHES}

    def digest(self) -> str:
        """A short digest of the four hashes (a version's tag ``identity_digest``): equal digests, equal identities,
        so the full identity (an artifact) is read only for a version whose digest differs."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, *,
                  dependencies: Mapping[str, str] | None = None) -> "Identity | None":
        """The identity in ``data`` (e.g. a version's tags), or None when any hash is missing.

        ``dependencies``: the versions recorded with it (a version's ``identity.json``; empty when not recorded).
        """
        if not data:
            return None
        values = {k: data.get(k) for k in _HASHES}
        if not all(isinstance(v, str) and v for v in values.values()):
            return None
        return cls(**values, dependencies=dict(dependencies or {}))  # type: ignore[arg-type]

    def dependency_changes(self, other: "Identity") -> list[tuple[str, str, str]]:
        """``[(name, other's version, this version)]`` for each dependency recorded on both sides that differs.

        A dependency ``other`` did not record (a version registered before they were recorded) is unknown,
        not changed: it neither retrains nor is listed.
        """
        return [(name, other.dependencies[name], mine) for name, mine in sorted(self.dependencies.items())
                if name in other.dependencies and other.dependencies[name] != mine]

    def matches(self, other: "Identity | None", *, dependencies: bool = False) -> bool:
        """True when a training of ``self`` would train the same edit as ``other`` (so it is ``unchanged``).

        The four hashes must be equal; with ``dependencies`` the recorded dependency versions too.
        """
        if other is None or self != other:
            return False
        return not (dependencies and self.dependency_changes(other))

    def diff(self, other: "Identity | None", *, dependencies: bool = False) -> list[str]:
        """Human-readable differences from ``other`` (empty when equal, dependencies included).

        Dependency changes are always listed; when they do not count (``dependencies`` false) they say so:
        ``torch 2.12.0 -> 2.13.0 (recorded, not retraining)``.
        """
        if other is None:
            return ["no earlier training to compare with"]
        changed = [f"{label} changed ({getattr(other, key)} -> {getattr(self, key)})"
                   for key, label in _HASHES.items() if getattr(self, key) != getattr(other, key)]
        note = "" if dependencies else " (recorded, not retraining)"
        return changed + [f"dependency {name} changed ({old} -> {new}){note}"
                          for name, old, new in self.dependency_changes(other)]


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
