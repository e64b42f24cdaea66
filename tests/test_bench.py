"""`zoo bench` pieces on tiny components: table shape, FLOP counting, side-by-side numerics and the
regression checker on synthetic numbers (no timed assertions)."""

import pytest
import torch
from torch import nn

from zoo.bench import report
from zoo.bench.cases import component_cases
from zoo.bench.cost import meta_cost
from zoo.bench.run import COST_HEADERS, cost_rows


def test_meta_flops_of_a_linear_layer():
    cost = meta_cost(lambda: (nn.Linear(8, 16), (torch.randn(4, 8),)))
    assert cost.params == 8 * 16 + 16
    assert cost.flops_fwd == 2 * 4 * 8 * 16
    assert cost.flops_fwd_bwd == 2 * cost.flops_fwd  # weight gradient only (input needs none)
    assert cost.saved_bytes == 4 * 8 * 4  # addmm keeps its input for the weight gradient


def test_cpu_peak_follows_allocations_and_frees_in_time_order():
    from zoo.bench.cost import cpu_peak_bytes

    def step():
        a = torch.ones(1000, 1000)
        b = torch.ones(2000, 1000)
        del a
        return b, torch.ones(500, 1000)  # a's 4 MB freed before this: peak is a + b

    assert cpu_peak_bytes(step) == (1000 + 2000) * 1000 * 4
    assert cpu_peak_bytes(lambda: None) == 0


def test_cpu_peak_memory_of_a_linear_step():
    from zoo.bench.cost import measure

    t = measure(lambda: (nn.Linear(256, 512), (torch.randn(64, 256),)), torch.device("cpu"),
                repeats=1)
    state = (256 * 512 + 512 + 64 * 256) * 4
    # output (64 x 512) + weight and bias gradients at least; the whole step is far below 2 MB
    assert state + (64 * 512 + 256 * 512 + 512) * 4 <= t.peak_mb * 2**20 < state + 2 * 2**20


def test_cost_rows_on_tiny_components():
    cases = [c for c in component_cases(("tiny",)) if c.name in ("test_vit3d", "spatial_pool")]
    metrics = {}
    rows = cost_rows(cases, torch.device("cpu"), budget_gflop=1.0, repeats=1, metrics=metrics,
                     prefix="t")
    assert [r[1] for r in rows] == ["test_vit3d", "spatial_pool"]
    assert all(len(r) == len(COST_HEADERS) for r in rows)
    assert rows[0][5] == 128 and rows[1][5] == 16  # tokens: 8 x 4 x 4 grid, pooled by 2
    key = "t/encoder/test_vit3d/tiny/32x64x64"
    assert metrics[f"{key}/params"] == 140544 and metrics[f"{key}/fwd_bwd_s"] > 0
    assert isinstance(rows[0][12], float) and rows[0][12] > 0  # CPU peak memory measured
    skipped = cost_rows(cases[:1], torch.device("cpu"), 0.0, 1, {}, "t")
    assert skipped[0][10] == "meta only"


def test_vit3d_matches_monai_in_the_side_by_side():
    from encoders.vit3d import vit3d
    from zoo.bench.compare import vit3d_vs_monai

    res = vit3d_vs_monai((32, 64, 64), depth=1, width=32, heads=2, mlp_dim=64, warmup_size=None)
    assert res["max_abs_diff"] < 1e-5
    assert set(res["seconds"]) == {"monai", "monai_sdpa", "vit3d"}
    # 17 tokens, 1 block: the step's FLOPs and rates are consistent with the times
    assert res["flops_fwd_bwd"] == meta_cost(lambda: (
        vit3d(img_size=(32, 64, 64), hidden_size=32, depth=1, num_heads=2, mlp_dim=64),
        (torch.empty(1, 1, 32, 64, 64),))).flops_fwd_bwd
    for name, sec in res["seconds"].items():
        assert res["gflops_per_s"][name] == pytest.approx(res["flops_fwd_bwd"] / sec / 1e9)
    linear = res["kernel_gflops_per_s"]["linear"]
    assert res["ceiling_vs_monai"] == pytest.approx(
        res["seconds"]["monai"] * linear * 1e9 / res["flops_fwd_bwd"])


