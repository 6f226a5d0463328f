"""Data preparation: one spec in, three checked, seeded, cached splits out.

``prepare_data(spec)`` reads a source (a local GLUE folder, a hub dataset,
CSV/TSV/JSON/JSONL files, Alpaca or UltraFeedback instruction data, or a
generated synthetic task), checks it before anything trains on it, splits it
by the RED paper's protocol, and caches the result under a content hash, so a
scheduled flow that runs every night re-reads nothing that has not changed and
tags its MLflow runs with exactly which data they saw (``data.data_hash``).

``encode(data, tokenizer, max_length)`` (see :mod:`tasks.data.encoding`) turns the
splits into model inputs and reports truncation.

The readers live in :mod:`tasks.data.sources` and :mod:`tasks.data.glue`, their use per
source in :mod:`tasks.data.loading`, the checks in :mod:`tasks.data.checks`, the split
protocol in :mod:`tasks.data.splits`, the generated tasks in :mod:`tasks.data.synthetic`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
from datasets.utils import logging as ds_logging

from . import glue, glue_tasks, splits
from .loading import Loaded, load
from .sources import DataError
from .spec import DataSpec, TaskData
from .synthetic import SYNTHETIC_TASKS, write_synthetic

log = logging.getLogger(__name__)

PREPARE_VERSION = 2  # bump when the prepared output of the same inputs changes: invalidates caches

_EXTENSIONS = {"csv": ["csv"], "tsv": ["tsv"], "json": ["json", "jsonl"], "jsonl": ["jsonl", "json"],
               "alpaca": ["json", "jsonl"], "ultrafeedback": ["jsonl", "json"]}
_ROLE_FILES = {"train": ["train"], "dev": ["dev"], "validation": ["validation", "valid", "val"], "test": ["test"]}


# --------------------------------------------------------------------------- public entry points


def prepare_data(spec: DataSpec | dict, seed: int = 42, cache_dir: str | Path | None = None) -> TaskData:
    """Read, check, split and (with ``cache_dir``) cache the data named by ``spec``.

    With ``cache_dir`` the prepared splits are stored in ``cache_dir/<data_hash>`` and
    reused on the next call with the same inputs (same file bytes or hub revision, same
    spec, same seed): ``data.from_cache`` says which happened. Synthetic tasks without a
    ``path`` are generated under ``cache_dir/synthetic``.

    Raises :class:`DataError` for anything wrong with the data itself.
    """
    spec = spec if isinstance(spec, DataSpec) else DataSpec.model_validate(spec)
    files, identity = _inputs(spec, cache_dir)
    key = _hash(spec, seed, files, identity)
    entry = Path(cache_dir) / key if cache_dir is not None else None
    if entry is not None:
        cached = _read_cache(entry)
        if cached is not None:
            log.info("%s: reusing prepared data %s (%s)", cached.name, entry, cached.sizes())
            return cached
    data = _build(spec, seed, files, key)
    if entry is not None:
        _write_cache(entry, data, spec)
        data.cache_path, data.from_cache = entry, False
    log.info("%s: prepared %s (data_hash %s)", data.name, data.sizes(), key)
    return data


def data_hash(spec: DataSpec | dict, seed: int = 42, cache_dir: str | Path | None = None) -> str:
    """The content hash ``prepare_data`` would file its result under (reads the source files)."""
    spec = spec if isinstance(spec, DataSpec) else DataSpec.model_validate(spec)
    files, identity = _inputs(spec, cache_dir)
    return _hash(spec, seed, files, identity)


# --------------------------------------------------------------------------- inputs and hash


def _inputs(spec: DataSpec, cache_dir: str | Path | None) -> tuple[dict[str, Path], str]:
    """The files a spec reads, by role (train/dev/validation/test), or the hub identity."""
    if spec.source == "hub":
        identity = f"hub:{spec.hub_name}:{spec.hub_config}:{spec.hub_revision}"
        local = Path(spec.hub_name)  # type: ignore[arg-type]
        if local.is_dir():  # load_dataset also reads local folders: address those by content too
            files = {str(p.relative_to(local)): p for p in sorted(local.rglob("*"))
                     if p.is_file() and not any(part.startswith(".") for part in p.relative_to(local).parts)}
            return files, identity.replace(str(local), local.name)
        if spec.hub_revision is None:  # said before any download, every time: the hash sees only the name
            log.warning("%s: hub dataset %r has no pinned revision: its data hash is its name alone, so a new "
                        "upload will never be seen as changed data (no retraining) and the cache keeps the "
                        "first download. Fix: pin `hub_revision:` (a commit sha) in the data spec, and move it "
                        "to retrain on newer data", spec.name or spec.hub_name, spec.hub_name)
        return {}, identity
    if spec.source == "glue":
        task = glue_tasks.GLUE_TASKS[spec.task]  # type: ignore[index]
        return glue.glue_files(Path(spec.path), task), ""  # type: ignore[arg-type]
    if spec.source == "synthetic":
        base = spec.path if spec.path is not None else (Path(cache_dir) / "synthetic" if cache_dir else None)
        if base is None:
            raise DataError("source 'synthetic' needs `path` (a folder to write the task to) or a cache_dir.")
        task, options = str(spec.task), spec.synthetic
        folder = write_synthetic(task, base, n_train=options.n_train, n_dev=options.n_dev, seed=options.seed)
        ext = "json" if SYNTHETIC_TASKS[task].file_format == "alpaca" else "csv"
        return _local_files(folder, [ext]), ""
    return _local_files(Path(spec.path), _EXTENSIONS[spec.source]), ""  # type: ignore[arg-type]


def _local_files(path: Path, extensions: list[str]) -> dict[str, Path]:
    """A file is the train split; a folder holds train.<ext> and any of dev/validation/test.<ext>."""
    if path.is_file():
        return {"train": path}
    if not path.is_dir():
        raise DataError(f"cannot read {path}: no such file or folder. Fix: check `path` in the data spec.")
    found: dict[str, Path] = {}
    for role, stems in _ROLE_FILES.items():
        for candidate in (path / f"{stem}.{ext}" for stem in stems for ext in extensions):
            if candidate.is_file():
                found[role] = candidate
                break
    if "train" not in found:
        names = sorted(p.name for p in path.iterdir())[:20]
        raise DataError(f"{path}: no train.{extensions[0]} in this folder (found: {names}). Fix: name the "
                        f"files train/dev (or validation, test).{extensions[0]}, or point `path` at one file.")
    if "dev" in found and ({"validation", "test"} & set(found)):
        raise DataError(f"{path}: has both dev and validation/test files; keep one scheme: dev (split into "
                        "validation and test) or validation + test.")
    return found


def _hash(spec: DataSpec, seed: int, files: dict[str, Path], identity: str) -> str:
    """sha256 over the prepare version, the spec (less its path: data is addressed by content), seed, bytes."""
    digest = hashlib.sha256()
    spec_json = spec.model_dump(mode="json", exclude={"path"})
    digest.update(json.dumps({"version": PREPARE_VERSION, "spec": spec_json, "seed": seed, "hub": identity},
                             sort_keys=True).encode())
    for role in sorted(files):
        digest.update(f"\0{role}\0".encode())
        try:
            with open(files[role], "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            reason = "file not found" if isinstance(exc, FileNotFoundError) else (exc.strerror or str(exc))
            raise DataError(f"cannot read {files[role]}: {reason}. Fix: check `path` in the data spec and the "
                            f"file's permissions.") from exc
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- splitting, building


def _subseed(seed: int, stream: int) -> int:
    """Independent seeds per purpose, so carving test does not mirror carving validation."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


