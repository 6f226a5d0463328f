"""AlpacaEval-style runs: generation, alpaca_eval's file format, win rates and the length-controlled win rate."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from red import EditConfig, attach
from tasks.evaluate import (ChatJudge, EvalReport, RewardModelJudge, alpaca_report, generate_answers, judge_outputs,
                            length_controlled_win_rate, load_instruction_set, run_alpaca_eval, win_rate,
                            write_model_outputs)




# ---- win rate -------------------------------------------------------------------------------
def test_win_rate_follows_alpaca_eval():
    prefs = [1.0, 2.0, 1.5, 2.0, math.nan, 0.0, 1.8]  # 0 is a draw, NaN (unparsed) is dropped
    p = np.array([0.0, 1.0, 0.5, 1.0, 0.5, 0.8])
    out = win_rate(prefs)
    assert out["win_rate"] == pytest.approx(p.mean() * 100)
    assert out["standard_error"] == pytest.approx(p.std(ddof=1) / math.sqrt(6) * 100)
    assert (out["n_wins"], out["n_wins_base"], out["n_draws"], out["n_total"], out["n_dropped"]) == (3, 1, 2, 6, 1)
    assert out["discrete_win_rate"] == pytest.approx((3 + 2 * 0.5) / 6 * 100)  # 1.8 rounds to a win
    with pytest.raises(ValueError, match="no valid preferences"):
        win_rate([math.nan])


def _length_judged(n=300, seed=0, length_bias=True):
    rng = np.random.default_rng(seed)
    ref_len = rng.integers(200, 800, n)
    model_len = ref_len + rng.normal(250, 300, n).astype(int)  # the model is mostly more verbose
    if length_bias:  # a judge that only looks at length
        prefs = np.where(model_len > ref_len, 2.0, 1.0)
    else:  # a model that wins 70% of the time whatever its length
        prefs = np.where(rng.random(n) < 0.7, 2.0, 1.0)
    return prefs, model_len, ref_len


def test_length_control_removes_a_win_that_comes_only_from_length():
    prefs, model_len, ref_len = _length_judged()
    raw = win_rate(prefs)["win_rate"]
    lc = length_controlled_win_rate(prefs, model_len, ref_len, n_bootstrap=50)
    assert raw > 75
    assert 35 < lc["length_controlled_win_rate"] < 65
    assert lc["glm_weights"]["tanh_std_delta_len"] > 1  # longer wins, according to the fit
    # a judge that looks only at length separates the data perfectly: alpaca_eval's L1 penalty alone bounds the
    # length weight, and the bootstrap spread is wide (about 20 points here)
    assert 0 < lc["lc_standard_error"] < 30


def test_length_control_keeps_a_win_that_does_not_depend_on_length():
    prefs, model_len, ref_len = _length_judged(length_bias=False)
    raw = win_rate(prefs)["win_rate"]
    lc = length_controlled_win_rate(prefs, model_len, ref_len, n_bootstrap=50)
    assert abs(lc["length_controlled_win_rate"] - raw) < 6


@pytest.mark.parametrize("C", [100.0, 0.05])
def test_glm_solver_matches_alpaca_eval_s_sklearn_formulation(C):
    """alpaca_eval fits soft labels by duplicating rows (win weighted y, loss weighted 1 - y) in sklearn's
    L1-penalised liblinear logistic regression without intercept (glm_winrate.fit_LogisticRegressionCV)."""
    from sklearn.linear_model import LogisticRegression

    from tasks.evaluate.alpaca import fit_soft_logistic

    rng = np.random.default_rng(1)
    X = np.stack([np.ones(80), np.tanh(rng.normal(size=80)), rng.normal(size=80)], axis=1)
    y = np.clip(0.55 + 0.3 * X[:, 1] + rng.choice([-0.3, 0.0, 0.3], size=80), 0, 1)  # the third column is noise
    ours = fit_soft_logistic(X, y, C=C)
    sk = LogisticRegression(C=C, penalty="l1", solver="liblinear", fit_intercept=False, random_state=123,
                            tol=1e-12, max_iter=100_000).fit(
        np.concatenate([X, X]), np.r_[np.ones(80), np.zeros(80)], sample_weight=np.r_[y, 1 - y]).coef_[0]
    assert ours == pytest.approx(sk, abs=2e-4)
    if C < 1:  # a strong L1 penalty sets the noise feature's weight to exactly 0 (an L2 penalty never does)
        assert ours[2] == 0.0 and sk[2] == 0.0


def test_instruction_difficulty_enters_the_glm_when_given():
    prefs, model_len, ref_len = _length_judged(length_bias=False)
    difficulty = np.linspace(-1, 1, len(prefs))
    lc = length_controlled_win_rate(prefs, model_len, ref_len, difficulty=difficulty, n_bootstrap=0)
    assert set(lc["glm_weights"]) == {"intercept", "tanh_std_delta_len", "instruction_difficulty"}
    assert math.isnan(lc["lc_standard_error"])


# ---- files ----------------------------------------------------------------------------------
def test_model_outputs_are_written_in_alpaca_eval_format(tmp_path):
    records = [{"instruction": "Say hi", "output": "hi", "generator": "red-llama", "dataset": "helpful_base"},
               {"instruction": "Add 2+2", "output": "4", "generator": "red-llama", "extra": "dropped"}]
    path = write_model_outputs(records, tmp_path / "model_outputs.json")
    data = json.loads(path.read_text())
    assert data == [{"instruction": "Say hi", "output": "hi", "generator": "red-llama", "dataset": "helpful_base"},
                    {"instruction": "Add 2+2", "output": "4", "generator": "red-llama"}]


def test_instruction_sets_load_from_json_lists_and_json_lines(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "Sum", "input": "2 and 3", "output": "5"}]))
    (tmp_path / "b.json").write_text('{"instruction": "x", "output": "y"}\n{"instruction": "z", "output": "w"}\n')
    assert load_instruction_set(tmp_path / "a.json") == [{"instruction": "Sum\n\n2 and 3", "output": "5"}]
    assert [r["instruction"] for r in load_instruction_set(tmp_path / "b.json", limit=1)] == ["x"]


def test_shared_alpaca_eval_references_load(shared_data):
    refs = load_instruction_set(shared_data / "alpaca_eval" / "text_davinci_003_outputs.json")
    assert len(refs) == 805 and refs[0]["generator"] == "text_davinci_003"
    assert {r["dataset"] for r in refs} == {"helpful_base", "koala", "oasst", "selfinstruct", "vicuna"}
    assert len(load_instruction_set(shared_data / "instructions" / "ultrafeedback_1k.json")) == 1000


# ---- generation -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def generator(minilm_path):
    """A tiny random GPT-2 over the MiniLM vocabulary: answers are real word pieces."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(minilm_path)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=2, n_head=2, n_positions=256,
                                       bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                                       pad_token_id=tok.pad_token_id)).eval()
    return model, tok


