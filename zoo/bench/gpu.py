"""GPU figures of ``zoo bench``: the ``vit3d_base_m3d`` training step per variant (fp32; bf16
autocast eager, compiled, compiled with CUDA graphs, compiled with bf16 weights), its model FLOPs
utilisation (MFU), the attention kernels that actually ran, and the measured peak memory of the
full M3D configuration (ViT-B + LLaMA-2-7B with LoRA, batch 1).

MFU = meta-counted matmul FLOPs of forward+backward x batch / step time / peak. Two peaks are
reported: the datasheet's dense bf16 rate and the rate of a large bf16 matrix product measured
on the same GPU in the same process (what the GPU really delivers to a plain GEMM).

Every function takes its device, sizes and overrides as arguments, so the tests run the same code
on CPU with tiny components; only timings and peak memory need CUDA.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import torch
from torch import nn

from zoo.bench import report
from zoo.bench.cost import meta_cost, scalar_loss, time_call
from zoo.errors import ConfigError

GPU_SKIPPED = "not measured here (no GPU lent)"
# Dense bf16 peak of common training GPUs (TFLOP/s, datasheet, no sparsity).
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
# The full M3D configuration at batch 1: LaMed = ViT-B/(4,16,16) at 32x256x256 -> spatial pool
# (256 tokens) -> LLaMA-2-7B (random weights, bf16) with LoRA, instruct stage, 512 tokens.
FULL_M3D_OVERRIDES = ["recipe=lamed", "encoder=vit3d_base_m3d", "lm=llama2_7b",
                      "lm.dtype=bfloat16", "data.size=[32,256,256]"]


def _peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def datasheet_peak_tflops(device: torch.device) -> float | None:
    """Dense bf16 TFLOP/s of the named GPU, or None when unknown (or on CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def matmul_tflops(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    """Achieved TFLOP/s of an ``n x n x n`` bf16 matrix product on random data (median)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    seconds = time_call(lambda: a @ b, repeats=repeats, warmup=3, device=device)
    return 2 * n ** 3 / seconds / 1e12


VARIANTS = ("fp32", "eager", "compiled", "compiled-cudagraphs", "bf16-weights",
            "compiled-bf16-weights")
# The variants the GPU section times: ``fp32`` (no autocast), ``eager`` (bf16 autocast, SDPA),
# ``compiled`` (eager + ``nn.Module.compile()``, inductor's default mode), ``compiled-cudagraphs``
# (mode ``reduce-overhead``: the step replayed as CUDA graphs), ``compiled-bf16-weights``
# (compiled, weights and input in bf16 without autocast: no per-step casts, i.e. pure-bf16
# training, which the zoo's trainer does not do: it keeps fp32 master weights under autocast).
# ``bf16-weights`` (the same, eager) is also accepted by :func:`encoder_rows`.
DEFAULT_VARIANTS = ("fp32", "eager", "compiled", "compiled-cudagraphs", "compiled-bf16-weights")


def training_step(model: nn.Module, x: torch.Tensor, bf16: bool) -> Callable[[], None]:
    """One forward+backward of an encoder on ``x`` (optionally under bf16 autocast)."""
    def step() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = scalar_loss(model(x))
        loss.backward()
        model.zero_grad(set_to_none=True)
    return step


def attention_kernels(step: Callable[[], None], device: torch.device) -> list[str]:
    """Names of the attention kernels one ``step()`` launched (CUDA profiler; [] on CPU)."""
    if device.type != "cuda":
        return []
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize(device)
    keys = ("flash", "fmha", "attention", "efficient", "cutlass")
    names = {e.key for e in prof.key_averages() if any(k in e.key.lower() for k in keys)}
    return sorted(n[:90] for n in names)


def encoder_rows(build: Callable[[], nn.Module], size: Sequence[int], flops_per_sample: int,
                 device: torch.device, batches: Sequence[int] = (1, 8, 16),
                 variants: Sequence[str] | None = None, peaks: Sequence[float | None] = (),
                 repeats: int = 5, name: str = "vit3d_base_m3d"
                 ) -> tuple[list[list[Any]], dict[str, float], dict[str, list]]:
    """Time the encoder's training step per variant and batch on ``device`` (metrics named
    ``gpu/{name}/{variant}/b{batch}/fwd_bwd_s``).

    ``build()`` returns the encoder on the current default device. Returns table rows
    ``[variant, batch, s, vol/s, TFLOP/s, MFU per peak..., peak MB]``, metrics, and the attention
    kernels of each variant's first batch."""
    from zoo.registry import suggest

    variants = list(variants or DEFAULT_VARIANTS)
    for variant in variants:
        if variant not in VARIANTS:
            raise ConfigError(f"unknown GPU bench variant {variant!r}.{suggest(variant, VARIANTS)}"
                              f" Variants: {', '.join(VARIANTS)}")
    rows, metrics, kernels = [], {}, {}
    for variant in variants:
        bf16_weights = variant.endswith("bf16-weights")
        try:
            with device:
                torch.manual_seed(0)
                model = build().train()
            if bf16_weights:
                model.to(torch.bfloat16)
            if variant.startswith("compiled"):  # one static graph per batch size
                model.compile(mode="reduce-overhead" if variant.endswith("cudagraphs")
                              else "default", dynamic=False)
            for batch in batches:
                x = torch.rand(batch, 1, *size, device=device,
                               dtype=torch.bfloat16 if bf16_weights else torch.float32)
                step = training_step(model, x, bf16=variant != "fp32" and not bf16_weights)
                _reset_peak(device)
                seconds = time_call(step, repeats=repeats, warmup=2, device=device)  # compiles
                if variant not in kernels:
                    kernels[variant] = attention_kernels(step, device)
                tflops = flops_per_sample * batch / seconds / 1e12
                rows.append([variant, batch, seconds, batch / seconds, tflops,
                             *[f"{tflops / p:.1%}" if p else "-" for p in peaks],
                             _peak_mb(device) or "-"])
                metrics[f"gpu/{name}/{variant}/b{batch}/fwd_bwd_s"] = seconds
                print(f"gpu bench: {variant} batch {batch}: {seconds:.4f} s", flush=True)
        except Exception as error:  # noqa: BLE001 - one failed variant must not hide the others
            if device.type != "cuda":
                raise
            message = " ".join(str(error).split())[:200].replace("|", "/")
            rows.append([variant, "-", f"failed: {type(error).__name__}: {message}"])
            print(f"gpu bench: {variant} failed: {error!r}", flush=True)
        model = None
        _reset_peak(device)
    return rows, metrics, kernels


def _text_sample(image: torch.Tensor, words: int) -> dict[str, Any]:
    """One instruct sample whose answer is ``words`` long (fills the LM's context)."""
    answer = " ".join(["the liver shows a hypodense lesion in the right lobe"] * (words // 10 + 1))
    return {"image": image, "prompt": "Describe the findings of this CT scan.",
            "answer": answer, "task": "caption"}


def lamed_step(overrides: Sequence[str], device: torch.device, batch_size: int = 1,
               steps: int = 3, checkpointing: Sequence[bool] = (True, False),
               bf16: bool = True) -> list[dict[str, Any]]:
    """Build a LaMed from ``overrides`` on ``device`` and time its instruct-stage optimiser step
    (forward, backward, AdamW) on a batch filling ``recipe.max_length`` tokens, once with
    gradient checkpointing in both towers and once without. One dict per setting: seconds,
    peak MB (CUDA), tokens, trainable and total parameters."""
    from zoo.build import build_model
    from zoo.config import compose

    cfg = compose(list(overrides))
    with device:
        torch.manual_seed(0)
        model = build_model(cfg)
    model.apply_stage(list(model.stages)[-1])
    model.train()
    size = tuple(cfg.data.size)
    max_length = int(cfg.recipe.max_length)
    with warnings.catch_warnings():  # the answers are cut to max_length on purpose
        warnings.simplefilter("ignore", UserWarning)
        batch = model.collate([_text_sample(torch.rand(1, *size), max_length)
                               for _ in range(batch_size)])
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    results = []
    for ckpt in checkpointing:
        model.encoder.set_grad_checkpointing(ckpt)
        model.lm.set_grad_checkpointing(ckpt)
        _reset_peak(device)
        seconds = time_call(step, repeats=steps, warmup=1, device=device)
        results.append({"checkpointing": ckpt, "seconds": seconds, "peak_mb": _peak_mb(device),
                        "tokens": int(batch["input_ids"].shape[1]), "batch_size": batch_size,
                        "trainable": sum(p.numel() for p in params),
                        "total": sum(p.numel() for p in model.parameters())})
    return results


def gpu_section(device: torch.device) -> tuple[str, dict[str, float]]:
    """The GPU section of ``zoo bench`` (Markdown body, metrics); a clear note without CUDA."""
    if device.type != "cuda":
        return GPU_SKIPPED + ": bf16 autocast, SDPA flash/efficient kernels, torch.compile, " \
               "model FLOPs utilisation and measured peak memory need a CUDA device.", {}
    from zoo.bench.cases import encoder_cases
    from zoo.registry import ENCODERS

    case = next(c for c in encoder_cases("full") if c.name == "vit3d_base_m3d")
    flops = meta_cost(case.factory).flops_fwd_bwd
    name = torch.cuda.get_device_name(device)
    sheet = datasheet_peak_tflops(device)
    measured = matmul_tflops(device)
    metrics = {"gpu/matmul_bf16_tflops": measured}
    try:
        full, full_error = lamed_step(FULL_M3D_OVERRIDES, device), ""
    except Exception as error:  # noqa: BLE001 - reported in the table, the encoder rows still run
        full, full_error = [], f"failed: {type(error).__name__}: {' '.join(str(error).split())}"
        print(f"gpu bench: full M3D {full_error}", flush=True)
    for r in full:
        tag = "ckpt" if r["checkpointing"] else "no_ckpt"
        metrics[f"gpu/full_m3d/{tag}/step_s"] = r["seconds"]
        metrics[f"gpu/full_m3d/{tag}/peak_mb"] = r["peak_mb"]
        print(f"gpu bench: full M3D {tag}: {r}", flush=True)
    _reset_peak(device)
    rows, m, kernels = encoder_rows(lambda: ENCODERS.build("vit3d_base_m3d"), case.size, flops,
                                    device, batches=(1, 16, 32), peaks=(sheet, measured))
    metrics.update(m)
    body = (f"{name}, torch {torch.__version__}. `vit3d_base_m3d` (ViT-B/(4,16,16), "
            f"1 x {' x '.join(map(str, case.size))}) forward+backward, {flops / 1e12:.3f} TFLOP "
            f"per volume (meta count). Peaks: datasheet dense bf16 {sheet or 'unknown'} TFLOP/s; "
            f"measured bf16 8192^3 matmul {measured:.0f} TFLOP/s. `fp32` is without autocast "
            "(TF32 off, PyTorch's default).\n\n" + report.table(
                ["variant", "batch", "fwd+bwd (s)", "vol/s", "TFLOP/s", "MFU (datasheet)",
                 "MFU (measured matmul)", "peak (MB)"], rows))
    body += "\n\nAttention kernels seen by the profiler (first batch of each variant):\n\n" + \
        "\n".join(f"- {v}: {', '.join(k) or 'none matched'}" for v, k in kernels.items())
    body += ("\n\nFull M3D configuration (`" + " ".join(FULL_M3D_OVERRIDES) + "`, random "
             "weights), instruct stage, bf16 autocast, AdamW step, measured:\n\n" + report.table(
                 ["gradient checkpointing", "batch", "tokens", "s / step", "peak (GiB)",
                  "trainable", "params"],
                 [["on" if r["checkpointing"] else "off", r["batch_size"], r["tokens"],
                   r["seconds"], r["peak_mb"] / 1024, f"{r['trainable']:,}", f"{r['total']:,}"]
                  for r in full]) + (f"\n\n{full_error}" if full_error else ""))
    return body, metrics