def _split(loaded: Loaded, spec: DataSpec, seed: int) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """Validation and test for a task: GLUE's dev protocol for GLUE, content-hash splits for everything else.

    Content-hash splits (:func:`tasks.data.splits.hash_split`) keep every row in its split when the
    source grows, so a nightly retrain never trains on last night's test rows.
    """
    frames = dict(loaded.frames)
    origin = {role: o.name for role, o in loaded.origins.items()}
    notes = {"train": origin["train"]}
    columns = list(loaded.text_columns)
    glue_dev = loaded.task in glue_tasks.GLUE_TASKS and spec.source in ("glue", "hub")
    if "dev" in frames:
        dev = frames.pop("dev")
        if glue_dev:  # the paper's protocol on GLUE's fixed dev files
            frames["validation"], frames["test"] = splits.split_dev(dev, seed)
            how = "seeded split of dev"
        else:
            halves = splits.hash_split(dev, columns, {"validation": 0.5}, _subseed(seed, 6), rest="test")
            frames["validation"], frames["test"] = halves["validation"], halves["test"]
            how = "half of dev by content hash"
        notes["validation"] = f"{origin['dev']} ({how}: {len(frames['validation'])} rows)"
        notes["test"] = f"{origin['dev']} ({how}: {len(frames['test'])} rows)"
    carve: dict[str, float] = {}
    if "test" not in frames:
        carve["test"] = spec.test_size
        notes["test"] = f"{origin['train']} (content hash: test_size={spec.test_size})"
    elif "test" not in notes:
        notes["test"] = origin["test"]
    if "validation" not in frames:
        carve["validation"] = spec.validation_size
        notes["validation"] = f"{origin['train']} (content hash: validation_size={spec.validation_size})"
    elif "validation" not in notes:
        notes["validation"] = origin["validation"]
    if carve:
        if sum(carve.values()) >= 1:
            raise DataError(f"{spec.display_name()}: test_size + validation_size = {sum(carve.values())} leaves no "
                            "training rows. Fix: make their sum less than 1.")
        frames.update(splits.hash_split(frames["train"], columns, carve, _subseed(seed, 1)))
    frames["train"] = splits.subsample(frames["train"], spec.max_train_samples, _subseed(seed, 3))
    for stream, role in ((4, "validation"), (5, "test")):
        frames[role] = splits.stable_subsample(frames[role], spec.max_eval_samples, columns, _subseed(seed, stream))
    for role in ("train", "validation", "test"):
        if len(frames[role]) == 0:
            raise DataError(f"{spec.display_name()}: the {role} split is empty (from {notes[role]}). Fix: provide "
                            f"more rows, or a {role} file, or adjust validation_size/test_size.")
    return frames, notes


