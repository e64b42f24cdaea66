"""Frozen 2D teacher for Med3DInsight: an open_clip model embedding slices and slice texts.

Med3DInsight aligns its 3D encoder (through PSAT) with a frozen BiomedCLIP (ViT-B/16 image tower,
PubMedBERT text tower, 512-d joint space). The teacher embeds the sampled 2D slice ``(B, 1, h, w)``
(values in [0, 1]; grey repeated to 3 channels, resized bilinearly to the tower's square input
size without cropping, normalised with the tower's mean/std) and the slice's text, both
L2-normalised ``(B, E)``.

Sources (never the network): :func:`biomedclip_teacher` reads a local directory holding
``open_clip_config.json`` and ``open_clip_pytorch_model.bin`` (or ``.safetensors``) through
open_clip's own ``local-dir:`` loader and tokenizer; for BiomedCLIP that directory must also hold
the PubMedBERT tokenizer files, and the config's ``text_cfg.hf_model_name`` must name a local
directory (or a model in the offline HF cache) because open_clip builds the HF text tower from its
config. :func:`test_teacher` builds a tiny random CLIP in-process with open_clip's built-in BPE
tokenizer (shipped with open_clip, works offline).

:class:`TeacherCache` stores the embeddings on disk, one safetensors file per slice, keyed by the
teacher's identity (config + weights hash) and by (case id, plane, index, text hash), so
pretraining epochs after the first do not run the teacher.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.build import on_meta
from zoo.errors import ConfigError, MissingFileError
from zoo.registry import HEADS
from zoo.signature import renamed
from zoo.types import EmbeddingOutput

WEIGHT_FILES = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors",
                "open_clip_pytorch_model.safetensors")


def _sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class SliceTeacher(nn.Module):
    """A frozen open_clip CLIP with its tokenizer and preprocessing; always in eval mode.

    ``identity`` names the exact model (config and weights) for cache keys.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, identity: str, embed_dim: int,
                 image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.identity = identity
        self.image_size = int(image_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.embed_dim = int(embed_dim)

    def train(self, mode: bool = True) -> "SliceTeacher":
        return super().train(False)  # frozen: dropout and norms stay in inference mode

    def preprocess(self, slices: Tensor) -> Tensor:
        """``(B, 1 or 3, h, w)`` in [0, 1] -> ``(B, 3, S, S)`` normalised for the image tower."""
        if slices.dim() != 4 or slices.shape[1] not in (1, 3):
            raise ValueError(f"teacher slices must be (B, 1, h, w) or (B, 3, h, w), got shape "
                             f"{tuple(slices.shape)}")
        if not slices.is_floating_point():
            raise ValueError(f"teacher slices must be floating point, got {slices.dtype}")
        x = slices.float().expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size,) * 2, mode="bilinear", align_corners=False,
                              antialias=True)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def embed_images(self, slices: Tensor) -> Tensor:
        return self.model.encode_image(self.preprocess(slices), normalize=True)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> Tensor:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("teacher texts must be a list of strings")
        tokens = self.tokenizer(list(texts)).to(self.mean.device)
        return self.model.encode_text(tokens, normalize=True)

    def forward(self, slices: Tensor, texts: Sequence[str] | None = None) -> EmbeddingOutput:
        image = self.embed_images(slices)
        text = self.embed_texts(texts) if texts is not None else None
        if text is not None and text.shape[0] != image.shape[0]:
            raise ValueError(f"{image.shape[0]} slices but {text.shape[0]} texts")
        return EmbeddingOutput(image=image, text=text)


