"""The language-model recipe core: 3D encoder (+ bridge) -> connector -> causal LM, trained in
stages (M3D-LaMed, Bai et al. 2024; TGH-MoE, 2026; docs/design.md section 7).

Tensor contract: ``batch["image"] (B, C, D, H, W)``; the collator turns each sample's prompt and
answer into ``input_ids``/``labels`` with exactly ``num_image_tokens`` ``<im_patch>`` ids, whose
embeddings are replaced by the connector's output ``(B, num_image_tokens, H_lm)``.

Recipes built on this core (``lamed``, ``tghmoe``) differ only in their stage tables: one
:class:`StagePlan` per stage, naming the roles that train (``encoder``, ``encoder:new``,
``bridge``, ``connector``, ``lm``, ``head``; :data:`PLAN_ROLES`), the embedding rows that move, the
data tasks, the learning rate and, for a routed encoder, the routing mode. Which parameters a role
means is declared by the components themselves (:class:`zoo.types.ParameterGroups`: an encoder's
``new`` and ``frozen`` parameters, the LM's ``lora`` adapters and embedding matrices, the SegVol
head's ``text_prompted`` parts), so no recipe holds parameter-name patterns. Every setting of
:func:`language_model` means the same in every recipe, so a sweep switches recipes with
``recipe=NAME`` alone.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from recipes.lamed_seg import (SegProjector, batch_masks, build_seg_head, generated_seg_positions,
                               run_head, seg_target, teacher_seg_positions)
from zoo.errors import ConfigError
from zoo.gradient_mask import RowGradientMask
from zoo.registry import suggest
from zoo.seam import ImageTextCollator, decode_generated, splice_visual
from zoo.types import (TASK_NAMES, Conditioning, RoutedEncoder, Stage, StepOutput, VisualTokens,
                       ZooModel, eval_mode)

ROWS = ("all", "new", "none")
# Roles a stage plan names; ``encoder:GROUP`` / ``lm:GROUP`` select a group the component declares
PLAN_ROLES = ("encoder", "bridge", "connector", "lm", "head")
TRAIN_LM = ("lora", "full", "frozen")
ROUTING = ("shared", "specific")


@dataclass(frozen=True)
class StagePlan:
    """One stage of a language-model recipe.

    ``roles``: what trains (:data:`PLAN_ROLES`): ``encoder`` (all of it but its ``frozen``
    group), ``encoder:new`` (its new parameters only; nothing when it has none), ``encoder:GROUP``
    (another group it declares, e.g. TGH-MoE's ``experts``), ``bridge`` and ``head`` (the
    ``[SEG]`` path) when the model has one, ``connector``, ``lm`` (per ``train_lm``: the LoRA
    adapters, every weight, or nothing). ``input_rows`` / ``output_rows``: which rows of the LLM's
    input embedding and output (LM head) matrices train: ``all``, ``new`` (the added special
    tokens' rows only, by a gradient mask) or ``none``. ``tasks``: the data mix (empty = every
    task the data offers). ``routing``: the mode a routed encoder is switched to
    (:class:`zoo.types.RoutedEncoder`). ``aligns``: an alignment stage, in which the pretrained
    encoder and LLM stay frozen; ``freeze_in_align=false`` trains them there too, every embedding
    row included.
    """

    roles: tuple[str, ...]
    tasks: tuple[str, ...] = ()
    lr: float = 1e-4
    input_rows: str = "all"
    output_rows: str = "all"
    routing: str | None = None
    aligns: bool = False

    def __post_init__(self) -> None:
        for name in ("input_rows", "output_rows"):
            if getattr(self, name) not in ROWS:
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected one of {ROWS}")
        if self.routing is not None and self.routing not in ROUTING:
            raise ConfigError(f"routing={self.routing!r}: expected one of {ROUTING}")
        for role in self.roles:
            part = role.partition(":")[0]
            if part not in PLAN_ROLES:
                raise ConfigError(f"role {role!r}: expected one of {', '.join(PLAN_ROLES)} (or "
                                  f"encoder:GROUP, lm:GROUP).{suggest(part, PLAN_ROLES)}")
        unknown = [t for t in self.tasks if t not in TASK_NAMES]
        if unknown:
            raise ConfigError(f"tasks: unknown task {unknown[0]!r}.{suggest(unknown[0], TASK_NAMES)}"
                              f" Tasks: {', '.join(TASK_NAMES)}")


class LaMed(ZooModel):
    """Encoder (+ optional bridge) + connector + causal LM with the image tokens spliced into the
    text embeddings (M3D-LaMed's architecture; TGH-MoE's with its encoder).

    Text-guided parts receive a :class:`~zoo.types.Conditioning` whose ``prompt_embedding`` is the
    mean input embedding of the prompt's text tokens ``(B, H_lm)`` and whose ``task_id`` indexes
    :data:`zoo.types.TASK_NAMES`; an encoder's ``extras["aux_loss"]`` (MoE load balancing) is added
    to the LM loss and its ``extras["router_stats"]`` are logged. ``embedding_rows``: stage ->
    ``(input_rows, output_rows)`` (:class:`StagePlan`); ``routing``: stage -> routing mode.
    """

    def __init__(self, encoder: torch.nn.Module, connector: torch.nn.Module, lm: torch.nn.Module,
                 image_size: Sequence[int], stages: dict[str, Stage],
                 template: str | Mapping[str, str] = "<image>{prompt}", max_length: int = 512,
                 embedding_rows: Mapping[str, tuple[str, str]] | None = None,
                 routing: Mapping[str, str] | None = None,
                 bridge: torch.nn.Module | None = None, chat_template: bool | None = None) -> None:
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
        # a stage not listed trains whatever its roles select, with no row mask
        self._embedding_rows = {k: tuple(v) for k, v in (embedding_rows or {}).items()}
        for stage, rows in self._embedding_rows.items():
            if len(rows) != 2 or set(rows) - set(ROWS):
                raise ConfigError(f"embedding_rows[{stage!r}]={rows}: expected (input, output), "
                                  f"each one of {ROWS}")
        self._routing = dict(routing or {})
        self._row_hooks: list[RowGradientMask] = []
        self._masked_rows: dict[int, int] = {}  # id(weight) -> rows the gradient mask lets move
        self.heads: torch.nn.ModuleDict | None = None  # LaMedSeg: the SegVol head

    # -------------------------------------------------------------- stages
    def apply_stage(self, stage: Stage | str) -> list[str]:
        """Switch a routed encoder to the stage's routing mode (entering ``specific``, every task
        group starts from the shared experts: this runs before a resumed run's state is loaded,
        so a resumed run's groups are restored after), freeze per the stage's roles, and where
        the stage moves only the ``new`` rows of an embedding matrix, mask the gradient of the
        others."""
        stage = self.stages[stage] if isinstance(stage, str) else stage
        mode = self._routing.get(stage.name)
        if mode is not None and isinstance(self.encoder, RoutedEncoder):
            self.encoder.set_routing(mode)
            if mode == "specific":
                self.encoder.init_groups_from_shared()
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

    def lm_step(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Any], Any, VisualTokens]:
        """(LM loss + the encoder's auxiliary loss, logs, the LM output, the visual tokens);
        logs hold detached tensors, read back only when the trainer logs."""
        embeds, visual = self.embed_inputs(batch)
        out = self.lm(embeds, batch["attention_mask"], labels=batch["labels"])
        logs: dict[str, Any] = {"lm_loss": out.loss.detach()}
        loss = out.loss
        if visual.extras.get("aux_loss") is not None:
            loss = loss + visual.extras["aux_loss"]
            logs["aux_loss"] = visual.extras["aux_loss"].detach()
        logs.update(flat_stats(visual.extras.get("router_stats", {})))
        return loss, logs, out, visual

    def forward(self, batch: dict[str, Any]) -> StepOutput:
        loss, logs, _, _ = self.lm_step(batch)
        return StepOutput(loss, logs)

    def text_loss(self, samples: list[dict[str, Any]]) -> Tensor:
        """LM loss on the samples' text alone, every token a label, no image (language-model
        pretraining before the multimodal stages: zoo/lm_warmup.py)."""
        batch = self.collator.text_batch(samples)
        return self.lm(self.lm.embed(batch["input_ids"]), batch["attention_mask"],
                       labels=batch["labels"]).loss

    @torch.no_grad()
    def answer_logprob(self, samples: list[dict[str, Any]]) -> Tensor:
        """``(B,)`` sum of the log-probabilities of each sample's answer tokens (and eos) given
        its image and prompt, under teacher forcing; closed VQA ranks the choices by it. Eval
        mode; the previous mode is restored."""
        batch = self.collator(samples)
        with eval_mode(self):
            logits = self.lm(self.embed_inputs(batch)[0], batch["attention_mask"]).logits
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
        with eval_mode(self):
            ids = self.lm.generate(self.embed_inputs(batch)[0], batch["attention_mask"],
                                   max_new_tokens=max_new_tokens, **gen_kwargs)
        return decode_generated(self.lm.tokenizer, ids)


class LaMedSeg(LaMed):
    """:class:`LaMed` with M3D-LaMed's ``[SEG]`` path (:mod:`recipes.lamed_seg`): ``heads["seg"]``
    (a SegVol head) and ``seg_projector``. The hidden state predicting each ``[SEG]`` is projected
    to a SegVol prompt; samples with a ``mask`` ``(K, D, H, W)`` and ``[SEG]`` in the answer add
    Dice + BCE (unweighted) to the LM loss; :meth:`segment` returns texts and masks. A head built
    with ``share_encoder=True`` reads the encoder's patch tokens (before bridge and connector),
    otherwise it runs its own image encoder."""

    def __init__(self, *args: Any, head: torch.nn.Module, seg_dropout: float = 0.1,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.heads = torch.nn.ModuleDict({"seg": head})
        self.seg_projector = SegProjector(self.lm.hidden_size, head.embed_dim, seg_dropout)

    def forward(self, batch: dict[str, Any]) -> StepOutput:
        loss, logs, out, visual = self.lm_step(batch)
        seg_loss, n_masks = self.seg_loss(batch, out.hidden_states, visual)
        logs["seg_masks"] = float(n_masks)
        if seg_loss is not None:
            loss = loss + seg_loss
            logs["seg_loss"] = seg_loss.detach()
        return StepOutput(loss, logs)

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
        batch = (self.generation_collator(batch_or_samples)
                 if isinstance(batch_or_samples, list) else batch_or_samples)
        with eval_mode(self):
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
        return decode_generated(self.lm.tokenizer, ids), masks


def flat_stats(stats: dict[str, Any], prefix: str = "router/") -> dict[str, Any]:
    """Router statistics (nested dicts of floats or tensors) as flat logs (detached tensors stay
    on their device until the trainer logs them)."""
    flat: dict[str, Any] = {}
    for key, value in stats.items():
        if isinstance(value, dict):
            flat.update(flat_stats(value, f"{prefix}{key}/"))
        elif isinstance(value, Tensor) and value.numel() > 1:
            flat.update({f"{prefix}{key}/{i}": v for i, v in enumerate(value.detach().flatten())})
        elif isinstance(value, Tensor):
            flat[f"{prefix}{key}"] = value.detach().reshape(())
        else:
            flat[f"{prefix}{key}"] = float(value)
    return flat


def _accepts(factory: Callable[..., Any], name: str) -> bool:
    """Whether a builder names ``name`` as a parameter (catch-all ``**options`` does not count)."""
    return name in inspect.signature(getattr(factory, "func", factory)).parameters


def build_parts(encoder: Callable[..., Any], connector: Callable[..., Any], lm: Callable[..., Any],
                bridge: Callable[..., Any] | None, train_lm: str, lora: dict[str, Any]
                ) -> tuple[Any, Any, Any, Any]:
    """(encoder, bridge, connector, lm) wired by width: bridge ``in_dim`` = encoder width,
    connector ``in_dim`` = bridge (or encoder) width, ``out_dim`` = LLM hidden size; a text-guided
    encoder or bridge (one that takes ``prompt_dim``, e.g. ``tghmoe``, ``text_slice_weighting``)
    gets ``prompt_dim`` = LLM hidden size. ``train_lm="lora"`` wraps the LLM with LoRA."""
    if train_lm not in TRAIN_LM:
        raise ConfigError(f"recipe.train_lm={train_lm!r}: expected 'lora', 'full' or 'frozen'")
    llm = lm()
    text_guided = {"prompt_dim": llm.hidden_size}
    vision = encoder(**(text_guided if _accepts(encoder, "prompt_dim") else {}))
    if bridge is not None and _accepts(bridge, "prompt_dim"):
        bridge = functools.partial(bridge, **text_guided)
    middle = bridge(in_dim=vision.out_dim) if bridge is not None else None
    width = middle.out_dim if middle is not None else vision.out_dim
    projector = connector(in_dim=width, out_dim=llm.hidden_size)
    if train_lm == "lora":
        llm.apply_lora(**{k: v for k, v in lora.items() if v is not None})
    return vision, middle, projector, llm


def per_stage(value: Mapping[str, Any] | None, key: str, stages: Sequence[str]) -> dict[str, Any]:
    """A ``{stage: setting}`` mapping of ``recipe.<key>``, its stage names checked."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"recipe.{key}={value!r}: expected a mapping {{stage: ...}} over the "
                          f"stages {', '.join(stages)}")
    unknown = [s for s in value if s not in stages]
    if unknown:
        raise ConfigError(f"recipe.{key}: unknown stage {unknown[0]!r}.{suggest(unknown[0], stages)}"
                          f" The recipe's stages: {', '.join(stages)}")
    return dict(value)


