"""Which way is better for a metric: the gate must not promote a higher loss.

Quality scores (accuracy, F1, MCC, Pearson/Spearman, win rates, lm-eval's acc/acc_norm/mc2,
exact match, BLEU...) are better higher; losses and perplexities are better lower. The rule is
read off the metric's own name (its last ``/``-separated part, without a ``test_``/``validation_``
split prefix or an lm-eval ``,filter`` suffix), so it holds for any suite's metric; a config or
the command line can still override it.
"""
from __future__ import annotations

LOWER_IS_BETTER = frozenset({"loss", "perplexity", "ppl", "word_perplexity", "byte_perplexity", "bits_per_byte",
                             "bpb", "nll", "error", "error_rate", "wer", "cer", "ter", "mse", "rmse", "mae"})


def base_metric_name(metric: str) -> str:
    """``test_accuracy`` -> ``accuracy``; ``eval/arc/acc_norm,none`` -> ``acc_norm``."""
    name = metric.split("/")[-1].split(",")[0].strip().lower()
    for prefix in ("test_", "validation_", "eval_"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


def higher_is_better(metric: str) -> bool:
    """False for losses, perplexities and error rates (by name), True for everything else."""
    name = base_metric_name(metric)
    return not (name in LOWER_IS_BETTER or name.endswith(("_loss", "_perplexity", "_error")))
