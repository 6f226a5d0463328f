"""AlpacaEval-style evaluation: generate, write alpaca_eval's JSON, judge, win rates.

Outputs are written in alpaca_eval's ``model_outputs.json`` format (a list of
``{instruction, output, generator[, dataset]}``), so the official CLI can judge
them too::

    alpaca_eval --model_outputs out/model_outputs.json \
                --reference_outputs ../shared/data/alpaca_eval/text_davinci_003_outputs.json

The built-in path judges with a pluggable ``Judge`` and computes alpaca_eval's
numbers itself (the package is not a dependency):

* win rate = mean(preference - 1) * 100 with the standard error of that mean
  (preference 1 = reference wins, 2 = model wins, 1.5 = tie; 0 is read as a tie;
  NaN, an unparseable judgement, is dropped);
* length-controlled win rate, after alpaca_eval's ``length_controlled_v1`` GLM:
  a logistic regression of the (soft) preference on
  ``tanh(delta_len / std(delta_len))`` + the model's intercept + the instruction
  difficulty when given; the win rate is then predicted with the length term set
  to zero and averaged over instructions.

Simplifications against alpaca_eval (documented, on purpose):

1. alpaca_eval adds annotations of "gamed" (verbose/concise) baselines downloaded
   from the hub with weight 0.2 to regularise toward the baseline, and picks an
   L1 penalty by 5-fold cross-validation. Offline we fit only this model's
   annotations with the same L1 penalty at a fixed ``C`` (default 100, alpaca_eval's
   no-CV value). Expect LC numbers close to, not identical with, the official ones.
2. Instruction difficulty: alpaca_eval uses a precomputed per-instruction value
   (``instruction_difficulty.csv`` on the hub). Pass it as ``difficulty`` when you
   have it; without it the term is left out of the model.
3. ``delta_len`` is model minus reference (alpaca_eval: reference minus model);
   the sign only flips the fitted length weight, which is zeroed at prediction.
4. The LC standard error is a bootstrap over instructions (refitting the GLM);
   alpaca_eval reports none for a single run.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit

from .generate import generate_answers
from .guards import describe_model
from .judges import Judge
from .report import EvalReport

log = logging.getLogger(__name__)


# ---- data ---------------------------------------------------------------------------------
def load_instruction_set(path: str | Path, *, limit: int | None = None) -> list[dict[str, Any]]:
    """Records with ``instruction`` (and ``output``, ``generator``, ``dataset`` when present).

    Reads a JSON list (alpaca_eval outputs, Alpaca data) or JSON Lines
    (UltraFeedback as shipped by pyreft). An Alpaca ``input`` field is
    appended to the instruction, as the Alpaca prompt would show it.
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
        rows = data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    out = []
    for row in rows:
        if "instruction" not in row:
            raise ValueError(f"{path}: a record has no 'instruction' field (keys {sorted(row)})")
        rec = {"instruction": str(row["instruction"])}
        if row.get("input"):
            rec["instruction"] = f"{rec['instruction']}\n\n{row['input']}"
        for key in ("output", "generator", "dataset"):
            if row.get(key) is not None:
                rec[key] = row[key]
        out.append(rec)
        if limit is not None and len(out) >= limit:
            break
    return out


