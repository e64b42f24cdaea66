"""Side-by-side measurements in one run: the zoo's ``vit3d`` against MONAI's ``ViT``, and the
zoo's data preparation against a plain MONAI ``Compose`` of the same transforms.

``vit3d_vs_monai`` builds MONAI's ``ViT`` at M3D's settings (``proj_type="perceptron"``, no qkv
bias, CLS token, which MONAI adds only with ``classification=True``; the head is removed), copies its weights into ``vit3d`` and times forward+backward of
three variants in interleaved rounds: MONAI default (einsum attention), MONAI with its blocks' SDPA
switch (``attn.use_flash_attention = True``) and the zoo's ``vit3d``. It also reports the largest
absolute difference of the outputs, so the speed-up is at identical numerics. To show how much
headroom the device leaves, it measures in the same process the rate of the block's two kernel
kinds at the benchmark's shape (its largest Linear, and SDPA attention forward+backward) and
reports each variant's achieved GFLOP/s against the Linear rate: the speed-up over MONAI that
vit3d would reach if its whole step ran at that rate is the ceiling of what a rewrite in PyTorch
ops could buy on this device.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import numpy as np
import torch

from zoo.bench.cost import meta_cost, scalar_loss, time_call


def monai_vit(size: tuple[int, int, int], depth: int, width: int = 768, heads: int = 12,
              mlp_dim: int = 3072, sdpa: bool = False) -> torch.nn.Module:
    """MONAI's ViT as M3D builds it (CLS token: ``classification=True``, head removed so the
    output is the final-normed tokens ``(B, 1 + N, width)``)."""
    from monai.networks.nets import ViT

    net = ViT(1, size, (4, 16, 16), hidden_size=width, mlp_dim=mlp_dim, num_layers=depth,
              num_heads=heads, proj_type="perceptron", classification=True, qkv_bias=False)
    del net.classification_head
    for block in net.blocks:
        block.attn.use_flash_attention = sdpa
    return net


def _fwd_bwd(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    def step() -> torch.Tensor:
        out = model(x)
        tokens = out.tokens if hasattr(out, "tokens") else out[0][:, 1:]
        scalar_loss(tokens).backward()
        model.zero_grad(set_to_none=True)
        return tokens.detach()

    return step


def _kernel_calls(tokens: int, width: int, heads: int, mlp_dim: int
                  ) -> dict[str, Callable[[], Any]]:
    """The two kernel kinds of a ViT block on tensors of the current default device."""
    x, w = torch.randn(tokens, width), torch.randn(mlp_dim, width)
    q, k, v = (torch.randn(1, heads, tokens, width // heads, requires_grad=True) for _ in range(3))
    grad = torch.randn(1, heads, tokens, width // heads)
    return {"linear": lambda: torch.nn.functional.linear(x, w),
            "attention": lambda: torch.nn.functional.scaled_dot_product_attention(
                q, k, v).backward(grad)}


def kernel_rates(tokens: int, width: int, heads: int, mlp_dim: int, repeats: int = 3
                 ) -> dict[str, float]:
    """GFLOP/s the CPU gives a ViT block's two kernel kinds at one shape: ``linear`` (the largest
    projection, ``(tokens, width) -> (tokens, mlp_dim)``, forward) and ``attention``
    (``scaled_dot_product_attention`` forward+backward on ``(1, heads, tokens, width / heads)``).
    FLOPs are counted on meta like the model's (the CPU flash kernel is not counted by
    ``FlopCounterMode``; on meta SDPA runs as matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        counted = _kernel_calls(tokens, width, heads, mlp_dim)
    rates = {}
    for name, call in _kernel_calls(tokens, width, heads, mlp_dim).items():
        with FlopCounterMode(display=False) as counter:
            counted[name]()
        rates[name] = counter.get_total_flops() / time_call(call, repeats=repeats) / 1e9
    return rates


