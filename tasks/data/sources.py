"""Readers for every data source: local files, instruction formats and the Hugging Face hub.

Each reader returns plain pandas DataFrames whose row order is the file's row
order, so that a later check can point at "row 17 of dev.tsv" instead of at an
anonymous index. Any failure to read becomes a :class:`DataError` that names the
file and the reason, because these run inside scheduled jobs whose operators
only see the last log line.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any, Iterable

import datasets
import pandas as pd

from red import bounded_json


class DataError(ValueError):
    """Bad or unreadable training data; the message names the problem and how to fix it."""


# The Stanford Alpaca prompt (the exact text of alpaca_data's "text" field, minus the response).
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def alpaca_prompt(instruction: str, input: str = "", template: str = "alpaca") -> str:
    """Build the prompt the model is conditioned on (``template="none"``: instruction and input as is)."""
    instruction = instruction or ""
    input = input or ""
    if template == "none":
        return f"{instruction}\n\n{input}" if input.strip() else instruction
    if input.strip():
        return ALPACA_PROMPT_INPUT.format(instruction=instruction, input=input)
    return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)


# --------------------------------------------------------------------------- files


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"cannot read {path}: file not found. Fix: check `path` in the data spec.")
    if path.is_dir():
        raise DataError(f"cannot read {path}: it is a folder, a file was expected.")
    if path.stat().st_size == 0:
        raise DataError(f"cannot read {path}: the file is empty.")


def read_tsv(path: Path, header: bool = True, names: list[str] | None = None) -> pd.DataFrame:
    """Read a GLUE-style TSV: no quoting (quotes inside sentences are literal), optional UTF-8 BOM.

    Every cell is kept as a string (``"null"``, ``"NA"`` and empty cells stay text), so that a
    sentence is never turned into a missing value behind the user's back.
    """
    _check_file(path)
    try:
        frame = pd.read_csv(
            path, sep="\t", quoting=csv.QUOTE_NONE, encoding="utf-8-sig", dtype=str,
            keep_default_na=False, header=0 if header else None, names=names,
        )
        if header and names is None:
            _require_unique_header(path, delimiter="\t", quoting=csv.QUOTE_NONE)
        return frame
    except UnicodeDecodeError as exc:
        raise DataError(f"cannot read {path}: not UTF-8 text ({exc.reason} at byte {exc.start}).") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError) as exc:
        raise DataError(f"cannot read {path}: {_one_line(exc)}. Fix: the file must be tab-separated, "
                        f"one row per line, the same number of fields on every line.") from exc


def _require_unique_header(path: Path, *, delimiter: str, quoting: int) -> None:
    """pandas renames a repeated header name (``text,text`` -> ``text``, ``text.1``) and a spec naming it would
    silently read one of the two columns: refuse the file instead, naming the name."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        names = next(csv.reader(handle, delimiter=delimiter, quoting=quoting), [])
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"cannot read {path}: its header names column(s) {repeated} more than once. Fix: give every "
                        "column of the header row its own name.")


def read_csv(path: Path) -> pd.DataFrame:
    """Read a comma-separated file with a header row (standard CSV quoting).

    Cells stay strings (so "007" stays "007"); only empty cells become missing values.
    """
    _check_file(path)
    try:
        frame = pd.read_csv(path, encoding="utf-8-sig", dtype=str, keep_default_na=False, na_values=[""])
        _require_unique_header(path, delimiter=",", quoting=csv.QUOTE_MINIMAL)
        return frame
    except UnicodeDecodeError as exc:
        raise DataError(f"cannot read {path}: not UTF-8 text ({exc.reason} at byte {exc.start}).") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError) as exc:
        raise DataError(f"cannot read {path}: {_one_line(exc)}.") from exc


def read_json_records(path: Path) -> list[dict[str, Any]]:
    """Read a JSON list of objects *or* JSON Lines, whatever the file's extension says.

    Files named ``.json`` that are really JSON Lines are common (pyreft's
    ``ultrafeedback_1k.json`` is one), so the content decides, not the name.
    """
    _check_file(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"cannot read {path}: not UTF-8 text ({exc.reason} at byte {exc.start}).") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path}: {_one_line(exc)}.") from exc
    stripped = text.lstrip()
    records: Any
    if stripped.startswith("["):
        try:
            records = bounded_json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"cannot read {path}: invalid JSON at line {exc.lineno}, column {exc.colno}: "
                            f"{exc.msg}.") from exc
        except ValueError as exc:  # nested past the limit, or an integer of more than 4,300 digits
            raise DataError(f"cannot read {path}: {_beyond_limits(exc)}") from exc
    else:
        records = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(bounded_json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"cannot read {path}: line {lineno} is not a JSON object ({exc.msg}). "
                                f"Fix: one JSON object per line (JSON Lines) or one JSON list.") from exc
            except ValueError as exc:
                raise DataError(f"cannot read {path}: line {lineno}: {_beyond_limits(exc)}") from exc
        if len(records) == 1 and isinstance(records[0], dict) and isinstance(records[0].get("data"), list):
            records = records[0]["data"]
    if not isinstance(records, list):
        raise DataError(f"cannot read {path}: expected a JSON list of objects or JSON Lines, "
                        f"found a JSON {type(records).__name__}.")
    bad = [i + 1 for i, r in enumerate(records) if not isinstance(r, dict)]
    if bad:
        raise DataError(f"cannot read {path}: records {row_numbers(bad)} are not JSON objects.")
    if not records:
        raise DataError(f"cannot read {path}: the file holds no records.")
    if _LONE_SURROGATE_ESCAPE.search(text):
        _refuse_lone_surrogates(records, path)
    return records