INSTRUCTIONS = ["Name a primary color.", "Write a very long and detailed story about a dragon who learns to code.",
                "What is 2 + 2?", "Translate 'hello' into French, please.", "List three fruits."]


def test_batched_generation_equals_one_by_one_and_keeps_the_order(generator):
    model, tok = generator
    side = tok.padding_side
    one = generate_answers(model, tok, INSTRUCTIONS, max_new_tokens=6, batch_size=1)
    batched = generate_answers(model, tok, INSTRUCTIONS, max_new_tokens=6, batch_size=3)
    assert batched == one and all(a for a in one)
    assert tok.padding_side == side  # left padding was set on a copy


def test_paper_decoding_never_repeats_a_5gram(generator):
    model, tok = generator
    answer = generate_answers(model, tok, ["Repeat after me: la la la la la la"], max_new_tokens=40)[0]
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    grams = [tuple(ids[i:i + 5]) for i in range(len(ids) - 4)]
    assert len(grams) == len(set(grams))


def test_alpaca_run_end_to_end_with_a_reward_model_judge(generator, tmp_path):
    from transformers import AutoModelForSequenceClassification, BertConfig

    model, tok = generator
    edited = attach(model, EditConfig())
    refs = [{"instruction": i, "output": f"A reference answer number {k}.", "generator": "text_davinci_003",
             "dataset": "helpful_base" if k % 2 else "koala"} for k, i in enumerate(INSTRUCTIONS)]
    torch.manual_seed(1)
    reward = AutoModelForSequenceClassification.from_config(
        BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=32, num_labels=1)).eval()
    judge = RewardModelJudge(reward, tok, name="tiny-reward")
    report = run_alpaca_eval(edited, tok, refs, judge=judge, generator="red-gpt2", out_dir=tmp_path,
                             max_new_tokens=8, batch_size=2, n_bootstrap=20)
    outputs = json.loads((tmp_path / "model_outputs.json").read_text())
    assert [o["instruction"] for o in outputs] == INSTRUCTIONS
    assert {tuple(sorted(o)) for o in outputs} == {("dataset", "generator", "instruction", "output")}
    annotations = json.loads((tmp_path / "annotations.json").read_text())
    assert {a["preference"] for a in annotations} <= {1.0, 1.5, 2.0}
    assert annotations[0]["generator_1"] == "text_davinci_003" and annotations[0]["annotator"] == "tiny-reward"

    assert report.kind == "alpaca" and report.primary == "win_rate" and 0 <= report.value <= 100
    assert {"lc_win_rate", "avg_length", "n_total", "win_rate/helpful_base", "win_rate/koala"} <= set(report.metrics)
    assert set(report.stderr) == {"win_rate", "lc_win_rate"}
    assert "+ red (attached" in report.model
    again = EvalReport.from_json(tmp_path / "report.json")
    assert again.metrics == pytest.approx(report.metrics, nan_ok=True)
    assert (tmp_path / "report.md").read_text().startswith("### alpaca_eval (alpaca)")


def test_without_a_judge_outputs_are_written_for_the_official_cli(generator, tmp_path):
    model, tok = generator
    report = run_alpaca_eval(model, tok, [{"instruction": i} for i in INSTRUCTIONS[:2]], out_dir=tmp_path,
                             max_new_tokens=4)
    assert report.primary is None and report.details["judged"] is False
    assert len(json.loads((tmp_path / "model_outputs.json").read_text())) == 2


def test_annotations_from_a_chat_judge_give_a_report(tmp_path):
    """Re-judging saved outputs: judge_outputs + alpaca_report, here with an endpoint that always prefers (b)."""
    from test_eval_judges import JudgeServer

    refs = [{"instruction": f"q{i}", "output": "short", "generator": "ref"} for i in range(8)]
    outs = [{"instruction": f"q{i}", "output": "a longer answer" * (i + 1), "generator": "m"} for i in range(8)]
    with JudgeServer(lambda prompt: "Output (b)") as server:
        judge = ChatJudge(server.base_url, "m", api_key_env=None, seed=3)
        annotations = judge_outputs(outs, refs, judge)
    report = alpaca_report(annotations, n_bootstrap=10)
    expected = np.mean([0.0 if s else 1.0 for s in judge.swaps(8)]) * 100
    assert report.value == pytest.approx(expected)
    with pytest.raises(ValueError, match="instruction mismatch"):
        judge_outputs(outs[::-1], refs, judge)
