"""What pyproject.toml promises is true: the dependency floors are releases that have what redflow uses."""
from __future__ import annotations

import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _requirement(name: str) -> Requirement:
    for line in PYPROJECT.read_text().splitlines():
        match = re.match(r'\s*"([^"]+)",?\s*$', line)
        if match and Requirement(match.group(1)).name == name:
            return Requirement(match.group(1))
    raise AssertionError(f"{name} is not a dependency in {PYPROJECT}")


def test_the_transformers_floor_has_float_warmup_steps_and_the_dtype_argument():
    """tasks/training/trainer.py passes ``warmup_steps=<ratio below 1>`` (a ratio since transformers 5.0, PR #41326; 4.x
    takes it as 0 steps: no warmup, silently) and red/pretrained.py ``from_pretrained(dtype=...)`` (4.56+)."""
    spec = _requirement("transformers").specifier
    assert Version("5.0.0") in spec
    assert Version("4.57.6") not in spec and Version("4.45.0") not in spec


def test_the_fuzz_library_is_a_test_dependency():
    text = PYPROJECT.read_text()
    test_extra = re.search(r"^test = \[(.*)\]$", text, re.M).group(1)
    assert "hypothesis" in test_extra
