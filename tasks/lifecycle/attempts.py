"""Training attempts: each run of a task trains in its own folder; only a crashed twin is ever resumed.

Layout, under a task's folder (``runs/<config>/<task>/``)::

    attempts/<UTC time>-<run key>/attempt.json     identity, status, who ran it
                                  attempt.lock     held while training (a live attempt is never adopted)
                                  checkpoints/     Trainer checkpoints (trainable tensors only)
                                  <task>.safetensors, result.json ...   what the training produced

Rules (the nightly job's correctness depends on them):

1. A new run trains in a new folder. It never reads another run's checkpoints, unless
2. that run *crashed* (status ``training`` with its lock free, or a failure marked transient),
   trained exactly the same inputs (equal :class:`tasks.lifecycle.identity.Identity`), and left a
   complete checkpoint. Then the new run resumes it in place and says so.
3. A finished attempt (``trained``) is never resumed; a deterministic failure (NaN, divergence)
   is not either: resuming would repeat it. A finished attempt whose registration never happened
   is registered by the next run of the same inputs instead of being trained again
   (:func:`finished_unregistered`); for a co-training, task by task (the attempt records each
   member's own identity in ``members`` and each registration in ``registered``).
   Registering takes the attempt's ``register.lock`` and records the version, so two runs that
   found the same finished training register it once (:func:`registered_as`).
4. A retry inside the same run (same run key) picks up its own folder.
5. Incomplete checkpoints (a crash while writing one) are skipped with a warning.
6. While another live process trains the same inputs, a second run does not train them again
   (:class:`AttemptBusy`): two schedules or a manual run beside the nightly one never register twins.
7. :func:`prune` never removes an attempt a later run could use (:func:`resumable`), unless a newer
   attempt of the same inputs was registered.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from safetensors import safe_open

from red.utils import slug

from .identity import Identity

log = logging.getLogger(__name__)

ATTEMPTS = "attempts"
ATTEMPT_FILE = "attempt.json"
LOCK_FILE = "attempt.lock"
CHECKPOINTS = "checkpoints"

TRAINING, TRAINED, FAILED, REGISTERED = "training", "trained", "failed", "registered"


class AttemptBusy(RuntimeError):
    """Another live process is training exactly these inputs right now: a second training would only duplicate it."""


@dataclass
class Attempt:
    """One training of one task, holding its folder's lock until :meth:`close`."""

    folder: Path
    identity: Identity
    run_key: str
    resume_from: str | None = None          # a complete checkpoint folder to resume from
    notes: list[str] = field(default_factory=list)  # what was decided about resuming, and why
    _lock: FileLock | None = field(default=None, repr=False)

    @property
    def checkpoints(self) -> Path:
        return self.folder / CHECKPOINTS

    def mark(self, status: str, **extra: Any) -> None:
        """Record the attempt's status (``training``, ``trained``, ``failed``) in attempt.json (atomic)."""
        state = read_state(self.folder) or {}
        state.update(status=status, updated=time.time(), **extra)
        _write_json(self.folder / ATTEMPT_FILE, state)

    def mark_bad_checkpoint(self, checkpoint: str | Path, error: BaseException) -> None:
        """Record that resuming from ``checkpoint`` failed: the next adoption skips it (and a resume can never
        fail night after night on the same file)."""
        state = read_state(self.folder) or {}
        bad = list(state.get("bad_checkpoints") or []) + [Path(checkpoint).name]
        self.mark(state.get("status", TRAINING), bad_checkpoints=sorted(set(bad)),
                  bad_checkpoint_error=f"{type(error).__name__}: {error}"[:1000])
        log.warning("resuming from %s failed (%s); it will be skipped", checkpoint, error)

    def finish(self, *, keep_checkpoints: bool = False) -> None:
        """Mark it trained and drop its checkpoints (the result is saved beside them); release the lock."""
        self.mark(TRAINED)
        if not keep_checkpoints:
            shutil.rmtree(self.checkpoints, ignore_errors=True)
        self.close()

    def fail(self, error: BaseException, *, transient: bool) -> None:
        self.mark(FAILED, error=f"{type(error).__name__}: {error}"[:2000], transient=bool(transient))
        self.close()

    def close(self) -> None:
        if self._lock is not None and self._lock.is_locked:
            self._lock.release()


