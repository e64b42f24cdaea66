"""``zoo compare``: a sweep's variants compared over their training runs and the shared test items
(docs/design.md section 9; the statistics in docs/evaluation.md, "Seeds and items").

Reads the child runs of a sweep's parent run (or a list of runs) from MLflow and keeps the
FINISHED ones (the others are listed with their status, never merged). Runs whose logged config
differs only in ``seed`` are the training runs of one variant; their per-item records
(``eval/<task>.jsonl``) form a runs x items score matrix per metric. Every variant's mean and
its difference to a reference variant and to the evaluators' baselines (majority answer, mean
training box, empty mask) get a 95 % interval over training runs and items
(:func:`zoo.stats.seed_item_interval`). A verdict ("beats the baseline", "better than the
reference") is printed only when it holds under such an interval, which needs two or more runs
per trained variant. Writes ``comparison.md``, ``comparison.csv`` and plots (per-metric bars with
intervals; quality against cost with the Pareto front), logs them to the parent run when there is
one, and returns the markdown.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from zoo.errors import ConfigError, RunError
from zoo.stats import SeedItemInterval, seed_item_interval

# metrics shown in the per-task markdown tables (all metrics go to the csv)
HEADLINE = {"vqa_closed": ("accuracy", "accuracy_m3d", "accuracy_ll"),
            "vqa_open": ("bleu1", "rougeL", "meteor"),
            "caption": ("bleu1", "rougeL", "meteor", "bertscore_f1"),
            "reg": ("bleu1", "rougeL"), "rec": ("iou", "iou_m3d", "hit@0.5"),
            "seg": ("dice", "dice_soft"), "refseg": ("dice", "dice_soft"),
            "retrieval": ("image_to_text/R@1", "text_to_image/R@1"), "cls": ("accuracy",)}
# the summary table's metrics per task (and the verdicts'); the first with a baseline is the key
SUMMARY = {"vqa_closed": ("accuracy", "accuracy_ll"), "vqa_open": ("bleu1",),
           "caption": ("bleu1",), "reg": ("bleu1",), "rec": ("iou",), "seg": ("dice",),
           "refseg": ("dice",), "retrieval": ("image_to_text/R@1",), "cls": ("accuracy",)}
KEY_METRIC = ("vqa_closed", "accuracy_ll")  # spread column and Pareto quality when present
TASK_LABELS = {"vqa_closed": "closed VQA", "vqa_open": "open VQA", "caption": "report",
               "reg": "region caption", "rec": "grounding", "seg": "segmentation",
               "refseg": "referring segmentation", "retrieval": "retrieval",
               "cls": "classification"}
# greedy: the generated answer's letter; likelihood: the most likely of the full answers
METRIC_LABELS = {"accuracy": "accuracy (greedy)", "accuracy_ll": "accuracy (likelihood)",
                 "accuracy_m3d": "accuracy (M3D rule)", "bleu1": "BLEU-1", "rougeL": "ROUGE-L",
                 "iou": "IoU", "dice": "Dice"}
COSTS = (("params.total", "params"), ("params.trainable", "trainable"),
         ("cost.visual_tokens", "visual tokens"), ("cost.flops_per_sample", "FLOPs/sample"),
         ("cost.train_seconds", "train s / job"), ("cost.job_cpu_seconds", "CPU s / job"),
         ("cost.peak_memory_mb", "peak MB / job"))
# measured per job, vary between runs (CPU s: the whole job's process, little changed by load)
JOB_COSTS = ("cost.train_seconds", "cost.job_cpu_seconds", "cost.peak_memory_mb")
BASELINE_PREFIX = "[baseline] "
# logged params in which training runs of one variant differ (``sweep.*`` plans the sweep)
REPEAT_KEYS = ("seed", "trainer.output_dir")
ONE_RUN = "¹"


@dataclass
class Job:
    """One finished training run of a variant: its seed, costs and per-item records."""

    run_id: str
    seed: str
    costs: dict[str, float]
    records: dict[str, dict[str, dict]] = field(default_factory=dict)  # task -> id -> record


@dataclass
class Variant:
    name: str
    split_hash: str
    jobs: list[Job]
    baseline: bool = False  # computed from the train split: no training variance

    @property
    def seeds(self) -> int:
        return len(self.jobs)

    def tasks(self) -> set[str]:
        return {t for job in self.jobs for t in job.records}

    def cost(self, key: str) -> list[float]:
        return [job.costs[key] for job in self.jobs if key in job.costs]


@dataclass(frozen=True)
class LeftOut:
    run_id: str
    name: str
    reason: str


@dataclass
class Row:
    variant: str
    task: str
    metric: str
    n: int
    value: SeedItemInterval
    diff: SeedItemInterval | None = None
    against: str = ""  # the other side of ``diff``
    per_seed: tuple[float, ...] = ()

    def verdict(self) -> bool:
        """Whether the difference holds under the interval over runs and items."""
        return self.diff is not None and self.diff.training_variance and self.diff.excludes_zero()


def short_names(runs: Sequence[Any]) -> list[str]:
    """The sweep's variant names when unique, else the component tags that differ between runs
    (else the run names)."""
    labels = [r.data.tags.get("zoo.variant") for r in runs]
    if all(labels) and len(set(labels)) == len(labels):
        return labels
    tags = [{k[4:]: v for k, v in r.data.tags.items()
             if k.startswith("zoo.") and k[4:] in ("recipe", "encoder", "bridge", "connector",
                                                   "lm", "head", "data")} for r in runs]
    keys = sorted({k for t in tags for k in t})
    varying = [k for k in keys if len({t.get(k, "-") for t in tags}) > 1]
    names = [",".join(f"{k}={t.get(k, '-')}" for k in varying) if varying
             else (r.info.run_name or r.info.run_id[:8]) for r, t in zip(runs, tags)]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            names[i] = f"{name}#{seen[name]}"
    return names


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _label(run: Any) -> str:
    tags = run.data.tags
    name = tags.get("zoo.variant") or run.info.run_name or "run"
    seed = (getattr(run.data, "params", None) or {}).get("seed")
    return f"{name}, seed {seed}" if seed is not None else name


def select_finished(runs: Sequence[Any]) -> tuple[list[Any], list[LeftOut]]:
    """The FINISHED runs, and the others with their status as the reason."""
    kept, left = [], []
    for run in runs:
        status = getattr(run.info, "status", "FINISHED")
        if status == "FINISHED":
            kept.append(run)
        else:
            why = {"RUNNING": "still running, or killed before it could record its end",
                   "KILLED": "killed", "FAILED": "failed"}.get(status, "not finished")
            left.append(LeftOut(run.info.run_id, _label(run), f"status {status} ({why})"))
    return kept, left


def repeat_groups(runs: Sequence[Any]) -> tuple[list[list[Any]], list[LeftOut]]:
    """Runs grouped by configuration, in first-seen order: runs whose logged config differs only
    in ``seed`` (and the output folder and ``sweep.*`` planning keys) are training runs of one
    variant. A second run with the same configuration *and* seed repeats a run rather than adding
    one: the later one is kept, the earlier left out."""
    groups: dict[tuple, dict[str, Any]] = {}
    left = []
    for run in sorted(runs, key=lambda r: r.info.start_time):
        params = getattr(run.data, "params", None) or {"run": run.info.run_id}
        key = tuple(sorted((k, v) for k, v in params.items()
                           if k not in REPEAT_KEYS and not k.startswith("sweep.")))
        seeds = groups.setdefault(key, {})
        seed = str(params.get("seed", run.info.run_id))
        if seed in seeds:
            old = seeds[seed]
            left.append(LeftOut(old.info.run_id, _label(old), f"same configuration and seed as "
                                f"the later run {run.info.run_id[:8]}, which is kept"))
        seeds[seed] = run
    return [list(g.values()) for g in groups.values()], left


def _load_job(client: Any, run: Any, baselines: dict[tuple[str, str], dict]) -> Job:
    """One run's costs and per-item eval records; evaluator baselines go to ``baselines`` (the
    first run's copy per task is kept)."""
    costs = {k: float(run.data.metrics[k]) for k, _ in COSTS if k in run.data.metrics}
    params = getattr(run.data, "params", None) or {}
    job = Job(run.info.run_id, str(params.get("seed", "?")), costs)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder = Path(client.download_artifacts(run.info.run_id, "eval", tmp))
        except Exception:  # mlflow raises its own types when a run has no eval artifacts
            folder = None
        for path in sorted(folder.glob("*.jsonl")) if folder else []:
            records = _read_jsonl(path)
            if path.name.endswith(".baseline.jsonl"):
                task = path.name[:-len(".baseline.jsonl")]
                tag = run.data.tags.get(f"zoo.eval.{task}.baseline", "baseline")
                baselines.setdefault((task, tag), {r["id"]: r for r in records})
            else:
                job.records[path.stem] = {r["id"]: r for r in records}
    return job


