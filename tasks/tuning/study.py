"""Running a hyperparameter search: an Optuna study per task and identity, trials, pruning, resume.

- :func:`open_study`: the study in Optuna's RDB storage (SQLite next to the MLflow store), one per
  task and training identity. A study left unfinished by a crash is *resumed*: its finished trials
  stay, trials that were running when the process died are marked failed and asked again (their
  training resumes from its last checkpoint through :mod:`tasks.lifecycle.attempts`).
- :func:`run_study`: Optuna's ask-and-tell loop. Trials run wherever the caller's ``submit`` sends
  them (Prefect's task runner in a retrain: threads, Dask or Ray; a process pool in the benchmark);
  at most ``parallel`` at once, none started after the ``timeout``.
- :func:`run_trial`: one trial, in whichever process runs it: trains the trial's config and reports
  each epoch's validation score to the study, where the pruner (median, successive halving) decides
  whether to stop it. The trial object is rebuilt from the storage in that process, so pruning
  works across processes and machines that share the storage.

Selection uses the validation split only (the value of a trial is its best epoch's validation
score); the best trial's edit is what the caller evaluates on test, registers and gates. The search
space and budgets are :class:`tasks.tuning.space.TuneConfig`. No Prefect, no MLflow here.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from filelock import FileLock, Timeout
from optuna.trial import Trial, TrialState
from transformers import TrainerCallback

from red.utils import slug
from tasks.lifecycle.attempts import TRAINED, AttemptBusy, open_attempt, read_state
from tasks.training import TrainConfig, TrainingDiverged, TrainingError, TrainResult, train, training_identity
from tasks.training.finish import epoch_of

from .space import TuneConfig, in_space
from .trials import trial_config

log = logging.getLogger(__name__)

COMPLETE, PRUNED, FAIL = "complete", "pruned", "fail"
FINISHED_ATTR = "redflow.finished"   # study user attribute: the study ran to its end; never resumed


def storage_url(root: str | Path) -> str:
    """``sqlite:///<root>/optuna.db``: Optuna's storage next to the MLflow store of the same runs folder."""
    path = Path(root).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'optuna.db'}"


def make_storage(url: str):
    """An RDB storage; SQLite waits for a writer rather than failing while trials report at once."""
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def study_name(prefix: str, identity: dict[str, Any]) -> str:
    """``<prefix>.<12 hex of the identity>``: one study per task and training identity."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{prefix}.{digest}"


@dataclass(frozen=True)
class StudyRef:
    """What a trial needs to find its study from any process: storage, name and the pruner's settings."""

    storage_url: str
    name: str
    tune: TuneConfig
    folder: str                     # trials train under <folder>/attempts/
    direction: str                  # "maximize" or "minimize"
    metric: str                     # the validation metric the study optimises

    def trial(self, number: int):
        """The live :class:`optuna.trial.Trial` ``number`` (for ``report``/``should_prune`` in the trial's process),
        in a study loaded with the pruner (the sampler is never asked: the trial's values are set)."""
        storage = make_storage(self.storage_url)
        study = optuna.load_study(study_name=self.name, storage=storage, sampler=optuna.samplers.RandomSampler(),
                                  pruner=self.tune.make_pruner())
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(self.name),
                                                                   number)
        return optuna.trial.Trial(study, trial_id)


@dataclass
class OpenStudy:
    """A study this process owns (its file lock is held until :meth:`close`)."""

    study: Any
    ref: StudyRef
    space: dict[str, Any]
    resumed: bool
    notes: list[str] = field(default_factory=list)
    _lock: Any = None
    reused: bool = False            # a finished study whose best trial was never registered: nothing left to run

    def counted(self) -> int:
        """Trials that used up budget: finished, pruned, and failed ones other than those lost to a crash."""
        return sum(1 for t in self.study.get_trials(deepcopy=False) if _counts(t))

    def remaining(self, running: int = 0) -> int:
        """Trials still to ask; none in a :attr:`reused` study (it ran to its end, a timeout included)."""
        return 0 if self.reused else max(0, self.ref.tune.trials - self.counted() - running)

    def finish(self) -> None:
        """Mark the study complete and release it: a later run of the same identity reuses its best trial until
        that trial is registered, then starts a new study (see :func:`open_study`)."""
        self.study.set_user_attr(FINISHED_ATTR, True)
        self.close()

    def close(self) -> None:
        if self._lock is not None and self._lock.is_locked:
            self._lock.release()


