"""lm-eval-harness suites for (edited) language models.

``evaluate_lm`` wraps the model instance in lm-eval's ``HFLM`` (a RED
``red.EditedModel`` is unwrapped to its hooked base model: the same forward; a
ReFT one is scored with its context as the prompt, see ``lm_eval_model``),
runs ``lm_eval.simple_evaluate`` once per few-shot setting, checks the scores
are not degenerate, and returns one ``EvalReport`` with per-task metrics and
the average of each task's headline metric.

``openllm-v1`` is the Open LLM Leaderboard (v1) suite with its shots and
metrics. Its data sets live on the Hugging Face hub: offline, the run stops
before loading anything and names the data sets to pre-fetch.
"""
from __future__ import annotations

import difflib
import logging
import math
import os
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import datasets
import torch
from huggingface_hub import constants as hub_constants

from red.methods.reft.model import given_prompt

from .errors import EvalUnavailableError
from .guards import check_degenerate, check_generative, describe_model, prepare_tokenizer, unwrap_model
from .report import EvalReport
from .suite_specs import SuiteTask, resolve_tasks

log = logging.getLogger(__name__)


_METRIC_PREFERENCE = ("acc_norm", "acc", "exact_match", "f1", "mcc", "em", "bleu")


TaskSpec = str | SuiteTask | Sequence[str | SuiteTask]


def evaluate_lm(model: torch.nn.Module, tokenizer: Any, tasks: TaskSpec = "openllm-v1", *,
                limit: int | float | None = None, include_path: str | Path | Sequence[str | Path] | None = None,
                builtin_tasks: bool = True, batch_size: int = 8, max_length: int | None = None,
                add_bos_token: bool | None = None,
                on_degenerate: str = "raise", degenerate_threshold: float = 0.5, bootstrap_iters: int = 1000,
                name: str | None = None, seed: int = 1234) -> EvalReport:
    """Evaluate ``model`` (plain, ``red.EditedModel`` attached or merged) on lm-eval tasks.

    ``tasks``: a suite name (``"openllm-v1"``), a task/group name, ``"task:shots"``,
    a ``SuiteTask``, or a list of these. ``include_path``: folders of local task
    YAMLs (e.g. from ``write_arc_task``); when every task is found there, lm-eval's
    ~15k built-in tasks are not indexed at all (seconds saved per call);
    ``builtin_tasks=False`` never indexes them (unknown names fail at once).
    ``limit``: questions per task (int) or fraction, for quick runs only.
    ``add_bos_token``: None lets the guards decide (False for tokenizers that
    append a suffix token such as BERT's [SEP]); True with such a tokenizer is
    refused. ``on_degenerate``: "raise" | "warn" | "ignore" when at least
    ``degenerate_threshold`` of the questions score all choices identically.

    Metrics: ``<task>/<metric>`` (``/<filter>`` appended when not "none") for
    every task and group lm-eval reports, and ``average`` over the requested
    tasks' headline metrics (the primary metric).
    """
    label, suite = resolve_tasks(tasks)
    check_generative(model)
    _preflight_hub_datasets(suite, include_path)
    base = unwrap_model(model)
    backend = "seq2seq" if getattr(getattr(base, "config", None), "is_encoder_decoder", False) else "causal"
    tok, add_bos, tok_report = prepare_tokenizer(tokenizer, model, backend=backend, add_bos_token=add_bos_token)
    task_manager = _task_manager([t.task for t in suite], include_path, builtin_tasks)

    was_training = base.training
    lm = lm_eval_model(model, tok, backend=backend, batch_size=batch_size, max_length=max_length,
                       add_bos_token=add_bos)
    try:
        results, samples, n_samples, configs = _evaluate_by_fewshot(lm, suite, task_manager, limit=limit,
                                                                    bootstrap_iters=bootstrap_iters, seed=seed)
    finally:
        base.train(was_training)

    degenerate = check_degenerate(samples, policy=on_degenerate, threshold=degenerate_threshold)
    metrics, stderr = _flatten(results)
    headline = _headline_keys(suite, results)
    _add_average(metrics, stderr, list(headline.values()))
    return EvalReport(
        name=name or f"lm-eval/{label}", kind="lm-eval", metrics=metrics, primary="average", stderr=stderr,
        model=describe_model(model),
        details={
            "tasks": [{"task": t.task, "num_fewshot": t.num_fewshot, "headline": headline[t.task]} for t in suite],
            "limit": limit, "n_samples": n_samples, "tokenizer": tok_report.to_dict(),
            "identical_choice_fraction": degenerate, "lm_eval_version": _version("lm_eval"),
            "include_path": [str(p) for p in _as_list(include_path)], "configs": configs,
            "per_row": _per_row(samples, metrics),
        },
    )