_warned: set[str] = set()


def read_state(folder: Path) -> dict[str, Any] | None:
    """The attempt's ``attempt.json``, or None when there is none or it is unreadable (said once per file: an
    attempt whose record is corrupt is neither resumed nor registered, and its folder is left for a person)."""
    path = folder / ATTEMPT_FILE
    try:
        state = json.loads(path.read_text())
        if isinstance(state, dict):
            return state
        problem = "it does not hold a JSON object"
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if str(path) not in _warned:
        _warned.add(str(path))
        log.warning("attempt record %s is unreadable (%s): that attempt is skipped (not resumed, not registered) and "
                    "its inputs train again. Fix: restore the file, or delete the folder %s if it is not needed",
                    path, problem, folder)
    return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def complete_checkpoints(checkpoints: Path) -> list[Path]:
    """Checkpoint folders whose every file was written (newest last); warns about the others.

    The Trainer writes the model tensors, optimizer, scheduler and RNG state, and
    ``trainer_state.json`` last; a checkpoint is complete when that state parses and the
    tensors file it needs is there.
    """
    if not checkpoints.is_dir():
        return []
    found = []
    for folder in checkpoints.glob("checkpoint-*"):
        try:
            step = int(folder.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        problem = _checkpoint_problem(folder)
        if problem:
            log.warning("skipping incomplete checkpoint %s (%s)", folder, problem)
            continue
        found.append((step, folder))
    return [f for _, f in sorted(found)]


def _checkpoint_problem(folder: Path) -> str | None:
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
    except FileNotFoundError:
        return "no trainer_state.json"
    except (OSError, ValueError) as exc:
        return f"unreadable trainer_state.json: {exc}"
    if not isinstance(state, dict) or "global_step" not in state:
        return "trainer_state.json has no global_step"
    tensors = folder / "trainable.safetensors"
    if not tensors.is_file():
        return "no trainable.safetensors"
    try:
        with safe_open(str(tensors), framework="pt") as handle:
            list(handle.keys())
    except Exception as exc:  # noqa: BLE001 - any unreadable file is incomplete
        return f"unreadable trainable.safetensors: {exc}"
    if (folder / "optimizer.pt").exists() != (folder / "scheduler.pt").exists():
        return "optimizer.pt and scheduler.pt are not both there"
    for archive in sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth")):
        problem = _archive_problem(archive)
        if problem:
            return f"{archive.name}: {problem}"
    return None


def _archive_problem(path: Path) -> str | None:
    """torch.save writes a zip archive: check that every member is there and intact (CRC), without unpickling."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return f"not a readable archive ({exc})"
    return f"member {bad} is corrupt" if bad else None


def _try_lock(folder: Path) -> FileLock | None:
    lock = FileLock(str(folder / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    return lock


def open_attempt(task_dir: str | Path, identity: Identity, run_key: str, *, resume: bool = True,
                 members: dict[str, Identity] | None = None) -> Attempt:
    """The folder this run trains in, and the checkpoint to resume from if any (see the module's rules).

    ``members``: for a co-training, each task's own identity (``identity`` is then the group's); recorded so
    that a task the group trained can be registered by a later run of that task's inputs alone
    (:func:`finished_unregistered`).
    """
    root = Path(task_dir) / ATTEMPTS
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".open.lock")):  # two runs starting at once: one scans and locks, then the other
        attempt = _open(root, identity, run_key, resume)
    if members is not None:
        attempt.mark(read_state(attempt.folder).get("status", TRAINING),
                     members={name: m.to_dict() for name, m in members.items()})
    return attempt


def _open(root: Path, identity: Identity, run_key: str, resume: bool) -> Attempt:
    notes: list[str] = []
    candidates = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True)
    own = next((p for p in candidates if (read_state(p) or {}).get("run_key") == run_key), None)
    if own is not None:  # a retry within the same run
        picked = _adopt(own, identity, notes, own_run=True) if resume else None
        if picked is not None:
            return picked
    if resume:
        for folder in candidates:
            if folder == own:
                continue
            picked = _adopt(folder, identity, notes, own_run=False)
            if picked is not None:
                picked.run_key = run_key
                picked.mark(TRAINING, resumed_by=run_key, pid=os.getpid(), host=socket.gethostname())
                return picked
    now = time.time()
    stamp = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}.{int(now * 1000) % 1000:03d}Z"
    key = slug(run_key, keep="A-Za-z0-9", fill="", strip="", limit=12)
    folder = root / f"{stamp}-{key}"
    suffix = 1
    while folder.exists():
        folder = folder.with_name(f"{folder.name.split('~')[0]}~{suffix}")
        suffix += 1
    folder.mkdir(parents=True)
    lock = _try_lock(folder)
    attempt = Attempt(folder=folder, identity=identity, run_key=run_key, notes=notes, _lock=lock)
    _write_json(folder / ATTEMPT_FILE, {"status": TRAINING, "identity": identity.to_dict(), "run_key": run_key,
                                        "created": time.time(), "pid": os.getpid(), "host": socket.gethostname()})
    return attempt


def _adopt(folder: Path, identity: Identity, notes: list[str], *, own_run: bool) -> Attempt | None:
    """``folder`` as the attempt to continue, if the rules allow; else None (with a note why not)."""
    state = read_state(folder)
    if state is None:
        return None
    status = state.get("status")
    name = folder.name
    if status in (TRAINED, REGISTERED):
        if own_run:
            notes.append(f"attempt {name} already finished: starting a new one")
        return None
    if status == FAILED and not state.get("transient"):
        return None  # NaN, divergence, bad data: resuming would repeat it
    theirs = Identity.from_dict(state.get("identity"))
    if theirs != identity:
        if status == TRAINING or own_run:
            probe = _try_lock(folder)
            if probe is not None:  # not a live run: a crash, worth saying why it is not resumed
                probe.release()
                why = "; ".join(identity.diff(theirs)) or "its identity is unreadable"
                notes.append(f"not resuming crashed attempt {name}: {why}")
        return None
    lock = _try_lock(folder)
    if lock is None:
        if status == TRAINING:  # a twin run, or this very flow run executed twice at once (a scheduler's double start)
            raise AttemptBusy(f"attempt {name} is training the same inputs in another live process "
                              f"(pid {state.get('pid')} on {state.get('host')}); this run leaves it to finish")
        notes.append(f"attempt {name} is being trained by another live process: not touching it")
        return None
    bad = set(state.get("bad_checkpoints") or [])
    checkpoints = [c for c in complete_checkpoints(folder / CHECKPOINTS) if c.name not in bad]
    if bad:
        notes.append(f"attempt {name}: skipping {sorted(bad)}, from which resuming failed before")
    attempt = Attempt(folder=folder, identity=identity, run_key=state.get("run_key", ""), _lock=lock, notes=notes)
    if checkpoints:
        attempt.resume_from = str(checkpoints[-1])
        notes.append(f"resuming crashed attempt {name} from {checkpoints[-1].name} (same data, config, base and code)")
    else:
        notes.append(f"attempt {name} crashed before its first complete checkpoint: training it from the start")
        shutil.rmtree(folder / CHECKPOINTS, ignore_errors=True)
    return attempt


def _results(folder: Path, state: dict[str, Any]) -> dict[str, Path]:
    """The folders holding a result.json that ``folder``'s attempt produced, by task (``""``: a single task's)."""
    if state.get("members"):
        return {name: folder / "tasks" / name for name in state["members"]
                if (folder / "tasks" / name / "result.json").is_file()}
    return {"": folder} if (folder / "result.json").is_file() else {}


REUSED = "reusing finished attempt"


def reuse_note(name: str) -> str:
    """The note of a result taken from finished attempt ``name`` instead of training (:func:`finished_unregistered`):
    what the log and the summary say in place of "trained N optimizer steps"."""
    return f"{REUSED} {name}: it trained the same inputs and its run stopped before registering it"


def reused_attempt(notes: list[str]) -> str | None:
    """The :func:`reuse_note` among a result's ``notes``: this run trained nothing and registers that result."""
    return next((n for n in notes if n.startswith(REUSED)), None)