def stage_plans(plans: Mapping[str, StagePlan], lr: float | Mapping[str, float] | None,
                tasks: Mapping[str, Sequence[str]] | None,
                trainable: Mapping[str, Sequence[str]] | None,
                freeze_in_align: bool) -> dict[str, StagePlan]:
    """The recipe's plans with the settings of the command line applied: ``freeze_in_align=false``
    opens alignment stages, then ``lr`` (one number for every stage, or per stage), ``tasks`` and
    ``trainable`` (per stage) replace the plans' own."""
    names = list(plans)
    rates = per_stage(lr, "lr", names) if isinstance(lr, Mapping) else (
        {} if lr is None else {name: lr for name in names})
    mixes, roles = per_stage(tasks, "tasks", names), per_stage(trainable, "trainable", names)
    out = {}
    for name, plan in plans.items():
        if plan.aligns and not freeze_in_align:
            opened = tuple(r for r in plan.roles if r.partition(":")[0] != "encoder")
            plan = dataclasses.replace(plan, roles=("encoder", *opened, "lm"), input_rows="all",
                                       output_rows="all")
        changes: dict[str, Any] = {}
        if name in rates:
            changes["lr"] = rates[name]
        if name in mixes:
            changes["tasks"] = tuple(mixes[name] or ())
        if name in roles:
            changes["roles"] = tuple(roles[name] or ())
        out[name] = dataclasses.replace(plan, **changes) if changes else plan
    return out


