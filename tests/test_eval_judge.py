"""The LLM judge against a fake OpenAI-compatible server on loopback (bounded; stops by itself)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from zoo.evaluation.judge import LLMJudge
from zoo.evaluation.tasks import EvalContext, caption


class FakeChat(BaseHTTPRequestHandler):
    replies = []
    requests = []

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeChat.requests.append((self.path, body, self.headers.get("Authorization")))
        content = FakeChat.replies.pop(0)
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = HTTPServer(("127.0.0.1", 0), FakeChat)
    httpd.timeout = 5
    FakeChat.requests.clear()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def test_judge_scores_through_chat_completions(server, monkeypatch):
    monkeypatch.setenv("FAKE_JUDGE_KEY", "k")
    FakeChat.replies[:] = ["Score: 73", "150", "no idea"]
    judge = LLMJudge(server, model="tiny-judge", api_key_env="FAKE_JUDGE_KEY", timeout=5)
    assert judge.score_all(["a", "b", "c"], ["r", "r", "r"]) == [73.0, 100.0, None]
    path, body, auth = FakeChat.requests[0]
    assert path == "/v1/chat/completions"
    assert body["model"] == "tiny-judge" and body["temperature"] == 0
    assert auth == "Bearer k"


class EchoModel:
    """Generates the reference report back (a perfect report writer)."""

    training = False

    def generate(self, samples, max_new_tokens=8):
        return [s["answer"] for s in samples]


def test_caption_task_reports_the_judge_mean(server):
    FakeChat.replies[:] = ["90", "70"]
    samples = [{"meta": {"id": f"c{i}"}, "task": "caption", "answer": f"no lesion {i}"}
               for i in range(2)]
    result = caption(EchoModel(), samples, EvalContext(judge=LLMJudge(server, timeout=5)))
    assert result.metrics["llm_judge"] == pytest.approx(80.0)
    assert [r["judge"] for r in result.records] == [90.0, 70.0]
    assert result.metrics["bleu1"] == pytest.approx(1.0)
    assert "BERTScore skipped" in result.note


def test_judge_rejects_a_non_http_url():
    with pytest.raises(ValueError, match="eval.judge.url"):
        LLMJudge("127.0.0.1:8000")