def finished_unregistered(task_dir: str | Path, identity: Identity, task: str | None = None) -> Path | None:
    """The folder of the newest result that trained exactly these inputs and was never registered (its run
    crashed or failed between training and registration): registering it beats training the same thing again.

    ``task_dir`` holds single trainings (``task`` None) or co-trainings (``task`` names the member, whose own
    identity the group attempt recorded in ``members``). Returns the folder holding ``result.json``.
    """
    root = Path(task_dir) / ATTEMPTS
    if not root.is_dir():
        return None
    for folder in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True):
        state = read_state(folder) or {}
        if state.get("status") != TRAINED:
            continue
        key = task if state.get("members") else ""
        if key is None or key in (state.get("registered") or {}):
            continue
        theirs = (state["members"].get(key) if key else state.get("identity"))
        result = _results(folder, state).get(key)
        if result is not None and Identity.from_dict(theirs) == identity:
            return result
    return None


def attempt_folder(path: str | Path) -> Path | None:
    """The attempt folder holding ``path`` (a training's output folder, or a co-trained task's under it)."""
    path = Path(path)
    for folder in (path, *path.parents[:3]):
        if (folder / ATTEMPT_FILE).is_file():
            return folder
    return None


def registration_lock(output_dir: str | Path) -> FileLock:
    """A lock on registering what ``output_dir`` trained: two runs that both found the same finished training
    (twins) register it once; the second finds it registered (:func:`registered_as`)."""
    folder = attempt_folder(output_dir) or Path(output_dir)
    return FileLock(str(folder / "register.lock"))