def test_kernel_rates_count_the_flops_of_each_kernel(monkeypatch):
    from zoo.bench import compare

    monkeypatch.setattr(compare, "time_call", lambda call, repeats: 0.5)
    rates = compare.kernel_rates(tokens=16, width=8, heads=2, mlp_dim=32)
    assert rates["linear"] == pytest.approx(2 * 16 * 8 * 32 / 0.5 / 1e9)
    # attention fwd (QK^T, PV) = 2 x 2*16*16*8; backward counted by torch as twice that
    assert rates["attention"] == pytest.approx(3 * 2 * 2 * 16 * 16 * 8 / 0.5 / 1e9)


def test_zoo_preparation_equals_the_plain_monai_pipeline():
    from zoo.bench.compare import prepare_vs_monai

    res = prepare_vs_monai((64, 64, 24), rounds=1)  # the zoo crops before windowing: same output
    assert res["max_abs_diff"] < 1e-6 and set(res["seconds"]) == {"zoo", "monai"}


def test_report_roundtrip_and_regressions(tmp_path):
    path = report.write(tmp_path / "B.md", [("T", report.table(["a", "b"], [(1, 2.5)]))],
                        {"x/fwd_s": 1.0, "x/flops_fwd_bwd": 10}, {"cpu": "test"})
    text = path.read_text()
    assert "| a | b |" in text and "| 1 | 2.5 |" in text
    recorded = report.read_metrics(path)
    assert recorded == {"x/fwd_s": 1.0, "x/flops_fwd_bwd": 10}
    assert report.regressions(recorded, {"x/fwd_s": 1.2, "x/flops_fwd_bwd": 10}) == []
    found = report.regressions(recorded, {"x/fwd_s": 1.5, "x/flops_fwd_bwd": 11, "new_s": 9.0})
    assert [(f.key, f.kind) for f in found] == [("x/flops_fwd_bwd", "changed"),
                                                ("x/fwd_s", "slower")]
    # below the absolute floor: tiny cases' jitter is not a regression
    assert report.regressions({"y_s": 0.001}, {"y_s": 0.005}) == []
    with pytest.raises(ValueError, match="threshold"):
        report.regressions({}, {}, threshold=-1)
    (tmp_path / "empty.md").write_text("# nothing\n")
    with pytest.raises(ValueError, match="no recorded metrics"):
        report.read_metrics(tmp_path / "empty.md")


def test_cli_checks_its_options(tmp_path):
    from zoo.bench.cli import main

    with pytest.raises(ValueError, match="--strict"):
        main(["--strict"])
    with pytest.raises(FileNotFoundError, match="run `zoo bench` first"):
        main(["--check", "--out", str(tmp_path / "none.md")])


def test_sweep_timing_runs_the_command_and_names_a_failure():
    import sys

    from zoo.bench.e2e import sweep_wall_seconds

    quiet = lambda *a: None  # noqa: E731
    assert sweep_wall_seconds(["pass"], command=[sys.executable, "-c"], log=quiet) > 0
    with pytest.raises(RuntimeError, match="exited with 3"):
        sweep_wall_seconds(["raise SystemExit(3)"], command=[sys.executable, "-c"], log=quiet)


@pytest.mark.parametrize("name", ["lamed/small", "tghmoe/small"])
def test_end_to_end_configs_build(name):
    from zoo.bench.e2e import E2E_CONFIGS
    from zoo.build import build_on_meta
    from zoo.config import compose

    model = build_on_meta(compose(E2E_CONFIGS[name]))
    assert sum(p.numel() for p in model.parameters()) > 0


def test_gpu_section_skips_cleanly_without_cuda():
    from zoo.bench.gpu import DEFAULT_VARIANTS, GPU_SKIPPED, gpu_section

    body, metrics = gpu_section(torch.device("cpu"))
    assert body.startswith(GPU_SKIPPED) and "torch.compile" in body and metrics == {}
    assert DEFAULT_VARIANTS[:4] == ("fp32", "eager", "compiled", "compiled-cudagraphs")