def _build(spec: DataSpec, seed: int, files: dict[str, Path], key: str) -> TaskData:
    loaded = load(spec, files)
    frames, notes = _split(loaded, spec, seed)
    datasets_ = {role: _to_dataset(frames[role], loaded) for role in ("train", "validation", "test")}
    return TaskData(name=spec.display_name(), task_type=loaded.task_type, text_columns=loaded.text_columns,
                    label_list=loaded.label_list, metric=loaded.metric, data_hash=key,
                    label_column=loaded.label_column, task=loaded.task, source=spec.source, seed=seed,
                    origin=notes, **datasets_)


def _to_dataset(frame: pd.DataFrame, loaded: Loaded):
    features: dict[str, Any] = {c: datasets.Value("string") for c in frame.columns if c != "label"}
    if "label" in frame.columns:
        if loaded.label_list is not None:
            features["label"] = datasets.ClassLabel(names=list(loaded.label_list))
        else:
            features["label"] = datasets.Value("float64")
    return datasets.Dataset.from_pandas(frame, features=datasets.Features(features), preserve_index=False)


# --------------------------------------------------------------------------- cache


def _write_cache(entry: Path, data: TaskData, spec: DataSpec) -> None:
    """Write splits + meta.json to a temporary folder, then rename it into place (atomic)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    bars_were_on = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()  # one "Saving the dataset" bar per split is noise in flow logs
    try:
        datasets.DatasetDict(data.splits()).save_to_disk(str(tmp / "splits"))
        meta = data.describe() | {"spec": spec.model_dump(mode="json"), "prepare_version": PREPARE_VERSION}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(tmp, entry)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (entry / "meta.json").exists():  # not merely a concurrent job that finished first
            log.warning("could not cache prepared data at %s: %s", entry, exc)
    finally:
        if bars_were_on:
            ds_logging.enable_progress_bar()


def _read_cache(entry: Path) -> TaskData | None:
    meta_path = entry / "meta.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        loaded = datasets.load_from_disk(str(entry / "splits"))
    except Exception as exc:  # a damaged entry is rebuilt, not fatal
        log.warning("ignoring damaged data cache %s: %s", entry, exc)
        shutil.rmtree(entry, ignore_errors=True)
        return None
    return TaskData(name=meta["name"], task_type=meta["task_type"], train=loaded["train"],
                    validation=loaded["validation"], test=loaded["test"], text_columns=tuple(meta["text_columns"]),
                    label_list=meta["label_list"], metric=meta["metric"], data_hash=meta["data_hash"],
                    label_column=meta["label_column"], task=meta["task"], source=meta["source"], seed=meta["seed"],
                    cache_path=entry, from_cache=True, origin=meta.get("origin", {}))
