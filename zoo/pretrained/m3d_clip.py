"""M3D-CLIP's release (``GoodBaiBai88/M3D-CLIP``; Bai et al. 2024, "M3D") into the zoo's CLIP3D.

The folder holds ``config.json`` (``model_type`` ``m3d_clip``: the ViT's ``img_size``,
``patch_size``, ``hidden_size``, ``num_layers``, ``num_heads``, ``mlp_dim``, ``pos_embed``), the
weights of ``M3DCLIP`` (``model.safetensors`` or shards) and BERT's tokenizer files. Key rules
(M3D name -> zoo name): ``vision_encoder.X`` -> ``encoder.X``; ``language_encoder.X`` ->
``heads.contrastive.text_model.X``; ``mm_vision_proj`` / ``mm_language_proj`` ->
``heads.contrastive.image_proj`` / ``text_proj``; ``logit_scale`` -> ``heads.contrastive.
logit_scale``, the raw value as stored (M3D multiplies by it as it is; the zoo by its exp unless
the head has ``m3d_as_coded_scale``). Skipped: BERT's pooler (M3D-CLIP reads the [CLS] hidden
state, never the pooler) and BERT's ``position_ids`` buffer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from zoo.errors import CheckpointError
from zoo.pretrained.files import iter_weights, read_config
from zoo.pretrained.report import LoadReport, Placer

HEAD = "heads.contrastive."
RENAMES = (("vision_encoder.", "encoder."), ("language_encoder.", HEAD + "text_model."),
           ("mm_vision_proj.", HEAD + "image_proj."), ("mm_language_proj.", HEAD + "text_proj."))
TOKENIZER_FILES = ("tokenizer_config.json", "vocab.txt", "tokenizer.json")


def is_release_folder(path: str | Path) -> bool:
    path = Path(path)
    return (path.is_dir() and (path / "config.json").is_file()
            and read_config(path).get("model_type") == "m3d_clip")


def has_tokenizer(path: str | Path) -> bool:
    return Path(path).is_dir() and any((Path(path) / f).is_file() for f in TOKENIZER_FILES)


def zoo_key(key: str) -> tuple[str | None, str | None]:
    from encoders.vit3d import IGNORED_CHECKPOINT_PARTS

    if key.startswith("language_encoder.pooler."):
        return None, "BERT pooler: M3D-CLIP reads the [CLS] hidden state, never the pooler"
    if key.endswith("embeddings.position_ids"):
        return None, "position_ids buffer (transformers rebuilds it)"
    if key.startswith("vision_encoder.") and any(p in f".{key[len('vision_encoder.'):]}"
                                                  for p in IGNORED_CHECKPOINT_PARTS):
        return None, "MONAI part vit3d does not have"
    if key == "logit_scale":
        return HEAD + "logit_scale", None
    for old, new in RENAMES:
        if key.startswith(old):
            return new + key[len(old):], None
    return None, None


def check_config(model: nn.Module, config: dict, source: str) -> None:
    """One CheckpointError listing every config field the model differs in."""
    encoder, head = model.encoder, model.head
    problems = []
    pairs = {"img_size": getattr(encoder, "img_size", None),
             "patch_size": getattr(encoder, "patch_size", None),
             "in_channels": getattr(encoder, "in_channels", None),
             "hidden_size": getattr(encoder, "out_dim", None),
             "num_layers": getattr(encoder, "depth", None)}
    for field, have in pairs.items():
        want = config.get(field)
        want = tuple(want) if isinstance(want, list) else want
        if want is not None and have != want:
            problems.append(f"{field}={want}, the encoder has {have} (encoder.{field}=...)")
    blocks = getattr(encoder, "blocks", None)
    if blocks is not None and config.get("num_heads") not in (None, blocks[0].attn.num_heads):
        problems.append(f"num_heads={config['num_heads']}, the encoder has "
                        f"{blocks[0].attn.num_heads}")
    if config.get("pos_embed", "perceptron") != "perceptron":
        problems.append(f"pos_embed={config['pos_embed']!r} (vit3d has the perceptron embedding)")
    if head.image_pool != "cls":
        problems.append("M3D-CLIP pools the CLS token (head.image_pool=cls)")
    if config.get("hidden_size") is not None and head.out_dim != config["hidden_size"]:
        problems.append(f"mm projections are {config['hidden_size']} wide, the head's embed_dim "
                        f"is {head.out_dim}")
    if problems:
        raise CheckpointError(f"{source}/config.json does not describe this model: "
                              + "; ".join(problems))


def load_m3d_clip(model: nn.Module, path: str | Path) -> LoadReport:
    """Load an M3D-CLIP folder (or a state-dict file of ``M3DCLIP``) into the zoo's CLIP3D;
    every tensor is placed or skipped with its reason, every model tensor must be in the file."""
    path = Path(path)
    if path.is_dir():
        config = read_config(path)
        if config.get("model_type") != "m3d_clip":
            raise CheckpointError(f"{path}/config.json has model_type={config.get('model_type')!r}"
                                  ", not 'm3d_clip' (an M3D-CLIP folder)")
        check_config(model, config, str(path))
    report = LoadReport(str(path))
    placer = Placer(model, report)
    for _, state in iter_weights(path):
        placer.add(state, zoo_key)
    return placer.finish(lambda name: None)


def m3d_clip_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The zoo's CLIP3D in M3D-CLIP's key layout (no BERT pooler: the zoo builds none)."""
    out = {}
    for name, value in model.state_dict().items():
        if name == HEAD + "logit_scale":
            out["logit_scale"] = value
            continue
        for old, new in RENAMES:
            if name.startswith(new):
                out[old + name[len(new):]] = value
                break
        else:
            raise CheckpointError(f"{name}: no place in M3D-CLIP's layout")
    return out


def m3d_clip_config(model: nn.Module) -> dict[str, Any]:
    """``config.json`` of an M3D-CLIP folder for ``model`` (M3DCLIPConfig's fields)."""
    enc = model.encoder
    return {"architectures": ["M3DCLIP"], "model_type": "m3d_clip", "in_channels": enc.in_channels,
            "img_size": list(enc.img_size), "patch_size": list(enc.patch_size),
            "hidden_size": enc.out_dim, "mlp_dim": enc.blocks[0].mlp.linear1.out_features,
            "num_layers": enc.depth, "num_heads": enc.blocks[0].attn.num_heads,
            "pos_embed": "perceptron", "dropout_rate": 0, "spatial_dims": 3,
            "language_model_name_or_path": "bert-base-uncased", "local_loss": False,
            "gather_loss": True, "max_text_len": model.max_length,
            "vocab_size": model.head.text_model.config.vocab_size}
