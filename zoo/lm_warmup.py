"""Language-model warm-up: pretrain a job's language model on the training split's text alone.

M3D-LaMed starts from a pretrained LLM; the zoo's tiny test LMs start from random weights, and
then spend the multimodal budget learning the benchmark's language before they read the image
(docs/evaluation.md). ``lm_warmup`` (config key, null = off) trains every parameter of
``model.lm`` on the prompt + answer text of the train split's items of ``tasks`` (no image, every
token a label, via ``model.text_loss``) for ``steps`` AdamW steps at constant ``lr``, before the
recipe's stages. It never reads an image or a test item.

The result is cached: the key hashes the LM's initial weights, the settings, the split hash and
the seed, so every job of a sweep with the same LM and data shares one warm-up (computed once)
and a cached and a fresh warm-up give the same weights. Jobs running in parallel that need the
same warm-up wait for the first one's (a lock file beside the cache entry) instead of repeating
it. The global RNG state is left untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from zoo.errors import ConfigError
from zoo.types import TextModel

FIELDS = ("steps", "batch_size", "lr", "tasks", "cache_dir")


def check_settings(cfg: Any) -> dict[str, Any]:
    """The ``lm_warmup`` settings as a plain dict; raises naming a missing or bad key."""
    from omegaconf import OmegaConf

    settings = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg
    unknown = sorted(set(settings) - set(FIELDS))
    missing = sorted(set(FIELDS) - set(settings))
    if unknown or missing:
        wrong = "; ".join(f"{what} key(s) {', '.join(keys)}" for what, keys
                          in (("unknown", unknown), ("missing", missing)) if keys)
        raise ConfigError(f"lm_warmup: {wrong}; expected {', '.join(sorted(FIELDS))}")
    for key in ("steps", "batch_size"):
        if not isinstance(settings[key], int) or settings[key] < 1:
            raise ConfigError(f"lm_warmup.{key} must be a positive int, got {settings[key]!r}")
    if not float(settings["lr"]) > 0:
        raise ConfigError(f"lm_warmup.lr must be > 0, got {settings['lr']!r}")
    if not settings["tasks"]:
        raise ConfigError("lm_warmup.tasks must name at least one task with text answers")
    return settings


def cache_key(model: Any, settings: dict[str, Any], split_hash: str, seed: int) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.lm.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    run = {k: v for k, v in settings.items() if k != "cache_dir"}
    digest.update(json.dumps([run, split_hash, seed, model.collator.template,
                              model.collator.chat_template],
                             sort_keys=True).encode())
    return digest.hexdigest()[:16]


def text_items(data: Any, tasks: list[str]) -> list[dict[str, Any]]:
    """Prompt / answer of the train split's items of ``tasks`` (text only: no image loaded)."""
    items = [{"task": i["task"], "prompt": i.get("prompt", ""), "answer": i["answer"]}
             for i in data.items("train") if i["task"] in tasks and isinstance(i.get("answer"), str)]
    if not items:
        raise ConfigError(f"lm_warmup.tasks={tasks}: the train split has no item of these tasks "
                          "with a text answer")
    return items


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` (POSIX ``flock``; no lock where it is missing)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: parallel jobs may compute the same warm-up twice
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def warm_up_lm(model: Any, data: Any, cfg: Any, seed: int, log: Any = print) -> dict[str, Any]:
    """Warm up ``model.lm`` in place (or load the cached result); returns ``{key, cached,
    seconds, loss}`` (``loss``: mean text loss of the last 10 steps, None when cached)."""
    if not isinstance(model, TextModel):
        raise ConfigError(f"lm_warmup: recipe {type(model).__name__} has no text_loss (a language "
                          "model to warm up); set lm_warmup=null")
    settings = check_settings(cfg)
    key = cache_key(model, settings, data.split_hash, seed)
    path = Path(settings["cache_dir"]) / "lm_warmup" / f"{key}.safetensors"
    with exclusive(path):
        return _warm_up_or_load(model, data, settings, seed, key, path, log)


def _warm_up_or_load(model: Any, data: Any, settings: dict[str, Any], seed: int, key: str,
                     path: Path, log: Any) -> dict[str, Any]:
    from safetensors.torch import load_model, save_model

    start = time.perf_counter()
    if path.exists():
        load_model(model.lm, str(path))  # strict; tied weights are saved once
        log(f"lm_warmup: loaded {path}")
        return {"key": key, "cached": True, "seconds": time.perf_counter() - start, "loss": None}
    items = text_items(data, list(settings["tasks"]))
    flags = {name: p.requires_grad for name, p in model.lm.named_parameters()}
    params = list(model.lm.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=float(settings["lr"]))
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.lm.train()
        for _ in range(settings["steps"]):
            pick = torch.randint(len(items), (settings["batch_size"],), generator=generator)
            loss = model.text_loss([items[i] for i in pick.tolist()])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    for name, p in model.lm.named_parameters():
        p.requires_grad_(flags[name])
        p.grad = None  # the last step's gradient would join the job's first step (a cached
        # warm-up has none: the job must not depend on whether the warm-up was computed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_model(model.lm, str(tmp))
    os.replace(tmp, path)
    tail = sum(losses[-10:]) / len(losses[-10:])
    seconds = time.perf_counter() - start
    log(f"lm_warmup: {settings['steps']} steps on {len(items)} texts in {seconds:.1f} s, "
        f"loss {losses[0]:.3f} -> {tail:.3f}; cached {path}")
    return {"key": key, "cached": False, "seconds": seconds, "loss": tail}