def _evaluate_by_fewshot(lm: Any, suite: Sequence[SuiteTask], task_manager: Any, *, limit: int | float | None,
                         bootstrap_iters: int, seed: int) -> tuple[dict, dict, dict, dict]:
    """``lm_eval.simple_evaluate`` once per few-shot setting of ``suite``, merged: lm-eval's ``results``,
    ``samples`` and ``n-samples`` by task, and each task's config (shortened). ``EvalUnavailableError`` when a
    task's data cannot load because the hub is unreachable or offline."""
    import lm_eval  # optional: lm-eval loads only when a suite runs (seconds to import)

    results: dict[str, dict[str, Any]] = {}
    samples: dict[str, list[dict[str, Any]]] = {}
    n_samples: dict[str, Any] = {}
    configs: dict[str, Any] = {}
    for shots, group in _by_fewshot(suite):
        try:
            out = lm_eval.simple_evaluate(
                model=lm, tasks=[t.task for t in group], num_fewshot=shots, limit=limit,
                task_manager=task_manager, bootstrap_iters=bootstrap_iters, log_samples=True,
                random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
            )
        except Exception as exc:
            if _is_offline_error(exc):
                raise EvalUnavailableError(
                    f"lm-eval tasks {[t.task for t in group]} could not load their data: {exc}. The Hugging Face "
                    "hub is unreachable or offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE). Pre-fetch "
                    "the data sets into the HF cache on a machine with access, or use local task folders "
                    "(tasks.evaluate.write_arc_task + include_path)."
                ) from exc
            raise
        if out is None:  # non-zero rank in distributed runs
            continue
        results.update(out.get("results", {}))
        samples.update(out.get("samples", {}))
        n_samples.update(out.get("n-samples", {}))
        configs.update({k: _small_config(v) for k, v in out.get("configs", {}).items()})
    return results, samples, n_samples, configs


def _headline_keys(suite: Sequence[SuiteTask], results: dict[str, dict[str, Any]]) -> dict[str, str]:
    """``{task: metric key}`` of each requested task's headline (primary) metric; ``KeyError`` for a task lm-eval
    returned no results for."""
    headline: dict[str, str] = {}
    for t in suite:
        key = _headline_key(t, results)
        if key is None:
            raise KeyError(f"lm-eval returned no results for task {t.task!r} (got {sorted(results)})")
        headline[t.task] = key
    return headline


def _add_average(metrics: dict[str, float], stderr: dict[str, float], keys: list[str]) -> None:
    """``average``: the mean of the metrics ``keys``, and its standard error when every one of theirs is known
    (independent tasks: the root of the summed squares, over their count)."""
    values = [metrics[k] for k in keys]
    metrics["average"] = float(sum(values) / len(values))
    errs = [stderr.get(k) for k in keys]
    if all(e is not None and math.isfinite(e) for e in errs):
        stderr["average"] = math.sqrt(sum(e * e for e in errs)) / len(errs)


def _per_row(samples: dict[str, list[dict[str, Any]]], metrics: dict[str, float]) -> dict[str, list[float]]:
    """Each question's value of every metric that is a mean over questions (``acc``, ``acc_norm``...), in
    document order: what a paired comparison of two models on the same questions resamples."""
    out: dict[str, list[float]] = {}
    for task, rows in samples.items():
        for row in sorted(rows, key=lambda r: (str(r.get("filter")), r.get("doc_id", 0))):
            for metric, value in row.items():
                key = _metric_key(task, metric, str(row.get("filter", "none")))
                if key in metrics and isinstance(value, (int, float)):  # bools (exact match) count as 0/1
                    out.setdefault(key, []).append(float(value))
    return {k: v for k, v in out.items() if v and abs(sum(v) / len(v) - metrics[k]) < 1e-9}


# ---- the lm-eval model ------------------------------------------------------------------------
def _is_reft(model: torch.nn.Module) -> bool:
    config = getattr(model, "edit_config", None)
    return bool(getattr(config, "is_reft", False))


