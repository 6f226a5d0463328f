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


# ---- LoRA targets for every architecture of the table -------------------------------------------
from test_red_heads import CLASSIFIABLE, tiny_base  # noqa: E402 (the tiny configs of every architecture)


@pytest.mark.parametrize("model_type", CLASSIFIABLE)
def test_lora_counts_and_trains_the_query_and_value_projections_of_every_architecture(model_type):
    from peft import LoraConfig, get_peft_model

    from red.params import lora_parameters, lora_targets

    model = tiny_base(model_type)
    count = lora_parameters(model, rank=2)
    assert count > 0
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=2, target_modules=list(lora_targets(model))))
    adapted = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert adapted == count  # the count is what PEFT really trains
    layers = model.config.num_hidden_layers if hasattr(model.config, "num_hidden_layers") else model.config.n_layers
    adapted_modules = {n.rsplit(".lora_", 1)[0] for n, _ in peft_model.named_parameters() if "lora_" in n}
    assert len(adapted_modules) >= layers  # at least one projection per layer (query+value, or the fused one)


def test_lora_refuses_an_architecture_it_has_no_targets_for(make_tiny):
    from red import UnknownArchitectureError
    from red.params import lora_parameters

    model = make_tiny("llama")
    model.config.model_type = "brand-new-arch"
    with pytest.raises(UnknownArchitectureError, match="lora_targets"):
        lora_parameters(model)
    with pytest.raises(UnknownArchitectureError, match="match no module"):
        lora_parameters(model, targets=("query", "value"))


def test_lora_training_adapts_the_table_targets_on_distilbert(tmp_path, minilm_path):
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    from tasks.data import DataSpec, prepare_data
    from tasks.training import TrainConfig, train

    base = tmp_path / "distilbert"
    tok = AutoTokenizer.from_pretrained(minilm_path)
    DistilBertModel(DistilBertConfig(vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=4, hidden_dim=37)
                    ).save_pretrained(base)
    tok.save_pretrained(base)
    data = prepare_data(DataSpec(name="sentiment", source="synthetic", task="sentiment", path=tmp_path / "data",
                                 synthetic={"n_train": 16, "n_dev": 8}), seed=0)
    result = train(data, TrainConfig(model=str(base), method="lora", lora_r=2, epochs=1, batch_size=8, max_length=16),
                   tmp_path / "out")
    assert result.edit_parameters == 2 * 2 * 2 * (32 + 32)  # r * (in + out) on q_lin and v_lin in 2 layers
