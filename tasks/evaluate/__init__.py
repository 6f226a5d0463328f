"""Evaluation of (edited) models: GLUE metrics, lm-eval suites, AlpacaEval-style win rates.

Every entry point returns one ``EvalReport`` (``metrics: dict[str, float]``,
JSON + markdown) for the registry to log::

    from tasks.evaluate import evaluate_classification, evaluate_lm, run_alpaca_eval
    evaluate_classification(edited, enc.validation, "sst2")                 # GLUE metrics
    evaluate_lm(edited, tokenizer, "openllm-v1", limit=100)                 # lm-eval suite (needs the hub)
    evaluate_lm(edited, tokenizer, "arc_local", include_path=task.folder)   # local task folder, offline
    run_alpaca_eval(edited, tokenizer, "../shared/data/alpaca_eval/text_davinci_003_outputs.json",
                    judge=ChatJudge("http://judge:8000/v1", "gpt-4o"), out_dir="out/alpaca")

Trainer integration: ``Trainer(compute_metrics=make_compute_metrics("stsb"))``.
"""
from __future__ import annotations

from red.exports import lazy_exports

_EXPORTS = {
    "ALPACA_TEMPLATE": "generate",
    "ChatJudge": "judges",
    "DegenerateScoresError": "errors",
    "EvalError": "errors",
    "EvalReport": "report",
    "EvalUnavailableError": "errors",
    "GLUE_TASK_METRICS": "metrics",
    "Judge": "judges",
    "JudgeError": "errors",
    "JudgeUnavailableError": "errors",
    "LocalTask": "local_tasks",
    "PAPER_DECODING": "generate",
    "RewardModelJudge": "judges",
    "SUITES": "suite_specs",
    "SuiteTask": "suite_specs",
    "TokenizerError": "errors",
    "alpaca_report": "alpaca",
    "check_degenerate": "guards",
    "evaluate_classification": "classification",
    "evaluate_lm": "lm_eval_suite",
    "format_prompt": "generate",
    "generate_answers": "generate",
    "glue_metrics": "metrics",
    "judge_outputs": "alpaca",
    "length_controlled_win_rate": "alpaca",
    "load_instruction_set": "alpaca",
    "logits_to_predictions": "metrics",
    "make_compute_metrics": "metrics",
    "parse_choice": "judges",
    "predict_classification": "classification",
    "prepare_tokenizer": "guards",
    "primary_metric": "metrics",
    "resolve_tasks": "suite_specs",
    "run_alpaca_eval": "alpaca",
    "unwrap_model": "guards",
    "win_rate": "alpaca",
    "write_arc_task": "local_tasks",
    "write_model_outputs": "alpaca",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
