"""SegVol's text prompt tower: a frozen CLIP text model, pooled output -> Linear -> prompt width.

SegVol (Du et al., 2023) turns an organ name into "A computerized tomography of a {organ}.",
encodes it with CLIP's text tower (ViT-B/32 text: width 512) and aligns the pooled output to 768
with ``dim_align``. ``text_pretrained`` is a local folder with a CLIP config and tokenizer: with
weights (any Hugging Face ``CLIPTextModel`` or ``CLIPModel`` folder) they are loaded; without
(SegVol's own ``config/clip``: config and tokenizer only) the tower's weights come from SegVol's
checkpoint.
Nothing is downloaded.
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
        self.weights_from_checkpoint = False  # True: the CLIP weights must come from SegVol's file
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


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def has_weights(folder: str | Path) -> bool:
    """True when ``folder`` holds Hugging Face weights (SegVol's ``config/clip`` holds none)."""
    return any((Path(folder) / name).is_file() for name in WEIGHT_FILES)


def clip_text_config(folder: str | Path) -> Any:
    """The ``CLIPTextConfig`` of a local folder: its ``config.json`` is a CLIP text config, or a
    whole CLIP model's config whose ``text_config`` is used (SegVol's ``config/clip``)."""
    from transformers import CLIPConfig, CLIPTextConfig

    from zoo.errors import CheckpointError

    config_file = Path(folder) / "config.json"
    if not config_file.is_file():
        raise MissingFileError(f"text_pretrained={str(folder)!r} has no config.json")
    import json

    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type == "clip":
        return CLIPConfig.from_pretrained(folder).text_config
    if model_type == "clip_text_model":
        return CLIPTextConfig.from_pretrained(folder)
    raise CheckpointError(f"{config_file}: model_type={model_type!r}, expected 'clip' or "
                          "'clip_text_model'")


def clip_text_tower(text_pretrained: str | Path | None = None, out_dim: int = 768,
                    template: str = TEMPLATE) -> SegVolTextEncoder:
    """From a local CLIP directory: its tokenizer, and its weights when it has them; a folder
    with only a config and a tokenizer (SegVol's ``config/clip``) gives a tower whose weights
    must come from a SegVol checkpoint (``weights_from_checkpoint`` is then True). ``None``
    builds the default ``CLIPTextConfig`` (CLIP ViT-B/32 text tower) with random weights and no
    tokenizer, which is only useful for parameter counting on the meta device."""
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    if text_pretrained is None:
        return SegVolTextEncoder(CLIPTextModel(CLIPTextConfig()), None, out_dim, template)
    path = Path(text_pretrained)
    if not path.is_dir():
        raise MissingFileError(f"text_pretrained={str(text_pretrained)!r} is not a local directory "
                               "with a CLIP config and tokenizer")
    with reading_hf_folder(path, "CLIP text model folder"):
        config = clip_text_config(path)
        own_weights = has_weights(path) and not on_meta()
        model = CLIPTextModel.from_pretrained(path) if own_weights else CLIPTextModel(config)
        tokenizer = AutoTokenizer.from_pretrained(path)
    tower = SegVolTextEncoder(model, tokenizer, out_dim, template)
    tower.weights_from_checkpoint = not has_weights(path)
    return tower


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