def _beyond_limits(exc: ValueError) -> str:
    """What a JSON reader's limit error means for a data file (Python's own text advises changing the interpreter)."""
    if "integer string conversion" in str(exc):
        reason = "a number with more than 4,300 digits"
    else:
        reason = _one_line(exc)
    return (f"{reason}. Fix: records are flat objects of texts and labels (nested at most "
            f"{bounded_json.MAX_DEPTH} levels); write numbers with at most a few digits.")


_LONE_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # only an escape can put a surrogate into the text


def _refuse_lone_surrogates(records: list[dict[str, Any]], path: Path) -> None:
    """A ``"\\ud800"`` escape with no partner decodes to a string no UTF-8 writer can store (the cache, pyarrow,
    the tokenizer): refuse it here, naming the record and the field, instead of failing deep in pyarrow."""
    for number, record in enumerate(records, start=1):
        for key, value in record.items():
            try:
                json.dumps({key: value}, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise DataError(f"cannot read {path}: record {number}, field {ascii(key)}"
                                f": a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair) is not text. "
                                "Fix: write the character itself, or its complete surrogate pair.") from None


def read_table(path: Path, fmt: str) -> pd.DataFrame:
    """Read a local table: ``fmt`` is "csv", "tsv", "json" or "jsonl"."""
    if fmt == "csv":
        frame = read_csv(path)
    elif fmt == "tsv":
        frame = read_tsv(path)
    else:
        frame = pd.DataFrame.from_records(read_json_records(path))
    if frame.empty:
        raise DataError(f"cannot read {path}: the file has a header but no data rows.")
    return frame


# --------------------------------------------------------------------------- instruction formats


def parse_alpaca(records: list[dict[str, Any]], path: Path, template: str = "alpaca") -> pd.DataFrame:
    """Alpaca records ``{instruction, input?, output}`` -> ``prompt`` (Alpaca template), ``response``."""
    _require_keys(records, path, ("instruction", "output"), "Alpaca records need 'instruction' and 'output' "
                  "('input' is optional)")
    rows = [{"prompt": alpaca_prompt(str(r["instruction"]), str(r.get("input") or ""), template),
             "response": str(r["output"])} for r in records]
    return pd.DataFrame(rows, columns=["prompt", "response"])


def parse_ultrafeedback(records: list[dict[str, Any]], path: Path, template: str = "alpaca") -> pd.DataFrame:
    """UltraFeedback-style records -> ``prompt``, ``response``.

    Accepted shapes, per record:

    * the original UltraFeedback: ``instruction`` (or ``prompt``) and ``completions``, each with
      a ``response`` (or ``text``) and scores; the answer is the completion with the highest mean
      score (``fine-grained_score`` if present, else the mean of its ``annotations`` ratings, or
      of ``scores`` / ``score``);
    * the binarized form: ``prompt`` and ``chosen`` (a list of chat messages; the last assistant
      message is the answer);
    * already-chosen pairs ``{instruction, input, output}`` (pyreft's ``ultrafeedback_1k.json``).
    """
    rows = []
    for i, record in enumerate(records, start=1):
        instruction = record.get("instruction", record.get("prompt"))
        if instruction is None:
            raise DataError(f"{path}: record {i} has no 'instruction' or 'prompt'; keys found: "
                            f"{sorted(record)}.")
        if "completions" in record:
            answer = _best_completion(record["completions"], path, i)
        elif "chosen" in record:
            answer = _chosen_message(record["chosen"], path, i)
        elif "output" in record or "response" in record:
            answer = record.get("output", record.get("response"))
        else:
            raise DataError(f"{path}: record {i} has no 'completions', 'chosen' or 'output'; keys found: "
                            f"{sorted(record)}. Fix: give scored completions or the chosen answer.")
        prompt = alpaca_prompt(str(instruction), str(record.get("input") or ""), template)
        rows.append({"prompt": prompt, "response": str(answer)})
    return pd.DataFrame(rows, columns=["prompt", "response"])


def _completion_score(completion: dict[str, Any]) -> float | None:
    if completion.get("fine-grained_score") is not None:
        return float(completion["fine-grained_score"])
    ratings: list[float] = []
    annotations = completion.get("annotations")
    if isinstance(annotations, dict):
        for aspect in annotations.values():
            rating = aspect.get("Rating") if isinstance(aspect, dict) else aspect
            try:
                ratings.append(float(rating))
            except (TypeError, ValueError):  # "N/A" ratings do not count
                pass
    if not ratings and isinstance(completion.get("scores"), (list, dict)):
        values = completion["scores"].values() if isinstance(completion["scores"], dict) else completion["scores"]
        ratings = [float(v) for v in values if isinstance(v, (int, float))]
    if not ratings and isinstance(completion.get("score"), (int, float)):
        ratings = [float(completion["score"])]
    if not ratings and isinstance(completion.get("overall_score"), (int, float)):
        ratings = [float(completion["overall_score"])]
    return sum(ratings) / len(ratings) if ratings else None


def _best_completion(completions: Any, path: Path, index: int) -> str:
    if not isinstance(completions, list) or not completions:
        raise DataError(f"{path}: record {index} has no completions to choose from.")
    best_text, best_score = None, None
    for completion in completions:
        if not isinstance(completion, dict):
            continue
        score = _completion_score(completion)
        text = completion.get("response", completion.get("text"))
        if score is None or text is None:
            continue
        if best_score is None or score > best_score:  # ties: the first wins, so the choice is stable
            best_text, best_score = text, score
    if best_text is None:
        raise DataError(f"{path}: record {index}: no completion has both a text ('response') and a score "
                        f"('fine-grained_score', 'annotations', 'scores' or 'score').")
    return str(best_text)


def _chosen_message(chosen: Any, path: Path, index: int) -> str:
    if isinstance(chosen, str):
        return chosen
    if isinstance(chosen, list):
        for message in reversed(chosen):
            if isinstance(message, dict) and message.get("role") == "assistant":
                return str(message.get("content", ""))
    raise DataError(f"{path}: record {index}: 'chosen' has no assistant message.")


def _require_keys(records: list[dict[str, Any]], path: Path, keys: Iterable[str], hint: str) -> None:
    for key in keys:
        missing = [i + 1 for i, r in enumerate(records) if r.get(key) is None]
        if missing:
            found = sorted(set().union(*(r.keys() for r in records[:50])))
            raise DataError(f"{path}: {len(missing)} record(s) lack '{key}' (records {row_numbers(missing)}); "
                            f"keys found: {found}. {hint}.")


# --------------------------------------------------------------------------- hub


def load_hub(name: str, config: str | None, revision: str | None
             ) -> tuple[dict[str, pd.DataFrame], list[str] | None]:
    """Download (or reuse the local cache of) a hub dataset.

    Returns one DataFrame per split and the ClassLabel names of its ``label`` column (if it
    has one). Needs a network on first use. Offline, ``datasets`` raises ``ConnectionError``:
    it is turned into a :class:`DataError` that says what to do instead.
    """
    try:
        loaded = datasets.load_dataset(name, config, revision=revision)
    except Exception as exc:  # network, auth, missing config: all end the same way for the user
        offline = bool(getattr(datasets.config, "HF_HUB_OFFLINE", False))
        hint = ("the hub is unreachable (offline mode is on: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE). "
                "Fix: run once with a network so the dataset is cached, or download the files and use "
                "`source: glue` (GLUE TSV folder) or `source: csv|json|jsonl` with `path`"
                if offline or isinstance(exc, (ConnectionError, OSError)) else
                "Fix: check `hub_name`, `hub_config` and `hub_revision`")
        raise DataError(f"cannot load hub dataset {name!r} (config {config!r}, revision {revision!r}): "
                        f"{_one_line(exc)}; {hint}.") from exc
    label_names = None
    for split in loaded.values():
        feature = split.features.get("label")
        if getattr(feature, "names", None):
            label_names = list(feature.names)
        break
    return {split: ds.to_pandas() for split, ds in loaded.items()}, label_names


# --------------------------------------------------------------------------- helpers


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def row_numbers(rows: list[int], limit: int = 10) -> str:
    """Row numbers for an error message: the first ``limit`` of ``rows``, comma-separated, and how many in all
    when there are more (``"3, 7, ... (12 in all)"``)."""
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f", ... ({len(rows)} in all)" if len(rows) > limit else "")