def _seed_order(job: Job) -> tuple:
    return (0, int(job.seed), "") if job.seed.lstrip("-").isdigit() else (1, 0, job.seed)


def load_variants(client: Any, runs: Sequence[Any]) -> tuple[list[Variant], list[LeftOut]]:
    """Variants of the FINISHED runs (the evaluators' baselines as extra variants) and the runs
    left out with the reason; split hashes must agree."""
    if not runs:
        raise RunError("compare: no runs to compare")
    runs, left = select_finished(runs)
    if not runs:
        raise RunError("compare: no FINISHED run among " + "; ".join(
            f"{x.run_id[:8]} ({x.name}): {x.reason}" for x in left))
    hashes = {r.info.run_id: r.data.tags.get("zoo.split_hash", "unknown") for r in runs}
    if len(set(hashes.values())) > 1:
        listing = ", ".join(f"{rid[:8]}={h[:12]}" for rid, h in hashes.items())
        raise RunError(f"compare: runs were evaluated on different splits ({listing}); paired "
                       "comparisons need the same test items")
    groups, repeated = repeat_groups(runs)
    variants, baselines = [], {}
    for group, name in zip(groups, short_names([g[0] for g in groups])):
        jobs = sorted((_load_job(client, run, baselines) for run in group), key=_seed_order)
        variants.append(Variant(name, hashes[group[0].info.run_id], jobs))
    for (task, tag), records in baselines.items():
        variants.append(Variant(f"{BASELINE_PREFIX}{tag}", variants[0].split_hash,
                                [Job("", "-", {}, {task: records})], baseline=True))
    return variants, left + repeated