def lm_eval_model(model: torch.nn.Module, tokenizer: Any, *, backend: str = "causal", batch_size: int = 8,
                  max_length: int | None = None, add_bos_token: bool | None = None):
    """The lm-eval ``LM`` that scores ``model``: lm-eval's ``HFLM``, or for a ReFT-edited causal LM a
    ``HFLM`` whose log-likelihoods treat each request's context as the prompt (``score_continuations``).

    HFLM scores causal models on right-padded batches without an attention mask: harmless for a
    plain or RED-edited model (causal attention never looks right, and RED edits every position
    alike), but ReFT edits the first/last *prompt* tokens, so it would count padding and the scored
    continuation as prompt and give a request a different log-likelihood in each batch.
    """
    from lm_eval.models.huggingface import HFLM  # optional: lm-eval loads only when a suite runs (seconds to import)

    kwargs = dict(tokenizer=tokenizer, backend=backend, batch_size=batch_size, max_length=max_length,
                  add_bos_token=add_bos_token)
    if backend == "causal" and _is_reft(model):
        return _context_prompt_lm_class()(pretrained=model, logits_cache=False, **kwargs)
    return HFLM(pretrained=unwrap_model(model), logits_cache=True, **kwargs)


@torch.no_grad()
def score_continuations(model: torch.nn.Module, requests: Sequence[tuple[Any, list[int], list[int]]], *,
                        batch_size: int, max_length: int, pad_token_id: int,
                        device: torch.device | str | None = None) -> list[tuple[float, bool]]:
    """``(log-likelihood, is greedy)`` of each ``(key, context_tokens, continuation_tokens)`` under a ReFT model.

    Like lm-eval's causal scoring (``(context + continuation)[-(max_length + 1):][:-1]`` as input,
    the continuation's log-probabilities summed), but each row carries its attention mask and its
    prompt, the context tokens (``red.methods.reft.model.given_prompt``): the edit lands on the first/last
    tokens of the context, as in ``generate()``, never on padding or scored tokens, so a request
    gets the same score in any batch. Rows are batched longest first; results come back in order.
    """
    device = device or next(model.parameters()).device
    rows = []
    for _, context, continuation in requests:
        if not context or not continuation or len(continuation) > max_length:
            raise ValueError("each request needs a non-empty context and a continuation of at most max_length tokens")
        inputs = (list(context) + list(continuation))[-(max_length + 1):][:-1]
        rows.append((inputs, len(inputs) - len(continuation) + 1, list(continuation)))
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    results: list[tuple[float, bool] | None] = [None] * len(rows)
    for start in range(0, len(order), max(1, int(batch_size))):
        chunk = order[start:start + max(1, int(batch_size))]
        width = max(len(rows[i][0]) for i in chunk)
        ids = torch.full((len(chunk), width), int(pad_token_id), dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        prompt = torch.zeros(len(chunk), width, dtype=torch.bool)
        for r, i in enumerate(chunk):
            inputs, n_context, _ = rows[i]
            ids[r, :len(inputs)] = torch.tensor(inputs)
            mask[r, :len(inputs)] = 1
            prompt[r, :n_context] = True
        with given_prompt(model, prompt.to(device)):
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        for r, i in enumerate(chunk):
            inputs, _, continuation = rows[i]
            scored = logprobs[r, len(inputs) - len(continuation):len(inputs)]
            target = torch.tensor(continuation, device=scored.device)
            results[i] = (float(scored.gather(1, target[:, None]).sum()), bool((scored.argmax(-1) == target).all()))
    return results  # type: ignore[return-value]


def _context_prompt_lm_class():
    from lm_eval.models.huggingface import HFLM  # optional: lm-eval loads only when a suite runs (seconds to import)

    class ContextPromptLM(HFLM):
        """HFLM whose log-likelihood requests are scored by ``score_continuations`` (ReFT-edited causal LMs)."""

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
            batch = override_bs or (self.batch_size if isinstance(self.batch_size, int) else 1)
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_token_id
            results = score_continuations(self.model, requests, batch_size=batch, max_length=self.max_length,
                                          pad_token_id=pad, device=self.device)
            for (key, _, _), answer in zip(requests, results):
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, answer)
            return results

    return ContextPromptLM


# ---- helpers ------------------------------------------------------------------------------
def _as_list(paths: Any) -> list[Any]:
    if paths is None:
        return []
    return list(paths) if isinstance(paths, (list, tuple)) else [paths]


