"""The LLM judge against a fake OpenAI-compatible server on loopback (bounded; stops by itself)."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer

import pytest

from zoo.errors import ConfigError
from zoo.evaluation.judge import JudgeError, LLMJudge
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


class Trickle(BaseHTTPRequestHandler):
    """Answers 200 with a body it sends one byte every 0.3 s (a stuck judge)."""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        for _ in range(1000):
            try:
                self.wfile.write(b" ")
                self.wfile.flush()
            except OSError:
                return
            time.sleep(0.3)

    def log_message(self, *args):
        pass


class Flaky(FakeChat):
    """503 for the first ``failures`` requests, then FakeChat's answers."""

    failures = 0

    def do_POST(self):  # noqa: N802
        if Flaky.failures > 0:
            Flaky.failures -= 1
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_POST()


def serve(handler):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/v1"


def test_the_deadline_covers_the_whole_request_not_each_read():
    httpd, url = serve(Trickle)
    try:
        judge = LLMJudge(url, timeout=1, retries=1, backoff=0.01)
        start = time.monotonic()
        with pytest.raises(JudgeError, match=r"no reply after 2 attempt\(s\) of at most 1 s each "
                                             r"\(TimeoutError: no complete reply within 1 s\)"):
            judge.score("a", "b")
        assert time.monotonic() - start < 4  # two attempts of 1 s, not 1000 reads of 0.3 s
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_retries_with_backoff_then_succeeds():
    Flaky.failures = 2
    FakeChat.requests.clear()
    FakeChat.replies[:] = ["64"]
    httpd, url = serve(Flaky)
    try:
        assert LLMJudge(url, timeout=5, retries=2, backoff=0.01).score("a", "b") == 64.0
        Flaky.failures = 5
        with pytest.raises(JudgeError, match=r"3 attempt\(s\).*HTTP 503"):
            LLMJudge(url, timeout=5, retries=2, backoff=0.01).score("a", "b")
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_judge_that_is_down_leaves_the_task_not_judged(capsys):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    samples = [{"meta": {"id": f"c{i}"}, "task": "caption", "answer": f"no lesion {i}"}
               for i in range(2)]
    judge = LLMJudge(url, timeout=1, retries=1, backoff=0.01)
    result = caption(EchoModel(), samples, EvalContext(judge=judge))
    assert not result.skipped and result.metrics["bleu1"] == pytest.approx(1.0)
    assert "llm_judge" not in result.metrics
    assert [r["judge"] for r in result.records] == [None, None]
    assert "not judged: LLM judge at" in result.note
    assert "not judged" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs,message", [
    ({"timeout": 0}, "eval.judge.timeout=0"), ({"timeout": "3"}, "eval.judge.timeout='3'"),
    ({"retries": -1}, "eval.judge.retries=-1"), ({"backoff": -1}, "eval.judge.backoff=-1"),
])
def test_bad_judge_settings_are_named(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        LLMJudge("http://127.0.0.1:1/v1", **kwargs)
