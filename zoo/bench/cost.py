"""Cost accounting of one module on one input: parameters, FLOPs, saved activations, latency.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (matmul-class ops: ``mm``, ``bmm``,
``addmm``, convolutions, SDPA; element-wise ops are not counted, as in the usual "model FLOPs").
Counting runs on the ``meta`` device, so full-size models (M3D's ViT-B at 64 x 512 x 512) cost no
memory or time. Saved-activation bytes are the tensors autograd keeps for backward (measured with
``saved_tensors_hooks``, also on meta): the activation memory of a training step without
checkpointing. Latency is wall-clock on the current device (median of ``repeats`` after a warm-up).
Peak memory of forward+backward: CUDA's allocator peak on a GPU; on CPU the module's parameters,
buffers and inputs plus the peak of the tensor allocations the step makes (``torch.profiler``
memory events in time order, measured in one extra untimed step).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

# A case builds its module and its inputs on the current default device: ``() -> (module, args)``.
Factory = Callable[[], tuple[nn.Module, tuple[Any, ...]]]


def scalar_loss(out: Any) -> Tensor:
    """A scalar to backpropagate from a component's output (VisualTokens, Tensor or a loss)."""
    tensor = getattr(out, "tokens", getattr(out, "loss", out))
    if isinstance(tensor, (tuple, list)):
        tensor = tensor[0]
    if not isinstance(tensor, Tensor):
        raise TypeError(f"cannot make a loss from a {type(out).__name__} output")
    return tensor.float().square().mean()


def _needs_grad(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass
class MetaCost:
    """FLOPs of forward and forward+backward, and saved-activation bytes, counted on meta."""

    params: int
    flops_fwd: int
    flops_fwd_bwd: int
    saved_bytes: int
    tokens: int | None


def meta_cost(factory: Factory) -> MetaCost:
    """Build ``factory`` on the meta device and count FLOPs (fwd, fwd+bwd) and saved bytes."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        module, args = factory()
        module.train()
        saved = [0]

        def pack(t: Tensor) -> Tensor:
            saved[0] += t.numel() * t.element_size()
            return t

        with FlopCounterMode(display=False) as counter, \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = module(*args)
        fwd = counter.get_total_flops()
        tokens = out.tokens.shape[1] if hasattr(out, "tokens") else None
        total = fwd
        if _needs_grad(module):
            with FlopCounterMode(display=False) as counter:
                scalar_loss(out).backward()
            total += counter.get_total_flops()
    return MetaCost(count_params(module), int(fwd), int(total), int(saved[0]), tokens)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1,
              device: torch.device | None = None) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    device = device or torch.device("cpu")
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes of CPU tensor memory allocated while ``fn()`` runs, above what was live before
    it: the running sum of the profiler's allocation (+) and free (-) events in time order."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == DeviceType.CPU)
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def _tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, Tensor))


@dataclass
class Timing:
    fwd_s: float
    fwd_bwd_s: float | None
    peak_mb: float | None   # peak memory of fwd+bwd (see the module docstring); None: not measured


def measure(factory: Factory, device: torch.device, repeats: int = 3, warmup: int = 1) -> Timing:
    """Forward (no grad) and forward+backward latency of a freshly built module on ``device``."""
    torch.manual_seed(0)
    with device:
        module, args = factory()
    module.train()

    def forward() -> None:
        with torch.no_grad():
            module(*args)

    def forward_backward() -> None:
        scalar_loss(module(*args)).backward()
        module.zero_grad(set_to_none=True)

    fwd = time_call(forward, repeats, warmup, device)
    if not _needs_grad(module):
        return Timing(fwd, None, None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    both = time_call(forward_backward, repeats, warmup, device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    elif device.type == "cpu":
        state = _tensor_bytes([*module.parameters(), *module.buffers(), *args])
        peak = state + cpu_peak_bytes(forward_backward)
    else:
        peak = None
    return Timing(fwd, both, peak / 2**20 if peak is not None else None)