def metric_names(records: dict[str, dict]) -> list[str]:
    """Score names of a task plus ``<metric>/<question_type>`` breakdowns."""
    names = sorted({k for r in records.values() for k in r["scores"]})
    types = sorted({r.get("question_type") for r in records.values() if r.get("question_type")})
    return names + [f"{n}/{t}" for n in names for t in types] if len(types) > 1 else names


def item_scores(records: dict[str, dict], metric: str, ids: Sequence[str]) -> list[float] | None:
    """Per-item values of ``metric`` (``name`` or ``name/<question_type>``) on ``ids``."""
    names = {k for r in records.values() for k in r["scores"]}
    base, qtype = metric, None
    if metric not in names and "/" in metric:
        base, qtype = metric.rsplit("/", 1)
    if qtype:
        ids = [i for i in ids if records[i].get("question_type") == qtype]
    values = [records[i]["scores"].get(base) for i in ids]
    return None if not values or any(v is None for v in values) else values


def score_matrix(variant: Variant, task: str, metric: str, ids: Sequence[str]) -> np.ndarray | None:
    """Runs x items scores of ``metric`` on ``ids`` from the variant's runs that have them."""
    rows = [item_scores(job.records[task], metric, ids) for job in variant.jobs
            if task in job.records and all(i in job.records[task] for i in ids)]
    rows = [r for r in rows if r is not None]
    return np.asarray(rows, dtype=float) if rows else None


def is_headline(task: str, metric: str) -> bool:
    """Whether the markdown table shows ``metric`` (a headline metric or its per-type split)."""
    wanted = HEADLINE.get(task, ())
    if metric in wanted or (metric.startswith("meteor") and "/" not in metric
                            and "meteor" in wanted):
        return True
    return task == "vqa_closed" and metric.startswith(("accuracy/", "accuracy_ll/"))  # per type


def shared_ids(variants: Sequence[Variant], task: str) -> list[str]:
    """Test items of ``task`` that every run of every variant having the task scored."""
    sets = [set(job.records[task]) for v in variants for job in v.jobs if task in job.records]
    return sorted(set.intersection(*sets)) if sets else []


