"""``zoo compare``: paired comparison of a sweep's runs (docs/design.md section 9).

Reads the child runs of a sweep's parent run (or a list of runs) from MLflow, refuses runs whose
split hashes differ, loads each run's per-item records (``eval/<task>.jsonl``), and for every task
metric computes each variant's mean with a 95 % bootstrap interval and the paired bootstrap interval
of its difference to a reference variant over the same test items (:mod:`zoo.stats`). Baselines
computed by the evaluators (majority answer, mean training box, empty mask) appear as extra rows.
Writes ``comparison.md``, ``comparison.csv`` and plots (per-task bars with intervals; quality versus
cost with the Pareto front), logs them to the parent run when there is one, and returns the
markdown.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from zoo.errors import ConfigError, RunError
from zoo.stats import Interval, bootstrap_ci, paired_bootstrap

# metrics shown in the markdown table per task (all metrics go to the csv)
HEADLINE = {"vqa_closed": ("accuracy", "accuracy_m3d", "accuracy_ll"),
            "vqa_open": ("bleu1", "rougeL", "meteor"),
            "caption": ("bleu1", "rougeL", "meteor", "bertscore_f1"),
            "reg": ("bleu1", "rougeL"), "rec": ("iou", "iou_m3d", "hit@0.5"),
            "seg": ("dice", "dice_soft"), "refseg": ("dice", "dice_soft"),
            "retrieval": ("image_to_text/R@1", "text_to_image/R@1"), "cls": ("accuracy",)}
COSTS = (("params.total", "params"), ("params.trainable", "trainable"),
         ("cost.visual_tokens", "visual tokens"), ("cost.flops_per_sample", "FLOPs/sample"),
         ("cost.train_seconds", "train s"), ("cost.peak_memory_mb", "peak MB"))
BASELINE_PREFIX = "[baseline] "
REPEAT_KEYS = ("seed", "trainer.output_dir")  # logged params in which repeats of a variant differ


@dataclass
class Variant:
    name: str
    run_id: str
    split_hash: str
    costs: dict[str, float]
    records: dict[str, dict[str, dict]] = field(default_factory=dict)  # task -> id -> record
    baseline: bool = False
    repeats: int = 1  # runs (seeds) averaged into this variant


@dataclass
class Row:
    variant: str
    task: str
    metric: str
    n: int
    value: Interval
    diff: Interval | None


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


def repeat_groups(runs: Sequence[Any]) -> list[list[Any]]:
    """Runs grouped by configuration, in first-seen order: runs whose logged config differs only
    in ``seed`` (and the output folder) repeat one variant."""
    groups: dict[tuple, list[Any]] = {}
    for run in runs:
        params = getattr(run.data, "params", None) or {"run": run.info.run_id}
        key = tuple(sorted((k, v) for k, v in params.items() if k not in REPEAT_KEYS))
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def merge_repeats(parts: list[Variant]) -> Variant:
    """One variant from runs that repeat it with other seeds: on the items every repeat has, each
    score is the mean over the repeats (the item stays the unit of the paired bootstrap); costs
    are means."""
    if len(parts) == 1:
        return parts[0]
    records = {}
    for task in sorted(set.intersection(*(set(p.records) for p in parts))):
        ids = sorted(set.intersection(*(set(p.records[task]) for p in parts)))
        records[task] = {}
        for i in ids:
            rows = [p.records[task][i] for p in parts]
            keys = sorted(set.intersection(*(set(r["scores"]) for r in rows)))
            values = {k: [r["scores"][k] for r in rows] for k in keys}
            records[task][i] = {**rows[0], "scores": {
                k: None if None in v else sum(v) / len(v) for k, v in values.items()}}
    costs = {k: sum(p.costs[k] for p in parts) / len(parts)
             for k in set.intersection(*(set(p.costs) for p in parts))}
    return Variant(parts[0].name, ",".join(p.run_id for p in parts), parts[0].split_hash, costs,
                   records, repeats=len(parts))


def _load_run(client: Any, run: Any, name: str, split_hash: str,
              baselines: dict[tuple[str, str], dict]) -> Variant:
    """One run's costs and per-item eval records; evaluator baselines go to ``baselines`` (the
    first run's copy per task is kept)."""
    costs = {k: float(run.data.metrics[k]) for k, _ in COSTS if k in run.data.metrics}
    variant = Variant(name, run.info.run_id, split_hash, costs)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder = Path(client.download_artifacts(run.info.run_id, "eval", tmp))
        except Exception:  # no eval artifacts: the run contributes costs only
            folder = None
        for path in sorted(folder.glob("*.jsonl")) if folder else []:
            records = _read_jsonl(path)
            if path.name.endswith(".baseline.jsonl"):
                task = path.name[:-len(".baseline.jsonl")]
                tag = run.data.tags.get(f"zoo.eval.{task}.baseline", "baseline")
                baselines.setdefault((task, tag), {r["id"]: r for r in records})
            else:
                variant.records[path.stem] = {r["id"]: r for r in records}
    return variant


