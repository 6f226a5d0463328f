"""Evaluation suites by name, as a retrain config lists them, run on an edit file.

A task's ``evaluate:`` list in the YAML names suites; each runs on the trained
edit (loaded with its base model from the edit file) and gives one EvalReport:

- ``test`` / ``classification``: GLUE-style metrics on the task's held-out test split;
- ``openllm-v1``, ``lm-eval:<task>[,<task>...]``: lm-eval suites (built-in tasks need the hub);
- ``{suite: lm-eval, tasks: [...], include_path: DIR, limit: N}``: local lm-eval task folders;
- ``{suite: arc, path: ARC.jsonl, limit: N, shots: 0}``: ARC multiple choice from a local JSONL file;
- ``{suite: alpaca, reference: FILE, limit: N, judge: {kind: chat, base_url, model, api_key_env} |
  {kind: reward, model: PATH}}``: AlpacaEval-style win rate against reference outputs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .report import EvalReport

SuiteSpec = str | dict[str, Any]


def suite_name(suite: SuiteSpec) -> str:
    if isinstance(suite, str):
        return suite.split(":", 1)[0]
    if "suite" not in suite:
        raise ValueError(f"an evaluation suite given as a mapping needs a 'suite' key, got {sorted(suite)}")
    return str(suite["suite"])


def run_suite(suite: SuiteSpec, edit_path: str | Path, *, data=None, out_dir: str | Path = "eval",
              max_length: int = 256, loaded=None) -> EvalReport:
    """Run one suite on the edit at ``edit_path``; ``loaded`` reuses an (edited, tokenizer, meta) triple."""
    from red.pretrained import load_pretrained_edit

    name = suite_name(suite)
    opts: dict[str, Any] = dict(suite) if isinstance(suite, dict) else {}
    edited, tokenizer, meta = loaded or load_pretrained_edit(edit_path)
    task = (meta.get("extra") or {}).get("task", "task")
    out_dir = Path(out_dir)
    if name in ("test", "classification", "glue"):
        if data is None:
            raise ValueError(f"suite {name!r} needs the task's data (a TaskData)")
        from tasks.data import encode

        from .classification import evaluate_classification

        enc = encode(data, tokenizer, max_length=max_length)
        return evaluate_classification(edited, enc.test, data.task or data.metric, primary=data.metric,
                                       pad_token_id=tokenizer.pad_token_id, name=f"{task}/test",
                                       model_name=str(edit_path))
    if name in ("openllm-v1", "lm-eval"):
        from .lm_eval_suite import evaluate_lm

        tasks = opts.get("tasks") or (suite.split(":", 1)[1].split(",") if isinstance(suite, str) and ":" in suite
                                      else "openllm-v1")
        return evaluate_lm(edited, tokenizer, tasks, limit=opts.get("limit"), include_path=opts.get("include_path"),
                           builtin_tasks=opts.get("builtin_tasks", True), name=f"{task}/{name}")
    if name == "arc":
        from .lm_eval_suite import evaluate_lm
        from .local_tasks import write_arc_task

        local = write_arc_task({"test": opts["path"]}, out_dir / "arc_task", limit=opts.get("limit"),
                               num_fewshot=opts.get("shots", 0))
        return evaluate_lm(edited, tokenizer, local.name, include_path=local.folder, builtin_tasks=False,
                           name=f"{task}/arc")
    if name == "alpaca":
        from .alpaca import run_alpaca_eval

        return run_alpaca_eval(edited, tokenizer, opts["reference"], judge=_judge(opts.get("judge")),
                               generator=f"redflow-{task}", limit=opts.get("limit"), out_dir=out_dir / "alpaca",
                               max_new_tokens=opts.get("max_new_tokens", 256), name=f"{task}/alpaca")
    raise ValueError(f"unknown evaluation suite {name!r}; use test, openllm-v1, lm-eval:<tasks>, arc or alpaca")


def _judge(spec: dict[str, Any] | None):
    """A judge from its YAML description (``kind: chat`` or ``kind: reward``)."""
    if not spec:
        raise ValueError("suite alpaca needs a judge: {kind: chat, base_url: ..., model: ...} or "
                         "{kind: reward, model: PATH}")
    spec = dict(spec)
    kind = spec.pop("kind", "chat")
    if kind == "chat":
        from .judges import ChatJudge

        return ChatJudge(**spec)
    if kind == "reward":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from .judges import RewardModelJudge

        path = spec.pop("model")
        return RewardModelJudge(AutoModelForSequenceClassification.from_pretrained(path).eval(),
                                AutoTokenizer.from_pretrained(path), **spec)
    raise ValueError(f"unknown judge kind {kind!r}; use chat or reward")
