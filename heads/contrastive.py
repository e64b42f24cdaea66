"""CLIP-style contrastive head for 3D image-text pretraining (M3D-CLIP; Bai et al. 2024, "M3D").

Image side: a global image feature ``(B, image_dim)`` (the encoder's CLS token by default) ->
``Linear(image_dim, embed_dim)`` -> L2 normalisation. Text side: a Hugging Face encoder (BERT-base
in M3D) -> CLS hidden state ``(B, text_dim)`` -> ``Linear(text_dim, embed_dim)`` -> L2
normalisation. Loss: symmetric InfoNCE (open_clip's ``ClipLoss``) with a learnable log-scale
initialised at ``log(1 / 0.07)``, used as ``exp(logit_scale)`` clamped at 100 (CLIP's recipe).

``m3d_as_coded_scale=True`` reproduces M3D's public code, which multiplies the similarities by the
raw parameter (about 2.66 at initialisation, i.e. temperature 0.38 instead of 0.07) without
``exp()`` and without a clamp.

With ``torch.distributed`` initialised, negatives come from the whole global batch: features are
gathered with ``torch.distributed.nn`` all-gather (gradients flow back to every rank) and each
rank scores its local rows against all columns. Every rank must hold the same batch size.

Tokenizer: ``text_pretrained`` loads the encoder's own tokenizer from that directory. The
in-process text tower has no vocabulary of its own: pass ``tokenizer=`` (a
``PreTrainedTokenizerBase`` object or a local tokenizer directory); the tower's ``vocab_size`` is
then set to ``len(tokenizer)``.
Without a tokenizer the head still works on token ids given to :meth:`ContrastiveHead.forward`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.checkpoint import reading_hf_folder
from zoo.checks import positive_int
from zoo.errors import ConfigError, MissingFileError
from zoo.registry import HEADS, suggest
from zoo.signature import renamed
from zoo.types import EmbeddingOutput, VisualTokens

IMAGE_POOLS = ("cls", "mean")
TINY_BERT = dict(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=128)


class ContrastiveHead(nn.Module):
    """Projects image and text features into one L2-normalised space and scores the pairs.

    ``forward(visual, input_ids, attention_mask) -> EmbeddingOutput(image (B, E), text (B, E),
    logit_scale, loss)``; ``visual`` is :class:`VisualTokens` (pooled by ``image_pool``) or an
    already pooled ``(B, image_dim)`` tensor. Loss only when text is given.
    """

    def __init__(self, image_dim: int, text_model: nn.Module, embed_dim: int = 768,
                 tokenizer: Any = None, init_temperature: float = 0.07,
                 max_logit_scale: float = 100.0, m3d_as_coded_scale: bool = False,
                 image_pool: str = "cls", max_length: int = 512) -> None:
        super().__init__()
        for key, value in (("image_dim", image_dim), ("embed_dim", embed_dim),
                           ("max_length", max_length)):
            positive_int(key, value)
        if not 0.0 < init_temperature < 1.0 or max_logit_scale <= 1.0:
            raise ConfigError(f"init_temperature must be in (0, 1) and max_logit_scale > 1, got "
                              f"{init_temperature} and {max_logit_scale}")
        if image_pool not in IMAGE_POOLS:
            raise ConfigError(f"image_pool={image_pool!r} is not one of {IMAGE_POOLS}."
                              f"{suggest(str(image_pool), IMAGE_POOLS)}")
        text_dim = int(text_model.config.hidden_size)
        self.image_dim, self.text_dim, self.out_dim = image_dim, text_dim, embed_dim
        self.text_model, self.tokenizer = text_model, tokenizer
        self.image_proj = nn.Linear(image_dim, embed_dim)
        self.text_proj = nn.Linear(text_dim, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_logit_scale = float(max_logit_scale)
        self.m3d_as_coded_scale = bool(m3d_as_coded_scale)
        self.image_pool, self.max_length = image_pool, max_length

    # ------------------------------------------------------------------------------- encoders
    def encode_image(self, visual: VisualTokens | Tensor) -> Tensor:
        """``(B, embed_dim)`` unit vectors from visual tokens or a pooled ``(B, image_dim)``."""
        if isinstance(visual, VisualTokens):
            if self.image_pool == "cls":
                if "cls" not in visual.extras:
                    raise ValueError("contrastive head: image_pool='cls' but the visual tokens "
                                     "carry no extras['cls'] (build the encoder with "
                                     "cls_token=True, or set image_pool='mean')")
                feats = visual.extras["cls"]
            else:
                feats = visual.tokens.mean(dim=1)
        else:
            feats = visual
        if feats.dim() != 2 or feats.shape[1] != self.image_dim:
            raise ValueError(f"contrastive head expects image features (B, {self.image_dim}), "
                             f"got {tuple(feats.shape)}")
        return F.normalize(self.image_proj(feats), dim=-1)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``(B, embed_dim)`` unit vectors from the text tower's first ([CLS]) hidden state."""
        vocab = self.text_model.config.vocab_size
        if input_ids.numel() and int(input_ids.max()) >= vocab:
            raise ValueError(f"token id {int(input_ids.max())} is outside the text tower's "
                             f"vocabulary of {vocab} (tokenizer and text tower disagree)")
        hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask)
        return F.normalize(self.text_proj(hidden.last_hidden_state[:, 0]), dim=-1)

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, Tensor]:
        """``{"input_ids", "attention_mask"}`` padded to the longest text, truncated."""
        if self.tokenizer is None:
            raise ConfigError("contrastive head has no tokenizer: pass tokenizer= (an object or a "
                              "local directory) or text_pretrained= to the builder")
        enc = self.tokenizer(list(texts), padding=True, truncation=True,
                             max_length=max_length or self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    # ----------------------------------------------------------------------------------- loss
    def scale(self) -> Tensor:
        """The multiplier of the cosine similarities: ``min(exp(logit_scale), max)`` (or M3D's
        raw parameter with ``m3d_as_coded_scale``)."""
        if self.m3d_as_coded_scale:
            return self.logit_scale
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)

    def similarity(self, image: Tensor, text: Tensor) -> Tensor:
        """``(B_i, B_t)``: :meth:`scale` times the cosine similarities of unit embeddings (M3D's
        ``logits_per_image``; with ``m3d_as_coded_scale`` the raw parameter multiplies)."""
        return self.scale() * image @ text.T

    def loss(self, image: Tensor, text: Tensor, scale: Tensor) -> Tensor:
        """Symmetric InfoNCE over the global batch (open_clip ``ClipLoss``, local rows against
        all-gathered columns when ``torch.distributed`` is initialised)."""
        from open_clip.loss import ClipLoss

        rank, world = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        clip_loss = ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world)
        return clip_loss(image, text, scale)

    def forward(self, visual: VisualTokens | Tensor, input_ids: Tensor | None = None,
                attention_mask: Tensor | None = None) -> EmbeddingOutput:
        image = self.encode_image(visual)
        if input_ids is None:
            return EmbeddingOutput(image=image)
        text = self.encode_text(input_ids, attention_mask)
        if text.shape[0] != image.shape[0]:
            raise ValueError(f"contrastive head: {image.shape[0]} images but {text.shape[0]} "
                             "texts")
        scale = self.scale()
        return EmbeddingOutput(image=image, text=text, logit_scale=scale.detach(),
                               loss=self.loss(image, text, scale))