def load_variants(client: Any, runs: Sequence[Any]) -> list[Variant]:
    """Variants (and the evaluators' baselines, once) of finished runs, split hashes checked;
    runs that repeat a configuration with other seeds are averaged into one variant."""
    if not runs:
        raise RunError("compare: no runs to compare")
    hashes = {r.info.run_id: r.data.tags.get("zoo.split_hash", "unknown") for r in runs}
    if len(set(hashes.values())) > 1:
        listing = ", ".join(f"{rid[:8]}={h[:12]}" for rid, h in hashes.items())
        raise RunError(f"compare: runs were evaluated on different splits ({listing}); paired "
                       "comparisons need the same test items")
    variants, baselines = [], {}
    groups = repeat_groups(runs)
    for group, name in zip(groups, short_names([g[0] for g in groups])):
        variants.append(merge_repeats([_load_run(client, run, name, hashes[run.info.run_id],
                                                 baselines) for run in group]))
    for (task, tag), records in baselines.items():
        variants.append(Variant(f"{BASELINE_PREFIX}{tag}", "", variants[0].split_hash, {},
                                {task: records}, baseline=True))
    return variants


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


def is_headline(task: str, metric: str) -> bool:
    """Whether the markdown table shows ``metric`` (a headline metric or its per-type split)."""
    wanted = HEADLINE.get(task, ())
    if metric in wanted or (metric.startswith("meteor") and "/" not in metric
                            and "meteor" in wanted):
        return True
    return task == "vqa_closed" and metric.startswith(("accuracy/", "accuracy_ll/"))  # per type


def compare_variants(variants: list[Variant], reference: str | None = None,
                     resamples: int = 2000, seed: int = 0) -> list[Row]:
    """Rows for every (variant, task, metric): mean with 95 % interval, paired difference to the
    reference variant (the first non-baseline variant unless named) on the shared items."""
    models = [v for v in variants if not v.baseline]
    ref = next((v for v in variants if v.name == reference), None) if reference else models[0]
    if ref is None:
        raise ConfigError(f"compare --baseline {reference!r}: no such variant; variants: "
                          f"{[v.name for v in variants]}")
    rows = []
    tasks = sorted({t for v in variants for t in v.records})
    for task in tasks:
        have = [v for v in variants if task in v.records]
        ids = sorted(set.intersection(*(set(v.records[task]) for v in have)))
        if not ids:
            continue
        for metric in metric_names(have[0].records[task]):
            ref_scores = item_scores(ref.records[task], metric, ids) if task in ref.records else None
            for v in have:
                scores = item_scores(v.records[task], metric, ids)
                if scores is None:
                    continue
                value = bootstrap_ci(scores, resamples=resamples, seed=seed)
                diff = None
                if ref_scores is not None and v is not ref and len(ref_scores) == len(scores):
                    diff = paired_bootstrap(scores, ref_scores, resamples=resamples, seed=seed)
                rows.append(Row(v.name, task, metric, len(scores), value, diff))
    return rows


