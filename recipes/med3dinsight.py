"""Med3DInsight pretraining (docs/reference.md F): a 3D encoder aligned with a frozen 2D teacher
through the Plane-Slice-Aware Transformer (PSAT), plus volume reconstruction.

Batch contract (from ``slice`` samples, see docs/data.md): ``image (B, 1, D, H, W)`` zero-padded
at the end of each axis to a multiple of ``pad_multiple`` (Swin/ResNet backbones need multiples of
32); ``plane (B,)`` long index into :data:`zoo.types.PLANES`; ``slice_index (B,)`` long;
``slices (B, 1, S, S)`` the 2D slices resized (bilinear, antialiased, as the teacher does) to the
teacher's input size ``S``; ``slice_text`` list of B strings; ``slice_key`` list of B
``(case key, plane, index)`` for the teacher cache.

Step: ``emb = PSAT(encoder(image), (plane, slice_index)).extras["embedding"]`` ``(B, E)``;
teacher embeddings ``(B, E)`` of the slice and its text come from a :class:`TeacherCache` under
``cache_dir`` (computed once per slice, reused in later epochs); loss =
``align(emb, image_t) + text_weight * align(emb, text_t) + recon_weight * MSE(recon, image)``
with ``align`` partial entropic OT (journal) or InfoNCE (conference), see
:class:`heads.alignment.Med3DInsightLoss`. The teacher is frozen and never trainable.

Negatives (``negatives=``): ``"batch"`` (the paper's) compares each 3D embedding, made under its
own sample's plane and index, with every teacher embedding of the batch; a random batch mixes
planes and indices that PSAT receives as input, so part of the loss is lowered by the condition
alone. ``"condition"`` embeds every volume of the batch under every sample's plane and index
(``grid (B, B, E)``, ``grid[a, b] = PSAT(encoder(volume_a), plane_b, index_b)``, one encoder pass,
B^2 PSAT rows) and aligns ``grid[:, b]`` with teacher embedding ``b``: positives and negatives
then share the condition, as in slice-to-volume retrieval, and only case content separates them.

Only the encoder is kept for the downstream recipe :mod:`recipes.med3dinsight_finetune`
(``init_from=`` the pretraining run's checkpoint).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heads.alignment import Med3DInsightLoss
from heads.teacher2d import TeacherCache
from zoo.build import on_meta
from zoo.errors import ConfigError, DataError
from zoo.registry import HEADS, RECIPES
from zoo.types import PLANES, Conditioning, Stage, StepOutput, VisualTokens, ZooModel, eval_mode

NEGATIVES = ("batch", "condition")


def pad_to_multiple(volume: Tensor, multiple: int) -> Tensor:
    """Zero-pad the last three axes of ``(..., D, H, W)`` at their ends to multiples of
    ``multiple`` (indices of existing voxels, hence slice indices, are unchanged)."""
    if multiple <= 1:
        return volume
    pad: list[int] = []
    for size in reversed(volume.shape[-3:]):
        pad += [0, (-size) % multiple]
    return F.pad(volume, pad) if any(pad) else volume


def case_key(sample: dict[str, Any]) -> str:
    """The volume a sample belongs to: ``source/patient_id`` (or the id's first path part)."""
    meta = sample["meta"]
    case = meta.get("patient_id") or str(meta["id"]).split("/")[0]
    return f"{meta.get('source', '')}/{case}"


def plane_ids(planes: Sequence[str]) -> Tensor:
    """Plane names -> ``(B,)`` long indices into :data:`PLANES`; unknown names raise."""
    bad = [p for p in planes if p not in PLANES]
    if bad:
        raise DataError(f"slice plane {bad[0]!r} is unknown: expected one of {PLANES}")
    return torch.tensor([PLANES.index(p) for p in planes], dtype=torch.long)


def bottleneck_stride(encoder: nn.Module) -> Any:
    """Voxels per bottleneck token of an encoder (hierarchical: last feature stride; ViT: patch)."""
    strides = getattr(encoder, "feature_strides", None)
    if strides:
        return strides[-1]
    if hasattr(encoder, "patch_size"):
        return encoder.patch_size
    raise TypeError(f"{type(encoder).__name__} exposes neither feature_strides nor patch_size: "
                    "the reconstruction decoder cannot be sized (set recipe.recon=null)")


class Med3DInsight(ZooModel):
    """Encoder + PSAT bridge, frozen teacher, reconstruction decoder and alignment objective."""

    def __init__(self, encoder: nn.Module, bridge: nn.Module, teacher: nn.Module | None,
                 recon: nn.Module | None, objective: Med3DInsightLoss, stages: dict[str, Stage],
                 cache_dir: str | Path, cache_namespace: str = "", pad_multiple: int = 32,
                 teacher_size: int = 224, negatives: str = "batch") -> None:
        super().__init__()
        if negatives not in NEGATIVES:
            raise ConfigError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
        self.negatives = negatives
        self.encoder, self.bridge = encoder, bridge
        parts: dict[str, nn.Module] = {"objective": objective}
        if teacher is not None:
            parts["teacher"] = teacher
        if recon is not None:
            parts["recon"] = recon
        self.heads = nn.ModuleDict(parts)
        self.stages = stages
        self.cache_dir, self.cache_namespace = Path(cache_dir), cache_namespace
        self.pad_multiple = pad_multiple
        self.teacher_size = int(getattr(teacher, "image_size", teacher_size))
        self._cache: TeacherCache | None = None

    @property
    def cache(self) -> TeacherCache:
        """The teacher's embedding cache (created on first use, under ``cache_dir``)."""
        if "teacher" not in self.heads:
            raise RuntimeError("this Med3DInsight model was built without a teacher (~head, "
                               "parameter counting only); choose head=biomedclip_teacher or "
                               "head=test_teacher to train")
        if self._cache is None:
            self._cache = TeacherCache(self.heads["teacher"], self.cache_dir, self.cache_namespace)
        return self._cache

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        missing = [s["meta"]["id"] for s in samples if not isinstance(s.get("slice"), dict)]
        if missing:
            raise ConfigError(f"med3dinsight trains on 'slice' samples; {missing[0]!r} "
                              f"(task {samples[0].get('task')!r}) has no 'slice'")
        batch = super().collate(samples)
        batch["image"] = pad_to_multiple(batch["image"], self.pad_multiple)
        specs = [s["slice"] for s in samples]
        size = (self.teacher_size, self.teacher_size)
        batch["slices"] = torch.cat([
            F.interpolate(sp["image"].float()[None], size=size, mode="bilinear",
                          align_corners=False, antialias=True) for sp in specs])
        batch["plane"] = plane_ids([sp["plane"] for sp in specs])
        batch["slice_index"] = torch.tensor([int(sp["index"]) for sp in specs], dtype=torch.long)
        batch["slice_text"] = [str(sp["text"]) for sp in specs]
        # source, case and slice size identify the pixels (the cache does not hash pixels)
        batch["slice_key"] = [(f"{case_key(s)}/{tuple(sp['image'].shape[-2:])}", sp["plane"],
                               int(sp["index"])) for s, sp in zip(samples, specs)]
        batch["case"] = [case_key(s) for s in samples]
        return batch

    def condition(self, visual: VisualTokens, plane: Tensor, slice_index: Tensor) -> Tensor:
        """PSAT query 0 projected, ``(B, E)``, for tokens ``(B, N, C)`` under ``(B,)`` planes and
        slice indices."""
        device = visual.tokens.device
        cond = Conditioning(plane=plane.to(device), slice_index=slice_index.to(device))
        return self.bridge(visual, cond).extras["embedding"]

    def condition_grid(self, visual: VisualTokens, plane: Tensor, slice_index: Tensor) -> Tensor:
        """``(B, B, E)``: ``[a, b]`` = volume ``a``'s tokens under sample ``b``'s plane and index."""
        n = visual.tokens.shape[0]
        tokens = visual.tokens.repeat_interleave(n, dim=0)  # row a * n + b: volume a, condition b
        grid = self.condition(VisualTokens(tokens, visual.grid, {}), plane.repeat(n),
                              slice_index.repeat(n))
        return grid.reshape(n, n, -1)

    def teacher_targets(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Cached teacher embeddings ``(B, E)`` of the slices and of their texts."""
        return self.cache.get_or_compute(batch["slice_key"], batch["slices"], batch["slice_text"])

    def forward(self, batch: dict[str, Any]) -> StepOutput:
        image = batch["image"]
        visual = self.encoder(image)
        project = self.condition_grid if self.negatives == "condition" else self.condition
        emb = project(visual, batch["plane"], batch["slice_index"])
        recon_loss = (self.heads["recon"](visual, target=image).loss
                      if "recon" in self.heads else None)
        if emb.shape[0] < 2:  # a last validation batch of one: alignment needs a batch
            if recon_loss is None:
                raise ConfigError("med3dinsight: a batch of 1 has no alignment loss and the model "
                                  "has no reconstruction branch")
            weighted = self.heads["objective"].recon_weight * recon_loss
            return StepOutput(weighted, {"recon": weighted.detach()})
        image_t, text_t = self.teacher_targets(batch)
        return self.heads["objective"](emb, image_t.to(emb.dtype), text_t.to(emb.dtype),
                                       recon_loss=recon_loss)


# ------------------------------------------------------------------ slice-to-volume retrieval
def slice_to_volume_recall(volume_emb: Tensor, slice_emb: Tensor, target: Tensor,
                           ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Recall@k of finding a slice's own volume.

    ``volume_emb (Q, V, E)``: every candidate volume embedded under query ``q``'s plane and slice
    index; ``slice_emb (Q, E)``: the teacher's embedding of slice ``q``; ``target (Q,)``: index of
    its volume. Cosine similarity; rank = number of volumes scoring strictly higher than the true
    one (ties in the query's favour, as :func:`zoo.retrieval.retrieval_recall`).
    """
    if volume_emb.dim() != 3 or slice_emb.dim() != 2 or volume_emb.shape[0] != slice_emb.shape[0] \
            or volume_emb.shape[2] != slice_emb.shape[1]:
        raise ValueError(f"need volume_emb (Q, V, E) and slice_emb (Q, E), got "
                         f"{tuple(volume_emb.shape)} and {tuple(slice_emb.shape)}")
    target = torch.as_tensor(target, dtype=torch.long, device=volume_emb.device).reshape(-1)
    q, v = volume_emb.shape[:2]
    if target.numel() != q or bool(((target < 0) | (target >= v)).any()):
        raise ValueError(f"target must hold {q} volume indices in 0..{v - 1}, got "
                         f"{target.tolist()}")
    sim = torch.einsum("qve,qe->qv", F.normalize(volume_emb.double(), dim=-1),
                       F.normalize(slice_emb.double(), dim=-1))
    own = sim.gather(1, target[:, None])
    ranks = (sim > own).sum(1)
    return {f"R@{int(k)}": float((ranks < int(k)).double().mean()) for k in ks}


@torch.no_grad()
def retrieval_eval(model: Med3DInsight, dataset: Any, batch_size: int = 8,
                   ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Slice-to-volume recall on a dataset of ``slice`` samples (e.g. the test split).

    Volumes: the distinct cases, embedded by encoder + PSAT query 0 under each query's plane and
    slice index. Queries: the teacher's slice-image embedding (``image/R@k``) and slice-text
    embedding (``text/R@k``). Also returns the number of queries and volumes.
    """
    with eval_mode(model):
        device = next(model.parameters()).device
        samples = [dataset[i] for i in range(len(dataset))]
        cases = sorted({case_key(s) for s in samples})
        volumes = {}
        for s in samples:
            volumes.setdefault(case_key(s), s)
        image_t, text_t, conds = [], [], []
        for start in range(0, len(samples), batch_size):
            batch = model.collate(samples[start:start + batch_size])
            slices = batch["slices"].to(device)
            i_t, t_t = model.cache.get_or_compute(batch["slice_key"], slices, batch["slice_text"])
            image_t.append(i_t)
            text_t.append(t_t)
            conds += list(zip(batch["plane"].tolist(), batch["slice_index"].tolist()))
        chunks = [model.encoder(model.collate([volumes[c] for c in cases[i:i + batch_size]])
                                ["image"].to(device)) for i in range(0, len(cases), batch_size)]
        visual = VisualTokens(torch.cat([v.tokens for v in chunks]), chunks[0].grid)
        by_cond: dict[tuple[int, int], Tensor] = {}
        for cond in sorted(set(conds)):
            n = len(cases)
            plane = torch.full((n,), cond[0], dtype=torch.long, device=device)
            index = torch.full((n,), cond[1], dtype=torch.long, device=device)
            by_cond[cond] = model.bridge(visual, Conditioning(plane=plane, slice_index=index)
                                         ).extras["embedding"]
        volume_emb = torch.stack([by_cond[c] for c in conds])  # (Q, V, E)
        target = torch.tensor([cases.index(case_key(s)) for s in samples])
        out = {"queries": float(len(samples)), "volumes": float(len(cases))}
        for name, emb in (("image", torch.cat(image_t)), ("text", torch.cat(text_t))):
            out.update({f"{name}/{k}": v for k, v in
                        slice_to_volume_recall(volume_emb, emb.to(volume_emb.dtype), target,
                                               ks).items()})
    return out


@torch.no_grad()
def alignment_eval(model: Med3DInsight, dataset: Any, batch_size: int = 8) -> dict[str, float]:
    """Mean objective terms (``align_image``, ``align_text``, ``recon``) over full batches of a
    dataset, in eval mode (batches in dataset order)."""
    with eval_mode(model):
        device = next(model.parameters()).device
        sums: dict[str, float] = {}
        count = 0
        for start in range(0, len(dataset) - batch_size + 1, batch_size):
            batch = model.collate([dataset[i] for i in range(start, start + batch_size)])
            batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
            out = model(batch)
            for key, value in {"loss": out.loss, **out.logs}.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            count += 1
    if not count:
        raise DataError(f"alignment_eval: {len(dataset)} samples give no full batch of "
                        f"{batch_size}")
    return {k: v / count for k, v in sums.items()}


def compare_pretraining(overrides: Sequence[str], split: str = "test",
                        batch_size: int = 8) -> dict[str, Any]:
    """Pretrain with ``overrides`` (``zoo train`` style) and measure, on ``split``, the alignment
    objective (:func:`alignment_eval`) and slice-to-volume recall (:func:`retrieval_eval`) of the
    untrained model (same seed, same initial weights) and of the trained one."""
    from accelerate.utils import set_seed

    from zoo.build import build_model
    from zoo.config import compose
    from zoo.jobs import build_data, run_training

    cfg = compose(list(overrides))
    set_seed(int(cfg.seed))
    untrained = build_model(cfg)
    dataset = build_data(cfg).dataset(split, tasks=["slice"])
    before = {"align": alignment_eval(untrained, dataset, batch_size),
              "retrieval": retrieval_eval(untrained, dataset, batch_size)}
    run = run_training(cfg)
    model = run["model"]
    after = {"align": alignment_eval(model, dataset, batch_size),
             "retrieval": retrieval_eval(model, dataset, batch_size)}
    return {"before": before, "after": after, "split_hash": run["split_hash"],
            "seconds": sum(r.seconds for r in run["stages"]), "run_dir": str(run["run_dir"])}


@RECIPES.register
def med3dinsight(encoder: Callable[..., Any], bridge: Callable[..., Any],
                 head: Callable[..., Any] | None = None, recon: str | None = "recon3d",
                 recon_kwargs: dict | None = None, loss: str = "ot", epsilon: float = 0.03,
                 mass: float = 0.95, temperature: float = 0.07, ot_iters: int = 200,
                 text_weight: float = 1.0, recon_weight: float = 1.0,
                 cache_dir: str = "runs/teacher_cache", cache_namespace: str = "",
                 pad_multiple: int = 32, teacher_dim: int | None = None, lr: float = 1e-5,
                 weight_decay: float = 1e-5, epochs: float = 100.0, batch_size: int = 10,
                 warmup_ratio: float = 0.0, negatives: str = "batch") -> Med3DInsight:
    """Med3DInsight pretraining: ``encoder`` + ``bridge`` (PSAT) against the frozen teacher
    ``head`` (``biomedclip_teacher`` / ``test_teacher``).

    ``recon``: HEADS name of the reconstruction decoder (built with the encoder's width and
    bottleneck stride; null = none). ``loss``: ``"ot"`` (partial entropic OT, epsilon, mass,
    learnable diagonal metric) or ``"contrastive"`` (InfoNCE, temperature). Teacher embeddings are
    cached under ``cache_dir`` (keyed by teacher identity, ``cache_namespace`` and slice).
    No head (``~head`` on the command line) with ``teacher_dim`` builds without a teacher, on the
    meta device only (parameter counts when the teacher's files are absent). Defaults: Adam
    1e-5 (the Trainer's AdamW), weight decay 1e-5, batch 10, 100 epochs (the authors' code).
    ``negatives``: ``"batch"`` (the paper's in-batch negatives) or ``"condition"`` (every
    volume of the batch embedded under each sample's plane and index; see the module docstring).
    """
    if head is None:
        if not on_meta() or teacher_dim is None:
            raise ConfigError("med3dinsight needs a teacher: head=biomedclip_teacher "
                              "head.pretrained=DIR or head=test_teacher (~head with "
                              "recipe.teacher_dim=N only counts parameters on the meta device)")
        teacher = None
    else:
        teacher = head()
        if teacher_dim is not None and teacher_dim != teacher.embed_dim:
            raise ConfigError(f"recipe.teacher_dim={teacher_dim} disagrees with the teacher's "
                              f"embed_dim {teacher.embed_dim} (leave it null)")
        teacher_dim = teacher.embed_dim
    vision = encoder()
    psat = bridge(in_dim=vision.out_dim, teacher_dim=teacher_dim)
    decoder = (HEADS.build(recon, in_dim=vision.out_dim, stride=bottleneck_stride(vision),
                           **(recon_kwargs or {})) if recon else None)
    objective = Med3DInsightLoss(teacher_dim, kind=loss, epsilon=epsilon, mass=mass,
                                 temperature=temperature, num_iters=ot_iters,
                                 text_weight=text_weight, recon_weight=recon_weight)
    trainable = ["encoder", "bridge"]
    if decoder is not None:
        trainable.append("heads.recon")
    if loss == "ot":
        trainable.append("heads.objective")  # the learnable diagonal metrics
    stages = {"pretrain": Stage("pretrain", trainable=tuple(trainable), tasks=("slice",), lr=lr,
                                weight_decay=weight_decay, epochs=epochs,
                                warmup_ratio=warmup_ratio, batch_size=batch_size)}
    return Med3DInsight(vision, psat, teacher, decoder, objective, stages, cache_dir,
                        cache_namespace, pad_multiple, negatives=negatives)

