"""SegVol's text prompt tower: a frozen CLIP text model, pooled output -> Linear -> prompt width.

SegVol (Du et al., 2023) turns an organ name into "A computerized tomography of a {organ}.",
encodes it with CLIP's text tower (ViT-B/32 text: width 512) and aligns the pooled output to 768
with ``dim_align``. Any local Hugging Face ``CLIPTextModel`` directory works (``clip_path``); its
tokenizer is loaded from the same directory. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from torch import Tensor, nn

from zoo.build import on_meta
from zoo.checkpoint import reading_hf_folder
from zoo.errors import ConfigError, MissingFileError

TEMPLATE = "A computerized tomography of a {}."


class SegVolTextEncoder(nn.Module):
    """``forward(names: list[str]) -> (B, out_dim)``; ``clip_text_model`` is frozen.

    ``clip_text_model``: a transformers ``CLIPTextModel``; ``tokenizer``: its tokenizer (may be
    ``None`` on the meta device, where only parameters are counted).
    """

    def __init__(self, clip_text_model: nn.Module, tokenizer: Any, out_dim: int = 768,
                 template: str = TEMPLATE, freeze: bool = True) -> None:
        super().__init__()
        if "{}" not in template:
            raise ConfigError(f"template must contain '{{}}' for the organ name, got {template!r}")
        self.clip_text_model = clip_text_model
        self.tokenizer = tokenizer
        self.template = template
        self.dim_align = nn.Linear(clip_text_model.config.hidden_size, out_dim)
        if freeze:
            self.clip_text_model.requires_grad_(False)

    def forward(self, names: Sequence[str], raw: bool = False) -> Tensor:
        """Organ names -> ``(B, out_dim)``; ``raw=True`` encodes the texts verbatim (no template),
        e.g. whole prompts such as "Please segment the liver."."""
        if isinstance(names, str):
            names = [names]
        if self.tokenizer is None:
            raise RuntimeError("SegVolTextEncoder has no tokenizer (built on the meta device?)")
        texts = list(names) if raw else [self.template.format(n) for n in names]
        device = self.dim_align.weight.device
        enc = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt",
                             max_length=self.clip_text_model.config.max_position_embeddings)
        out = self.clip_text_model(input_ids=enc["input_ids"].to(device),
                                   attention_mask=enc["attention_mask"].to(device))
        return self.dim_align(out.pooler_output)


def clip_text_tower(clip_path: str | Path | None = None, out_dim: int = 768,
                    template: str = TEMPLATE) -> SegVolTextEncoder:
    """From a local CLIP directory (model + tokenizer); ``None`` builds the default
    ``CLIPTextConfig`` (CLIP ViT-B/32 text tower) with random weights and no tokenizer, which is
    only useful for parameter counting on the meta device."""
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    if clip_path is None:
        return SegVolTextEncoder(CLIPTextModel(CLIPTextConfig()), None, out_dim, template)
    path = Path(clip_path)
    if not path.is_dir():
        raise MissingFileError(f"clip_path={str(clip_path)!r} is not a local directory with a "
                               "CLIPTextModel and its tokenizer")
    with reading_hf_folder(path, "CLIP text model folder"):
        if on_meta():
            model = CLIPTextModel(CLIPTextConfig.from_pretrained(path))
        else:
            model = CLIPTextModel.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    return SegVolTextEncoder(model, tokenizer, out_dim, template)


def char_clip_tokenizer() -> Any:
    """A CLIP tokenizer built in memory with a byte-level, character-only vocabulary (514 ids,
    no merges): real CLIP tokenisation rules without any download, for tiny test towers."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])


def tiny_clip_text_tower(out_dim: int = 32, hidden_size: int = 16, layers: int = 1,
                         template: str = TEMPLATE) -> SegVolTextEncoder:
    """A random tiny CLIP text tower with :func:`char_clip_tokenizer` (tests, laptops)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = char_clip_tokenizer()
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden_size,
                            intermediate_size=2 * hidden_size, num_hidden_layers=layers,
                            num_attention_heads=2, max_position_embeddings=77,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    return SegVolTextEncoder(CLIPTextModel(config), tokenizer, out_dim, template)