class TeacherCache:
    """On-disk cache of teacher embeddings: ``root/<teacher id>/<k[:2]>/<k>.safetensors``.

    ``k`` hashes (case id, plane, index, sha256(text)); files are written atomically. ``hits`` and
    ``misses`` count lookups. Slice pixels are not part of the key: a change of preprocessing
    needs a new ``namespace`` (e.g. the data spec's hash) or a new root.
    """

    def __init__(self, teacher: SliceTeacher, root: str | Path, namespace: str = "") -> None:
        ident = _sha256_text(f"{teacher.identity}|{namespace}")[:24]
        self.teacher, self.dir = teacher, Path(root) / ident
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0

    @staticmethod
    def key(case_id: str, plane: str | int, index: int, text: str) -> str:
        return _sha256_text(f"{case_id}|{plane}|{int(index)}|{_sha256_text(text)}")

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.safetensors"

    def _save(self, path: Path, image: Tensor, text: Tensor) -> None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file({"image": image.contiguous().cpu(), "text": text.contiguous().cpu()}, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def _load(self, path: Path) -> tuple[Tensor, Tensor] | None:
        from safetensors.torch import load_file

        if not path.is_file():
            return None
        try:
            data = load_file(str(path))
            return data["image"], data["text"]
        except Exception:  # a truncated file from a killed run: recompute and overwrite
            return None

    def get_or_compute(self, keys: Sequence[Sequence[Any]], slices: Tensor,
                       texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``keys[i] = (case_id, plane, index)``; returns ``(image (B, E), text (B, E))``."""
        if not len(keys) == slices.shape[0] == len(texts):
            raise ValueError(f"got {len(keys)} keys, {slices.shape[0]} slices and {len(texts)} "
                             "texts: they must match")
        paths = [self._path(self.key(*k, text=t)) for k, t in zip(keys, texts)]
        found = [self._load(p) for p in paths]
        to_compute = [i for i, f in enumerate(found) if f is None]
        self.hits += len(keys) - len(to_compute)
        self.misses += len(to_compute)
        if to_compute:
            out = self.teacher(slices[to_compute], [texts[i] for i in to_compute])
            for j, i in enumerate(to_compute):
                found[i] = (out.image[j], out.text[j])
                self._save(paths[i], out.image[j], out.text[j])
        device = slices.device
        return (torch.stack([f[0] for f in found]).to(device),  # type: ignore[index]
                torch.stack([f[1] for f in found]).to(device))  # type: ignore[index]


@HEADS.register
@renamed(path="pretrained=VALUE")
def biomedclip_teacher(pretrained: str, context_length: int | None = None) -> SliceTeacher:
    """Frozen open_clip teacher from a local directory (BiomedCLIP layout: open_clip_config.json
    + open_clip_pytorch_model.bin/.safetensors + tokenizer files); weights skipped on meta."""
    import open_clip

    folder = Path(pretrained)
    config_file = folder / "open_clip_config.json"
    if not config_file.is_file():
        raise MissingFileError(f"biomedclip_teacher pretrained={pretrained}: no open_clip_config.json there "
                               "(download BiomedCLIP's files into that directory)")
    weights = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not weights:
        raise MissingFileError(f"biomedclip_teacher pretrained={pretrained}: no weights file, expected one "
                               f"of {WEIGHT_FILES}")
    meta = on_meta()
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=not meta,
                                   device="meta" if meta else "cpu")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}", context_length=context_length)
    cfg = open_clip.get_model_preprocess_cfg(model)
    config = json.loads(config_file.read_text())
    identity = _sha256_text(json.dumps(config, sort_keys=True) + "|" +
                            ("meta" if meta else _sha256_file(weights[0])))
    size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
    return SliceTeacher(model, tokenizer, identity, config["model_cfg"]["embed_dim"], size,
                        cfg["mean"], cfg["std"])


TEST_CLIP = dict(embed_dim=16,
                 vision_cfg=dict(image_size=32, patch_size=8, width=32, layers=1, head_width=16),
                 text_cfg=dict(context_length=32, vocab_size=49408, width=32, heads=2, layers=1))


@HEADS.register
def test_teacher(seed: int = 0, pool_type: str = "tok") -> SliceTeacher:
    """Tiny random CLIP built in-process (16-d space, 32 px input, one layer per tower) with
    open_clip's offline BPE tokenizer; ``seed`` fixes the weights (and the identity).

    ``pool_type``: how the image tower pools its tokens (open_clip's ``vision_cfg.pool_type``).
    ``"tok"`` (class token, CLIP's and BiomedCLIP's choice) is the default; in this random
    one-layer tower the class token barely depends on the image (slices of different synthetic
    cases at the same plane and index reach a mean cosine of 0.997, measured in
    docs/med3dinsight.md). ``"avg"`` (mean of the patch tokens) keeps the image's content (mean
    cosine 0.83), a stand-in for a trained teacher whose embeddings tell cases apart.
    """
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    if pool_type not in ("tok", "avg"):
        raise ConfigError(f"test_teacher pool_type must be 'tok' or 'avg', got {pool_type!r}")
    spec = {**TEST_CLIP, "vision_cfg": {**TEST_CLIP["vision_cfg"], "pool_type": pool_type}}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CLIP(spec["embed_dim"], CLIPVisionCfg(**spec["vision_cfg"]),
                               CLIPTextCfg(**spec["text_cfg"]))
    tokenizer = open_clip.SimpleTokenizer(context_length=spec["text_cfg"]["context_length"])
    identity = _sha256_text(json.dumps(spec, sort_keys=True) + f"|seed={seed}")
    return SliceTeacher(model, tokenizer, identity, spec["embed_dim"],
                        spec["vision_cfg"]["image_size"],
                        open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