def _counts(trial) -> bool:
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and not trial.user_attrs.get("crashed")


def open_study(url: str, name: str, tune: TuneConfig, space: dict[str, Any], *, direction: str, metric: str,
               folder: str | Path, reuse_finished: bool = False) -> OpenStudy:
    """Resume the unfinished study ``name`` of this identity, or create it.

    A study is owned by one process at a time (a file lock under ``folder``): one held by a live
    process raises ``tasks.lifecycle.attempts.AttemptBusy`` (the run reports the task ``busy``, as for a training
    of the same inputs). A study is in one of three states:

    - *running* (not finished; a crash left it so): resumed. Trials found ``running`` belonged to a
      process that died: each is marked failed (``crashed``, not counted against the budget) and asked
      again with the same values first.
    - *finished, best trial not registered* (the run died between the study's end and registration):
      reused (:attr:`OpenStudy.reused`): no trial runs again, its best trial's result goes on to
      evaluate/register/gate. Searching again would redo the whole budget for the same answer.
    - *finished and registered* (its best trial's attempt is marked registered, or its result is gone):
      left alone, and the next name (``name#2``...) is used: the run was forced or the registry lost the
      version, and either way asks for a new search. With ``reuse_finished`` (the benchmark, which
      registers nothing) any finished study is reopened as it is.

    A study whose whole budget failed (no trial finished: resuming would only fail again) is left alone
    too, and the next name used.
    """
    storage = make_storage(url)
    existing = set(optuna.get_all_study_names(storage))
    folder = Path(folder)
    notes: list[str] = []
    k = 1
    while True:
        current = name if k == 1 else f"{name}#{k}"
        k += 1
        study_dir = folder / slug(current, default="study")
        study_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(study_dir / "study.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:  # the same identity searched by a live process: a twin run, as in tasks.lifecycle.attempts
            raise AttemptBusy(f"study {current} of the same inputs is being run by another live process; this run "
                              "leaves it to finish (it registers the result)") from None
        ref = StudyRef(url, current, tune, str(study_dir), direction, metric)
        if current not in existing:
            study = optuna.create_study(study_name=current, storage=storage, direction=direction,
                                        sampler=tune.make_sampler(), pruner=tune.make_pruner())
            study.set_user_attr("search_space", {k: repr(v) for k, v in space.items()})
            return OpenStudy(study, ref, space, resumed=False, notes=notes, _lock=lock)
        # the sampler's stream continues from the trials already in the study (never trial 0's values again)
        asked = len(storage.get_all_trials(storage.get_study_id_from_name(current), deepcopy=False))
        study = optuna.load_study(study_name=current, storage=storage, sampler=tune.make_sampler(asked),
                                  pruner=tune.make_pruner())
        reused = False
        if study.user_attrs.get(FINISHED_ATTR) and not reuse_finished:
            best = _unregistered_best(study)
            if best is None:
                lock.release()
                continue
            reused = True
            notes.append(f"reusing finished study {current}: its best trial {best.number} ({_fmt(best.params)}) "
                         "was never registered (the run stopped after the search); no trial runs again")
        opened = OpenStudy(study, ref, space, resumed=True, notes=notes, _lock=lock, reused=reused)
        _recover_crashed(opened, storage)
        done = opened.counted()
        if not reuse_finished and done >= tune.trials and not _any_success(study):
            # every trial of its budget failed (diverged, out of memory, disk full): resuming would
            # run nothing and fail again; a new study tries again (a deterministic failure fails again)
            notes.append(f"study {current} used its {tune.trials} trials without one that finished: "
                         "starting a new study")
            lock.release()
            continue
        if not reused:
            notes.append(f"resuming study {current}: {done} of {tune.trials} trials already done"
                         + (" (finished)" if study.user_attrs.get(FINISHED_ATTR) else ""))
        return opened


def _unregistered_best(study):
    """The best trial of finished ``study`` when its training can still be registered: its attempt finished
    training (``trained``, not ``registered``: register_step marks the attempt it registers) and its result
    and edit are still on disk. None otherwise."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    best = study.best_trial
    path = Path(best.user_attrs.get("result") or "")
    if not path.is_file() or (read_state(path.parent) or {}).get("status") != TRAINED:
        return None
    try:
        edit = TrainResult.load(path).edit_path
    except Exception:  # noqa: BLE001 - an unreadable result cannot be registered: search again
        return None
    return best if edit and Path(edit).exists() else None


def _any_success(study) -> bool:
    """A trial of ``study`` that ended with a value (complete, or pruned after reporting one)."""
    return any(t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               for t in study.get_trials(deepcopy=False))


def _recover_crashed(opened: OpenStudy, storage) -> None:
    study = opened.study
    study_id = storage.get_study_id_from_name(study.study_name)
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial = Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number))
        trial.set_user_attr("crashed", True)
        study.tell(frozen.number, state=TrialState.FAIL)
        study.enqueue_trial(dict(frozen.params), user_attrs={"retry_of": frozen.number})
        opened.notes.append(f"trial {frozen.number} was running when its process died: asking it again "
                            f"({_fmt(frozen.params)})")


def enqueue_first(opened: OpenStudy, candidates: Iterable[tuple[dict[str, Any], str]]) -> list[str]:
    """Enqueue each ``(values, why)`` that lies in the search space, once per study; notes on what was done."""
    notes: list[str] = []
    if opened.study.user_attrs.get("redflow.enqueued"):
        return notes  # a resumed study enqueued them when it was created
    queued: list[dict[str, Any]] = []
    for values, why in candidates:
        picked = in_space(values, opened.space)
        if picked is None:
            if values:
                notes.append(f"not trying {why} first ({_fmt(values)}): outside the search space")
            continue
        if picked in queued:
            continue
        if len(queued) >= opened.remaining():
            notes.append(f"not trying {why} ({_fmt(picked)}): the trial budget is used up by the ones before")
            continue
        opened.study.enqueue_trial(picked, user_attrs={"source": why})
        queued.append(picked)
        notes.append(f"first trials include {why} ({_fmt(picked)})")
    opened.study.set_user_attr("redflow.enqueued", True)
    return notes


def _fmt(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


# ---- one trial ---------------------------------------------------------------------------------
@dataclass
class TrialOutcome:
    """What one trial produced (returned by the process that ran it)."""

    number: int
    params: dict[str, Any]
    state: str                                   # complete, pruned or fail
    value: float | None = None                   # best epoch's validation score
    intermediate: dict[int, float] = field(default_factory=dict)   # epoch -> validation score reported
    result: "TrainResult | None" = None
    error: str | None = None
    diverged: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def outcome_of(frozen) -> TrialOutcome:
    """The outcome of a trial told earlier, rebuilt from the storage (and its result file, if it is still there)."""
    path = frozen.user_attrs.get("result")
    result = TrainResult.load(path) if path and Path(path).is_file() else None
    state = {"COMPLETE": COMPLETE, "PRUNED": PRUNED}.get(frozen.state.name, FAIL)
    return TrialOutcome(frozen.number, dict(frozen.params), state, value=frozen.value if frozen.values else None,
                        intermediate={int(k): float(v) for k, v in frozen.intermediate_values.items()},
                        result=result, error=frozen.user_attrs.get("error"),
                        seconds=float(frozen.user_attrs.get("seconds") or 0.0))


class PruningCallback(TrainerCallback):
    """A Trainer callback that reports each epoch's validation ``metric`` to ``trial`` and stops training when
    the study's pruner says so (``pruned`` is then True). Stand-in for optuna-integration's callback, which
    needs the package and an in-process study."""

    def __init__(self, trial, metric: str):
        self.trial = trial
        self.metric = metric
        self.pruned = False
        self.reported: dict[int, float] = {}
        self._training = True

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(f"eval_{self.metric}")
        if not self._training or value is None or not math.isfinite(float(value)):
            return
        step = epoch_of({"epoch": float(state.epoch or 0)})  # the epoch numbering of the result's table
        if step in self.reported:
            return
        self.reported[step] = float(value)
        self.trial.report(float(value), step)
        if state.max_steps and state.global_step >= state.max_steps:
            return  # the last epoch: the trial is finished, there is nothing left to save by stopping it
        if self.trial.should_prune():
            self.pruned = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        self._training = False  # the final validation and test evaluations are not epochs


def run_trial(data, config: TrainConfig, ref: StudyRef, number: int, params: dict[str, Any], *, run_key: str,
              cache_dir: str | Path | None = None, callbacks: list | None = None) -> TrialOutcome:
    """Train trial ``number`` of study ``ref`` with ``params`` in its own attempt folder; report and prune.

    Training errors (NaN loss, divergence) end the trial as ``fail`` with the message (a high learning
    rate diverging is an ordinary outcome of a search); other exceptions propagate. A crashed trial
    asked again with the same values resumes from its last complete checkpoint.
    """
    started = time.time()
    cfg = trial_config(config, params)
    identity = training_identity(data, cfg, cache_dir=cache_dir)
    attempt = open_attempt(Path(ref.folder), identity, f"{run_key}-t{number}", resume=cfg.resume)
    trial = ref.trial(number)
    pruning = PruningCallback(trial, ref.metric)
    trial.set_user_attr("output_dir", str(attempt.folder))
    try:
        result = train(data, cfg, attempt.folder, resume_from=attempt.resume_from, identity=identity,
                       callbacks=[pruning, *(callbacks or [])])
    except TrainingError as exc:
        attempt.fail(exc, transient=False)
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:1000])
        return TrialOutcome(number, dict(params), FAIL, error=f"{type(exc).__name__}: {exc}",
                            diverged=isinstance(exc, TrainingDiverged), intermediate=dict(pruning.reported),
                            seconds=round(time.time() - started, 2), notes=list(attempt.notes))
    except BaseException as exc:
        if isinstance(exc, Exception):
            attempt.fail(exc, transient=True)
        else:
            attempt.close()
        raise
    result.notes = list(attempt.notes)
    result.save(attempt.folder / "result.json")
    attempt.finish()
    value = result.validation.get(ref.metric)
    trial.set_user_attr("result", str(attempt.folder / "result.json"))
    trial.set_user_attr("seconds", round(time.time() - started, 2))
    state = PRUNED if pruning.pruned else COMPLETE
    if value is None or not math.isfinite(value):
        state = FAIL
    return TrialOutcome(number, dict(params), state, value=value, intermediate=dict(pruning.reported),
                        result=result, seconds=round(time.time() - started, 2), notes=list(attempt.notes))


# ---- the ask-and-tell loop ---------------------------------------------------------------------------
def run_study(opened: OpenStudy, *, submit: Callable[[int, dict[str, Any]], Any],
              as_completed: Callable[[list], Iterator], outcome: Callable[[Any], "TrialOutcome | BaseException"],
              parallel: int = 1, on_told: Callable[[int, "TrialOutcome | BaseException"], None] | None = None
              ) -> None:
    """Ask trials, ``submit(number, params)`` them (at most ``parallel`` at once), tell each result back.

    ``as_completed`` yields the submitted futures as they finish (``prefect.futures.as_completed``,
    ``concurrent.futures.as_completed``); ``outcome(future)`` is the trial's :class:`TrialOutcome` or the
    exception that ended it. Stops asking when the budget (``trials``, counting what a resumed study
    already did) or ``timeout`` is used up; returns when every submitted trial has been told.
    """
    study, tune = opened.study, opened.ref.tune
    deadline = time.monotonic() + tune.timeout if tune.timeout else math.inf
    pending: dict[Any, int] = {}
    while True:
        while len(pending) < max(1, parallel) and opened.remaining(len(pending)) > 0 and time.monotonic() < deadline:
            trial = study.ask(opened.space)
            pending[submit(trial.number, dict(trial.params))] = trial.number
        if not pending:
            return
        future = next(iter(as_completed(list(pending))))
        number = pending.pop(future)
        result = outcome(future)
        if isinstance(result, BaseException):
            log.warning("trial %d failed: %s: %s", number, type(result).__name__, result)
            study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        elif result.state == COMPLETE:
            study.tell(number, result.value, skip_if_finished=True)
        elif result.state == PRUNED:
            study.tell(number, state=TrialState.PRUNED, skip_if_finished=True)
        else:
            study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        if on_told is not None:
            on_told(number, result)


def run_study_in_threads(opened: OpenStudy, trial: Callable[[int, dict[str, Any]], "TrialOutcome"], *,
                         parallel: int = 1,
                         on_told: Callable[[int, "TrialOutcome | BaseException"], None] | None = None) -> None:
    """:func:`run_study` with the trials in a thread pool of this process (the benchmark; scripts)."""
    def outcome(future):
        error = future.exception()
        return error if error is not None else future.result()

    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="trial") as pool:
        run_study(opened, submit=lambda number, params: pool.submit(trial, number, params),
                  as_completed=as_completed, outcome=outcome, parallel=parallel, on_told=on_told)


def trials_table(study) -> list[dict[str, Any]]:
    """Every trial as a plain row: number, state, params, value, epochs reported, seconds, notes."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name.lower(), "params": dict(t.params),
                     "value": t.value if t.values else None,
                     "intermediate": {int(k): float(v) for k, v in t.intermediate_values.items()},
                     "seconds": t.user_attrs.get("seconds"), "error": t.user_attrs.get("error"),
                     "crashed": bool(t.user_attrs.get("crashed")), "source": t.user_attrs.get("source"),
                     "retry_of": t.user_attrs.get("retry_of"), "result": t.user_attrs.get("result")})
    return rows