def test_gpu_encoder_rows_run_the_same_code_on_cpu():
    from encoders.vit3d import test_vit3d
    from zoo.bench.gpu import encoder_rows

    rows, metrics, kernels = encoder_rows(test_vit3d, (32, 64, 64),
                                          10**9, torch.device("cpu"), batches=(1, 2),
                                          variants=["fp32", "eager"], peaks=(None, 1.0),
                                          repeats=1, name="test_vit3d")
    assert [r[:2] for r in rows] == [["fp32", 1], ["fp32", 2], ["eager", 1], ["eager", 2]]
    for variant, batch, seconds, rate, tflops, mfu_sheet, mfu_measured, peak in rows:
        assert seconds > 0 and rate == pytest.approx(batch / seconds)
        assert tflops == pytest.approx(1e-3 * batch / seconds)
        assert mfu_sheet == "-" and mfu_measured == f"{tflops:.1%}" and peak == "-"
    assert set(metrics) == {f"gpu/test_vit3d/{v}/b{b}/fwd_bwd_s" for v in ("fp32", "eager")
                            for b in (1, 2)}
    assert kernels == {"fp32": [], "eager": []}  # the profiler's kernel list is CUDA-only


def test_gpu_bf16_weights_variant_trains_in_bf16_and_bad_variants_are_named():
    from encoders.vit3d import test_vit3d
    from zoo.bench.gpu import encoder_rows

    seen = []

    def build():
        model = test_vit3d()
        model.register_forward_hook(lambda m, args, out: seen.append(
            (args[0].dtype, out.tokens.dtype, next(m.parameters()).dtype)))
        return model

    rows, _, _ = encoder_rows(build, (32, 64, 64), 10**9, torch.device("cpu"), batches=(1,),
                              variants=["bf16-weights"], repeats=1, name="t")
    assert rows[0][:2] == ["bf16-weights", 1] and rows[0][2] > 0
    assert set(seen) == {(torch.bfloat16, torch.bfloat16, torch.bfloat16)}
    with pytest.raises(ValueError, match="'compiled-bf16-weight'.*Did you mean: "
                                         "compiled-bf16-weights"):
        encoder_rows(build, (32, 64, 64), 1, torch.device("cpu"),
                     variants=["compiled-bf16-weight"])


def test_lamed_step_fills_the_context_and_toggles_checkpointing():
    from zoo.bench.gpu import lamed_step

    results = lamed_step(["recipe=lamed", "recipe.max_length=128"], torch.device("cpu"), steps=1)
    assert [r["checkpointing"] for r in results] == [True, False]
    for r in results:
        assert r["tokens"] == 128 and r["batch_size"] == 1 and r["seconds"] > 0
        assert 0 < r["trainable"] < r["total"] and r["peak_mb"] is None


def test_bench_sections_are_validated():
    from zoo.bench.run import run_bench

    with pytest.raises(ValueError, match="unknown bench section 'gpux'. Did you mean: gpu"):
        run_bench(out=None, sections=("gpux",))


def test_outputs_follow_out_outside_the_repository(tmp_path, monkeypatch):
    """From a folder without docs/, the table and the scaling plot land under --out's folder."""
    from zoo.bench.run import run_bench

    monkeypatch.chdir(tmp_path)
    run_bench(out="docs/BENCHMARKS.md", quick=True, sections=("scaling",), log=lambda *_: None,
              time_budget_gflop=0.0)
    assert (tmp_path / "docs" / "BENCHMARKS.md").is_file()
    assert (tmp_path / "docs" / "bench_scaling.png").is_file()


def test_the_bench_quotes_the_default_sweeps_recorded_wall_time():
    from zoo import results
    from zoo.bench.run import recorded_sweep_row

    record, _, _ = results.read(results.project_root() / "docs/results/compare_strategies.md")
    row = recorded_sweep_row()
    assert row[3] == round(record["wall_seconds"])
    assert record["commit"][:12] in row[-1]
