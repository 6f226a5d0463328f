"""Judges: an OpenAI-compatible endpoint (a real HTTP server on 127.0.0.1) and a local reward model."""
from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from tasks.evaluate import ChatJudge, JudgeError, JudgeUnavailableError, RewardModelJudge, parse_choice




class JudgeServer:
    """A tiny /v1/chat/completions server. ``script`` lists (status, delay_s) answers for the first requests."""

    def __init__(self, decide):
        self.decide = decide          # prompt text -> reply text
        self.script: list[tuple[int, float]] = []
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "body": body,
                                            "authorization": self.headers.get("Authorization")})
                    status, delay = server.script.pop(0) if server.script else (200, 0.0)
                time.sleep(delay)
                if self.path != "/v1/chat/completions":
                    status = 404
                if status != 200:
                    payload = json.dumps({"error": {"message": f"status {status}"}}).encode()
                else:
                    reply = server.decide(body["messages"][-1]["content"])
                    payload = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant",
                                                                              "content": reply}}]}).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and hung up
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def competent(prompt: str) -> str:
    """Prefers the output that contains GOOD, wherever it is shown."""
    a = prompt.split("## Output (a)")[1].split("## Output (b)")[0]
    return "Output (a)" if "GOOD" in a else "Output (b)"


ITEMS = [(f"item-{i}", "ref GOOD" if i % 3 == 0 else "ref bad", "model bad" if i % 3 == 0 else "model GOOD")
         for i in range(12)]


def _judge(server, **kw):
    kw.setdefault("backoff", 0.01)
    return ChatJudge(base_url=server.base_url, model="judge-model", api_key_env="REDFLOW_TEST_JUDGE_KEY", **kw)


# ---- OpenAI-compatible endpoint -------------------------------------------------------------
def test_chat_judge_maps_answers_back_through_the_random_order(monkeypatch):
    monkeypatch.setenv("REDFLOW_TEST_JUDGE_KEY", "sk-test")
    with JudgeServer(competent) as server:
        judge = _judge(server, seed=7)
        prefs = judge.judge(*zip(*ITEMS))
    assert prefs == [1.0 if i % 3 == 0 else 2.0 for i in range(12)]  # right whatever the order shown
    swaps = judge.swaps(12)
    assert 0 < sum(swaps) < 12  # both orders were used
    prompts = {int(re.search(r"item-(\d+)", p).group(1)): p
               for p in (r["body"]["messages"][-1]["content"] for r in server.requests)}
    shown_first = ["model" in prompts[i].split("## Output (a)")[1].split("## Output (b)")[0] for i in range(12)]
    assert shown_first == swaps
    first = server.requests[0]
    assert first["authorization"] == "Bearer sk-test" and first["body"]["model"] == "judge-model"
    assert first["body"]["temperature"] == 0.0


def test_position_bias_is_turned_into_noise_not_a_verdict():
    with JudgeServer(lambda prompt: "Output (a)") as server:  # always picks the first output shown
        judge = _judge(server, seed=1, concurrency=1)
        prefs = judge.judge(*zip(*ITEMS))
    assert prefs == [2.0 if s else 1.0 for s in judge.swaps(len(ITEMS))]
    assert 1.0 in prefs and 2.0 in prefs


def test_transient_503_and_timeouts_are_retried():
    with JudgeServer(competent) as server:
        server.script = [(503, 0.0), (503, 0.0), (200, 0.6)]  # two 503s, then a reply slower than the timeout
        judge = _judge(server, timeout=0.3, max_retries=4, concurrency=1)
        assert judge.judge(["i"], ["ref bad"], ["model GOOD"]) == [2.0]
    assert judge.stats["retries"] == 3 and judge.stats["requests"] == 4


def test_unreachable_endpoint_fails_clearly_naming_the_url():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = ChatJudge(base_url=f"http://127.0.0.1:{port}/v1/", model="m", max_retries=1, backoff=0.01, timeout=2)
    with pytest.raises(JudgeUnavailableError) as err:
        judge.judge(["i"], ["a"], ["b"])
    message = str(err.value)
    assert f"http://127.0.0.1:{port}/v1/chat/completions" in message and "2 attempts" in message
    assert "server is running" in message and "ConnectError" in message


def test_client_errors_are_not_retried_and_name_the_key_variable():
    with JudgeServer(competent) as server:
        server.script = [(401, 0.0)]
        with pytest.raises(JudgeError, match=r"\$REDFLOW_TEST_JUDGE_KEY"):
            _judge(server).judge(["i"], ["a"], ["b"])
        assert len(server.requests) == 1
        server.script = [(400, 0.0)]
        with pytest.raises(JudgeError, match="rejected the request for model 'judge-model'"):
            _judge(server).judge(["i"], ["a"], ["b"])


def test_unparseable_replies_become_nan_and_are_counted():
    with JudgeServer(lambda prompt: "I cannot decide between these.") as server:
        judge = _judge(server)
        prefs = judge.judge(["i"], ["a"], ["b"])
    assert prefs[0] != prefs[0] and judge.stats["unparsed"] == 1


@pytest.mark.parametrize("reply, choice", [
    ("Output (a)", "a"), ("output (b).", "b"), ("b", "b"), ("(a)", "a"), ("**Output (b)**", "b"),
    ("It's a tie.", "tie"), ("Output (a) and Output (b) are equally good", "tie"), ("Neither output answers", None),
])
def test_parse_choice(reply, choice):
    assert parse_choice(reply) == choice


# ---- reward model ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reward_judge(minilm_path):
    """A tiny random reward model (one regression output) with a real BERT tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig

    tok = AutoTokenizer.from_pretrained(minilm_path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(
        BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=32, num_labels=1)).eval()
    return model, tok


OUTS = ["Paris is the capital of France.", "I don't know.", "The answer is 42 because of reasons given above.",
        "Yes", "Photosynthesis turns light into chemical energy in plants."]


def test_reward_judge_is_antisymmetric_and_ties_identical_answers(reward_judge):
    model, tok = reward_judge
    judge = RewardModelJudge(model, tok, batch_size=2)
    instr = ["Answer the question."] * len(OUTS)
    ref, mod = OUTS, OUTS[1:] + OUTS[:1]
    forward = judge.judge(instr, ref, mod)
    backward = judge.judge(instr, mod, ref)
    assert forward == [3.0 - p for p in backward]
    assert set(forward) <= {1.0, 2.0} and 1.0 in forward and 2.0 in forward
    assert judge.judge(instr, OUTS, OUTS) == [1.5] * len(OUTS)


def test_reward_scores_do_not_depend_on_batch_padding(reward_judge):
    model, tok = reward_judge
    instr = ["Answer the question."] * len(OUTS)
    one = RewardModelJudge(model, tok, batch_size=1).score(instr, OUTS)
    many = RewardModelJudge(model, tok, batch_size=5).score(instr, OUTS)
    assert many == pytest.approx(one, abs=1e-5)


def test_soft_reward_preferences_are_bradley_terry_probabilities(reward_judge):
    model, tok = reward_judge
    hard = RewardModelJudge(model, tok)
    soft = RewardModelJudge(model, tok, mode="soft")
    instr = ["Answer the question."] * 4
    h, s = hard.judge(instr, OUTS[:4], OUTS[1:5]), soft.judge(instr, OUTS[:4], OUTS[1:5])
    assert all(1.0 < p < 2.0 for p in s)
    assert [p > 1.5 for p in s] == [p == 2.0 for p in h]
