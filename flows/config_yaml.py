"""Reading a config file's YAML so that every bad text is a ConfigError naming the file and where, never a crash.

PyYAML's safe loader leaks plain Python exceptions for some texts (``!!bool maybe`` is a KeyError, a
timestamp with month 13 or ``!!int x`` a ValueError) and recurses once per nesting level when it builds
the document (~1,000 levels: RecursionError). Here the text is decoded with the byte offset of any bad
byte, its nesting is measured on PyYAML's event stream (an iterative parser) before anything is built,
and constructor failures carry the line and column of the value.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_DEPTH = 32  # a retrain config nests 4-5 levels (tasks > task > train > edit > list)


class ConfigTextError(ValueError):
    """The config's text cannot be read as YAML; the message names the file and the place."""


class _Loader(yaml.SafeLoader):
    """SafeLoader whose constructor failures are YAML errors with the value's position."""

    def construct_object(self, node, deep=False):  # noqa: ANN001 - PyYAML's signature
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (ValueError, KeyError, TypeError, OverflowError) as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read the value {node.value!r} as {node.tag.rsplit(':', 1)[-1]} ({exc!s})",
                node.start_mark) from exc


def read_yaml(path: Path) -> Any:
    """The YAML document in ``path``; ConfigTextError for bad UTF-8 (with its byte offset), invalid YAML,
    a value its tag cannot hold, or nesting deeper than ``MAX_DEPTH``."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigTextError(f"{path} is not UTF-8 text: byte {exc.start} (line {line}) is {data[exc.start:exc.start + 1]!r}. "
                              "Fix: save the file as UTF-8") from exc
    try:
        depth = 0
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise ConfigTextError(f"{path} nests deeper than {MAX_DEPTH} levels at line {event.start_mark.line + 1}; "
                                          "a retrain config needs about 5. Fix: flatten the file")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigTextError(f"{path} is not valid YAML: {str(exc).replace('<unicode string>', str(path))}") from exc
