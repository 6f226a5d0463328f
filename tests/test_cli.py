"""The redflow command line: clear errors, parameter counts."""
from __future__ import annotations

from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def test_params_prints_red_lora_and_full():
    out = runner.invoke(app, ["params", "meta-llama/Llama-2-7b-hf"], terminal_width=200)
    assert out.exit_code == 0, out.output
    assert "262,144" in out.output and "4,194,304" in out.output and "6,738,415,616" in out.output


def test_params_of_the_packaged_minilm():
    out = runner.invoke(app, ["params", "minilm", "--position", "ffn+attn"], terminal_width=200)
    assert out.exit_code == 0 and "9,216" in out.output


def test_bad_config_exits_2_naming_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base_model: minilm\ntasks:\n  - name: a\n    data: {source: synthetic, task: sentiment}\n"
                   "    train: {epochs: many}\n")
    out = runner.invoke(app, ["retrain", str(bad)], terminal_width=200)
    assert out.exit_code == 2
    assert "epochs" in out.output and "valid number" in out.output


def test_unknown_model_for_params_is_a_clear_error():
    out = runner.invoke(app, ["params", "/no/such/model"], terminal_width=200)
    assert out.exit_code == 2 and "cannot read a config" in out.output
