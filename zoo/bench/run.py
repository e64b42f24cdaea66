"""``zoo bench``: run every benchmark section, print the tables, write ``docs/BENCHMARKS.md``.

Sections: per-component cost (tiny / small / full), scaling with the volume size, vit3d against
MONAI's ViT, data preparation against plain MONAI, end-to-end training steps, GPU figures, and the
memory arithmetic of the full M3D configuration. Latency is measured only where a case's
forward+backward FLOPs fit ``time_budget_gflop`` (the rest is counted on meta), so the default run
stays within a few minutes on a 2-core CPU.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import torch

from zoo.bench import report
from zoo.bench.cases import Case, component_cases, scaling_cases
from zoo.bench.cost import measure, meta_cost
from zoo.bench.gpu import GPU_SKIPPED, gpu_section
from zoo.errors import ConfigError

SECTIONS = ("components", "scaling", "vit3d", "prepare", "e2e", "loader", "gpu", "memory")


def _mb(nbytes: float) -> float:
    return nbytes / 2**20


def cost_rows(cases: list[Case], device: torch.device, budget_gflop: float, repeats: int,
              metrics: dict[str, float], prefix: str) -> list[list[Any]]:
    """One table row per case; timings where the case fits the budget; metrics filled in."""
    rows = []
    for case in cases:
        key = f"{prefix}/{case.kind}/{case.name}/{case.level}/{'x'.join(map(str, case.size))}"
        cost = meta_cost(case.factory)
        timed = cost.flops_fwd_bwd <= budget_gflop * 1e9
        t = measure(case.factory, device, repeats=repeats) if timed else None
        rate = 1.0 / t.fwd_bwd_s if t and t.fwd_bwd_s else None
        rows.append([case.kind, case.name, case.level, "x".join(map(str, case.size)),
                     f"{cost.params / 1e6:.2f}", cost.tokens, f"{cost.flops_fwd / 1e9:.2f}",
                     f"{cost.flops_fwd_bwd / 1e9:.2f}", f"{_mb(cost.saved_bytes):.0f}",
                     t.fwd_s if t else "meta only", t.fwd_bwd_s if t else "meta only",
                     rate, t.peak_mb if t and t.peak_mb is not None else "-"])
        metrics[f"{key}/params"] = cost.params
        metrics[f"{key}/flops_fwd_bwd"] = cost.flops_fwd_bwd
        if t:
            metrics[f"{key}/fwd_s"] = t.fwd_s
            if t.fwd_bwd_s is not None:
                metrics[f"{key}/fwd_bwd_s"] = t.fwd_bwd_s
    return rows


COST_HEADERS = ["kind", "name", "level", "D x H x W", "params (M)", "tokens", "GFLOP fwd",
                "GFLOP fwd+bwd", "saved act. (MB)", "fwd (s)", "fwd+bwd (s)", "vol/s (train)",
                "peak (MB)"]


def scaling_plot(rows: list[list[Any]], path: str) -> str | None:
    """Log-log plot of forward+backward GFLOP against voxels per strategy (PNG next to the doc)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        d, h, w = (int(v) for v in row[3].split("x"))
        series.setdefault(row[1], []).append((d * h * w, float(row[7])))
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in series.items():
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=name)
    ax.set(xscale="log", yscale="log", xlabel="voxels (D x H x W)", ylabel="GFLOP fwd+bwd",
           title="Cost growth per strategy (batch 1, meta-device count)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def gpu_step_rate(recorded: str = "docs/BENCHMARKS_GPU.md") -> float | None:
    """Volumes per second of the best recorded ``vit3d_base_m3d`` training step on a GPU (read
    from ``recorded``'s metrics): the rate the data loader has to keep up with."""
    from pathlib import Path

    if not Path(recorded).is_file():
        return None
    rates = [int(key.split("/")[3][1:]) / seconds
             for key, seconds in report.read_metrics(recorded).items()
             if key.startswith("gpu/vit3d_base_m3d/") and key.endswith("/fwd_bwd_s")]
    return max(rates) if rates else None


def measured_peak_note(device: torch.device, recorded: str = "docs/BENCHMARKS_GPU.md") -> str:
    """Where the measured peak of the full M3D step is: this run's GPU section, or the figure
    recorded in ``recorded`` (read from its metrics, not retyped)."""
    if device.type == "cuda":
        return "Measured peak on this GPU: see the GPU section."
    from pathlib import Path

    peak = report.read_metrics(recorded).get("gpu/full_m3d/ckpt/peak_mb") \
        if Path(recorded).is_file() else None
    if peak is None:
        return GPU_SKIPPED + "; `zoo bench --sections gpu --out docs/BENCHMARKS_GPU.md` on a GPU " \
            "measures the LoRA configuration's peak."
    return (f"Measured (recorded in {recorded}, one GPU, LoRA, instruct step, batch 1, gradient "
            f"checkpointing): peak {peak * 2**20 / 1e9:.2f} GB ({peak / 1024:.2f} GiB) allocated, "
            "to compare with the LoRA DDP row (DDP adds only its gradient buckets).")


def run_bench(out: str | None = "docs/BENCHMARKS.md", quick: bool = False,
              time_budget_gflop: float | None = None, repeats: int = 2,
              sections: Sequence[str] = SECTIONS,
              log: Any = print, sweep: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns ``{"metrics": flat dict, "sections": [(title, markdown)]}``.
    ``sweep``: overrides of a ``zoo sweep`` whose wall time joins the end-to-end section
    (``[]`` = the default sweep; ``None`` = not run)."""
    from zoo.registry import load_manifest, suggest

    unknown = [name for name in sections if name not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown bench section {unknown[0]!r}.{suggest(unknown[0], SECTIONS)} "
                          f"Sections: {', '.join(SECTIONS)}")
    load_manifest()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    budget = time_budget_gflop if time_budget_gflop is not None else (2.0 if quick else 50.0)
    levels = ("tiny",) if quick else ("tiny", "small", "full")
    metrics: dict[str, float] = {}
    done: list[tuple[str, str]] = []
    start = time.perf_counter()

    def add(title: str, body: str) -> None:
        done.append((title, body))
        log(f"\n== {title} ({time.perf_counter() - start:.0f} s)\n{body}")

    if "components" in sections:
        rows = cost_rows(component_cases(levels), device, budget, repeats, metrics, "component")
        add("Components", f"Latency on {device.type}; timed where fwd+bwd <= {budget:g} GFLOP, "
            "otherwise counted on meta only. Saved activations: tensors kept for backward "
            "(batch 1, fp32; attention counted with the math kernel, an upper bound).\n\n"
            + report.table(COST_HEADERS, rows))
    if "scaling" in sections:
        cases = scaling_cases() if not quick else scaling_cases(((32, 64, 64), (32, 128, 128)))
        rows = cost_rows(cases, device, budget, repeats, metrics, "scaling")
        body = (f"Full-size components; timed on {device.type} where fwd+bwd <= {budget:g} GFLOP, "
                "the rest counted on meta.\n\n" + report.table(COST_HEADERS, rows))
        if out:
            png = Path(out).with_name("bench_scaling.png")
            scaling_plot(rows, str(png))
            body += f"\n\n![scaling]({png.name})"
        add("Scaling with the volume", body)
    if "vit3d" in sections:
        from zoo.bench.compare import vit3d_vs_monai

        size, depth = ((32, 64, 64), 2) if quick else ((32, 256, 256), 12)
        kw = dict(width=64, heads=4, mlp_dim=128, warmup_size=None) if quick else {}
        res = vit3d_vs_monai(size, depth, rounds=1 if not quick else 2, **kw)
        for name, sec in res["seconds"].items():
            metrics[f"vit3d_vs_monai/{name}/fwd_bwd_s"] = sec
        metrics["vit3d_vs_monai/speedup_vs_monai"] = res["speedup_vs_monai"]
        metrics["vit3d_vs_monai/speedup_vs_monai_sdpa"] = res["speedup_vs_monai_sdpa"]
        metrics["vit3d_vs_monai/flops_fwd_bwd"] = res["flops_fwd_bwd"]
        metrics["vit3d_vs_monai/ceiling_vs_monai"] = res["ceiling_vs_monai"]
        kernels = res["kernel_gflops_per_s"]
        metrics.update({f"vit3d_vs_monai/kernel_rate/{k}": v for k, v in kernels.items()})
        add("vit3d against MONAI ViT (forward+backward, identical settings and weights)",
            f"1 x {' x '.join(map(str, size))}, depth {depth}, cpu, "
            f"{res['rounds']} round(s), max |vit3d - MONAI| = {res['max_abs_diff']:.2e}, "
            f"{res['flops_fwd_bwd'] / 1e9:.1f} GFLOP per step (meta count)\n\n"
            + report.table(["variant", "fwd+bwd (s)", "GFLOP/s", "of the Linear rate",
                            "vit3d speed-up"],
                           [(k, v, res["gflops_per_s"][k],
                             f"{res['gflops_per_s'][k] / kernels['linear']:.0%}",
                             res["seconds"][k] / res["seconds"]["vit3d"])
                            for k, v in res["seconds"].items()])
            + f"\n\nKernel rates measured in this process at the block's shape (CPU, fp32): "
            f"largest Linear {kernels['linear']:.1f} GFLOP/s, SDPA attention forward+backward "
            f"{kernels['attention']:.1f} GFLOP/s. Ceiling: if vit3d's whole step ran at the "
            f"Linear rate, its speed-up over MONAI default would be "
            f"{res['ceiling_vs_monai']:.2f}x.")
    if "prepare" in sections:
        from zoo.bench.compare import prepare_vs_monai

        res = prepare_vs_monai((128, 128, 48) if quick else (256, 256, 96), rounds=2 if quick else 3)
        metrics.update({f"prepare/{k}_s": v for k, v in res["seconds"].items()})
        metrics["prepare/ratio_monai_over_zoo"] = res["ratio_monai_over_zoo"]
        add("Data preparation against plain MONAI Compose",
            f"CT volume {res['input_shape']} -> {res['output_size']}, max |diff| = "
            f"{res['max_abs_diff']:.2e}\n\n" + report.table(
                ["pipeline", "s / case", "MONAI / zoo"],
                [(k, v, res["seconds"]["monai"] / v) for k, v in res["seconds"].items()]))
    if "e2e" in sections:
        from zoo.bench.e2e import E2E_CONFIGS, train_step_seconds

        rows = []
        for name, overrides in E2E_CONFIGS.items():
            if quick and not name.endswith("tiny"):
                continue
            res = train_step_seconds(overrides, steps=2)
            metrics[f"e2e/{name}/step_s"] = res["seconds"]
            rows.append([name, res["stage"], res["batch_size"], res["seconds"],
                         f"{res['trainable']:,}", f"{res['total']:,}", " ".join(overrides)])
        if sweep is None:
            rows.append(recorded_sweep_row())
        else:
            from zoo.bench.e2e import sweep_wall_seconds

            seconds = sweep_wall_seconds(sweep, log=log)
            metrics["e2e/sweep/wall_s"] = seconds
            rows.append(["`zoo sweep` wall time (s)", "all", "", seconds, "", "",
                         " ".join(sweep) or "(default)"])
        add("End to end: seconds per training step",
            report.table(["config", "stage", "batch", "s / step", "trainable", "params",
                          "overrides"], rows))
    if "loader" in sections:
        from zoo.bench.loader import loader_section

        size, cases = ((32, 64, 64), 8) if quick else ((32, 256, 256), 16)
        body, loader_metrics = loader_section(size, cases, target_volumes_per_s=gpu_step_rate())
        metrics.update(loader_metrics)
        add("Data loader: prepared volumes loaded and collated", body)
    if "gpu" in sections:
        gpu_body, gpu_metrics = gpu_section(device)
        metrics.update(gpu_metrics)
        add("GPU", gpu_body)
    if "memory" in sections:
        from zoo.bench.memory import full_m3d_memory

        body, memory_metrics = full_m3d_memory()
        metrics.update(memory_metrics)
        add("Memory: full M3D configuration per GPU on 8 x 80 GB (arithmetic)",
            body + "\n\n" + measured_peak_note(device))
    metrics["wall_s"] = time.perf_counter() - start
    info = report.machine()
    if out:
        report.write(out, done, metrics, info)
        log(f"\nwrote {out} ({metrics['wall_s']:.0f} s)")
    return {"metrics": metrics, "sections": done, "machine": info}


def recorded_sweep_row() -> list[Any]:
    """The default sweep's wall time as its results file records it
    (docs/results/compare_strategies.md, written by ``zoo sweep sweep.results=...``)."""
    from zoo import results

    path = results.project_root() / "docs" / "results" / "compare_strategies.md"
    if not path.is_file():
        return ["default sweep", "", "", "not run (use `zoo bench --sweep`)", "", "", ""]
    record, _, _ = results.read(path)
    load = (record.get("machine") or {}).get("load_avg")
    status = f"STALE: {record['stale']}" if record.get("stale") else "current"
    cpu = f", the jobs' CPU time {record['cpu_seconds']:.0f} s" if record.get("cpu_seconds") else ""
    return ["`zoo sweep` wall time (s), as recorded", "all", "", round(record["wall_seconds"]),
            "", "", f"docs/results/compare_strategies.md ({status}): commit "
            f"{str(record.get('commit'))[:12]}, load average at the start {load}{cpu}"]
