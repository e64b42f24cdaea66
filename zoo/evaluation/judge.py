"""Optional LLM judge of generated reports (M3D's "LLM judge 0-100", docs/reference.md C).

Any OpenAI-compatible chat-completions endpoint given by URL (``eval.judge.url``, e.g.
``http://127.0.0.1:8000/v1``); the model name and an optional bearer key come from the config (the
key is read from the environment variable named by ``api_key_env``, never stored). Deterministic
request (temperature 0); the first number 0-100 in the reply is the score, else the item is
recorded as unscored (``None``) and counted in the note.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import threading
import time
from typing import Sequence
from urllib.parse import urlsplit

from zoo.errors import ConfigError, ZooError

PROMPT = ("You are grading a generated radiology report against the reference report. "
          "Score how well the generated report matches the reference findings (anatomy, "
          "abnormality, location, size) from 0 (unrelated) to 100 (equivalent). Reply with the "
          "number only.\n\nReference report:\n{reference}\n\nGenerated report:\n{prediction}")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
RETRY_STATUS = (429, 500, 502, 503, 504)


class JudgeError(ZooError):
    """The judge gave no usable reply (down, too slow, refusing): one line with the reason."""


class LLMJudge:
    """Scores (prediction, reference) pairs 0-100 through an OpenAI-compatible endpoint.

    ``timeout``: seconds for one whole request (connect, send, every byte of the reply), enforced
    by closing the connection at the deadline; ``retries`` further attempts after a failed one
    (connection error, deadline, HTTP 429/5xx), waiting ``backoff * 2**i`` seconds before attempt
    ``i + 1``. When every attempt fails :class:`JudgeError` says why in one line.
    """

    def __init__(self, url: str, model: str = "judge", api_key_env: str | None = None,
                 timeout: float = 30.0, retries: int = 2, backoff: float = 1.0) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"eval.judge.url={url!r}: expected an http(s) URL of an "
                              "OpenAI-compatible API (e.g. http://127.0.0.1:8000/v1)")
        for key, value, low in (("timeout", timeout, 0.0), ("backoff", backoff, -1e-12)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > low:
                raise ConfigError(f"eval.judge.{key}={value!r}: expected a number "
                                  f"{'> 0' if key == 'timeout' else '>= 0'} (seconds)")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"eval.judge.retries={retries!r}: expected an integer >= 0")
        self.endpoint = url.rstrip("/") + "/chat/completions"
        self.model, self.timeout = model, float(timeout)
        self.retries, self.backoff = retries, float(backoff)
        self.key = os.environ.get(api_key_env) if api_key_env else None

    def _post(self, payload: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """One request with a deadline for the whole exchange: (HTTP status, body)."""
        parts = urlsplit(self.endpoint)
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = kind(parts.hostname or "localhost", parts.port, timeout=self.timeout)
        expired, sockets = threading.Event(), []

        def expire() -> None:
            expired.set()
            for sock in sockets:  # the response keeps reading from this socket
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked read
                except OSError:
                    pass

        timer = threading.Timer(self.timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            conn.connect()
            sockets.append(conn.sock)
            if expired.is_set():
                raise TimeoutError
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            conn.request("POST", path, body=payload, headers=headers)
            response = conn.getresponse()
            body = response.read()
            if expired.is_set():
                raise TimeoutError
            return response.status, body
        except (OSError, http.client.HTTPException) as err:
            if expired.is_set() or isinstance(err, TimeoutError):
                raise TimeoutError(f"no complete reply within {self.timeout:g} s") from err
            raise
        finally:
            timer.cancel()
            conn.close()

    def request(self, body: dict) -> dict:
        """POST ``body`` with bounded retries; the parsed JSON reply or JudgeError."""
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        payload = json.dumps(body).encode()
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                status, raw = self._post(payload, headers)
            except (OSError, http.client.HTTPException) as err:
                problem = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
                continue
            if status in RETRY_STATUS:
                problem = f"HTTP {status}"
                continue
            if status != 200:
                raise JudgeError(f"LLM judge at {self.endpoint}: HTTP {status}: "
                                 f"{raw[:200].decode(errors='replace')!r}")
            try:
                return json.loads(raw.decode())
            except ValueError as err:
                raise JudgeError(f"LLM judge at {self.endpoint}: reply is not JSON: "
                                 f"{raw[:200].decode(errors='replace')!r}") from err
        raise JudgeError(f"LLM judge at {self.endpoint}: no reply after {self.retries + 1} "
                         f"attempt(s) of at most {self.timeout:g} s each ({problem})")

    def score(self, prediction: str, reference: str) -> float | None:
        reply = self.request({"model": self.model, "temperature": 0, "max_tokens": 8,
                              "messages": [{"role": "user", "content": PROMPT.format(
                                  reference=reference, prediction=prediction)}]})
        try:
            text = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as err:
            raise JudgeError(f"LLM judge at {self.endpoint}: reply without "
                             f"choices[0].message.content: {str(reply)[:200]}") from err
        match = _NUMBER.search(str(text))
        if match is None:
            return None
        return min(100.0, max(0.0, float(match.group())))

    def score_all(self, predictions: Sequence[str], references: Sequence[str]) -> list[float | None]:
        return [self.score(p, r) for p, r in zip(predictions, references)]