def _task_manager(names: Sequence[str], include_path: Any, builtin_tasks: bool = True):
    """Index only the local folders when they hold every task; lm-eval's full index takes seconds."""
    from lm_eval.tasks import TaskManager  # optional: lm-eval loads only when a suite runs (seconds to import)

    local = [str(p) for p in _as_list(include_path)]
    for p in local:
        if not Path(p).exists():
            raise FileNotFoundError(f"include_path {p} does not exist")
    if local:
        tm = TaskManager(include_path=local, include_defaults=False)
        if all(n in tm.all_tasks for n in names) or not builtin_tasks:
            _check_names(names, tm, local)
            return tm
    elif not builtin_tasks:
        raise ValueError("builtin_tasks=False needs an include_path with the task folders")
    tm = TaskManager(include_path=local or None)
    _check_names(names, tm, local)
    return tm


def _check_names(names: Sequence[str], tm: Any, local: Sequence[str]) -> None:
    missing = [n for n in names if n not in tm.all_tasks]
    if missing:
        hints = {n: difflib.get_close_matches(n, tm.all_tasks, n=3) for n in missing}
        raise ValueError(f"unknown lm-eval task(s): {hints} (name -> close matches); local folders: {list(local)}")


def _by_fewshot(suite: Sequence[SuiteTask]) -> list[tuple[int | None, list[SuiteTask]]]:
    groups: dict[int | None, list[SuiteTask]] = {}
    for t in suite:
        groups.setdefault(t.num_fewshot, []).append(t)
    return list(groups.items())


def _metric_key(task: str, metric: str, filt: str) -> str:
    return f"{task}/{metric}" if filt == "none" else f"{task}/{metric}/{filt}"


def _flatten(results: dict[str, dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    metrics: dict[str, float] = {}
    stderr: dict[str, float] = {}
    for task, values in results.items():
        for key, value in values.items():
            if "," not in key or isinstance(value, str) or value is None:
                continue
            metric, filt = key.split(",", 1)
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            if metric.endswith("_stderr"):
                stderr[_metric_key(task, metric[: -len("_stderr")], filt)] = value
            else:
                metrics[_metric_key(task, metric, filt)] = value
    return metrics, stderr


def _headline_key(t: SuiteTask, results: dict[str, dict[str, Any]]) -> str | None:
    values = results.get(t.task)
    if not values:
        return None
    if t.metric:
        return _metric_key(t.task, t.metric, t.filter) if f"{t.metric},{t.filter}" in values else None
    available = [k.split(",", 1) for k in values if "," in k and "_stderr" not in k]
    for preferred in _METRIC_PREFERENCE:
        for metric, filt in available:
            if metric == preferred:
                return _metric_key(t.task, metric, filt)
    return _metric_key(t.task, *available[0]) if available else None


def _small_config(config: Any) -> dict[str, Any]:
    if not isinstance(config, dict):
        return {}
    keep = ("task", "dataset_path", "dataset_name", "num_fewshot", "output_type", "test_split", "validation_split",
            "fewshot_split", "metadata")
    return {k: config.get(k) for k in keep if k in config}


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_dataset_cached(dataset: str) -> bool:
    """Whether a hub data set has anything in the local HF caches (hub snapshots or datasets' own cache)."""
    roots = [Path(hub_constants.HF_HUB_CACHE) / f"datasets--{dataset.replace('/', '--')}"]
    try:
        roots.append(Path(datasets.config.HF_DATASETS_CACHE) / dataset.replace("/", "___"))
    except Exception:  # pragma: no cover
        pass
    return any(r.exists() and any(r.iterdir()) for r in roots)


def _preflight_hub_datasets(suite: Sequence[SuiteTask], include_path: Any) -> None:
    """Fail in milliseconds, naming every data set, instead of minutes into a suite."""
    if not _offline():
        return
    missing = [(t.task, t.dataset) for t in suite if t.dataset and not hub_dataset_cached(t.dataset)]
    if missing:
        listing = ", ".join(f"{task} <- {ds}" for task, ds in missing)
        raise EvalUnavailableError(
            f"offline mode is on (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE) and these lm-eval tasks need hub data sets "
            f"that are not in the local cache: {listing}. Run once with network access (or copy a populated "
            f"HF_HOME), or evaluate local task folders instead (include_path={include_path!r})."
        )


def _is_offline_error(exc: BaseException) -> bool:
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 10:
        name = type(cur).__name__
        text = str(cur)
        if isinstance(cur, ConnectionError) or name in ("OfflineModeIsEnabled", "LocalEntryNotFoundError",
                                                         "ConnectError", "DatasetNotFoundError"):
            return True
        if "Couldn't reach" in text or "offline" in text.lower():
            return True
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return False


def _version(package: str) -> str:
    try:
        return version(package)
    except Exception:  # pragma: no cover
        return "unknown"