def model_roles(plan: StagePlan, model: LaMed, train_lm: str) -> tuple[str, ...]:
    """The model-level roles (:class:`zoo.types.Stage`) of a plan: ``lm`` per ``train_lm``, the
    embedding matrices per the plan's rows, ``head`` as the ``[SEG]`` path's parts, ``bridge`` and
    ``head`` only when present, ``encoder:new`` only when the encoder has new parameters."""
    out: list[str] = []
    for role in plan.roles:
        part, _, group = role.partition(":")
        if part == "lm" and not group:
            out += {"lora": ["lm:lora"], "full": ["lm"], "frozen": []}[train_lm]
        elif part == "head":
            if model.heads is not None:
                out += ["seg_projector", "heads.seg:text_prompted"]
        elif part == "bridge" and model.bridge is None:
            continue
        elif group == "new" and not model.role_parameters(role):
            continue
        else:
            out.append(role)
    out += ["lm:input_embeddings"] if plan.input_rows != "none" else []
    out += ["lm:output_embeddings"] if plan.output_rows != "none" else []
    return tuple(dict.fromkeys(out))


def language_model(plans: Mapping[str, StagePlan], *, encoder: Callable[..., Any],
                   connector: Callable[..., Any], lm: Callable[..., Any],
                   bridge: Callable[..., Any] | None = None, head: Callable[..., Any] | None = None,
                   image_size: Sequence[int] = (32, 256, 256),
                   template: str | Mapping[str, str] = "<image>{prompt}", max_length: int = 512,
                   chat_template: bool | None = None, train_lm: str = "lora", lora_r: int = 16,
                   lora_alpha: int = 32, lora_dropout: float = 0.05,
                   lora_target: str | None = None,
                   lr: float | Mapping[str, float] | None = None,
                   tasks: Mapping[str, Sequence[str]] | None = None,
                   trainable: Mapping[str, Sequence[str]] | None = None, epochs: float = 3.0,
                   batch_size: int = 2, warmup_ratio: float = 0.03, freeze_in_align: bool = True,
                   share_encoder: bool | None = None, seg_dropout: float = 0.1) -> LaMed:
    """A language-model recipe's model: ``encoder`` (+ optional token-reducing ``bridge``) and
    ``connector`` into ``lm`` (factories from the config), with one stage per plan.

    ``train_lm``: ``lora`` (M3D: r 16, alpha 32, dropout 0.05 on the LLM's linear layers,
    ``lora_target`` a regular expression on module paths inside the LLM), ``full`` (every LLM
    weight; for tiny randomly initialised LMs) or ``frozen``.

    ``template``: one template, a ``{task: template}`` mapping or a preset name (``m3d``: M3D's
    strings); see :mod:`zoo.seam`. ``chat_template`` (None: when the LM's tokenizer has one) wraps
    the filled ``template`` as a user turn of the LM's chat template
    (:class:`~zoo.seam.ImageTextCollator`); M3D used plain text, ``false`` reproduces that with a
    chat-tuned LLM.

    ``lr``: one learning rate for every stage, or ``{stage: lr}`` (None: each stage's own).
    ``tasks``: ``{stage: [task, ...]}``, the data mix of the stages named (empty: every task the
    data offers; stages not named keep their own). ``trainable``: ``{stage: [role, ...]}``, what
    trains in the stages named (roles of :class:`StagePlan`: ``encoder``, ``encoder:new``,
    ``bridge``, ``connector``, ``lm``, ``head``). ``epochs``, ``batch_size`` and ``warmup_ratio``
    hold for every stage.

    ``freeze_in_align`` (M3D: true, the encoder and LLM come pretrained): false trains the encoder
    and the LM in an alignment stage (LaMed's ``align``) as well, every embedding row included;
    for components that start from random weights, whose frozen features would carry nothing to
    align to. Recipes without an alignment stage (TGH-MoE) train every part in every stage
    already.

    ``head`` (a SegVol head factory, e.g. ``head=test_segvol``) adds the ``[SEG]`` path
    (:class:`LaMedSeg`): the projector MLP (dropout ``seg_dropout``) and ``heads["seg"]``,
    trained where a plan names ``head``. ``share_encoder`` (None: the head's own option) feeds the
    recipe encoder's tokens to it.
    """
    lora = {"r": lora_r, "alpha": lora_alpha, "dropout": lora_dropout, "target": lora_target}
    vision, middle, projector, language = build_parts(encoder, connector, lm, bridge, train_lm, lora)
    plans = stage_plans(plans, lr, tasks, trainable, freeze_in_align)
    common: dict[str, Any] = dict(
        embedding_rows={name: (p.input_rows, p.output_rows) for name, p in plans.items()},
        routing={name: p.routing for name, p in plans.items() if p.routing is not None},
        bridge=middle, chat_template=chat_template)
    args = (vision, projector, language, image_size, {}, template, max_length)
    if head is not None:
        seg_head = build_seg_head(head, vision, image_size, share_encoder)
        model: LaMed = LaMedSeg(*args, head=seg_head, seg_dropout=seg_dropout, **common)
    else:
        model = LaMed(*args, **common)
    model.stages = {name: Stage(name, trainable=model_roles(plan, model, train_lm),
                                tasks=plan.tasks, lr=plan.lr, epochs=epochs,
                                warmup_ratio=warmup_ratio, batch_size=batch_size)
                    for name, plan in plans.items()}
    return model
