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
from .alpaca import (alpaca_report, judge_outputs, length_controlled_win_rate, load_instruction_set,
                     run_alpaca_eval, win_rate, write_model_outputs)
from .classification import evaluate_classification, predict_classification
from .errors import (DegenerateScoresError, EvalError, EvalUnavailableError, JudgeError, JudgeUnavailableError,
                     TokenizerError)
from .generate import ALPACA_TEMPLATE, PAPER_DECODING, format_prompt, generate_answers
from .guards import check_degenerate, prepare_tokenizer, unwrap_model
from .judges import ChatJudge, Judge, RewardModelJudge, parse_choice
from .lm_eval_suite import SUITES, SuiteTask, evaluate_lm, resolve_tasks
from .local_tasks import LocalTask, write_arc_task
from .metrics import GLUE_TASK_METRICS, glue_metrics, logits_to_predictions, make_compute_metrics, primary_metric
from .report import EvalReport

__all__ = [
    "ALPACA_TEMPLATE", "ChatJudge", "DegenerateScoresError", "EvalError", "EvalReport", "EvalUnavailableError",
    "GLUE_TASK_METRICS", "Judge", "JudgeError", "JudgeUnavailableError", "LocalTask", "PAPER_DECODING",
    "RewardModelJudge", "SUITES", "SuiteTask", "TokenizerError", "alpaca_report", "check_degenerate",
    "evaluate_classification", "evaluate_lm", "format_prompt", "generate_answers", "glue_metrics",
    "judge_outputs", "length_controlled_win_rate", "load_instruction_set", "logits_to_predictions",
    "make_compute_metrics", "predict_classification", "prepare_tokenizer", "primary_metric", "resolve_tasks",
    "run_alpaca_eval", "unwrap_model", "win_rate", "write_arc_task", "write_model_outputs",
]