def registered_as(output_dir: str | Path, task: str) -> tuple[str, int] | None:
    """``(model_name, version)`` that the training in ``output_dir`` was registered as, if it was."""
    folder = attempt_folder(output_dir)
    state = read_state(folder) if folder is not None else None
    if not state:
        return None
    entry = (state.get("registered") or {}).get(task if state.get("members") else "")
    if entry:
        return entry["model_name"], int(entry["version"])
    if state.get("status") == REGISTERED and not state.get("members") and state.get("version") is not None:
        return state["model_name"], int(state["version"])
    return None


def mark_registered(folder: str | Path, model_name: str, version: int, task: str = "") -> None:
    """Record that the training in ``folder`` (for a co-training: task ``task`` of it) became ``model_name``
    version ``version``. The attempt's status becomes ``registered`` once every result it produced is."""
    attempt = attempt_folder(folder)
    state = read_state(attempt) if attempt is not None else None
    if state is None:
        return
    key = task if state.get("members") else ""
    registered = dict(state.get("registered") or {})
    registered[key] = {"model_name": model_name, "version": int(version)}
    state.update(registered=registered, updated=time.time())
    if set(_results(attempt, state)) <= set(registered):
        state["status"] = REGISTERED
        if not key:
            state.update(model_name=model_name, version=int(version))
    _write_json(attempt / ATTEMPT_FILE, state)


def resumable(folder: Path, state: dict[str, Any]) -> bool:
    """Whether a later run could still use this attempt: resume it (a crash, a transient failure) or register
    what it trained (finished, with a result not yet registered)."""
    status = state.get("status")
    if status == TRAINED:
        return bool(set(_results(folder, state)) - set(state.get("registered") or {}))
    return status == TRAINING or (status == FAILED and bool(state.get("transient")))


def prune(task_dir: str | Path, keep: int = 10) -> list[Path]:
    """Delete all but the newest ``keep`` registered or deterministically failed attempts.

    Never one a later run could use (:func:`resumable`: crashed, transiently failed, or trained but not yet
    registered), unless a newer attempt of the same inputs was registered (it is superseded), and never one
    whose lock a live process holds.
    """
    root = Path(task_dir) / ATTEMPTS
    if not root.is_dir():
        return []
    folders = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True)
    states = {p: read_state(p) or {} for p in folders}
    registered = {json.dumps(s.get("identity"), sort_keys=True) for s in states.values()
                  if s.get("status") == REGISTERED}
    done = [p for p in folders if states[p].get("status") in (TRAINED, FAILED, REGISTERED)
            and (not resumable(p, states[p]) or json.dumps(states[p].get("identity"), sort_keys=True) in registered)]
    removed = []
    for folder in done[keep:]:
        lock = _try_lock(folder)
        if lock is None:
            continue
        try:
            shutil.rmtree(folder)
            removed.append(folder)
        finally:
            lock.release()
    return removed