def compare_variants(variants: list[Variant], reference: str | None = None,
                     confidence: float = 0.95) -> list[Row]:
    """Rows for every (variant, task, metric): mean with its interval over runs and items, and the
    difference to the reference variant (the first non-baseline variant unless named) on the
    shared items."""
    models = [v for v in variants if not v.baseline]
    ref = next((v for v in variants if v.name == reference), None) if reference else models[0]
    if ref is None:
        raise ConfigError(f"compare --baseline {reference!r}: no such variant; variants: "
                          f"{[v.name for v in variants]}")
    rows = []
    for task in sorted({t for v in variants for t in v.tasks()}):
        have = [v for v in variants if task in v.tasks()]
        ids = shared_ids(have, task)
        if not ids:
            continue
        first = next(job.records[task] for job in have[0].jobs if task in job.records)
        for metric in metric_names(first):
            ref_scores = score_matrix(ref, task, metric, ids) if task in ref.tasks() else None
            for v in have:
                scores = score_matrix(v, task, metric, ids)
                if scores is None:
                    continue
                value = seed_item_interval(scores, confidence=confidence, runs_fixed=v.baseline)
                diff = None
                if ref_scores is not None and v is not ref and \
                        ref_scores.shape[1] == scores.shape[1]:
                    diff = seed_item_interval(scores, ref_scores, confidence,
                                              runs_fixed=v.baseline, reference_fixed=ref.baseline)
                rows.append(Row(v.name, task, metric, scores.shape[1], value, diff,
                                ref.name if diff else "", tuple(scores.mean(1).tolist())))
    return rows


def baseline_rows(variants: list[Variant], confidence: float = 0.95) -> list[Row]:
    """Differences of every model variant to each baseline (an evaluator's, e.g. the majority
    answer) on that baseline's task, summary metrics only."""
    rows = []
    for base in [v for v in variants if v.baseline]:
        pair = [v for v in variants if not v.baseline] + [base]
        rows += [r for r in compare_variants(pair, base.name, confidence)
                 if r.diff is not None and r.task in base.tasks()
                 and r.metric in SUMMARY.get(r.task, ())]
    return rows


def _interval(iv: SeedItemInterval, signed: bool = False) -> str:
    fmt = "{:+.3f}" if signed else "{:.3f}"
    if np.isnan(iv.low):
        return fmt.format(iv.mean) + " [-]"
    text = f"{fmt.format(iv.mean)} [{fmt.format(iv.low)}, {fmt.format(iv.high)}]"
    return text if iv.training_variance else text + ONE_RUN


def _cell(row: Row) -> str:
    text = _interval(row.value)
    if row.diff is not None:
        text += f" Δ {_interval(row.diff, signed=True)}" + (" *" if row.verdict() else "")
    return text


def _mean_range(values: Sequence[float], fmt: str) -> str:
    if not values:
        return "-"
    text = fmt.format(sum(values) / len(values))
    if len(values) > 1 and max(values) > min(values):
        text += f" ({fmt.format(min(values))}-{fmt.format(max(values))})"
    return text


def _fmt_cost(key: str, values: Sequence[float]) -> str:
    if not values:
        return "-"
    if key == "cost.flops_per_sample":
        return f"{values[0] / 1e9:.3f} G"
    if key.startswith("params") or key == "cost.visual_tokens":
        return f"{int(values[0]):,}"
    return _mean_range(values, "{:.0f}")


def _table(title: str, rows: list[Row], names: list[str], metrics: list[str]) -> list[str]:
    """Markdown lines of one table: a row per variant that has any of ``metrics``."""
    cells = {(r.variant, r.metric): r for r in rows}
    out = [f"### {title}", "", "| variant | runs | " + " | ".join(metrics) + " |",
           "|---|---|" + "---|" * len(metrics)]
    for name in names:
        if any((name, m) in cells for m in metrics):
            runs = next(len(cells[(name, m)].per_seed) for m in metrics if (name, m) in cells)
            out.append(f"| {name} | {'-' if name.startswith(BASELINE_PREFIX) else runs} | "
                       + " | ".join(_cell(cells[(name, m)]) if (name, m) in cells else "-"
                                    for m in metrics) + " |")
    return out + [""]


def metric_title(task: str, metric: str) -> str:
    return f"{TASK_LABELS.get(task, task)} {METRIC_LABELS.get(metric, metric)}"


def summary_metrics(rows: Sequence[Row]) -> list[tuple[str, str]]:
    present = {(r.task, r.metric) for r in rows}
    return [(t, m) for t in SUMMARY for m in SUMMARY[t] if (t, m) in present]


