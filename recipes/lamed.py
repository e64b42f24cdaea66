"""M3D-LaMed (Bai et al. 2024): 3D encoder -> connector -> causal LM, trained in two stages.

Tensor contract: ``batch["image"] (B, C, D, H, W)``; the collator turns each sample's prompt and
answer into ``input_ids``/``labels`` with exactly ``num_image_tokens`` ``<im_patch>`` ids, whose
embeddings are replaced by the connector's output ``(B, num_image_tokens, H_lm)``.

Stages (docs/reference.md A): ``align`` trains the connector and embedding rows (LR 1e-4, warmup
3 %, cosine); ``instruct`` trains LoRA adapters on the LLM plus the full encoder, connector,
embeddings and LM head (LR 5e-5), and the ``[SEG]`` path when a SegVol ``head`` is given. What
differs between the zoo's defaults and M3D's code (the data mix and the embedding rows of each
stage) is data, :data:`STAGE_PRESETS`, chosen with ``stage_preset`` (docs/reference.md H).
Freezing, LoRA targets and the image-token count are decided here and only here.

Segmentation (``head``, :mod:`recipes.lamed_seg`): the hidden state predicting each ``[SEG]`` is
projected to a SegVol prompt; samples with a ``mask`` ``(K, D, H, W)`` and ``[SEG]`` in the answer
add Dice + BCE (unweighted) to the LM loss; :meth:`LaMed.segment` returns texts and masks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from recipes.lamed_seg import (SegProjector, batch_masks, generated_seg_positions, run_head,
                               seg_target, teacher_seg_positions, trainable_head_patterns)
from zoo.errors import ConfigError
from zoo.gradient_mask import RowGradientMask
from zoo.registry import RECIPES, suggest
from zoo.seam import ImageTextCollator, decode_generated, splice_visual
from zoo.types import TASK_NAMES, Conditioning, Stage, StepOutput, VisualTokens, ZooModel

# Parameter-name patterns inside a CausalLM wrapper (heads/causal_lm.py); ``lm.model`` is the HF model.
INPUT_EMBED_PATTERN = r"lm\.model\..*embed_tokens\."
OUTPUT_EMBED_PATTERN = r"lm\.model\..*lm_head\."
LORA_PATTERN = r"lm\.model\..*lora_"
ROWS = ("all", "new", "none")


@dataclass(frozen=True)
class StagePreset:
    """The per-stage choices on which the zoo's defaults and M3D's code differ.

    ``tasks``: the data mix (empty = every task the data offers); ``input_rows`` /
    ``output_rows``: which rows of the LLM's input embedding and output (LM head) matrices train in
    the stage: ``all``, ``new`` (the added special tokens' rows only, by a gradient mask) or
    ``none`` (frozen).
    """

    tasks: tuple[str, ...] = ()
    input_rows: str = "all"
    output_rows: str = "all"

    def __post_init__(self) -> None:
        for name in ("input_rows", "output_rows"):
            if getattr(self, name) not in ROWS:
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected one of {ROWS}")


# Named presets, stage -> settings (docs/reference.md H; docs/lm.md "LaMed stages").
STAGE_PRESETS: dict[str, dict[str, StagePreset]] = {
    # the zoo: align on image-report pairs; the LLM's pretrained rows stay as they are and only the
    # four new tokens' input and output rows move
    "zoo": {"align": StagePreset(tasks=("caption",), input_rows="new", output_rows="new"),
            "instruct": StagePreset()},
    # M3D's train.py as coded: align on captions + closed + open VQA, every input-embedding row
    # trains, the LM head is frozen
    "m3d": {"align": StagePreset(tasks=("caption", "vqa_closed", "vqa_open"), input_rows="all",
                                 output_rows="none"),
            "instruct": StagePreset()},
}


def stage_presets(name: str, align_tasks: Sequence[str] | None = None,
                  instruct_tasks: Sequence[str] | None = None) -> dict[str, StagePreset]:
    """The preset ``name`` with the data mixes overridden where ``*_tasks`` is not None."""
    if name not in STAGE_PRESETS:
        raise ConfigError(f"recipe.stage_preset={name!r}: unknown preset."
                          f"{suggest(name, list(STAGE_PRESETS))} "
                          f"Presets: {', '.join(STAGE_PRESETS)}")
    presets = dict(STAGE_PRESETS[name])
    for stage, tasks in (("align", align_tasks), ("instruct", instruct_tasks)):
        if tasks is not None:
            presets[stage] = dataclasses.replace(presets[stage], tasks=tuple(tasks))
    return presets


def embedding_patterns(preset: StagePreset, tied: bool = False) -> tuple[str, ...]:
    """Trainable-name patterns of the embedding matrices a stage moves (all or some rows). A tied
    LM head is the input embedding under that one name (SmolLM2), so only that name is given."""
    moves = (preset.input_rows != "none", preset.output_rows != "none")
    if tied:
        return (INPUT_EMBED_PATTERN,) if any(moves) else ()
    return (((INPUT_EMBED_PATTERN,) if moves[0] else ())
            + ((OUTPUT_EMBED_PATTERN,) if moves[1] else ()))


def ties_embeddings(lm: torch.nn.Module) -> bool:
    """Whether a CausalLM's LM head is its input embedding matrix (or it has none)."""
    out = lm.model.get_output_embeddings()
    return out is None or out.weight is lm.model.get_input_embeddings().weight


class LaMed(ZooModel):
    """Encoder (+ optional bridge) + connector + causal LM with the image tokens spliced into the
    text embeddings.

    Text-guided parts receive a :class:`~zoo.types.Conditioning` whose ``prompt_embedding`` is the
    mean input embedding of the prompt's text tokens ``(B, H_lm)`` and whose ``task_id`` indexes
    :data:`zoo.types.TASK_NAMES`; an encoder's ``extras["aux_loss"]`` (MoE load balancing) is added
    to the LM loss and its ``extras["router_stats"]`` are logged.

    With a SegVol ``head`` the model has ``heads["seg"]`` and ``seg_projector`` (see
    :mod:`recipes.lamed_seg`); a head built with ``share_encoder=True`` reads the encoder's
    patch tokens (before bridge and connector), otherwise it runs its own image encoder.
    """

    def __init__(self, encoder: torch.nn.Module, connector: torch.nn.Module, lm: torch.nn.Module,
                 image_size: Sequence[int], stages: dict[str, Stage],
                 template: str | Mapping[str, str] = "<image>{prompt}", max_length: int = 512,
                 embedding_rows: Mapping[str, tuple[str, str]] | None = None,
                 bridge: torch.nn.Module | None = None, head: torch.nn.Module | None = None,
                 seg_dropout: float = 0.1, chat_template: bool | None = None) -> None:
        super().__init__()
        self.encoder, self.bridge, self.connector, self.lm = encoder, bridge, connector, lm
        self.image_size = tuple(int(s) for s in image_size)
        num_tokens, grid = encoder.output_layout(self.image_size)
        if bridge is not None:
            num_tokens, grid = bridge.output_layout(num_tokens, grid)
        self.num_image_tokens = connector.num_out_tokens(num_tokens, grid)
        self.stages = stages
        self.collator = ImageTextCollator(lm.tokenizer, self.num_image_tokens, template=template,
                                          max_length=max_length, chat_template=chat_template)
        self.generation_collator = ImageTextCollator(lm.tokenizer, self.num_image_tokens,
                                                     template=template, max_length=max_length,
                                                     chat_template=chat_template,
                                                     for_generation=True)
        # stage -> (input_rows, output_rows), each "all", "new" or "none" (StagePreset); a stage
        # not listed trains whatever its patterns select
        self._embedding_rows = {k: tuple(v) for k, v in (embedding_rows or {}).items()}
        for stage, rows in self._embedding_rows.items():
            if len(rows) != 2 or set(rows) - set(ROWS):
                raise ConfigError(f"embedding_rows[{stage!r}]={rows}: expected (input, output), "
                                  f"each one of {ROWS}")
        self._row_hooks: list[RowGradientMask] = []
        self._masked_rows: dict[int, int] = {}  # id(weight) -> rows the gradient mask lets move
        self.heads = torch.nn.ModuleDict({"seg": head}) if head is not None else None
        self.seg_projector = (SegProjector(lm.hidden_size, head.embed_dim, seg_dropout)
                              if head is not None else None)

    # -------------------------------------------------------------- stages
    def apply_stage(self, stage: Stage | str) -> list[str]:
        """Freeze per the stage; where the stage's preset says ``new`` rows (the zoo's ``align``),
        only the new special-token rows of that embedding matrix get gradients (a gradient
        mask)."""
        stage = self.stages[stage] if isinstance(stage, str) else stage
        names = super().apply_stage(stage)
        for hook in self._row_hooks:
            hook.remove()
        self._row_hooks, self._masked_rows = [], {}
        rows_setting = self._embedding_rows.get(stage.name)
        if rows_setting is not None:
            hf_model = self.lm.model
            pair = (hf_model.get_input_embeddings().weight, hf_model.get_output_embeddings().weight)
            if pair[0] is pair[1] and rows_setting[0] != rows_setting[1]:
                raise ConfigError(f"stage {stage.name!r} trains input embedding rows "
                                  f"{rows_setting[0]!r} and output rows {rows_setting[1]!r}, but "
                                  "this LLM ties its input and output embeddings")
            modules = (hf_model.get_input_embeddings(), hf_model.get_output_embeddings())
            matrices = {id(w): m for w, m, r in zip(pair, modules, rows_setting) if r == "new"}
            rows = sorted(set(self.lm.special_ids.values()))
            for key, module in matrices.items():
                if module.weight.requires_grad:  # masked through the module: survives FSDP2
                    self._row_hooks.append(RowGradientMask(module, rows))
                    self._masked_rows[key] = len(rows)
        return names

    def trainable_numel(self, param: torch.nn.Parameter) -> int:
        """Only the new token rows of a row-masked embedding matrix count as trainable."""
        rows = self._masked_rows.get(id(param))
        if rows is None or not param.requires_grad:
            return super().trainable_numel(param)
        return rows * param.shape[1]

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
        """Connector output; ``extras`` keeps the encoder's (aux loss, router statistics) and
        the encoder's own tokens under ``encoder_tokens`` (a shared SegVol head reads them)."""
        visual = self.encoder(image, cond)
        bridged = self.bridge(visual, cond) if self.bridge is not None else visual
        out = self.connector(bridged)
        return out.replace(extras={**visual.extras, **out.extras, "encoder_tokens": visual})

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
        if self.heads is not None:
            seg_loss, n_masks = self.seg_loss(batch, out.hidden_states, visual)
            logs["seg_masks"] = float(n_masks)
            if seg_loss is not None:
                loss = loss + seg_loss
                logs["seg_loss"] = float(seg_loss.detach())
        return StepOutput(loss, logs)

    def text_loss(self, samples: list[dict[str, Any]]) -> Tensor:
        """LM loss on the samples' text alone, every token a label, no image (language-model
        pretraining before the multimodal stages: zoo/lm_warmup.py)."""
        batch = self.collator.text_batch(samples)
        return self.lm(self.lm.embed(batch["input_ids"]), batch["attention_mask"],
                       labels=batch["labels"]).loss

    # -------------------------------------------------------------- [SEG]
    def _head_tokens(self, image: Tensor, visual: VisualTokens, rows: list[int]) -> VisualTokens:
        """Image tokens for the SegVol head on ``rows``: the encoder's (shared) or its own."""
        head = self.heads["seg"]
        if head.share_encoder:
            shared = visual.extras["encoder_tokens"]
            return VisualTokens(shared.tokens[rows], shared.grid)
        return head.encode_image(image[rows])

    def seg_loss(self, batch: dict[str, Any], hidden: Tensor, visual: VisualTokens
                 ) -> tuple[Tensor | None, int]:
        """Dice + BCE over the ``[SEG]`` tokens of samples that have a ``mask`` (teacher forcing;
        ``hidden (B, T, H)``); ``(None, 0)`` when the batch has none. Returns (loss, masks)."""
        where = teacher_seg_positions(batch["labels"], self.lm.special_ids["[SEG]"])
        counts = where.sum(1).tolist()
        masks = batch_masks(batch, len(counts))
        rows = [i for i, (n, m) in enumerate(zip(counts, masks)) if n > 0 and m is not None]
        if not rows:
            return None, 0
        prompts = [self.seg_projector(hidden[i][where[i]]) for i in rows]
        targets = [seg_target(masks[i], counts[i], i).to(hidden.dtype) for i in rows]
        image = batch["image"].to(hidden.dtype)
        _, loss, n_masks = run_head(self.heads["seg"], image[rows],
                                    self._head_tokens(image, visual, rows), prompts, targets)
        return loss, n_masks

    @torch.no_grad()
    def segment(self, batch_or_samples: Any, max_new_tokens: int = 64, **gen_kwargs: Any
                ) -> tuple[list[str], list[Tensor]]:
        """Greedy answers and one probability mask per generated ``[SEG]``: ``(texts, masks)``
        with ``masks[i]`` float ``(K_i, D, H, W)`` in [0, 1] (``K_i`` may be 0). Threshold at
        0.5 for a binary mask (M3D). Eval mode; the previous mode is restored."""
        if self.heads is None:
            raise ValueError("LaMed.segment needs a SegVol head: build the recipe with head=NAME "
                             "(e.g. head=test_segvol)")
        batch = (self.generation_collator(batch_or_samples)
                 if isinstance(batch_or_samples, list) else batch_or_samples)
        was_training = self.training
        self.eval()
        try:
            embeds, visual = self.embed_inputs(batch)
            ids, hidden = self.lm.generate(embeds, batch["attention_mask"],
                                           max_new_tokens=max_new_tokens, return_hidden=True,
                                           **gen_kwargs)
            where = generated_seg_positions(ids, self.lm.special_ids["[SEG]"], self.lm.eos_id)
            image = batch["image"].to(embeds.dtype)
            size = tuple(image.shape[2:])
            masks = [image.new_zeros(0, *size, dtype=torch.float32) for _ in range(len(ids))]
            rows = [i for i in range(len(ids)) if bool(where[i].any())]
            if rows:
                prompts = [self.seg_projector(hidden[i][where[i]].to(embeds.dtype)) for i in rows]
                logits, _, _ = run_head(self.heads["seg"], image[rows],
                                        self._head_tokens(image, visual, rows), prompts)
                for i, value in zip(rows, logits):
                    masks[i] = torch.sigmoid(value.float())
        finally:
            self.train(was_training)
        return decode_generated(self.lm.tokenizer, ids), masks

    @torch.no_grad()
    def answer_logprob(self, samples: list[dict[str, Any]]) -> Tensor:
        """``(B,)`` sum of the log-probabilities of each sample's answer tokens (and eos) given
        its image and prompt, under teacher forcing; closed VQA ranks the choices by it. Eval
        mode; the previous mode is restored."""
        batch = self.collator(samples)
        was_training = self.training
        self.eval()
        try:
            logits = self.lm(self.embed_inputs(batch)[0], batch["attention_mask"]).logits
        finally:
            self.train(was_training)
        targets = batch["labels"][:, 1:]
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (picked * (targets != -100)).sum(1)

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
                 warmup_ratio: float, presets: Mapping[str, StagePreset], train_lm: str,
                 has_bridge: bool = False, seg_part: Sequence[str] = (),
                 freeze_in_align: bool = True, tied: bool = False) -> dict[str, Stage]:
    """``align`` and ``instruct`` stages with the data mixes and embedding matrices of
    ``presets`` (:func:`stage_presets`); ``seg_part`` (the [SEG] path's patterns) joins
    ``instruct``. ``freeze_in_align=False`` trains the encoder, the LM (per ``train_lm``) and
    both embedding matrices in ``align`` too. ``tied``: the LLM's LM head is its input embedding
    (:func:`ties_embeddings`)."""
    lm_part = {"lora": (LORA_PATTERN,), "full": (r"lm\.",), "frozen": ()}[train_lm]
    new = (r"bridge\.", r"connector\.") if has_bridge else (r"connector\.",)
    align = new + embedding_patterns(presets["align"], tied)
    if not freeze_in_align:
        align = (r"encoder\.",) + new + embedding_patterns(StagePreset(), tied) + lm_part
    return {
        "align": Stage("align", trainable=align, tasks=presets["align"].tasks,
                       lr=align_lr, epochs=epochs, warmup_ratio=warmup_ratio, batch_size=batch_size),
        "instruct": Stage("instruct",
                          trainable=((r"encoder\.",) + new
                                     + embedding_patterns(presets["instruct"], tied) + lm_part
                                     + tuple(seg_part)),
                          tasks=presets["instruct"].tasks, lr=instruct_lr, epochs=epochs,
                          warmup_ratio=warmup_ratio, batch_size=batch_size),
    }