def vit3d_vs_monai(size: tuple[int, int, int] = (32, 256, 256), depth: int = 12, width: int = 768,
                   heads: int = 12, mlp_dim: int = 3072, rounds: int = 1,
                   warmup_size: tuple[int, int, int] | None = (32, 128, 128)) -> dict[str, Any]:
    """Seconds per forward+backward of MONAI default, MONAI+SDPA and vit3d (medians over
    ``rounds`` interleaved rounds, after one warm-up pass each at ``warmup_size``), the ratios, the
    max |difference| of vit3d's patch tokens from MONAI's, the step's FLOPs, each variant's
    achieved GFLOP/s, the kernel rates of :func:`kernel_rates` and ``ceiling_vs_monai``: MONAI
    default's time over the time of vit3d's FLOPs at the Linear rate."""
    from zoo.registry import ENCODERS

    def vit3d() -> torch.nn.Module:
        return ENCODERS.build("vit3d", img_size=size, hidden_size=width, depth=depth,
                              num_heads=heads, mlp_dim=mlp_dim)

    torch.manual_seed(0)
    ref = monai_vit(size, depth, width, heads, mlp_dim)
    with torch.no_grad():  # MONAI zero-initialises the CLS token and position table
        for p in ref.parameters():
            p.add_(0.02 * torch.randn_like(p))
    zoo = vit3d()
    zoo.load_monai_state(ref.state_dict(), "", "MONAI ViT")
    sdpa = monai_vit(size, depth, width, heads, mlp_dim, sdpa=True)
    sdpa.load_state_dict(ref.state_dict())
    models = {"monai": ref, "monai_sdpa": sdpa, "vit3d": zoo}
    for model in models.values():
        model.train()
    if warmup_size is not None:
        xw = torch.randn(1, 1, *warmup_size)
        for name, model in models.items():
            if name != "vit3d":  # MONAI's position table is fixed to its img_size
                small = monai_vit(warmup_size, 1, width, heads, mlp_dim, sdpa=name == "monai_sdpa")
                _fwd_bwd(small, xw)()
            else:
                _fwd_bwd(model, xw)()
    x = torch.randn(1, 1, *size)
    times: dict[str, list[float]] = {name: [] for name in models}
    outs: dict[str, torch.Tensor] = {}
    for _ in range(rounds):
        for name, model in models.items():
            step = _fwd_bwd(model, x)
            start = time.perf_counter()
            outs[name] = step()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    diff = float((outs["vit3d"] - outs["monai"]).abs().max())
    flops = meta_cost(lambda: (vit3d(), (torch.empty(1, 1, *size),))).flops_fwd_bwd
    tokens = zoo.output_layout(size)[0] + 1  # + CLS
    rates = kernel_rates(tokens, width, heads, mlp_dim)
    return {"size": list(size), "depth": depth, "rounds": rounds,
            "seconds": med, "all_seconds": times,
            "speedup_vs_monai": med["monai"] / med["vit3d"],
            "speedup_vs_monai_sdpa": med["monai_sdpa"] / med["vit3d"],
            "max_abs_diff": diff, "flops_fwd_bwd": flops,
            "gflops_per_s": {name: flops / sec / 1e9 for name, sec in med.items()},
            "kernel_gflops_per_s": rates,
            "ceiling_vs_monai": med["monai"] * rates["linear"] * 1e9 / flops}


def _ct_volume(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like (X, Y, Z) volume in HU (air around a soft-tissue ellipsoid) and a RAS affine."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij")
    inside = sum(g ** 2 / r ** 2 for g, r in zip(grids, (0.8, 0.6, 0.9))) < 1
    array = np.where(inside, 40.0, -1000.0).astype(np.float32)
    array += rng.normal(0, 20, shape).astype(np.float32)
    return array, np.diag([0.8, 0.8, 2.5, 1.0])


def plain_monai_prepare(array: np.ndarray, affine: np.ndarray, size: tuple[int, int, int],
                        window: tuple[float, float]) -> np.ndarray:
    """The reference pipeline: one MONAI Compose (orient, window, crop, resize), then the same
    contiguous (1, D, H, W) array the zoo writes (a lazy transposed view would defer that copy to
    whoever saves or batches it)."""
    from monai import transforms as mt
    from monai.data import MetaTensor

    d, h, w = size
    pipeline = mt.Compose([
        mt.Orientation(axcodes="LPI", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        mt.ScaleIntensityRange(a_min=window[0], a_max=window[1], b_min=0.0, b_max=1.0, clip=True),
        mt.CropForeground(select_fn=lambda v: v > 0, allow_smaller=True),
        mt.Resize(spatial_size=(w, h, d), mode="trilinear"),
    ])
    img = MetaTensor(torch.from_numpy(array)[None], affine=torch.from_numpy(affine))
    return np.ascontiguousarray(pipeline(img).numpy().transpose(0, 3, 2, 1))


def prepare_vs_monai(shape: tuple[int, int, int] = (256, 256, 96), rounds: int = 3
                     ) -> dict[str, Any]:
    """Seconds per case of ``zoo.data.prepare.preprocess`` and of the plain MONAI pipeline."""
    from zoo.data.prepare import PrepSpec, preprocess

    array, affine = _ct_volume(shape)
    spec = PrepSpec(modality="ct", size=(32, 256, 256), window="abdomen")
    runs = {"zoo": lambda: preprocess(array, affine, spec)[0],
            "monai": lambda: plain_monai_prepare(array, affine, spec.size, spec.hu_window())}
    times: dict[str, list[float]] = {name: [] for name in runs}
    outs = {}
    for name, run in runs.items():  # warm-up (imports, allocator)
        outs[name] = run()
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    return {"input_shape": list(shape), "output_size": list(spec.size), "rounds": rounds,
            "seconds": med, "ratio_monai_over_zoo": med["monai"] / med["zoo"],
            "max_abs_diff": float(np.abs(outs["zoo"] - outs["monai"]).max())}
