"""M3D-LaMed (Bai et al. 2024): 3D encoder -> connector -> causal LM, trained in two stages.

Tensor contract: ``batch["image"] (B, C, D, H, W)``; the collator turns each sample's prompt and
answer into ``input_ids``/``labels`` with exactly ``num_image_tokens`` ``<im_patch>`` ids, whose
embeddings are replaced by the connector's output ``(B, num_image_tokens, H_lm)``.

Stages (REFERENCE.md A): ``align`` trains the connector and the new special-token rows only
(LR 1e-4, warmup 3 %, cosine); ``instruct`` trains LoRA adapters on the LLM plus the full encoder,
connector, embeddings and LM head (LR 5e-5). Freezing, LoRA targets and the image-token count are
decided here and only here.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from zoo.registry import RECIPES
from zoo.seam import ImageTextCollator, decode_generated, splice_visual
from zoo.types import TASK_NAMES, Conditioning, Stage, StepOutput, VisualTokens, ZooModel

# Parameter-name patterns inside a CausalLM wrapper (heads/causal_lm.py); ``lm.model`` is the HF model.
EMBED_PATTERNS = (r"lm\.model\..*embed_tokens\.", r"lm\.model\..*lm_head\.")
LORA_PATTERN = r"lm\.model\..*lora_"


class LaMed(ZooModel):
    """Encoder (+ optional bridge) + connector + causal LM with the image tokens spliced into the
    text embeddings.

    Text-guided parts receive a :class:`~zoo.types.Conditioning` whose ``prompt_embedding`` is the
    mean input embedding of the prompt's text tokens ``(B, H_lm)`` and whose ``task_id`` indexes
    :data:`zoo.types.TASK_NAMES`; an encoder's ``extras["aux_loss"]`` (MoE load balancing) is added
    to the LM loss and its ``extras["router_stats"]`` are logged.
    """

    def __init__(self, encoder: torch.nn.Module, connector: torch.nn.Module, lm: torch.nn.Module,
                 image_size: Sequence[int], stages: dict[str, Stage], template: str = "<image>{prompt}",
                 max_length: int = 512, train_new_rows_only_in: Sequence[str] = ("align",),
                 bridge: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.encoder, self.bridge, self.connector, self.lm = encoder, bridge, connector, lm
        self.image_size = tuple(int(s) for s in image_size)
        num_tokens, grid = encoder.output_layout(self.image_size)
        if bridge is not None:
            num_tokens, grid = bridge.output_layout(num_tokens, grid)
        self.num_image_tokens = connector.num_out_tokens(num_tokens, grid)
        self.stages = stages
        self.collator = ImageTextCollator(lm.tokenizer, self.num_image_tokens, template=template,
                                          max_length=max_length)
        self.generation_collator = ImageTextCollator(lm.tokenizer, self.num_image_tokens,
                                                     template=template, max_length=max_length,
                                                     for_generation=True)
        self._new_rows_only_in = set(train_new_rows_only_in)
        self._row_hooks: list[Any] = []

    # -------------------------------------------------------------- stages
    def apply_stage(self, stage: Stage | str) -> list[str]:
        """Freeze per the stage; in ``align`` only the new special-token rows of the embedding
        and output matrices get gradients (a gradient mask), as in M3D's first stage."""
        stage = self.stages[stage] if isinstance(stage, str) else stage
        names = super().apply_stage(stage)
        for hook in self._row_hooks:
            hook.remove()
        self._row_hooks = []
        if stage.name in self._new_rows_only_in:
            hf_model = self.lm.model
            matrices = {id(m.weight): m.weight for m in (hf_model.get_input_embeddings(),
                                                          hf_model.get_output_embeddings())}
            for weight in matrices.values():
                if weight.requires_grad:
                    mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
                    mask[list(self.lm.special_ids.values())] = 1
                    self._row_hooks.append(weight.register_hook(lambda g, m=mask: g * m))
        return names

    # -------------------------------------------------------------- data
    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return self.collator(samples)

    # -------------------------------------------------------------- compute
    def conditioning(self, batch: dict[str, Any], embeds: Tensor) -> Conditioning:
        """Pooled prompt embedding (text tokens that are neither image tokens, padding nor
        answer) and task ids."""
        ids = batch["input_ids"]
        keep = batch["attention_mask"].bool() & (ids != self.lm.special_ids["<im_patch>"])
        if "labels" in batch:
            keep &= batch["labels"] == -100
        weights = keep.unsqueeze(-1).to(embeds.dtype)
        prompt = (embeds * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        task_id = None
        if batch.get("task") is not None:
            task_id = torch.tensor([TASK_NAMES.index(t) for t in batch["task"]], device=ids.device)
        return Conditioning(prompt_embedding=prompt, task_id=task_id)

    def encode_image(self, image: Tensor, cond: Conditioning | None = None) -> VisualTokens:
        """Connector output; ``extras`` keeps the encoder's (aux loss, router statistics)."""
        visual = self.encoder(image, cond)
        bridged = self.bridge(visual, cond) if self.bridge is not None else visual
        out = self.connector(bridged)
        return out.replace(extras={**visual.extras, **out.extras})

    def embed_inputs(self, batch: dict[str, Any]) -> tuple[Tensor, VisualTokens]:
        embeds = self.lm.embed(batch["input_ids"])
        visual = self.encode_image(batch["image"].to(embeds.dtype), self.conditioning(batch, embeds))
        spliced = splice_visual(embeds, batch["input_ids"], self.lm.special_ids["<im_patch>"],
                                visual.tokens)
        return spliced, visual

    def forward(self, batch: dict[str, Any]) -> StepOutput:
        embeds, visual = self.embed_inputs(batch)
        out = self.lm(embeds, batch["attention_mask"], labels=batch["labels"])
        logs = {"lm_loss": float(out.loss.detach())}
        loss = out.loss
        if visual.extras.get("aux_loss") is not None:
            loss = loss + visual.extras["aux_loss"]
            logs["aux_loss"] = float(visual.extras["aux_loss"].detach())
        logs.update(flat_stats(visual.extras.get("router_stats", {})))
        return StepOutput(loss, logs)

    @torch.no_grad()
    def generate(self, batch_or_samples: Any, max_new_tokens: int = 64, **gen_kwargs: Any) -> list[str]:
        """Greedy answers for a list of samples (or a batch made by ``generation_collator``).

        Runs in eval mode (no dropout, deterministic) and restores the previous mode."""
        batch = (self.generation_collator(batch_or_samples)
                 if isinstance(batch_or_samples, list) else batch_or_samples)
        was_training = self.training
        self.eval()
        try:
            ids = self.lm.generate(self.embed_inputs(batch)[0], batch["attention_mask"],
                                   max_new_tokens=max_new_tokens, **gen_kwargs)
        finally:
            self.train(was_training)
        return decode_generated(self.lm.tokenizer, ids)


def flat_stats(stats: dict[str, Any], prefix: str = "router/") -> dict[str, float]:
    """Router statistics (nested dicts of floats or tensors) as flat float logs."""
    flat: dict[str, float] = {}
    for key, value in stats.items():
        if isinstance(value, dict):
            flat.update(flat_stats(value, f"{prefix}{key}/"))
        elif isinstance(value, Tensor) and value.numel() > 1:
            flat.update({f"{prefix}{key}/{i}": float(v) for i, v in enumerate(value.flatten())})
        else:
            flat[f"{prefix}{key}"] = float(value)
    return flat


def lamed_stages(align_lr: float, instruct_lr: float, epochs: float, batch_size: int,
                 warmup_ratio: float, align_tasks: Sequence[str], instruct_tasks: Sequence[str],
                 train_lm: str, has_bridge: bool = False) -> dict[str, Stage]:
    lm_part = {"lora": (LORA_PATTERN,), "full": (r"lm\.",), "frozen": ()}[train_lm]
    new = (r"bridge\.", r"connector\.") if has_bridge else (r"connector\.",)
    return {
        "align": Stage("align", trainable=new + EMBED_PATTERNS, tasks=tuple(align_tasks),
                       lr=align_lr, epochs=epochs, warmup_ratio=warmup_ratio, batch_size=batch_size),
        "instruct": Stage("instruct",
                          trainable=(r"encoder\.",) + new + EMBED_PATTERNS + lm_part,
                          tasks=tuple(instruct_tasks), lr=instruct_lr, epochs=epochs,
                          warmup_ratio=warmup_ratio, batch_size=batch_size),
    }


def build_parts(encoder: Callable[..., Any], connector: Callable[..., Any], lm: Callable[..., Any],
                bridge: Callable[..., Any] | None, train_lm: str, lora: dict[str, Any],
                encoder_kwargs: dict[str, Any] | None = None) -> tuple[Any, Any, Any, Any]:
    """(encoder, bridge, connector, lm) wired by width: bridge ``in_dim`` = encoder width,
    connector ``in_dim`` = bridge (or encoder) width, ``out_dim`` = LLM hidden size."""
    if train_lm not in ("lora", "full", "frozen"):
        raise ValueError(f"recipe.train_lm={train_lm!r}: expected 'lora', 'full' or 'frozen'")
    language_model = lm()
    vision = encoder(**(encoder_kwargs or {}))
    middle = bridge(in_dim=vision.out_dim) if bridge is not None else None
    width = middle.out_dim if middle is not None else vision.out_dim
    projector = connector(in_dim=width, out_dim=language_model.hidden_size)
    if train_lm == "lora":
        language_model.apply_lora(**{k: v for k, v in lora.items() if v is not None})
    return vision, middle, projector, language_model


@RECIPES.register
def lamed(encoder: Callable[..., Any], connector: Callable[..., Any], lm: Callable[..., Any],
          bridge: Callable[..., Any] | None = None, image_size: Sequence[int] = (32, 256, 256), template: str = "<image>{prompt}",
          max_length: int = 512, train_lm: str = "lora", lora_r: int = 16, lora_alpha: int = 32,
          lora_dropout: float = 0.05, lora_target: str | None = None, align_lr: float = 1e-4,
          instruct_lr: float = 5e-5, epochs: float = 3.0, batch_size: int = 2,
          warmup_ratio: float = 0.03, align_tasks: Sequence[str] = ("caption",),
          instruct_tasks: Sequence[str] = ()) -> LaMed:
    """M3D-LaMed: ``encoder`` (+ optional token-reducing ``bridge``) and ``connector`` into
    ``lm`` (factories from the config).

    ``train_lm``: ``lora`` (M3D: r 16, alpha 32, dropout 0.05 on the LLM's linear layers),
    ``full`` (every LLM weight; for tiny randomly initialised LMs) or ``frozen``.
    ``align_tasks`` defaults to captions (M3D aligns on image-report pairs); ``instruct_tasks``
    empty means every task the data offers.
    """
    lora = {"r": lora_r, "alpha": lora_alpha, "dropout": lora_dropout, "target": lora_target}
    vision, middle, projector, language_model = build_parts(encoder, connector, lm, bridge,
                                                            train_lm, lora)
    stages = lamed_stages(align_lr, instruct_lr, epochs, batch_size, warmup_ratio, align_tasks,
                          instruct_tasks, train_lm, has_bridge=middle is not None)
    return LaMed(vision, projector, language_model, image_size, stages, template, max_length,
                 bridge=middle)