def build_parts(encoder: Callable[..., Any], connector: Callable[..., Any], lm: Callable[..., Any],
                bridge: Callable[..., Any] | None, train_lm: str, lora: dict[str, Any],
                encoder_kwargs: dict[str, Any] | None = None) -> tuple[Any, Any, Any, Any]:
    """(encoder, bridge, connector, lm) wired by width: bridge ``in_dim`` = encoder width,
    connector ``in_dim`` = bridge (or encoder) width, ``out_dim`` = LLM hidden size."""
    if train_lm not in ("lora", "full", "frozen"):
        raise ConfigError(f"recipe.train_lm={train_lm!r}: expected 'lora', 'full' or 'frozen'")
    language_model = lm()
    vision = encoder(**(encoder_kwargs or {}))
    middle = bridge(in_dim=vision.out_dim) if bridge is not None else None
    width = middle.out_dim if middle is not None else vision.out_dim
    projector = connector(in_dim=width, out_dim=language_model.hidden_size)
    if train_lm == "lora":
        language_model.apply_lora(**{k: v for k, v in lora.items() if v is not None})
    return vision, middle, projector, language_model


def build_seg_head(head: Callable[..., Any], vision: Any, image_size: Sequence[int],
                   share_encoder: bool | None) -> Any:
    """The SegVol head for the ``[SEG]`` path, built at the recipe's ``image_size`` without a
    CLIP text tower (the LM supplies the prompts). ``share_encoder`` (None: the head factory's
    own setting) makes it read the recipe encoder's patch tokens: its width becomes the
    encoder's width and its patch size ``image_size / grid``; the encoder must give a grid."""
    if share_encoder is None:
        share_encoder = bool(getattr(head, "keywords", {}).get("share_encoder", False))
    kwargs: dict[str, Any] = dict(image_size=tuple(int(s) for s in image_size),
                                  share_encoder=share_encoder, text_tower=False)
    if share_encoder:
        _, grid = vision.output_layout(kwargs["image_size"])
        if grid is None or any(s % g for s, g in zip(kwargs["image_size"], grid)):
            raise ConfigError(f"recipe.share_encoder=true: encoder tokens have grid {grid}, which "
                              f"does not tile image_size {kwargs['image_size']}; SegVol needs a "
                              "(d, h, w) patch grid (use share_encoder=false)")
        kwargs.update(patch_size=tuple(s // g for s, g in zip(kwargs["image_size"], grid)),
                      embed_dim=vision.out_dim)
    return head(**kwargs)


@RECIPES.register
def lamed(encoder: Callable[..., Any], connector: Callable[..., Any], lm: Callable[..., Any],
          bridge: Callable[..., Any] | None = None, image_size: Sequence[int] = (32, 256, 256),
          template: str | Mapping[str, str] = "<image>{prompt}", max_length: int = 512,
          train_lm: str = "lora", lora_r: int = 16, lora_alpha: int = 32,
          lora_dropout: float = 0.05, lora_target: str | None = None, align_lr: float = 1e-4,
          instruct_lr: float = 5e-5, epochs: float = 3.0, batch_size: int = 2,
          warmup_ratio: float = 0.03, stage_preset: str = "zoo",
          align_tasks: Sequence[str] | None = None, instruct_tasks: Sequence[str] | None = None,
          head: Callable[..., Any] | None = None, share_encoder: bool | None = None,
          seg_dropout: float = 0.1, freeze_in_align: bool = True,
          chat_template: bool | None = None, init_from: str | None = None) -> LaMed:
    """M3D-LaMed: ``encoder`` (+ optional token-reducing ``bridge``) and ``connector`` into
    ``lm`` (factories from the config).

    ``train_lm``: ``lora`` (M3D: r 16, alpha 32, dropout 0.05 on the LLM's linear layers),
    ``full`` (every LLM weight; for tiny randomly initialised LMs) or ``frozen``.

    ``template``: one template, a ``{task: template}`` mapping or a preset name (``m3d``: M3D's
    strings); see :mod:`zoo.seam`.

    ``stage_preset`` (:data:`STAGE_PRESETS`): ``zoo`` aligns on captions and moves only the four
    new tokens' embedding and LM-head rows; ``m3d`` is M3D's code: captions + closed + open VQA,
    every embedding row, LM head frozen. ``align_tasks`` / ``instruct_tasks`` (None: the preset's;
    empty: every task the data offers) override the mixes.

    ``head`` (a SegVol head factory, e.g. ``head=test_segvol``) adds the ``[SEG]`` path: the
    projector MLP (dropout ``seg_dropout``) and ``heads["seg"]``, trained in ``instruct``.
    ``share_encoder`` (None: the head's own option) feeds the recipe encoder's tokens to it.

    ``freeze_in_align`` (M3D: true, the encoder and LLM come pretrained): false trains the encoder
    and the LM in ``align`` as well, every embedding row included; for components that start from
    random weights, whose frozen features would carry nothing to align to.

    ``chat_template`` (None: when the LM's tokenizer has one) wraps the filled ``template`` as a
    user turn of the LM's chat template (:class:`~zoo.seam.ImageTextCollator`); M3D used plain
    text, ``false`` reproduces that with a chat-tuned LLM.

    ``init_from``: weights M3D released or wrote (:func:`zoo.pretrained.m3d_lamed.load_m3d_lamed`):
    a release folder (``config.json`` checked against the components; ``experiment=m3d_lamed``
    builds M3D's), a stage-1 ``mm_projector.bin`` or a stage-2 ``model_with_lora.bin``; local
    paths only, skipped on the meta device. The report is ``model.init_report``.
    """
    presets = stage_presets(stage_preset, align_tasks, instruct_tasks)
    lora = {"r": lora_r, "alpha": lora_alpha, "dropout": lora_dropout, "target": lora_target}
    vision, middle, projector, language_model = build_parts(encoder, connector, lm, bridge,
                                                            train_lm, lora)
    seg_head, seg_part = None, ()
    if head is not None:
        seg_head = build_seg_head(head, vision, image_size, share_encoder)
        seg_part = (r"seg_projector\.",) + trainable_head_patterns(
            "heads.seg.", own_encoder=not seg_head.share_encoder)
    stages = lamed_stages(align_lr, instruct_lr, epochs, batch_size, warmup_ratio, presets,
                          train_lm, has_bridge=middle is not None,
                          seg_part=seg_part, freeze_in_align=freeze_in_align,
                          tied=ties_embeddings(language_model))
    rows = {name: (p.input_rows, p.output_rows) for name, p in presets.items()}
    if not freeze_in_align:
        rows["align"] = ("all", "all")
    model = LaMed(vision, projector, language_model, image_size, stages, template, max_length,
                  embedding_rows=rows, bridge=middle, head=seg_head, seg_dropout=seg_dropout,
                  chat_template=chat_template)
    from zoo.pretrained.m3d_lamed import load_m3d_lamed
    from zoo.pretrained.report import init_from as load_init

    load_init(model, init_from, load_m3d_lamed)
    return model