def baseline_rows(variants: list[Variant], resamples: int = 2000, seed: int = 0) -> list[Row]:
    """Paired differences of every model variant to each baseline (an evaluator's, e.g. the
    majority answer) on that baseline's tasks, headline metrics only (no per-type split)."""
    rows = []
    for base in [v for v in variants if v.baseline]:
        pair = [v for v in variants if not v.baseline] + [base]
        rows += [r for r in compare_variants(pair, base.name, resamples, seed)
                 if r.diff is not None and r.task in base.records
                 and r.metric in HEADLINE.get(r.task, ())]
    return rows


def _cell(row: Row) -> str:
    text = f"{row.value.mean:.3f} [{row.value.low:.3f}, {row.value.high:.3f}]"
    if row.diff is not None:
        mark = " *" if row.diff.excludes_zero() else ""
        text += f" Δ {row.diff.mean:+.3f} [{row.diff.low:+.3f}, {row.diff.high:+.3f}]{mark}"
    return text


def _fmt_cost(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    if key == "cost.flops_per_sample":
        return f"{value / 1e9:.3f} G"
    if key.startswith("params") or key == "cost.visual_tokens":
        return f"{int(value):,}"
    return f"{value:.1f}"


def _table(title: str, rows: list[Row], names: list[str], metrics: list[str]) -> list[str]:
    """Markdown lines of one table: a row per variant that has any of ``metrics``."""
    cells = {(r.variant, r.metric): r for r in rows}
    out = [f"### {title}", "", "| variant | " + " | ".join(metrics) + " |",
           "|---|" + "---|" * len(metrics)]
    for name in names:
        if any((name, m) in cells for m in metrics):
            out.append(f"| {name} | " + " | ".join(_cell(cells[(name, m)]) if (name, m) in cells
                                                    else "-" for m in metrics) + " |")
    return out + [""]


def markdown(rows: list[Row], variants: list[Variant], reference: str,
             against_baseline: Sequence[Row] = ()) -> str:
    out = [f"Reference variant for paired differences (Δ): **{reference}**. Cells: mean "
           "[95 % bootstrap interval]; Δ = paired difference to the reference on the same items "
           "[95 % paired bootstrap interval]; * = the interval excludes zero. A variant run with "
           "several seeds (cost table) scores each item by its mean over the seeds.", ""]
    names = [v.name for v in variants]
    for task in sorted({r.task for r in rows}):
        task_rows = [r for r in rows if r.task == task]
        metrics = list(dict.fromkeys(r.metric for r in task_rows))
        wanted = [m for m in metrics if is_headline(task, m)] or metrics[:3]
        n = max(r.n for r in task_rows)
        out += _table(f"{task} ({n} test items)", task_rows, names, wanted)
    for task in sorted({r.task for r in against_baseline}):
        task_rows = [r for r in against_baseline if r.task == task]
        out += _table(f"{task}: each variant against the baseline (Δ = variant - baseline, "
                      "paired)", task_rows, list(dict.fromkeys(r.variant for r in task_rows)),
                      list(dict.fromkeys(r.metric for r in task_rows)))
    out += ["### cost", "", "| variant | seeds | " + " | ".join(label for _, label in COSTS)
            + " |", "|---|---|" + "---|" * len(COSTS)]
    for v in variants:
        if not v.baseline:
            out.append(f"| {v.name} | {v.repeats} | " + " | ".join(_fmt_cost(k, v.costs.get(k))
                                                                   for k, _ in COSTS) + " |")
    return "\n".join(out) + "\n"


def csv_text(rows: list[Row], variants: list[Variant]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["variant", "task", "metric", "n", "mean", "low", "high", "diff", "diff_low",
                     "diff_high", "diff_excludes_zero"] + [k for k, _ in COSTS])
    costs = {v.name: v.costs for v in variants}
    for r in rows:
        d = r.diff
        writer.writerow([r.variant, r.task, r.metric, r.n, r.value.mean, r.value.low, r.value.high,
                         d.mean if d else "", d.low if d else "", d.high if d else "",
                         d.excludes_zero() if d else ""]
                        + [costs[r.variant].get(k, "") for k, _ in COSTS])
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


def plots(rows: list[Row], variants: list[Variant], out: Path,
          quality: tuple[str, str] = ("vqa_closed", "accuracy"),
          cost: str = "cost.flops_per_sample") -> list[Path]:
    """``bars.png`` (headline metric per task with intervals) and ``pareto.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    panels = [(t, HEADLINE[t][0]) for t in sorted({r.task for r in rows}) if t in HEADLINE]
    panels += [("vqa_closed", f"accuracy/{q}") for q in ("location",)
               if any(r.metric == f"accuracy/{q}" for r in rows)]
    panels = [(t, m) for t, m in panels if any(r.task == t and r.metric == m for r in rows)]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 4), squeeze=False)
        for ax, (task, metric) in zip(axes[0], panels):
            sel = [r for r in rows if r.task == task and r.metric == metric]
            ax.bar(range(len(sel)), [r.value.mean for r in sel],
                   yerr=[[r.value.mean - r.value.low for r in sel],
                         [r.value.high - r.value.mean for r in sel]], capsize=3,
                   color=["0.7" if r.variant.startswith(BASELINE_PREFIX) else "C0" for r in sel])
            ax.set_xticks(range(len(sel)), [r.variant[:28] for r in sel], rotation=70, fontsize=7)
            ax.set_title(f"{task}: {metric}", fontsize=9)
        fig.tight_layout()
        paths.append(out / "bars.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    pts = [(v, r.value.mean) for v in variants for r in rows
           if not v.baseline and r.variant == v.name and (r.task, r.metric) == quality
           and cost in v.costs]
    if pts:
        xy = [(v.costs[cost], q) for v, q in pts]
        front = pareto_front(xy)
        fig, ax = plt.subplots(figsize=(6, 4.5))
        ax.scatter([x for x, _ in xy], [y for _, y in xy])
        for (v, _), (x, y) in zip(pts, xy):
            ax.annotate(v.name[:32], (x, y), fontsize=7)
        ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], "r--", label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel(cost)
        ax.set_ylabel(f"{quality[0]} {quality[1]}")
        ax.legend()
        fig.tight_layout()
        paths.append(out / "pareto.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def run_compare(parent: str | None = None, run_ids: Sequence[str] = (), reference: str | None = None,
                out_dir: str | Path | None = None, tracking_uri: str | None = None,
                experiment: str = "zoo", resamples: int = 2000) -> dict[str, Any]:
    """Compare the child runs of ``parent`` (or the runs ``run_ids``); returns markdown, paths."""
    from zoo.tracking import Run, Tracker

    tracker = Tracker(tracking_uri, experiment)
    client = tracker.client
    if parent:
        runs = sorted(tracker.child_runs(parent), key=lambda r: r.info.start_time)
        if not runs:
            raise RunError(f"compare: run {parent!r} has no child runs in {tracker.uri}")
    else:
        runs = [client.get_run(rid) for rid in run_ids]
    variants = load_variants(client, runs)
    rows = compare_variants(variants, reference, resamples=resamples)
    ref_name = reference or next(v.name for v in variants if not v.baseline)
    text = markdown(rows, variants, ref_name, baseline_rows(variants, resamples))
    out = Path(out_dir or Path("runs") / "compare" / (parent or runs[0].info.run_id))
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.md").write_text(text)
    (out / "comparison.csv").write_text(csv_text(rows, variants))
    figures = plots(rows, variants, out)
    if parent:
        run = Run(client, parent)
        for path in [out / "comparison.md", out / "comparison.csv", *figures]:
            run.log_artifact(path, "compare")
    return {"markdown": text, "out_dir": out, "plots": figures, "rows": rows,
            "variants": variants, "tracking_uri": tracker.uri}