def key_metric(rows: Sequence[Row]) -> tuple[str, str] | None:
    wanted = summary_metrics(rows)
    return KEY_METRIC if KEY_METRIC in wanted else (wanted[0] if wanted else None)


def summary_table(rows: list[Row], variants: list[Variant], against_baseline: Sequence[Row]) -> str:
    """One row per variant: summary metrics with intervals, the key metric's difference to its
    baseline and its value per run, cost per job."""
    metrics = summary_metrics(rows)
    key = key_metric(rows)
    cells = {(r.variant, r.task, r.metric): r for r in rows}
    base = {(r.variant, r.task, r.metric): r for r in against_baseline}
    key_base = next((r.against for r in against_baseline
                     if key and (r.task, r.metric) == key), None)
    head = ["variant", "runs"] + [metric_title(t, m) for t, m in metrics]
    if key_base:
        head.append(f"{METRIC_LABELS.get(key[1], key[1])}: Δ to the "
                    f"{key_base[len(BASELINE_PREFIX):]}")
    if key:
        head.append(f"{METRIC_LABELS.get(key[1], key[1])} per run, by seed")
    head += [label for k, label in COSTS if k in JOB_COSTS]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in variants:
        if v.baseline and not any((v.name, t, m) in cells for t, m in metrics):
            continue
        line = [v.name[len(BASELINE_PREFIX):] + " (baseline)" if v.baseline else v.name,
                "-" if v.baseline else str(v.seeds)]
        line += [_interval(cells[(v.name, t, m)].value) if (v.name, t, m) in cells else "-"
                 for t, m in metrics]
        if key_base:
            r = base.get((v.name, *key))
            line.append("-" if r is None else (f"**{_interval(r.diff, True)}**" if r.verdict()
                                               else _interval(r.diff, True)))
        if key:
            r = cells.get((v.name, *key))
            line.append("-" if r is None or v.baseline
                        else " / ".join(f"{x:.3f}" for x in r.per_seed))
        line += [_fmt_cost(k, v.cost(k)) if not v.baseline else "-" for k in JOB_COSTS]
        out.append("| " + " | ".join(line) + " |")
    return "\n".join(out)


def verdicts(rows: Sequence[Row], against_baseline: Sequence[Row]) -> list[str]:
    """The statements that hold under the interval over runs and items, on summary metrics."""
    out = []
    for r in against_baseline:
        if r.verdict():
            word = "beats" if r.diff.mean > 0 else "is below"
            out.append(f"{r.variant} {word} the baseline ({r.against[len(BASELINE_PREFIX):]}) on "
                       f"{metric_title(r.task, r.metric)}: Δ {_interval(r.diff, True)}")
    for r in rows:
        if r.verdict() and r.metric in SUMMARY.get(r.task, ()) and not r.variant.startswith(
                BASELINE_PREFIX):
            word = "better than" if r.diff.mean > 0 else "worse than"
            out.append(f"{r.variant} {word} {r.against} on {metric_title(r.task, r.metric)}: "
                       f"Δ {_interval(r.diff, True)}")
    return out


