"""The multi-task pyfunc: one base model, the ``production`` edit of many registered models, one forward pass.

``MultiTaskModel`` loads a serving config (``registry.serving.serving_config``: which registered models, which
alias, how often to look), fetches and checks the alias's version of each model (``registry.serving.served_tasks``),
loads each base model once and puts the tasks' RED edits into one ``red.EditBank`` per base
(``registry.serving.snapshot``). A request's rows (``registry.serving.routing``: a ``task`` column beside the
text columns) are routed to their tasks and answered through ``registry.serving.answers``; rows of
tasks on the same base share forward passes of ``batch_size`` rows (classification with any label
count and regression together; generation tasks on a causal/seq2seq base in their own passes). Every
answer row names the registered model and version that served it.

Following the registry. Every ``poll_interval`` seconds (and on ``refresh()``, which ``redflow serve``
exposes as ``POST /reload``) the alias of every model is read again. A model whose alias moved gets its
new version downloaded and checked beside the serving one (checksum, method, labels, the base weights'
fingerprint); then a new *snapshot* - the task table and one ``BankState`` per base - is built and
replaced in one assignment. A request reads the snapshot once when it starts and is answered entirely
from it, so requests in flight finish on the old versions, the next ones get the new, and no request
mixes the two. A version that fails a check is refused: logged (ERROR) with the reason, listed under
``refused`` in ``status()``, not retried until the alias moves again, and the old version keeps
serving. Models are added (a new model fitting a pattern) and updated, never dropped while running: a
model whose alias disappears keeps its last version, with a warning.

Concurrency: ``predict`` may run on many threads at once (MLflow's scoring server runs each request on
a worker thread). Per-call state lives in the bank's thread-local calls, the snapshot is immutable, and
each base's tokenizer is used under a lock (a fast tokenizer keeps its truncation length in shared
state, and tasks differ in max length).
"""
from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import mlflow
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from red import RedError
from red.bank import BankState
from red.utils import default_device, utc_now

from .alias_watch import FULL_LISTING_EVERY_S, registry_state
from .answers import encode, generate, logits, padded_batches, position_limit, scores
from .limits import request_deadline
from .routing import RoutedRows, answer_frame, route
from .served_tasks import ServedTask, VersionRefused, fetch_task, wanted_versions
from .serving_config import ServingConfig, ServingConfigError, serving_config
from .snapshot import BaseGroup, Snapshot

_log = logging.getLogger(__name__)
FETCH_THREADS = 4  # versions downloaded at once when several moved (a start): registry and file I/O overlap


def bundle_signature(config: ServingConfig | dict | None = None) -> ModelSignature:
    """No input schema (each task reads its own columns; ``registry.serving.routing`` checks them with errors that
    name the task), the answer columns, and the generation params a request may pass."""
    cfg = serving_config(config) if config is not None else None
    outputs = Schema([ColSpec("string", "task"), ColSpec("string", "model"), ColSpec("long", "version"),
                      ColSpec("string", "label", required=False), ColSpec("double", "score", required=False),
                      ColSpec("string", "generation", required=False)])
    params = ParamSchema([ParamSpec("max_new_tokens", "long", int(cfg.max_new_tokens if cfg else 64)),
                          ParamSpec("do_sample", "boolean", False)])
    return ModelSignature(inputs=None, outputs=outputs, params=params)