def write_model_outputs(records: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """alpaca_eval's model_outputs.json: [{instruction, output, generator[, dataset]}]."""
    rows = []
    for r in records:
        row = {"instruction": r["instruction"], "output": r["output"], "generator": r["generator"]}
        if r.get("dataset") is not None:
            row["dataset"] = r["dataset"]
        rows.append(row)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


# ---- metrics ------------------------------------------------------------------------------
def _clean_preferences(preferences: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    prefs = np.asarray([math.nan if p is None else float(p) for p in preferences], dtype=float)
    prefs = np.where(prefs == 0.0, 1.5, prefs)  # alpaca_eval: 0 is a draw (backward compatibility)
    valid = np.isfinite(prefs) & (prefs >= 1.0) & (prefs <= 2.0)
    return prefs, valid


def win_rate(preferences: Sequence[float]) -> dict[str, float]:
    """alpaca_eval's head-to-head numbers from preferences in [1, 2]."""
    prefs, valid = _clean_preferences(preferences)
    p = prefs[valid] - 1.0
    n = int(p.size)
    if n == 0:
        raise ValueError("no valid preferences (all NaN or outside [1, 2])")
    sem = float(p.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    discrete = np.where(p == 0.5, 0.5, np.where(p > 0.5, 1.0, 0.0))  # alpaca_eval: round, exact 1.5 a draw
    return {
        "win_rate": float(p.mean() * 100),
        "standard_error": sem * 100,
        "discrete_win_rate": float(discrete.mean() * 100),
        "n_wins": int((p > 0.5).sum()),
        "n_wins_base": int((p < 0.5).sum()),
        "n_draws": int((p == 0.5).sum()),
        "n_total": n,
        "n_dropped": int((~valid).sum()),
    }


def fit_soft_logistic(X: np.ndarray, y: np.ndarray, C: float = 100.0, max_iter: int = 200,
                      tol: float = 1e-12) -> np.ndarray:
    """Weights of an L1-penalised logistic regression (no intercept column added) on soft labels y in [0, 1].

    Minimises ``sum(y log(1 + e^-z) + (1 - y) log(1 + e^z)) + |w|_1 / C`` with ``z = X w``: alpaca_eval's
    objective at a fixed C (``glm_winrate.fit_LogisticRegressionCV`` with ``n_splits=0``: each row
    duplicated as a win weighted y and a loss weighted 1 - y, ``LogisticRegression(C=C, penalty="l1",
    solver="liblinear", fit_intercept=False)``). Solved like liblinear's newGLMNET (Yuan et al., 2012):
    Newton steps whose L1-penalised quadratic model is minimised by coordinate descent with
    soft-thresholding (so a weight the penalty outweighs is exactly 0), then a backtracking line
    search. With two or three features this takes about a millisecond, which matters for the
    bootstrap. Shapes: X (n, d), y (n,) -> w (d,).
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    penalty = 1.0 / C
    w = np.zeros(X.shape[1])

    def objective(w: np.ndarray) -> float:
        z = X @ w
        return float(np.sum(y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z)) + penalty * np.abs(w).sum())

    current = objective(w)
    for _ in range(max_iter):
        p = expit(X @ w)
        grad = X.T @ (p - y)
        hess = (X * (p * (1 - p))[:, None]).T @ X + 1e-12 * np.eye(X.shape[1])
        step = _l1_quadratic_step(w, grad, hess, penalty)
        decrease = grad @ step + penalty * (np.abs(w + step).sum() - np.abs(w).sum())
        t = 1.0
        while True:
            candidate = w + t * step
            value = objective(candidate)
            if value <= current + 1e-4 * t * decrease or t < 1e-12:
                break
            t /= 2
        w, previous, current = candidate, current, value
        if previous - current <= tol * (1 + abs(current)):
            break
    return w


def _l1_quadratic_step(w: np.ndarray, grad: np.ndarray, hess: np.ndarray, penalty: float,
                       sweeps: int = 100) -> np.ndarray:
    """argmin_d grad·d + ½ dᵀ hess d + penalty·|w + d|_1, by cyclic coordinate descent (soft-thresholding)."""
    step = np.zeros_like(w)
    for _ in range(sweeps):
        change = 0.0
        for j in range(w.size):
            a = hess[j, j]
            b = grad[j] + hess[j] @ step - a * step[j]
            target = a * w[j] - b
            new = np.sign(target) * max(abs(target) - penalty, 0.0) / a - w[j]
            change = max(change, abs(new - step[j]))
            step[j] = new
        if change <= 1e-15 * (1 + np.abs(w).max()):
            break
    return step


def _fit_glm(y: np.ndarray, x_len: np.ndarray, difficulty: np.ndarray | None, C: float) -> tuple[np.ndarray, float]:
    """Fit P(model wins) = sigmoid(w0 + w_len * x_len [+ w_d * difficulty]); return (weights, LC win rate in [0, 1])."""
    cols = [np.ones_like(x_len), x_len] + ([difficulty] if difficulty is not None else [])
    X = np.stack(cols, axis=1)
    weights = fit_soft_logistic(X, y, C=C)
    X_test = X.copy()
    X_test[:, 1] = 0.0  # "what if the answers had the same length"
    return weights, float(np.mean(1.0 / (1.0 + np.exp(-(X_test @ weights)))))


def length_controlled_win_rate(preferences: Sequence[float], model_lengths: Sequence[int],
                               reference_lengths: Sequence[int], *, difficulty: Sequence[float] | None = None,
                               C: float = 100.0, n_bootstrap: int = 200, seed: int = 0) -> dict[str, Any]:
    """Length-controlled win rate (alpaca_eval's GLM, simplified: see the module docstring) with a bootstrap SE.

    Lengths are in characters, as alpaca_eval measures them.
    """
    prefs, valid = _clean_preferences(preferences)
    if not (len(prefs) == len(model_lengths) == len(reference_lengths)):
        raise ValueError("preferences and lengths differ in length")
    y = prefs[valid] - 1.0
    delta = (np.asarray(model_lengths, dtype=float) - np.asarray(reference_lengths, dtype=float))[valid]
    diff = None if difficulty is None else np.asarray(difficulty, dtype=float)[valid]
    if y.size < 2:
        raise ValueError("need at least two valid preferences for the length-controlled win rate")

    def features(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        d = delta[idx]
        std = d.std(ddof=1) if d.size > 1 else 0.0
        x_len = np.tanh(d / std) if std > 0 else np.zeros_like(d)
        return x_len, (diff[idx] if diff is not None else None)

    all_idx = np.arange(y.size)
    weights, lc = _fit_glm(y, *features(all_idx), C=C)
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, y.size, y.size)
        boot.append(_fit_glm(y[idx], *features(idx), C=C)[1])
    names = ["intercept", "tanh_std_delta_len"] + (["instruction_difficulty"] if diff is not None else [])
    return {
        "length_controlled_win_rate": lc * 100,
        "lc_standard_error": float(np.std(boot, ddof=1) * 100) if len(boot) > 1 else math.nan,
        "glm_weights": {n: float(w) for n, w in zip(names, weights)},
        "n_bootstrap": n_bootstrap,
    }


# ---- judging ------------------------------------------------------------------------------
def judge_outputs(model_records: Sequence[Mapping[str, Any]], reference_records: Sequence[Mapping[str, Any]],
                  judge: Judge) -> list[dict[str, Any]]:
    """alpaca_eval-style annotations (output_1 = reference, output_2 = model) with the judge's preference."""
    if len(model_records) != len(reference_records):
        raise ValueError(f"{len(model_records)} model outputs for {len(reference_records)} references")
    for m, r in zip(model_records, reference_records):
        if m["instruction"] != r["instruction"]:
            raise ValueError(f"instruction mismatch between outputs: {m['instruction'][:60]!r} vs "
                             f"{r['instruction'][:60]!r}")
        if "output" not in r:
            raise ValueError("reference records need an 'output' (e.g. text_davinci_003_outputs.json)")
    prefs = judge.judge([r["instruction"] for r in reference_records], [r["output"] for r in reference_records],
                        [m["output"] for m in model_records])
    annotations = []
    for m, r, p in zip(model_records, reference_records, prefs):
        ann = {"instruction": r["instruction"], "output_1": r["output"], "generator_1": r.get("generator", "reference"),
               "output_2": m["output"], "generator_2": m.get("generator", "model"), "annotator": judge.name,
               "preference": None if p is None or (isinstance(p, float) and math.isnan(p)) else float(p)}
        if r.get("dataset") is not None:
            ann["dataset"] = r["dataset"]
        annotations.append(ann)
    return annotations


def alpaca_report(annotations: Sequence[Mapping[str, Any]], *, name: str = "alpaca_eval", model: str = "",
                  difficulty: Mapping[str, float] | Sequence[float] | None = None, n_bootstrap: int = 200,
                  details: Mapping[str, Any] | None = None) -> EvalReport:
    """An EvalReport from annotations: win rate, LC win rate, per-subset win rates, lengths."""
    prefs = [math.nan if a.get("preference") is None else float(a["preference"]) for a in annotations]
    wr = win_rate(prefs)
    len_model = [len(a["output_2"]) for a in annotations]
    len_ref = [len(a["output_1"]) for a in annotations]
    diff = None
    if difficulty is not None:
        diff = ([float(difficulty[a["instruction"]]) for a in annotations] if isinstance(difficulty, Mapping)
                else [float(d) for d in difficulty])
    metrics: dict[str, float] = {k: float(v) for k, v in wr.items() if k != "standard_error"}
    stderr = {"win_rate": wr["standard_error"]}
    extra: dict[str, Any] = dict(details or {})
    if wr["n_total"] >= 2:
        lc = length_controlled_win_rate(prefs, len_model, len_ref, difficulty=diff, n_bootstrap=n_bootstrap)
        metrics["lc_win_rate"] = lc["length_controlled_win_rate"]
        stderr["lc_win_rate"] = lc["lc_standard_error"]
        extra["glm_weights"] = lc["glm_weights"]
        extra["lc_method"] = ("alpaca_eval length_controlled_v1, simplified: no gamed-baseline regularisation, "
                              "fixed L2 (C=100), difficulty " + ("given" if diff is not None else "omitted")
                              + ", bootstrap SE")
    metrics["avg_length"] = float(np.mean(len_model))
    metrics["reference_avg_length"] = float(np.mean(len_ref))
    subsets = sorted({a["dataset"] for a in annotations if a.get("dataset")})
    for subset in subsets if len(subsets) > 1 else []:
        sub = [p for p, a in zip(prefs, annotations) if a.get("dataset") == subset]
        try:
            metrics[f"win_rate/{subset}"] = win_rate(sub)["win_rate"]
        except ValueError:
            continue
    extra["annotator"] = annotations[0].get("annotator") if annotations else None
    return EvalReport(name=name, kind="alpaca", metrics=metrics, primary="win_rate", stderr=stderr, model=model,
                      details=extra)


# ---- the whole run ------------------------------------------------------------------------
def run_alpaca_eval(model: Any, tokenizer: Any, reference: str | Path | Sequence[Mapping[str, Any]], *,
                    judge: Judge | None = None, generator: str = "redflow", limit: int | None = None,
                    out_dir: str | Path | None = None, template: Any = "alpaca", max_new_tokens: int = 256,
                    batch_size: int = 8, difficulty: Mapping[str, float] | Sequence[float] | None = None,
                    n_bootstrap: int = 200, name: str = "alpaca_eval", **generate_kwargs: Any) -> EvalReport:
    """Generate answers for the reference set's instructions, write them, judge them (if ``judge``), report.

    ``reference``: alpaca_eval reference outputs (path or records with
    instruction/output[/dataset]). Without a judge the report holds only
    lengths and the written ``model_outputs.json`` is meant for the official
    CLI. Files in ``out_dir``: model_outputs.json, annotations.json (judged),
    report.json and report.md.
    """
    refs = (load_instruction_set(reference, limit=limit) if isinstance(reference, (str, Path))
            else list(reference)[:limit] if limit is not None else list(reference))
    answers = generate_answers(model, tokenizer, [r["instruction"] for r in refs], template=template,
                               max_new_tokens=max_new_tokens, batch_size=batch_size, **generate_kwargs)
    records = []
    for r, answer in zip(refs, answers):
        rec = {"instruction": r["instruction"], "output": answer, "generator": generator}
        if r.get("dataset") is not None:
            rec["dataset"] = r["dataset"]
        records.append(rec)
    out = Path(out_dir) if out_dir is not None else None
    files: dict[str, str] = {}
    if out is not None:
        files["model_outputs"] = str(write_model_outputs(records, out / "model_outputs.json"))
    gen_details = {"n": len(records), "generator": generator, "template": template if isinstance(template, str)
                   else getattr(template, "__name__", "callable"), "max_new_tokens": max_new_tokens,
                   "decoding": {"greedy": True, "repetition_penalty": 1.1, "no_repeat_ngram_size": 5,
                                **{k: v for k, v in generate_kwargs.items() if isinstance(v, (int, float, str, bool))}}}
    if judge is None:
        lengths = [len(r["output"]) for r in records]
        metrics = {"avg_length": float(np.mean(lengths)) if lengths else 0.0, "n_total": float(len(records))}
        report = EvalReport(name=name, kind="alpaca", metrics=metrics,
                            model=describe_model(model), details={**gen_details, "files": files, "judged": False})
    else:
        annotations = judge_outputs(records, refs, judge)
        if out is not None:
            path = out / "annotations.json"
            path.write_text(json.dumps(annotations, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            files["annotations"] = str(path)
        report = alpaca_report(annotations, name=name, model=describe_model(model), difficulty=difficulty,
                               n_bootstrap=n_bootstrap,
                               details={**gen_details, "files": files, "judged": True,
                                        "judge_stats": dict(getattr(judge, "stats", {}) or {})})
    if out is not None:
        report.details["files"]["report"] = str(out / "report.json")
        report.to_json(out / "report.json")
        report.to_markdown_file(out / "report.md")
    return report