def best_result(opened: OpenStudy) -> tuple[Any, TrainResult]:
    """``(best FrozenTrial, its TrainResult)``; raises TrainingDiverged/TrainingError when no trial completed."""
    study = opened.study
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        failed = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.FAIL and not
                  t.user_attrs.get("crashed")]
        errors = [t.user_attrs.get("error", "") for t in failed]
        summary = f"{len(study.trials)} trial(s), none completed"
        if failed and all("TrainingDiverged" in e for e in errors):
            raise TrainingDiverged(f"{summary}: every one diverged ({errors[0]}). Lower the learning-rate range.")
        raise TrainingError(f"{summary}" + (f"; first error: {errors[0]}" if errors else "")
                            + ". Widen the search space or raise tune.trials")
    best = study.best_trial
    path = best.user_attrs.get("result")
    if not path or not Path(path).is_file():
        raise TrainingError(f"study {study.study_name}: the best trial {best.number}'s result {path!r} is missing")
    return best, TrainResult.load(path)


def summary_note(opened: OpenStudy, best) -> str:
    """One line: trials by state and the best trial's values and score."""
    rows = trials_table(opened.study)
    states = {s: sum(1 for r in rows if r["state"] == s and not r["crashed"]) for s in (COMPLETE, PRUNED, FAIL)}
    parts = [f"{n} {s if s != FAIL else 'failed'}" for s, n in states.items() if n]
    return (f"tuned: {sum(states.values())} trials ({', '.join(parts)}); best trial {best.number} "
            f"{_fmt(best.params)}: validation {opened.ref.metric} {best.value:.4f}")


def discard_artifacts(folder: str | Path, keep: tuple[str, ...] = ("result.json", "attempt.json")) -> None:
    """Delete a finished trial's trained artifacts (adapters, checkpoints), keeping its records."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for item in folder.iterdir():
        if item.name in keep or item.name.endswith(".lock"):
            continue
        if item.is_dir():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)