# ---------------------------------------------------------------------------------------------
# the pyfunc
# ---------------------------------------------------------------------------------------------
class MultiTaskModel(PythonModel):
    """Many registered RED edits on shared base models, following an alias (see the module docstring).

    Registered as models-from-code (``registry/serving/bundle_code.py``) with a serving config as its
    ``model_config``; ``redflow serve`` builds the same model from flags or a YAML file.
    """

    _snapshot: Snapshot | None = None

    def load_context(self, context: PythonModelContext) -> None:
        self.setup(serving_config(context.model_config))

    def setup(self, config: ServingConfig, *, follow: bool = True) -> "MultiTaskModel":
        """Load every task (``ServingConfigError``/``VersionRefused`` if any cannot serve) and, with ``follow``
        and a positive ``poll_interval``, start following the alias on a background thread."""
        self.config = config
        self.limits = config.request_limits()  # ServingConfigError for a bad REDFLOW_SERVE_* value, before loading
        self.tracking_uri = config.tracking_uri or mlflow.get_tracking_uri()
        self.registry_uri = config.tracking_uri or mlflow.get_registry_uri()
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
        self.device = config.device if config.device != "auto" else default_device()
        self._cache = Path(tempfile.mkdtemp(prefix="redflow-serve-"))
        # `mlflow models serve` never calls close(): remove the downloaded versions when the process exits
        atexit.register(shutil.rmtree, self._cache, ignore_errors=True)
        self._groups: dict[tuple, BaseGroup] = {}
        self._refused: dict[str, dict[str, Any]] = {}
        self._gone: set[str] = set()
        self._retry = False  # a version failed to load for a passing reason: the next poll lists again
        self._listed: tuple[Any, float] | None = None  # (registry_state, monotonic time) of the poller's last listing
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.checked_at = ""
        _show_swaps()
        try:
            self.refresh(strict=True)
            self._check_generation_default()
        except BaseException:
            self.close()
            raise
        if follow and config.poll_interval > 0:
            self._poller = threading.Thread(target=self._follow, name="redflow-alias-poller", daemon=True)
            self._poller.start()
        return self

    def _check_generation_default(self) -> None:
        """The config's ``max_new_tokens`` must fit every generative base, or every request without
        params would be refused for the server's own setting."""
        for group, _ in self._snapshot.groups.values():
            limit = position_limit(group.model.config) if group.generative else None
            if limit is not None and self.config.max_new_tokens >= limit:
                raise ServingConfigError(
                    f"max_new_tokens {self.config.max_new_tokens} does not fit {group.describe().get('base_model')}: "
                    f"it reads at most {limit} positions, prompt included; set max_new_tokens well below {limit}")

    # ---- following the registry -------------------------------------------------------------
    def refresh(self, *, strict: bool = False) -> dict[str, Any]:
        """Read the alias of every model now; load, check and swap in what moved. Returns what changed,
        what was refused, and what is served. ``strict`` (start-up): a problem with a model named in the
        config raises instead; a model that only fits a pattern and cannot serve (a LoRA comparison model,
        a tampered version) is refused as while running, so one bad model does not keep the others down,
        unless nothing at all can be served."""
        with self._lock:
            snap = self._snapshot
            wanted = wanted_versions(self.config, self.client, strict=strict)
            current = dict(snap.tasks) if snap else {}
            for name, task in current.items():
                if name not in wanted and name not in self._gone:
                    _log.warning("%s: no %r version any more; still serving v%s", name, self.config.alias,
                                 task.version)
            self._gone = {name for name in current if name not in wanted}
            changed, refused = [], []
            self._retry = False
            tasks = dict(current)
            todo = []
            for name, version in sorted(wanted.items()):
                if name in current and current[name].version == version:
                    self._refused.pop(name, None)
                elif self._refused.get(name, {}).get("version") != version:  # refused: not retried until it moves
                    todo.append((name, version))
            fetched = self._fetch_all(todo)
            for name, version in todo:
                try:
                    task = self._load(name, version, fetched[name])
                except VersionRefused as exc:
                    if strict and name in self.config.names:  # asked for by name: the operator must know now
                        raise ServingConfigError(str(exc)) from exc
                    self._refused[name] = {"model": name, "version": version, "reason": str(exc), "at": utc_now("seconds")}
                    refused.append(self._refused[name])
                    _log.error("refused %s v%s: %s; %s", name, version, exc,
                               f"still serving v{current[name].version}" if name in current else "not served")
                    continue
                except Exception as exc:  # noqa: BLE001 - e.g. the store is busy: the other models go on
                    if strict:
                        raise
                    self._retry = True
                    _log.warning("could not load %s v%s (%s: %s); trying again at the next check", name, version,
                                 type(exc).__name__, exc)
                    continue
                tasks[name] = task
                changed.append({"model": name, "from": current[name].version if name in current else None,
                                "to": version})
            if strict and not tasks:
                raise ServingConfigError("no task can be served: " + "; ".join(
                    f"{r['model']} v{r['version']}: {r['reason']}" for r in refused))
            if changed or snap is None:
                self._swap(tasks)
                for c in changed:
                    _log.info("%s: now serving v%s (was %s)", c["model"], c["to"],
                              f"v{c['from']}" if c["from"] is not None else "not served")
            self.checked_at = utc_now("seconds")
            return {"changed": changed, "refused": refused, **self.status()}

    def _fetch_all(self, todo: list[tuple[str, int]]) -> dict[str, ServedTask | Exception]:
        """Download and check the versions of ``todo``, ``FETCH_THREADS`` at a time (a start with a hundred tasks
        is mostly waiting on the registry and the artifact store): ``{name: its ServedTask or what it raised}``."""
        def fetch(item: tuple[str, int]) -> tuple[str, ServedTask | Exception]:
            name, version = item
            try:
                return name, fetch_task(self.client, name, version, self._cache / name / str(version),
                                        tracking_uri=self.registry_uri)
            except Exception as exc:  # noqa: BLE001 - raised again by _load, in order
                return name, exc

        if len(todo) < 2:
            return dict(map(fetch, todo))
        with ThreadPoolExecutor(max_workers=min(FETCH_THREADS, len(todo)), thread_name_prefix="redflow-fetch") as pool:
            return dict(pool.map(fetch, todo))

    def _load(self, name: str, version: int, fetched: ServedTask | Exception) -> ServedTask:
        if isinstance(fetched, Exception):
            raise fetched
        task = fetched
        group = self._groups.get(task.base_key)
        if group is None:  # a base not loaded yet: load it beside the serving ones, keep it only if the task passes
            try:
                group = BaseGroup(task.base_key, task, self.device)
            except Exception as exc:  # noqa: BLE001 - a base that does not load refuses this version only
                raise VersionRefused(f"{name} v{version}: its base model {task.base_model!r} does not load: "
                                     f"{type(exc).__name__}: {exc}") from exc
        group.check(task)
        self._groups.setdefault(task.base_key, group)
        return task

    def _swap(self, tasks: dict[str, ServedTask]) -> None:
        try:
            snap = Snapshot.build(tasks, self._groups)
        except RedError as exc:  # checked task by task already; a combined state failing is a bug or a race
            raise ServingConfigError(f"the tasks cannot share their base: {exc}") from exc
        for group, state in snap.groups.values():
            if group.bank.state is not state:
                group.bank.swap(state)  # hooks for new layers first; calls pass their snapshot's state anyway
        self._snapshot = snap  # one assignment: the next request sees the new versions
        self._groups = {k: g for k, g in self._groups.items() if k in snap.groups}  # unused bases are freed

    def poll(self) -> dict[str, Any] | None:
        """The poller's check: ``refresh()``, unless the registry's alias state (``alias_watch.registry_state``,
        a millisecond of SQL on a local SQLite registry) is the one its last listing saw, no load waits to be
        retried and that listing is under ``FULL_LISTING_EVERY_S`` old; then nothing moved and None is returned.
        Listing every model through MLflow at each poll cost the requests beside it 10-15 % at 128 models."""
        state = registry_state(self.registry_uri)
        if (state is not None and self._listed is not None and state == self._listed[0] and not self._retry
                and time.monotonic() - self._listed[1] < FULL_LISTING_EVERY_S):
            self.checked_at = utc_now("seconds")
            return None
        result = self.refresh()
        self._listed = (state, time.monotonic())  # read before the listing: a move during it shows next time
        return result

    def _follow(self) -> None:
        while not self._stop.wait(self.config.poll_interval):
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - keep serving what we have; try again next time
                _log.warning("could not check the registry (%s: %s); still serving %s", type(exc).__name__, exc,
                             self._served_versions())

    def _served_versions(self) -> str:
        snap = self._snapshot
        return ", ".join(f"{t.model} v{t.version}" for t in snap.tasks.values()) if snap else "nothing"

    def status(self) -> dict[str, Any]:
        """What is served (task, model, version, columns, labels), the bases, and the refused versions."""
        snap = self._snapshot
        return {
            "alias": self.config.alias, "poll_interval": self.config.poll_interval, "since": snap.since if snap else "",
            "checked_at": self.checked_at,
            "tasks": [t.describe() for _, t in sorted(snap.tasks.items())] if snap else [],
            "bases": [{**g.describe(), "tasks": [t.model for t in snap.tasks.values() if t.base_key == k]}
                      for k, (g, _) in snap.groups.items()] if snap else [],
            "refused": list(self._refused.values()),
        }

    def close(self) -> None:
        """Stop following the registry and delete the downloaded versions."""
        self._stop.set()
        if self._poller is not None and self._poller is not threading.current_thread():
            self._poller.join(timeout=30)
        shutil.rmtree(self._cache, ignore_errors=True)

    # ---- predicting ------------------------------------------------------------------------
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Answer every row of ``model_input`` from one snapshot (see ``registry.serving.routing`` for the formats);
        a request over the server's limits is refused whole, one past its deadline stops at its next batch
        (``registry.serving.limits``)."""
        with request_deadline(self.limits.timeout_s()):
            self.limits.check_frame(model_input)
            return self._answer(model_input, params)

    def _answer(self, model_input: pd.DataFrame, params: dict[str, Any] | None) -> pd.DataFrame:
        snap = self._snapshot
        rows = route(model_input, snap.lookup, snap.tasks.values(), snap.ambiguous)
        outputs: list[dict[str, Any]] = [{} for _ in range(len(rows))]
        by_group: dict[tuple, list[int]] = {}
        for i, task in enumerate(rows.tasks):
            by_group.setdefault(snap.slots[task.model][0], []).append(i)
        for key, indices in by_group.items():
            group, state = snap.groups[key]
            if group.generative:
                self._generate(snap, group, state, rows, indices, outputs, params or {})
            else:
                self._score(snap, group, state, rows, indices, outputs)
        return answer_frame(rows, outputs)

    def _batches(self, group: BaseGroup, snap: Snapshot, rows: RoutedRows, indices: list[int]
                 ) -> Iterator[tuple[list[int], dict[str, torch.Tensor], list[int]]]:
        """``(positions, padded batch, task ids)`` of ``batch_size`` rows at a time, in request order; each row
        truncated at its own task's max length."""
        features: list[dict[str, Any]] = [{} for _ in indices]
        by_task: dict[str, list[int]] = {}
        for p, i in enumerate(indices):
            by_task.setdefault(rows.tasks[i].model, []).append(p)
        for positions in by_task.values():
            task = rows.tasks[indices[positions[0]]]
            columns = [list(c) for c in zip(*(rows.texts[indices[p]] for p in positions))]
            for p, feature in zip(positions, encode(group.tokenizer, columns, task.max_length, group.tokenize_lock)):
                features[p] = feature
        for positions, batch in padded_batches(group.tokenizer, features, self.config.batch_size, group.device,
                                               group.tokenize_lock):
            yield positions, batch, [snap.slots[rows.tasks[indices[p]].model][1] for p in positions]

    def _score(self, snap: Snapshot, group: BaseGroup, state: BankState, rows: RoutedRows, indices: list[int],
               outputs: list[dict[str, Any]]) -> None:
        for positions, batch, ids in self._batches(group, snap, rows, indices):
            with group.bank.tasks(ids, state):
                found = logits(group.model, batch)
            for p, part in zip(positions, group.bank.split_outputs(found, ids, state)):
                task = rows.tasks[indices[p]]
                outputs[indices[p]] = scores(part[None], task.task_type, task.label_list).records()[0]

    def _generate(self, snap: Snapshot, group: BaseGroup, state: BankState, rows: RoutedRows, indices: list[int],
                  outputs: list[dict[str, Any]], params: dict[str, Any]) -> None:
        for positions, batch, ids in self._batches(group, snap, rows, indices):
            with group.bank.tasks(ids, state):
                texts = generate(group.model, group.tokenizer, batch, params, self.config.max_new_tokens,
                                 causal=group.causal, lock=group.tokenize_lock)
            for p, text in zip(positions, texts):
                outputs[indices[p]] = {"generation": text}


def _show_swaps() -> None:
    """Show this module's INFO lines (versions swapped in) when nothing configured logging (a model server)."""
    if not logging.getLogger().handlers and not _log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        _log.addHandler(handler)
        _log.setLevel(logging.INFO)


def load_multitask(config: ServingConfig | dict[str, Any], *, follow: bool = False) -> MultiTaskModel:
    """A loaded ``MultiTaskModel`` without MLflow's loader (tests, notebooks, registration checks)."""
    return MultiTaskModel().setup(serving_config(config), follow=follow)

