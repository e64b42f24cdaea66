"""Measure SmolLM2-135M-Instruct in the zoo (docs/lm.md): fetch and conversion into a fresh cache,
the answer to a medical question, and seconds per training step of each variant of
``experiment=compare_strategies_smollm``.

    python experiments/smollm_measure.py [--steps 2] [--batch-size 8] [--variants a,b]
                                         [--cache DIR] [--out FILE]

Without ``--cache`` the model is fetched into a new temporary cache (download + sha256 +
conversion, timed); with it, that cache's fetched model is used. Each variant is timed in its own
process (``zoo.bench.e2e.train_step_seconds``: median of ``--steps`` optimiser steps after one
warm-up, first stage, no Accelerate or checkpoints) so that its peak resident memory is its own.
Writes one JSON object (commit, command, machine before and after, results) to ``--out`` or stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

QUESTION = "What is the largest organ in the abdomen?"
EXPERIMENT = "compare_strategies_smollm"


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def commit() -> str:
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                            "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
    return done.stdout.strip() + ("+dirty" if dirty else "")


def fetch_fresh(cache: Path) -> dict[str, Any]:
    """``zoo models fetch smollm2_135m`` into ``cache`` as a child process: its record, wall
    seconds and peak memory."""
    env = {**os.environ, "ZOO_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    code = ("import json, resource, zoo.models as m;"
            "r = m.fetch('smollm2_135m', log=lambda s: None);"
            "r['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024;"
            "print(json.dumps(r))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True)
    record = json.loads(done.stdout.strip().splitlines()[-1])
    record["wall_seconds"] = round(time.perf_counter() - start, 1)
    return record


def generation() -> dict[str, Any]:
    """Greedy answer to :data:`QUESTION` through ``CausalLM.generate`` (chat template)."""
    import torch

    from heads.causal_lm import smollm2_135m
    from zoo.seam import decode_generated

    start = time.perf_counter()
    lm = smollm2_135m().eval()
    loaded = time.perf_counter() - start
    ids = lm.tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}],
                                           add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)["input_ids"]
    start = time.perf_counter()
    new = lm.generate(lm.embed(ids), torch.ones_like(ids), max_new_tokens=48)
    seconds = time.perf_counter() - start
    return {"question": QUESTION, "answer": decode_generated(lm.tokenizer, new)[0],
            "new_tokens": int(new.shape[1]), "generate_seconds": round(seconds, 2),
            "load_seconds": round(loaded, 2)}


def variant_step(name: str, steps: int, batch_size: int) -> dict[str, Any]:
    """Seconds per training step of one variant (runs in this process)."""
    from zoo.bench.e2e import train_step_seconds
    from zoo.sweep import plan

    job, = plan([f"experiment={EXPERIMENT}", f"sweep.only=[{name}]", "sweep.seeds=[0]"]).jobs
    result = train_step_seconds(list(job.overrides), steps=steps, batch_size=batch_size)
    import torch

    return {**result, "seconds": round(result["seconds"], 2),
            "cpu_seconds": round(result["cpu_seconds"], 2), "threads": torch.get_num_threads(),
            "peak_rss_mb": round(peak_rss_mb())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--variants", help="comma list (default: every variant of the experiment)")
    parser.add_argument("--cache", help="a zoo cache holding the fetched model (default: fetch "
                                        "into a new temporary cache)")
    parser.add_argument("--threads", type=int, help="torch threads here and in the variant "
                                                    "processes (default: torch's)")
    parser.add_argument("--out", help="JSON output file (default: stdout)")
    parser.add_argument("--one-variant", help=argparse.SUPPRESS)  # child-process mode
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the variant processes
        torch.set_num_threads(args.threads)
    if args.one_variant:
        print(json.dumps(variant_step(args.one_variant, args.steps, args.batch_size)))
        return 0

    from zoo.bench.report import machine

    report: dict[str, Any] = {"commit": commit(), "command": " ".join(sys.argv),
                              "machine_before": machine()}
    with tempfile.TemporaryDirectory(prefix="zoo-cache.") as tmp:
        cache = Path(args.cache) if args.cache else Path(tmp)
        if not args.cache:
            report["fetch"] = fetch_fresh(cache)
        os.environ["ZOO_CACHE_DIR"] = str(cache)
        report["generation"] = generation()
        if args.variants:
            names = args.variants.split(",")
        else:
            from zoo.sweep import plan

            names = list(dict.fromkeys(j.variant for j in plan([f"experiment={EXPERIMENT}"]).jobs))
        report["train_steps"] = {}
        for name in names:
            done = subprocess.run([sys.executable, __file__, "--one-variant", name, "--steps",
                                   str(args.steps), "--batch-size", str(args.batch_size)],
                                  capture_output=True, text=True, env=dict(os.environ))
            if done.returncode != 0:
                raise RuntimeError(f"variant {name} failed:\n{done.stderr[-2000:]}")
            report["train_steps"][name] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{name}: {report['train_steps'][name]}", file=sys.stderr)
    report["machine_after"] = machine()
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