def markdown(rows: list[Row], variants: list[Variant], reference: str,
             against_baseline: Sequence[Row] = (), left_out: Sequence[LeftOut] = ()) -> str:
    from zoo.results import block

    models = [v for v in variants if not v.baseline]
    single = [v.name for v in models if v.seeds < 2]
    out = ["Every interval is a 95 % interval over training runs (seeds) and test items "
           "(docs/evaluation.md, \"Seeds and items\"). Δ = difference to the reference variant "
           f"**{reference}** (or to a baseline) on the same items; * = the interval excludes "
           f"zero, so the difference holds over seeds and items; {ONE_RUN} = one training run: "
           "the interval covers test items only and ignores training variance.", ""]
    if single:
        whose = "every" if len(single) == len(models) else "their"
        out += [f"**One training run for {', '.join(single)}: {whose} interval ignores training "
                "(seed-to-seed) variance, and no verdict is drawn for them. Run two or more "
                "seeds (`sweep.seeds=[0,1,2]`).**", ""]
    if left_out:
        out += ["### Runs left out", ""] + [f"- {x.run_id[:8]} ({x.name}): {x.reason}"
                                            for x in left_out] + [""]
    found = [f"- {v}" for v in verdicts(rows, against_baseline)] or [
        "- none: no difference to the reference or to a baseline excludes zero over seeds and "
        "items"]
    out += ["### Verdicts", "", block("verdicts", "Statements that hold under the 95 % interval "
                                      "over seeds and items (summary metrics; each interval is "
                                      "for its own comparison, not corrected for the number of "
                                      "comparisons):\n\n" + "\n".join(found)),
            "### Summary", "",
            block("summary", summary_table(rows, variants, against_baseline)
                  + ("\n\nΔ in **bold**: holds over seeds and items." if against_baseline
                     else ""))]
    names = [v.name for v in variants]
    for task in sorted({r.task for r in rows}):
        task_rows = [r for r in rows if r.task == task]
        metrics = list(dict.fromkeys(r.metric for r in task_rows))
        wanted = [m for m in metrics if is_headline(task, m)] or metrics[:3]
        n = max(r.n for r in task_rows)
        out += _table(f"{task} ({n} test items)", task_rows, names, wanted)
    for task in sorted({r.task for r in against_baseline}):
        task_rows = [r for r in against_baseline if r.task == task]
        out += _table(f"{task}: each variant against the baseline (Δ = variant - baseline)",
                      task_rows, list(dict.fromkeys(r.variant for r in task_rows)),
                      list(dict.fromkeys(r.metric for r in task_rows)))
    out += ["### Cost", "", "Per variant; train s (wall clock of the training stages), CPU s "
            "(the job's process: start, data, warm-up, training, evaluation) and peak MB are "
            "measured per job (mean, and the range over its runs).", "",
            "| variant | runs | " + " | ".join(label for _, label in COSTS) + " |",
            "|---|---|" + "---|" * len(COSTS)]
    out += [f"| {v.name} | {v.seeds} | " + " | ".join(_fmt_cost(k, v.cost(k)) for k, _ in COSTS)
            + " |" for v in models]
    out += ["", "### Jobs", "", "| variant | seed | run | train s | CPU s | peak MB |",
            "|---|---|---|---|---|---|"]
    out += [f"| {v.name} | {j.seed} | {j.run_id[:8]} | "
            + " | ".join(_fmt_cost(k, [j.costs[k]] if k in j.costs else []) for k in JOB_COSTS)
            + " |" for v in models for j in v.jobs]
    return "\n".join(out) + "\n"


def csv_text(rows: list[Row], variants: list[Variant]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["variant", "task", "metric", "n", "runs", "mean", "low", "high", "df",
                     "training_variance", "per_run", "against", "diff", "diff_low", "diff_high",
                     "diff_df", "diff_holds"] + [k for k, _ in COSTS])
    costs = {v.name: v for v in variants}
    for r in rows:
        d = r.diff
        writer.writerow([r.variant, r.task, r.metric, r.n, len(r.per_seed), r.value.mean,
                         r.value.low, r.value.high, r.value.df, r.value.training_variance,
                         "/".join(f"{x:.6g}" for x in r.per_seed), r.against,
                         *((d.mean, d.low, d.high, d.df, r.verdict()) if d else ("",) * 5)]
                        + [np.mean(costs[r.variant].cost(k)) if costs[r.variant].cost(k) else ""
                           for k, _ in COSTS])
    return buffer.getvalue()


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated (lower cost x, higher quality y), by increasing cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _unit(metric: str, n: int) -> str:
    base = metric.split("/")[0]
    if base.startswith("accuracy") or "R@" in metric or base.startswith("hit"):
        return f"fraction of {n} items"
    return f"mean over {n} items, 0-1"


def _interval_note(rows: Sequence[Row]) -> str:
    models = [r for r in rows if not r.variant.startswith(BASELINE_PREFIX)]
    if models and all(r.value.training_variance for r in models):
        return ("error bars: 95 % intervals over training runs (seeds) and test items; dots: "
                "each run")
    return ("error bars: 95 % intervals over test items only (one training run: training "
            "variance ignored)")


def _span(center: float, low: float, high: float) -> list[list[float]]:
    """Matplotlib's error extent ``[[below], [above]]`` of ``center`` in ``[low, high]``, never
    negative: the mean of equal values can exceed them by rounding (0.1 three times), and an
    interval that is not finite draws no bar on that side."""
    below = center - low if np.isfinite(low) else 0.0
    above = high - center if np.isfinite(high) else 0.0
    return [[max(below, 0.0)], [max(above, 0.0)]]


