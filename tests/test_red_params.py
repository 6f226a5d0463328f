"""Parameter counts from configs alone (meta device): the paper's numbers."""
from __future__ import annotations

import pytest

from red import EditConfig, count_parameters


@pytest.mark.parametrize("model,expected", [
    ("roberta-base", 18_432), ("roberta-large", 49_152), ("gpt2-medium", 49_152),
    ("gpt2-large", 92_160), ("t5-base", 36_864), ("meta-llama/Llama-2-7b-hf", 262_144),
])
def test_red_counts_match_the_paper(model, expected):
    assert count_parameters(model)["red"] == expected


def test_llama_ratios_against_lora_and_full():
    counts = count_parameters("meta-llama/Llama-2-7b-hf")
    assert counts["full"] // counts["red"] == 25_705  # "25,700x fewer than full fine-tuning"
    assert count_parameters("meta-llama/Llama-2-7b-hf", lora_rank=16)["lora_r16_qv"] == 8_388_608  # paper: 8.39M
    assert count_parameters("meta-llama/Llama-2-7b-hf", lora_rank=16)["lora_r16_qv"] // counts["red"] == 32


def test_counts_from_a_local_config_and_checkpoint(minilm_path):
    counts = count_parameters(minilm_path)
    assert counts["red"] == 2 * 384 * 6
    assert count_parameters(minilm_path, EditConfig(position="ffn+attn"))["red"] == 4 * 384 * 6


def test_reft_counts_from_config():
    # 12 blocks x (prefix + suffix interventions) x (R and W: 2 * rank * hidden, plus b: rank)
    assert count_parameters("roberta-base", EditConfig(method="loreft", rank=4))["loreft"] == 12 * 2 * (2 * 4 * 768 + 4)
    shared = count_parameters("roberta-base", EditConfig(method="loreft", rank=4, share_weights=True))["loreft"]
    assert shared == 12 * (2 * 4 * 768 + 4)
