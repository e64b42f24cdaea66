"""Per-GPU memory of data-parallel training strategies, computed from a model built on the meta
device (docs/performance.md, "Memory of full fine-tuning on 8 GPUs").

Parameter counts are the model's own: the recipe's stage is applied to the meta-built model and
its trainable and frozen parameters are counted with their storage dtypes. Model states per
parameter of storage size ``d`` bytes (the zoo's trainer: torch AdamW, whose ``m`` and ``v`` take
the parameter's dtype, fp32 master weights under bf16 autocast):

- trainable: weights ``d``, gradients ``d``, AdamW ``2d``; frozen: weights ``d``.
- DeepSpeed (bf16 model, fp32 master weights in its optimizer): weights and gradients 2 B,
  optimizer 12 B (fp32 master + ``m`` + ``v``) per trainable parameter, frozen weights 2 B:
  the mixed-precision accounting of the ZeRO paper (Rajbhandari et al. 2020, K = 12).

Strategies on ``n`` GPUs: **DDP** replicates everything (plus autocast's bf16 copies of the fp32
matrices it multiplies, kept for backward); **ZeRO-2** shards gradients and optimizer states (plus
DeepSpeed's default 5e8-element bf16 reduce bucket); **FSDP** (FSDP2 FULL_SHARD, Accelerate's bf16
policy) and **ZeRO-3** shard everything, plus the units gathered at a time: the root unit (every
parameter outside a wrapped block: embeddings, LM head, patch embedding, connector) and two blocks
(the current one and the prefetched next), in bf16, with the gradients of one such unit.

Activations are per GPU at batch 1 (data parallelism does not change them), with gradient
checkpointing in both towers as the measured GPU run: each block's input (bf16) plus one block
recomputed, whose saved tensors are counted on meta (one ViT block and one decoder layer in bf16;
attention there is the math kernel's N x N probabilities, an upper bound for flash attention),
plus the fp32 logits and their gradient. Allocator fragmentation and the CUDA context (1-3 GB)
come on top.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor, nn

GB = 1e9
STRATEGIES = ("DDP", "ZeRO-2", "FSDP", "ZeRO-3")
DEEPSPEED_REDUCE_BUCKET = 5e8  # DeepSpeed's default reduce_bucket_size (elements)


@dataclass
class ParameterCounts:
    """Parameters of a model in one stage: ``{dtype bytes: count}`` for trainable and frozen
    parameters, the root unit's and the largest wrapped block's (all and trainable)."""

    trainable: dict[int, int] = field(default_factory=dict)
    frozen: dict[int, int] = field(default_factory=dict)
    root: int = 0
    root_trainable: int = 0
    block: int = 0
    block_trainable: int = 0

    @property
    def total_trainable(self) -> int:
        return sum(self.trainable.values())

    @property
    def total(self) -> int:
        return self.total_trainable + sum(self.frozen.values())


def count_parameters(model: nn.Module) -> ParameterCounts:
    """Count ``model``'s parameters (shared ones once) by trainability and dtype, and the sizes
    of its FSDP units: the blocks named by ``model._no_split_modules`` and the rest (the root)."""
    counts = ParameterCounts()
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        bucket = counts.trainable if p.requires_grad else counts.frozen
        bucket[p.element_size()] = bucket.get(p.element_size(), 0) + p.numel()
    names = set(getattr(model, "_no_split_modules", ()) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    in_blocks: set[int] = set()
    for block in blocks:
        params = list(block.parameters())
        in_blocks.update(id(p) for p in params)
        size = sum(p.numel() for p in params)
        train = sum(p.numel() for p in params if p.requires_grad)
        counts.block = max(counts.block, size)
        counts.block_trainable = max(counts.block_trainable, train)
    root = [p for p in {id(p): p for p in model.parameters()}.values() if id(p) not in in_blocks]
    counts.root = sum(p.numel() for p in root)
    counts.root_trainable = sum(p.numel() for p in root if p.requires_grad)
    return counts


def saved_activation_bytes(module: nn.Module, *args: Any, **kwargs: Any) -> int:
    """Bytes autograd keeps for backward during ``module(*args, **kwargs)`` (run it on meta),
    not counting the module's own parameters (or views of them) that autograd also keeps."""
    params = {id(p) for p in module.parameters()}
    saved = [0]

    def pack(t: Tensor) -> Tensor:
        base = t._base if t._base is not None else t
        if id(t) not in params and id(base) not in params:
            saved[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(*args, **kwargs)
    return saved[0]


@dataclass
class Activations:
    """Per-sample activation bytes with gradient checkpointing (see the module docstring)."""

    vit_inputs: int
    vit_block: int
    llm_inputs: int
    llm_layer: int
    logits: int

    @property
    def total(self) -> int:
        return self.vit_inputs + self.llm_inputs + max(self.vit_block, self.llm_layer) + self.logits


def lamed_activations(model: Any, tokens: int) -> Activations:
    """Activations of a meta-built LaMed with a vit3d encoder and a Hugging Face decoder LM at
    batch 1 and ``tokens`` text positions (image tokens included)."""
    encoder, hf = model.encoder, model.lm.model
    decoder = hf.get_decoder()
    config = hf.config
    hidden, layers = int(config.hidden_size), int(config.num_hidden_layers)
    grid_tokens = encoder.output_layout(model.image_size)[0] + (encoder.cls_token is not None)
    with torch.device("meta"):
        block = copy.deepcopy(encoder.blocks[0]).to(torch.bfloat16)  # the model stays as built
        x = torch.empty(1, grid_tokens, encoder.out_dim, dtype=torch.bfloat16, requires_grad=True)
        vit_block = saved_activation_bytes(block, x)
        layer = copy.deepcopy(decoder.layers[0]).to(torch.bfloat16)
        h = torch.empty(1, tokens, hidden, dtype=torch.bfloat16, requires_grad=True)
        positions = torch.arange(tokens)[None]
        rotary = decoder.rotary_emb(h, positions)
        llm_layer = saved_activation_bytes(layer, h, attention_mask=None, position_ids=positions,
                                           position_embeddings=rotary)
    return Activations(vit_inputs=len(encoder.blocks) * grid_tokens * encoder.out_dim * 2,
                       vit_block=vit_block, llm_inputs=layers * tokens * hidden * 2,
                       llm_layer=llm_layer, logits=2 * tokens * int(config.vocab_size) * 4)


def strategy_bytes(counts: ParameterCounts, strategy: str, gpus: int) -> dict[str, float]:
    """Per-GPU bytes of weights, gradients, optimizer states and gathered parameters/buffers of
    one stage's model states under ``strategy`` on ``gpus`` GPUs (module docstring)."""
    if strategy not in STRATEGIES:
        from zoo.registry import suggest

        raise ValueError(f"unknown strategy {strategy!r}.{suggest(strategy, STRATEGIES)}")
    trainable, frozen = counts.trainable, counts.frozen
    if strategy in ("DDP", "FSDP"):  # the zoo's trainer: states in each parameter's own dtype
        weights = sum(d * n for d, n in trainable.items()) + sum(d * n for d, n in frozen.items())
        grads = sum(d * n for d, n in trainable.items())
        optimizer = sum(2 * d * n for d, n in trainable.items())
    else:  # DeepSpeed bf16: 2 B weights and gradients, fp32 master + m + v
        weights, grads, optimizer = 2 * counts.total, 2 * counts.total_trainable, \
            12 * counts.total_trainable
    if strategy == "DDP":
        extra = 2 * trainable.get(4, 0)  # autocast's bf16 copies of fp32 weights
        return {"weights": weights, "gradients": grads, "optimizer": optimizer, "gathered": extra}
    if strategy == "ZeRO-2":
        return {"weights": weights, "gradients": grads / gpus, "optimizer": optimizer / gpus,
                "gathered": 2 * DEEPSPEED_REDUCE_BUCKET}
    gathered = 2 * (counts.root + 2 * counts.block) + 2 * max(counts.root_trainable,
                                                               counts.block_trainable)
    return {"weights": weights / gpus, "gradients": grads / gpus, "optimizer": optimizer / gpus,
            "gathered": gathered}


def memory_table(configs: Sequence[tuple[str, str, Any, str]], activations: Activations,
                 gpus: int, capacity_gb: float, strategies: Sequence[str] = STRATEGIES
                 ) -> tuple[list[list[Any]], dict[str, float]]:
    """Rows ``[configuration, trainable, strategy, weights, gradients, optimizer, gathered,
    activations, total, fits]`` (GB per GPU) for each ``(key, label, meta model, stage)`` and
    strategy, and metrics ``memory/<key>/<strategy>/total_gb``."""
    rows, metrics = [], {}
    for key, label, model, stage in configs:
        model.apply_stage(stage)
        counts = count_parameters(model)
        trainable = f"{counts.total_trainable / 1e9:.2f} B of {counts.total / 1e9:.2f} B"
        for strategy in strategies:
            parts = strategy_bytes(counts, strategy, gpus)
            total = sum(parts.values()) + activations.total
            rows.append([label, trainable, strategy,
                         *(f"{parts[k] / GB:.2f}" for k in ("weights", "gradients", "optimizer",
                                                            "gathered")),
                         f"{activations.total / GB:.2f}", f"**{total / GB:.1f}**",
                         "yes" if total / GB <= capacity_gb else "no"])
            metrics[f"memory/{key}/{strategy}/total_gb"] = total / GB
    return rows, metrics


def full_m3d_memory(gpus: int = 8, capacity_gb: float = 80.0, tokens: int = 512,
                    overrides: Sequence[str] | None = None) -> tuple[str, dict[str, float]]:
    """The memory section of ``zoo bench``: the full M3D configuration (ViT-B + LLaMA-2-7B) in
    its instruct stage, LoRA (bf16 LLM, the configuration measured on a GPU) and full
    fine-tuning (fp32 weights for the zoo's trainer; DeepSpeed keeps bf16 weights), per strategy
    on ``gpus`` GPUs of ``capacity_gb``. Returns (Markdown, metrics)."""
    from zoo.bench.gpu import FULL_M3D_OVERRIDES
    from zoo.build import build_on_meta
    from zoo.config import compose

    base = list(overrides or FULL_M3D_OVERRIDES)
    lora = build_on_meta(compose(base))
    full = build_on_meta(compose([*base, "recipe.train_lm=full", "lm.dtype=null"]))
    activations = lamed_activations(full, tokens)
    stage = list(full.stages)[-1]
    rows, metrics = memory_table([("lora", "LoRA (recipe default)", lora, stage),
                                  ("full", "full fine-tuning", full, stage)],
                                 activations, gpus, capacity_gb)
    from zoo.bench import report

    a = activations
    body = (f"`{' '.join(base)}`, built on the meta device, stage `{stage}`; per GPU on {gpus} "
            f"GPUs of {capacity_gb:g} GB, batch 1 per GPU, {tokens} tokens, gradient checkpointing "
            "in both towers. Weights, gradients and optimizer states from the model's own "
            "trainable and frozen parameter counts and dtypes; `gathered`: all-gathered units "
            "(FSDP, ZeRO-3), DeepSpeed's reduce bucket (ZeRO-2) or autocast's bf16 weight copies "
            "(DDP); arithmetic, not measured (zoo/bench/memory.py states the rules).\n\n"
            + report.table(["configuration", "trainable", "strategy", "weights GB",
                            "gradients GB", "optimizer GB", "gathered GB", "activations GB",
                            "total GB", f"fits {capacity_gb:g} GB"], rows)
            + f"\n\nActivations per sample (GB): ViT block inputs {a.vit_inputs / GB:.3f}, one "
            f"ViT block recomputed {a.vit_block / GB:.3f} (meta count), LLM layer inputs "
            f"{a.llm_inputs / GB:.3f}, one decoder layer recomputed {a.llm_layer / GB:.3f} (meta "
            f"count), logits and their gradient (fp32) {a.logits / GB:.3f}.")
    metrics["memory/activations_gb"] = a.total / GB
    return body, metrics
