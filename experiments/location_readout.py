"""Location read-out: can the LM answer location questions once the visual tokens carry location,
and does the connector's layout matter? A diagnostic beside ``zoo sweep experiment=location_layout``
(where no variant learns location through the LM; docs/evaluation.md).

    python experiments/location_readout.py [OVERRIDES] [--expose-steps N] [--read-steps N]
                                           [--save FILE]
    python experiments/location_readout.py --pool FILE [FILE ...]   # seeds pooled per item

For every variant of the experiment's sweep (default ``experiment=location_layout``):

1. **expose**: encoder + connector + a linear head on the flattened visual tokens are trained on
   the location label of the train split's closed location questions (upper/lower x left/right of
   the named organ), AdamW lr 1e-3, batch 8. This uses the answers as labels on purpose: it
   makes the tokens carry location, which the LaMed objective alone does not.
2. **read**: encoder and connector frozen; the LM (after the experiment's ``lm_warmup``) trains on
   the train split's location questions (closed and open) at the experiment's ``budget.lr``.
3. **score** on the test split's closed location items: the linear head's accuracy ("exposed")
   and the LM's most likely of the four answers ("read"), each with a 95 % bootstrap interval,
   against the majority answer, and paired against the first variant.

Prints a Markdown table and one JSON line. Every variant gets the same seed, steps and rates.
``--save`` writes the results with per-item scores; ``--pool`` reads several such files (e.g. one
per seed, same items) and prints the table of the per-item means, as ``zoo compare`` pools seeds.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

LOCATION_CLASSES = ("upper left", "upper right", "lower left", "lower right")


def location_label(answer: str) -> int:
    """Class index of a location answer ("B. lower part of the right kidney" -> lower right)."""
    text = re.sub(r"^[A-D]\.\s*", "", answer).lower()
    vertical = [w for w in ("upper", "lower") if re.search(rf"\b{w}\b", text)]
    side = [w for w in ("left", "right") if re.search(rf"\b{w}\b", text)]
    if len(vertical) != 1 or len(side) != 1:
        raise ValueError(f"location answer {answer!r} does not name exactly one of upper/lower "
                         "and one of left/right")
    return LOCATION_CLASSES.index(f"{vertical[0]} {side[0]}")


def location_items(data: Any, split: str, tasks: Sequence[str] = ("vqa_closed",)) -> list[dict]:
    items = [i for i in data.items(split)
             if i["task"] in tasks and i.get("question_type") == "location"]
    if not items:
        raise ValueError(f"the {split} split has no location questions of tasks {list(tasks)}")
    return items


def flat_tokens(model: Any, image: torch.Tensor) -> torch.Tensor:
    return model.connector(model.encoder(image)).tokens.flatten(1)


def fit(params: list[nn.Parameter], loss_of: Any, n: int, steps: int, lr: float, seed: int,
        batch_size: int = 8) -> float:
    """AdamW on ``params`` for ``steps`` batches of indices drawn from ``range(n)`` (seeded);
    ``loss_of(indices)`` gives the loss. Returns the mean loss of the last 10 steps."""
    optimizer = torch.optim.AdamW(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        loss = loss_of(torch.randint(n, (batch_size,), generator=generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return sum(losses[-10:]) / max(len(losses[-10:]), 1)


def expose(model: Any, images: torch.Tensor, labels: torch.Tensor, steps: int, seed: int,
           batch_size: int = 8, lr: float = 1e-3) -> nn.Linear:
    """Train encoder + connector + a linear location head; returns the head."""
    with torch.no_grad():
        width = flat_tokens(model, images[:1]).shape[1]
    head = nn.Linear(width, len(LOCATION_CLASSES))
    params = [*head.parameters(), *model.encoder.parameters(), *model.connector.parameters()]
    for p in params:
        p.requires_grad_(True)
    model.train()
    fit(params, lambda pick: nn.functional.cross_entropy(head(flat_tokens(model, images[pick])),
                                                         labels[pick]),
        len(images), steps, lr, seed, batch_size)
    return head


def read(model: Any, samples: list[dict], steps: int, lr: float, seed: int,
         batch_size: int = 8) -> float:
    """Freeze encoder + connector and train every LM parameter on ``samples``; returns the mean
    loss of the last 10 steps."""
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("lm."))
    model.train()
    return fit([p for p in model.parameters() if p.requires_grad],
               lambda pick: model(model.collate([samples[i] for i in pick.tolist()])).loss,
               len(samples), steps, lr, seed, batch_size)


def run_variant(name: str, overrides: list[str], expose_steps: int, read_steps: int,
                log: Any = print) -> dict[str, Any]:
    """Expose, read and score one variant; per-item scores for the paired statistics."""
    from zoo.build import build_model
    from zoo.config import compose
    from zoo.data.source import build_sample
    from zoo.evaluation import vqa
    from zoo.evaluation.tasks import EvalContext, most_likely_choices
    from zoo.jobs import build_data
    from zoo.lm_warmup import warm_up_lm

    start = time.perf_counter()
    cfg = compose(overrides)
    seed = int(cfg.seed)
    torch.manual_seed(seed)
    data = build_data(cfg)
    model = build_model(cfg)
    if cfg.get("lm_warmup") is not None:
        warm_up_lm(model, data, cfg.lm_warmup, seed, log=log)
    train, test = location_items(data, "train"), location_items(data, "test")
    read_samples = {i["id"]: build_sample(i)
                    for i in location_items(data, "train", ("vqa_closed", "vqa_open"))}
    images = torch.stack([read_samples[i["id"]]["image"] for i in train])
    labels = torch.tensor([location_label(i["answer"]) for i in train])
    head = expose(model, images, labels, expose_steps, seed)
    loss = read(model, list(read_samples.values()), read_steps, float(cfg.budget.lr), seed)
    model.eval()
    samples = [build_sample(i) for i in test]
    with torch.no_grad():
        logits = head(flat_tokens(model, torch.stack([s["image"] for s in samples])))
        ranked = most_likely_choices(model, samples, EvalContext(batch_size=8))
    truth = [location_label(s["answer"]) for s in samples]
    majority = vqa.majority_answers(train)
    scores = {
        "exposed": [float(p == t) for p, t in zip(logits.argmax(1).tolist(), truth)],
        "read": [float(r == vqa.answer_letter(s["answer"], s["choices"]))
                 for r, s in zip(ranked, samples)],
        "majority": [vqa.closed_scores(vqa.majority_prediction(majority, "location", s["choices"]),
                                       s["answer"], s["choices"])["accuracy"] for s in samples],
    }
    seconds = time.perf_counter() - start
    log(f"{name}: exposed {sum(scores['exposed']) / len(truth):.3f}, read "
        f"{sum(scores['read']) / len(truth):.3f} on {len(truth)} items ({seconds:.0f} s)")
    return {"name": name, "items": len(truth), "read_loss": loss, "seconds": seconds,
            "ids": [s["meta"]["id"] for s in samples], "scores": scores}


def pool(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per variant, the per-item mean of each score over runs (same variants, same items)."""
    names = [[r["name"] for r in run] for run in runs]
    if any(n != names[0] for n in names):
        raise ValueError(f"runs to pool must have the same variants in order, got {names}")
    pooled = []
    for i, first in enumerate(runs[0]):
        rows = [run[i] for run in runs]
        if any(r["ids"] != first["ids"] for r in rows):
            raise ValueError(f"variant {first['name']}: runs to pool scored different test items")
        pooled.append({**first, "seconds": sum(r["seconds"] for r in rows),
                       "scores": {k: [sum(vals) / len(rows) for vals in zip(*(r["scores"][k]
                                                                              for r in rows))]
                                  for k in first["scores"]}})
    return pooled


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: per variant, exposed / read accuracy with intervals, read vs majority and vs the
    first variant (paired; * = the interval excludes zero)."""
    from zoo.stats import bootstrap_ci, paired_bootstrap

    def diff(a: Sequence[float], b: Sequence[float]) -> str:
        d = paired_bootstrap(a, b)
        star = "*" if d.low > 0 or d.high < 0 else ""
        return f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]{star}"

    def mean(values: Sequence[float]) -> str:
        m = bootstrap_ci(values)
        return f"{m.mean:.3f} [{m.low:.3f}, {m.high:.3f}]"

    first = results[0]
    lines = ["| variant | items | exposed (linear head) | read (LM, likelihood) | read - majority "
             f"| read - {first['name']} | s |", "|---|---|---|---|---|---|---|"]
    for r in results:
        s = r["scores"]
        lines.append(f"| {r['name']} | {r['items']} | {mean(s['exposed'])} | {mean(s['read'])} | "
                     f"{diff(s['read'], s['majority'])} | "
                     f"{diff(s['read'], first['scores']['read']) if r is not first else '-'} | "
                     f"{r['seconds']:.0f} |")
    lines.append(f"| majority answer | {first['items']} | - | {mean(first['scores']['majority'])} "
                 "| - | - | - |")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    from zoo.config import compose

    parser = argparse.ArgumentParser(prog="location_readout", description=__doc__.split("\n")[0])
    parser.add_argument("--expose-steps", type=int, default=1500)
    parser.add_argument("--read-steps", type=int, default=1500)
    parser.add_argument("--save", help="write the results with per-item scores (JSON)")
    parser.add_argument("--pool", nargs="+", metavar="FILE",
                        help="print the table of saved runs pooled per item (runs nothing)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (experiment=... first)")
    args = parser.parse_args(list(argv))
    if args.pool:
        runs = []
        for path in args.pool:
            try:
                runs.append(json.loads(Path(path).read_text())["results"])
            except (OSError, ValueError, KeyError) as error:
                raise ValueError(f"{path}: not a location_readout --save file ({error})") from error
        print(table(pool(runs)))
        return 0
    experiment = [o for o in args.overrides if o.startswith("experiment=")] \
        or ["experiment=location_layout"]
    rest = [o for o in args.overrides if not o.startswith("experiment=")]
    base = [*experiment, *rest]
    cfg = compose(base)
    only = cfg.sweep.get("only")
    # as in `zoo sweep`: the variant's overrides after the experiment, before the command line
    results = [run_variant(v.name, [*experiment, *v.overrides, *rest], args.expose_steps,
                           args.read_steps)
               for v in cfg.sweep.variants if not only or v.name in only]
    print(table(results))
    if args.save:
        Path(args.save).write_text(json.dumps({"overrides": base, "results": results}) + "\n")
    print(json.dumps({"expose_steps": args.expose_steps, "read_steps": args.read_steps,
                      "overrides": base, "results": [
                          {k: v for k, v in r.items() if k not in ("scores", "ids")}
                          | {f"{k}_accuracy": sum(v) / len(v) for k, v in r["scores"].items()}
                          for r in results]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
