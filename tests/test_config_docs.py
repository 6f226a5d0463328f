"""The docs that are read from the code stay true to it: the configuration reference is regenerated and compared,
every config field says what it does, ``redflow config schema`` is a schema editors can use, and every page under
docs/ is reachable from the index with no broken relative link."""
from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from flows import config_docs
from flows.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


class _Yaml12Floats(yaml.SafeLoader):
    """PyYAML reads ``5e-3`` as a string (YAML 1.1); editors' YAML 1.2 parsers, and pydantic, take it as a number."""


_Yaml12Floats.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+(\.[0-9]*)?[eE][-+]?[0-9]+$"),
                                    list("-+0123456789"))


def test_configuration_page_is_generated_from_the_models():
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == config_docs.render(), (
        f"docs/configuration.md is stale (the config models changed). Fix: run `{config_docs.COMMAND}` and commit "
        "docs/configuration.md")


def test_every_config_field_has_a_description_and_a_section():
    undescribed = [f"{model.__name__}.{name}" for model in config_docs.documented_models()
                   for name, field in model.model_fields.items() if not (field.description or "").strip()]
    assert not undescribed, f"fields without Field(description=...): {sorted(undescribed)}"
    assert config_docs.missing_sections() == []
    page = (ROOT / "docs" / "configuration.md").read_text()
    for model in config_docs.documented_models():
        for name in model.model_fields:
            assert f"| `{name}` |" in page, f"{model.__name__}.{name} is not in docs/configuration.md"


def test_a_nested_model_without_a_section_is_refused(monkeypatch):
    """The generator must not leave a new block out silently."""
    monkeypatch.setattr(config_docs, "SECTIONS", tuple(s for s in config_docs.SECTIONS if s.title != "Search"))
    with pytest.raises(ValueError, match=r"TuneConfig.*Fix: add a Section"):
        config_docs.render()


def test_config_schema_prints_a_json_schema_that_checks_configs():
    out = runner.invoke(app, ["config", "schema"])
    assert out.exit_code == 0, out.output
    schema = json.loads(out.stdout)
    assert {"tasks", "base_model", "defaults", "promotion", "co_train"} <= set(schema["properties"])
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in sorted((ROOT / "configs").glob("*.yaml")):  # the shipped configs pass
        raw = yaml.load(path.read_text(), Loader=_Yaml12Floats)  # noqa: S506 - a SafeLoader subclass
        assert [e.message for e in validator.iter_errors(raw)] == [], path.name
    typos = {"base_model": "minilm", "defaults": {"learnig_rate": 0.01, "edit": {"postion": "ffn"}},
             "tasks": [{"name": "a", "data": {"source": "synthetic", "task": "sentiment"},
                        "tune": {"trials": 0}, "train": {"epochs": 0}}]}
    errors = " ".join(e.message for e in validator.iter_errors(typos))
    assert "'learnig_rate' was unexpected" in errors and "'postion' was unexpected" in errors
    assert len(list(validator.iter_errors(typos))) == 4  # and trials 0, epochs 0


def test_config_docs_prints_the_reference():
    out = runner.invoke(app, ["config", "docs"])
    assert out.exit_code == 0, out.output
    assert out.stdout == config_docs.render()


def _pages() -> list[Path]:
    return sorted((ROOT / "docs").glob("*.md"))


def test_the_docs_index_links_every_page_and_the_readme_links_the_index():
    index = (ROOT / "docs" / "README.md").read_text()
    linked = set(re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", index))
    unlinked = [p.name for p in _pages() if p.name != "README.md" and p.name not in linked]
    assert not unlinked, f"docs/README.md does not link {unlinked}. Fix: add one line for each"
    assert "docs/README.md" in (ROOT / "README.md").read_text()


def test_relative_links_in_the_docs_resolve():
    broken = []
    for page in [*_pages(), ROOT / "README.md"]:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # links in code blocks are not links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            path = target.split("#", 1)[0]
            if not path or re.match(r"^[a-z][a-z0-9+.-]*:", path):  # an anchor on the page, or a URL
                continue
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, f"relative links to missing files: {broken}"