def plots(rows: list[Row], variants: list[Variant], out: Path) -> list[Path]:
    """``bars.png`` (each summary metric with intervals, baselines named in full, grey) and
    ``pareto.png`` (the key metric against FLOPs per sample and against train seconds per job,
    with intervals; the Pareto front as a line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    panels = summary_metrics(rows)
    panels += [("vqa_closed", f"{m}/location") for m in ("accuracy_ll",)
               if any(r.metric == f"{m}/location" for r in rows)]
    names = [v.name for v in variants]
    if panels:
        fig, axes = plt.subplots(len(panels), 1, figsize=(8, 0.35 * len(names) * len(panels) + 1.4),
                                 squeeze=False)
        for ax, (task, metric) in zip(axes[:, 0], panels):
            sel = sorted([r for r in rows if r.task == task and r.metric == metric],
                         key=lambda r: names.index(r.variant))[::-1]
            y = np.arange(len(sel))
            means = [r.value.mean for r in sel]
            errs = np.hstack([_span(r.value.mean, r.value.low, r.value.high) for r in sel])
            ax.barh(y, means, xerr=errs, capsize=3, height=0.6,
                    color=["0.75" if r.variant.startswith(BASELINE_PREFIX) else "C0" for r in sel])
            for k, r in enumerate(sel):
                if len(r.per_seed) > 1:
                    ax.plot(r.per_seed, [k] * len(r.per_seed), "k.", markersize=4)
            ax.set_yticks(y, [r.variant[len(BASELINE_PREFIX):] + " (baseline)"
                              if r.variant.startswith(BASELINE_PREFIX) else r.variant for r in sel],
                          fontsize=8)
            ax.set_xlabel(f"{metric_title(task, metric.split('/')[0])}"
                          + (f", {metric.split('/')[1]} questions" if "/" in metric else "")
                          + f" ({_unit(metric, sel[0].n)})", fontsize=9)
            ax.set_xlim(left=0)
        fig.suptitle("Mean over runs and items; " + _interval_note(rows), fontsize=9)
        fig.tight_layout(rect=(0, 0, 1, 0.97))
        paths.append(out / "bars.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    key = key_metric(rows)
    sel = {r.variant: r for r in rows if key and (r.task, r.metric) == key}
    models = [v for v in variants if not v.baseline and v.name in sel]
    axes_spec = [("cost.flops_per_sample", 1e-9, "FLOPs per sample, training forward (GFLOP, log "
                  "scale)", True),
                 ("cost.train_seconds", 1.0, "training time per job (s, wall clock; bars: range "
                  "over runs)", False)]
    axes_spec = [a for a in axes_spec if all(v.cost(a[0]) for v in models)]
    if models and axes_spec:
        fig, axes = plt.subplots(1, len(axes_spec), figsize=(5.2 * len(axes_spec) + 2.6, 4.2),
                                 squeeze=False)
        markers = "osD^vP*Xh<>p"
        for ax, (cost, scale, label, log) in zip(axes[0], axes_spec):
            xy = []
            for k, v in enumerate(models):
                values = [c * scale for c in v.cost(cost)]
                x, r = float(np.mean(values)), sel[v.name]
                xy.append((x, r.value.mean))
                ax.errorbar(x, r.value.mean,
                            yerr=_span(r.value.mean, r.value.low, r.value.high)
                            if np.isfinite(r.value.low) else None,
                            xerr=_span(x, min(values), max(values)) if len(values) > 1 else None,
                            fmt=markers[k % len(markers)], color=f"C{k % 10}", capsize=3,
                            label=v.name)
            front = pareto_front(xy)
            ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], "-", color="0.3",
                    linewidth=1, zorder=0, label="Pareto front (means)")
            for base in (r for r in rows if (r.task, r.metric) == key
                         and r.variant.startswith(BASELINE_PREFIX)):
                ax.axhline(base.value.mean, color="0.5", linestyle="--", linewidth=1,
                           label=base.variant[len(BASELINE_PREFIX):] + " (baseline)")
            if log:
                ax.set_xscale("log")
            ax.set_xlabel(label, fontsize=9)
            ax.set_ylabel(f"{metric_title(*key)}\n({_unit(key[1], sel[models[0].name].n)})",
                          fontsize=9)
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
        fig.suptitle(_interval_note(rows).replace("; dots: each run", ""), fontsize=9)
        fig.tight_layout(rect=(0, 0, 1 - 2.6 / (5.2 * len(axes_spec) + 2.6), 0.95))
        paths.append(out / "pareto.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def run_compare(parent: str | None = None, run_ids: Sequence[str] = (),
                reference: str | None = None, out_dir: str | Path | None = None,
                tracking_uri: str | None = None, experiment: str = "zoo", confidence: float = 0.95,
                write_results: str | Path | None = None) -> dict[str, Any]:
    """Compare the FINISHED child runs of ``parent`` (or the runs ``run_ids``); returns markdown,
    paths, rows, variants and the runs left out. ``write_results``: also write a results file
    (:mod:`zoo.results`) with the sweep's command, commit, machine and wall time in its header."""
    import os

    from zoo.tracking import Run, Tracker

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per download
    tracker = Tracker(tracking_uri, experiment)
    client = tracker.client
    if parent:
        runs = sorted(tracker.child_runs(parent), key=lambda r: r.info.start_time)
        if not runs:
            raise RunError(f"compare: run {parent!r} has no child runs in {tracker.uri}")
    else:
        runs = [client.get_run(rid) for rid in run_ids]
    variants, left_out = load_variants(client, runs)
    rows = compare_variants(variants, reference, confidence)
    ref_name = reference or next(v.name for v in variants if not v.baseline)
    against = baseline_rows(variants, confidence)
    text = markdown(rows, variants, ref_name, against, left_out)
    out = Path(out_dir or Path("runs") / "compare" / (parent or runs[0].info.run_id))
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.md").write_text(text)
    (out / "comparison.csv").write_text(csv_text(rows, variants))
    figures = plots(rows, variants, out)
    if parent:
        run = Run(client, parent)
        for path in [out / "comparison.md", out / "comparison.csv", *figures]:
            run.log_artifact(path, "compare")
    run_ids = [job.run_id for v in variants for job in v.jobs if job.run_id]
    written = None
    if write_results:
        written = write_results_file(write_results, client, parent, run_ids, text, figures)
    return {"markdown": text, "out_dir": out, "plots": figures, "rows": rows,
            "variants": variants, "left_out": left_out, "tracking_uri": tracker.uri,
            "run_ids": run_ids, "results": written}