def _load_tokenizer(tokenizer: Any) -> Any:
    if isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer

        if not Path(tokenizer).is_dir():
            raise MissingFileError(f"tokenizer directory {tokenizer} does not exist")
        with reading_hf_folder(tokenizer, "tokenizer folder"):
            return AutoTokenizer.from_pretrained(str(tokenizer), local_files_only=True)
    return tokenizer


def text_tower(text_pretrained: str | None, text_config: dict[str, Any] | None,
               tokenizer: Any) -> tuple[nn.Module, Any]:
    """(text encoder, tokenizer): a local HF encoder directory, or a BERT built in-process."""
    from transformers import AutoModel, BertConfig, BertModel

    tokenizer = _load_tokenizer(tokenizer)
    if text_pretrained is not None:
        if text_config:
            raise ConfigError("contrastive head: give text_pretrained or text_config, not both")
        if not Path(text_pretrained).is_dir():
            raise MissingFileError(f"text_pretrained {text_pretrained} is not a directory (a local "
                                   "Hugging Face encoder such as /models/bert-base-uncased)")
        with reading_hf_folder(text_pretrained, "text encoder folder"):
            model = AutoModel.from_pretrained(text_pretrained, local_files_only=True)
        if tokenizer is None:
            tokenizer = _load_tokenizer(text_pretrained)
    else:
        config = dict(text_config or {})
        if tokenizer is not None:
            config["vocab_size"] = len(tokenizer)
        try:
            bert_config = BertConfig(**config)
        except TypeError as err:
            raise ConfigError(f"text_config {config} is not a valid BertConfig: {err}") from err
        model = BertModel(bert_config, add_pooling_layer=False)
    if tokenizer is not None and len(tokenizer) > model.config.vocab_size:
        raise ConfigError(f"tokenizer has {len(tokenizer)} tokens but the text tower's vocabulary "
                          f"is {model.config.vocab_size}")
    return model, tokenizer


@HEADS.register
@renamed(text_path="text_pretrained=VALUE")
def contrastive(image_dim: int = 768, embed_dim: int = 768, text_pretrained: str | None = None,
                text_config: dict[str, Any] | None = None, tokenizer: Any = None,
                init_temperature: float = 0.07, max_logit_scale: float = 100.0,
                m3d_as_coded_scale: bool = False, image_pool: str = "cls",
                max_length: int = 512) -> ContrastiveHead:
    """M3D-CLIP head: Linear(768, 768) per tower, L2-normalised, symmetric InfoNCE with learnable
    temperature (init 0.07), global negatives. Text tower: ``text_pretrained`` (local HF encoder) or
    an in-process BERT (``BertConfig()`` = BERT-base sizes, random weights; ``text_config``
    overrides its fields)."""
    model, tok = text_tower(text_pretrained, text_config, tokenizer)
    return ContrastiveHead(image_dim, model, embed_dim=embed_dim, tokenizer=tok,
                           init_temperature=init_temperature, max_logit_scale=max_logit_scale,
                           m3d_as_coded_scale=m3d_as_coded_scale, image_pool=image_pool,
                           max_length=max_length)


@HEADS.register
def test_contrastive(image_dim: int = 64, embed_dim: int = 32, tokenizer: Any = None,
                     m3d_as_coded_scale: bool = False, image_pool: str = "cls",
                     max_length: int = 64) -> ContrastiveHead:
    """Tiny contrastive head for tests: 2-layer BERT of width 32 (vocab 256 unless a tokenizer
    is given), 32-dim joint space."""
    return contrastive(image_dim=image_dim, embed_dim=embed_dim, text_config=TINY_BERT,
                       tokenizer=tokenizer, m3d_as_coded_scale=m3d_as_coded_scale,
                       image_pool=image_pool, max_length=max_length)
