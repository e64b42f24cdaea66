"""Optional LLM judge of generated reports (M3D's "LLM judge 0-100", docs/reference.md C).

Any OpenAI-compatible chat-completions endpoint given by URL (``eval.judge.url``, e.g.
``http://127.0.0.1:8000/v1``); the model name and an optional bearer key come from the config (the
key is read from the environment variable named by ``api_key_env``, never stored). Deterministic
request (temperature 0); the first number 0-100 in the reply is the score, else the item is
recorded as unscored (``None``) and counted in the note.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from typing import Sequence

PROMPT = ("You are grading a generated radiology report against the reference report. "
          "Score how well the generated report matches the reference findings (anatomy, "
          "abnormality, location, size) from 0 (unrelated) to 100 (equivalent). Reply with the "
          "number only.\n\nReference report:\n{reference}\n\nGenerated report:\n{prediction}")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


class LLMJudge:
    """Scores (prediction, reference) pairs 0-100 through an OpenAI-compatible endpoint."""

    def __init__(self, url: str, model: str = "judge", api_key_env: str | None = None,
                 timeout: float = 30.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"eval.judge.url={url!r}: expected an http(s) URL of an "
                             "OpenAI-compatible API (e.g. http://127.0.0.1:8000/v1)")
        self.endpoint = url.rstrip("/") + "/chat/completions"
        self.model, self.timeout = model, float(timeout)
        self.key = os.environ.get(api_key_env) if api_key_env else None

    def score(self, prediction: str, reference: str) -> float | None:
        body = {"model": self.model, "temperature": 0, "max_tokens": 8,
                "messages": [{"role": "user",
                              "content": PROMPT.format(reference=reference, prediction=prediction)}]}
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        request = urllib.request.Request(self.endpoint, data=json.dumps(body).encode(),
                                         headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            reply = json.loads(response.read().decode())
        try:
            text = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError(f"LLM judge at {self.endpoint}: reply without "
                             f"choices[0].message.content: {str(reply)[:200]}") from err
        match = _NUMBER.search(str(text))
        if match is None:
            return None
        return min(100.0, max(0.0, float(match.group())))

    def score_all(self, predictions: Sequence[str], references: Sequence[str]) -> list[float | None]:
        return [self.score(p, r) for p, r in zip(predictions, references)]
