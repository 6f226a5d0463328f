"""``redflow config schema`` and ``redflow config docs``: the retrain config's JSON schema for editors and its
reference page, both read from the config models (:mod:`flows.config_docs`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import guard, note

config_app = typer.Typer(no_args_is_help=True, help="The retrain config: its JSON schema and its reference page.")


@config_app.command("schema")
def schema() -> None:
    """Print the retrain config's JSON schema, for editors (how to use it: docs/configuration.md)."""
    from flows.config_docs import json_schema  # lazy: loads the config models (pydantic, optuna); --help stays instant

    with guard():
        typer.echo(json.dumps(json_schema(), indent=2))


@config_app.command("docs")
def docs(output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the page to this file "
                                                 "(docs/configuration.md in a checkout) instead of stdout.")) -> None:
    """Print the configuration reference (every field's type, default and meaning) as Markdown."""
    from flows.config_docs import render  # lazy: loads the config models (pydantic, optuna); --help stays instant

    with guard():
        page = render()
        if output is None:
            typer.echo(page, nl=False)
        else:
            output.write_text(page)
            note(f"wrote {output}")