def write_results_file(path: str | Path, client: Any, parent: str | None, run_ids: Sequence[str],
                       text: str, figures: Sequence[Path], wall_seconds: float | None = None
                       ) -> Path:
    """A results file of this comparison: the sweep's command, commit, machine and wall time
    (from the parent run, or ``wall_seconds``), the inputs every compared run recorded, the
    markdown and the plots (copied beside it as ``<name>.<plot>.png``)."""
    import shutil

    from zoo import results

    path = Path(path)
    info = client.get_run(parent).data if parent else None
    tags = info.tags if info else {}
    command = tags.get("zoo.command") or "zoo compare --runs " + " ".join(run_ids)
    inputs: dict[str, str] = {}
    missing = []
    for run_id in run_ids:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = client.download_artifacts(run_id, "inputs.json", tmp)
                inputs.update(json.loads(Path(local).read_text()))
            except Exception:  # mlflow raises its own types for a missing artifact
                missing.append(run_id[:8])
    inputs.update(results.input_digests([Path(__file__),
                                         Path(results.__file__).with_name("stats.py")]))
    machine_info = json.loads(tags["zoo.machine"]) if "zoo.machine" in tags else None
    wall = wall_seconds if wall_seconds is not None else (
        info.metrics.get("sweep.wall_seconds") if info else None)
    body = text
    if missing:
        body = (f"Runs without a record of their inputs (not sweep jobs): {', '.join(missing)}; "
                "changes to their code are not detected.\n\n" + body)
    images = []
    for fig in figures:
        target = path.with_name(f"{path.stem}.{fig.name}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fig, target)
        images.append(f"![{fig.stem}]({target.name})")
    body += "\n" + "\n".join(images) + "\n"
    return results.write(path, f"Results: {tags.get('zoo.sweep', 'comparison')}", command, body,
                         inputs, wall_seconds=wall, commit=tags.get("zoo.git_commit"),
                         machine_info=machine_info,
                         cpu_seconds=info.metrics.get("sweep.job_cpu_seconds") if info else None)
