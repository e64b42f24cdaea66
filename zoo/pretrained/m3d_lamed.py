"""M3D-LaMed's released checkpoints (Bai et al. 2024, "M3D") into the zoo's :class:`LaMed`.

Three files, in the layouts M3D's code writes (docs/pretrained.md):

- a release folder (``GoodBaiBai88/M3D-LaMed-Phi-3-4B``, ``-Llama-2-7B``): ``config.json`` with
  ``model_type`` ``lamed_phi3`` / ``lamed_llama`` and M3D's fields (image and patch size, projector
  type, ``seg_token_id`` ...), safetensors shards of ``LamedPhi3ForCausalLM`` /
  ``LamedLlamaForCausalLM`` (LoRA merged) and the tokenizer with M3D's four added tokens;
- the stage-1 ``mm_projector.bin``: ``model.mm_projector.*`` and ``model.embed_tokens.weight``
  (the whole table, or only its 4 new rows);
- the stage-2 ``model_with_lora.bin``: the whole peft model's state dict, every key under
  ``base_model.model.`` and the LLM's Linears as ``<name>.base_layer.weight`` plus
  ``<name>.lora_A.default.weight`` / ``lora_B``.

Key rules (M3D name -> zoo name): ``model.vision_tower.vision_tower.X`` -> ``encoder.X``;
``model.mm_projector.X`` -> ``connector.X`` (``linear.`` of M3D's plain ``linear`` projector ->
``projector.0.``); ``model.seg_projector.X`` -> ``seg_projector.X``; ``model.seg_module.X`` ->
``heads.seg.X`` (SegVol's names, :func:`heads.segvol.segvol_to_zoo_keys`); ``model.embed_tokens``,
``model.layers``, ``model.norm``, ``lm_head`` -> the same names inside the Hugging Face LLM
(``lm.model.`` or, with LoRA, ``lm.model.base_model.model.``; a merged weight goes to
``base_layer``). The architecture is the recipe's components; ``config.json`` is checked against
them field by field, and every tensor's shape against the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from zoo.errors import CheckpointError
from zoo.pretrained.files import iter_weights, read_config
from zoo.pretrained.report import LoadReport, Placer

LAMED_MODEL_TYPES = {"lamed_phi3": "phi3", "lamed_llama": "llama"}
ARCHITECTURES = {"lamed_phi3": "LamedPhi3ForCausalLM", "lamed_llama": "LamedLlamaForCausalLM"}
# Fields M3D adds to the LLM's config (lamed_arch.py initialize_vision_modules, train.py).
M3D_FIELDS = ("image_channel", "image_size", "patch_size", "vision_tower", "vision_select_layer",
              "vision_select_feature", "mm_projector_type", "proj_layer_type", "proj_layer_num",
              "proj_pooling_type", "proj_pooling_size", "mm_hidden_size", "segmentation_module",
              "seg_token_id", "tune_mm_mlp_adapter")
PEFT_PREFIX = "base_model.model."
VISION = "model.vision_tower.vision_tower."
LLM_PARTS = ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")
# The order M3D adds its tokens (train.py): three additional special tokens, then [SEG]; a
# 4-row embed_tokens in mm_projector.bin holds them in this order (the table's last rows).
M3D_NEW_TOKENS = ("<im_patch>", "<bx_start>", "<bx_end>", "[SEG]")
PRESET_HINT = " (experiment=m3d_lamed builds M3D's components; docs/pretrained.md)"


def is_release_folder(path: str | Path) -> bool:
    path = Path(path)
    return (path.is_dir() and (path / "config.json").is_file()
            and read_config(path).get("model_type") in LAMED_MODEL_TYPES)


def base_llm_config(folder: str | Path) -> Any | None:
    """The Hugging Face config of the LLM inside an M3D-LaMed release folder (Phi-3 or LLaMA,
    without M3D's fields), or None when ``folder`` is not one. ``lm=hf lm.pretrained=FOLDER`` uses it
    because transformers does not know ``lamed_*`` (and the release's own code is not run)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        return None
    raw = read_config(folder)
    base = LAMED_MODEL_TYPES.get(raw.get("model_type"))
    if base is None:
        return None
    from transformers import AutoConfig

    drop = set(M3D_FIELDS) | {"model_type", "architectures", "auto_map", "_name_or_path",
                              "transformers_version"}
    return AutoConfig.for_model(base, **{k: v for k, v in raw.items() if k not in drop})


# ------------------------------------------------------------------------------- config checks
# Head counts no tensor shape reveals: M3D's ViT3DTower and SegVol's build_sam use MONAI's ViT
# defaults (12 heads); SegVol's two-way transformer has 8.
M3D_VIT_HEADS = 12
SEGVOL_DECODER_HEADS = 8


def _vit_heads(encoder: nn.Module | None) -> int | None:
    blocks = getattr(encoder, "blocks", None)
    return blocks[0].attn.num_heads if blocks is not None and len(blocks) else None

def projector_signature(connector: nn.Module) -> dict[str, Any]:
    """What M3D's config says about a projector, read off a zoo connector."""
    from connectors.identity import IdentityConnector
    from connectors.mlp import TokenMLP
    from connectors.sequence_pool import SequencePool
    from connectors.spatial_pool import SpatialPool

    if isinstance(connector, IdentityConnector):
        return {"mm_projector_type": "identity"}
    layers = list(connector.projector)
    sig = {"proj_layer_num": sum(isinstance(m, nn.Linear) for m in layers),
           "proj_layer_type": "mlp" if any(isinstance(m, nn.GELU) for m in layers) else "linear"}
    if isinstance(connector, SpatialPool):
        return {"mm_projector_type": "spp", "proj_pooling_type": "spatial",
                "proj_pooling_size": connector.kernel, **sig}
    if isinstance(connector, SequencePool):
        return {"mm_projector_type": "spp", "proj_pooling_type": "sequence",
                "proj_pooling_size": connector.kernel, **sig}
    if isinstance(connector, TokenMLP) and sig == {"proj_layer_num": 1, "proj_layer_type": "linear"}:
        return {"mm_projector_type": "linear"}
    return {"mm_projector_type": type(connector).__name__}


def expected_projector(config: dict) -> tuple[dict[str, Any], str]:
    """(signature, the zoo connector override that builds it) from M3D's config fields."""
    kind = config.get("mm_projector_type", "spp")
    if kind == "identity":
        return {"mm_projector_type": "identity"}, "connector=identity"
    if kind == "linear":
        return {"mm_projector_type": "linear"}, "connector=linear connector.depth=1"
    if kind != "spp":
        raise CheckpointError(f"mm_projector_type={kind!r}: M3D's builder knows spp, linear and "
                              "identity")
    size = int(config.get("proj_pooling_size", 2))
    pooling = config.get("proj_pooling_type", "spatial")
    depth, layer = int(config.get("proj_layer_num", 2)), config.get("proj_layer_type", "mlp")
    sig = {"mm_projector_type": "spp", "proj_pooling_type": pooling,
           "proj_pooling_size": (size,) * 3 if pooling == "spatial" else size ** 3,
           "proj_layer_num": depth, "proj_layer_type": layer}
    name = "spatial_pool" if pooling == "spatial" else "sequence_pool"
    kernel = size if pooling == "spatial" else size ** 3
    return sig, (f"connector={name} connector.kernel={kernel} connector.depth={depth} "
                 f"connector.layer_type={layer}")


def check_config(model: nn.Module, config: dict, source: str) -> None:
    """Raise one CheckpointError listing every field of M3D's ``config.json`` the model differs
    in, each with the override that fixes it."""
    problems = []
    tower = str(config.get("vision_tower") or "")
    if "vit3d" not in tower.lower():
        problems.append(f"vision_tower={tower!r} (M3D builds only vit3d)")
    if config.get("vision_select_layer", -1) != -1 or config.get("vision_select_feature",
                                                                  "patch") != "patch":
        problems.append("vision_select_layer/feature other than -1/'patch' (the zoo's vit3d gives "
                        "the final-normed patch tokens)")
    encoder = model.encoder
    image, patch = tuple(config.get("image_size", ())), tuple(config.get("patch_size", ()))
    if (getattr(encoder, "img_size", None), getattr(encoder, "patch_size", None)) != (image, patch):
        problems.append(f"image_size={list(image)} patch_size={list(patch)}, the encoder has "
                        f"{getattr(encoder, 'img_size', '?')} / {getattr(encoder, 'patch_size', '?')}"
                        f" (encoder=vit3d_base_m3d encoder.img_size=... encoder.patch_size=...)")
    if _vit_heads(encoder) not in (None, M3D_VIT_HEADS):
        problems.append(f"M3D's ViT has {M3D_VIT_HEADS} heads (MONAI's default), the encoder "
                        f"{_vit_heads(encoder)}")
    if tuple(model.image_size) != image:
        problems.append(f"image_size={list(image)}, the recipe has {list(model.image_size)} "
                        f"(recipe.image_size={list(image)})")
    want, override = expected_projector(config)
    have = projector_signature(model.connector)
    if have != want:
        problems.append(f"projector {want}, the connector is {have} ({override})")
    seg_id = config.get("seg_token_id")
    if seg_id is not None and model.lm.special_ids.get("[SEG]") != seg_id:
        problems.append(f"seg_token_id={seg_id}, the LM's tokenizer has [SEG]="
                        f"{model.lm.special_ids.get('[SEG]')} (lm=hf lm.pretrained=<the release "
                        "folder>: its tokenizer)")
    heads = config.get("num_attention_heads")
    lm_heads = getattr(model.lm.model.config.get_text_config(), "num_attention_heads", None)
    if heads is not None and lm_heads != heads:
        problems.append(f"num_attention_heads={heads}, the LM has {lm_heads}")
    if config.get("segmentation_module") and model.heads is None:
        problems.append("segmentation_module=segvol, the model has no SegVol head (head=segvol)")
    elif config.get("segmentation_module"):
        seg = model.heads["seg"]
        if _vit_heads(seg.image_encoder) not in (None, M3D_VIT_HEADS):
            problems.append(f"M3D's SegVol ViT has {M3D_VIT_HEADS} heads, the head's "
                            f"{_vit_heads(seg.image_encoder)}")
        decoder_heads = seg.mask_decoder.transformer.layers[0].self_attn.num_heads
        if decoder_heads != SEGVOL_DECODER_HEADS:
            problems.append(f"SegVol's decoder has {SEGVOL_DECODER_HEADS} heads, the head's "
                            f"{decoder_heads} (head.decoder_heads)")
        if (seg.image_size, seg.patch_size) != (image, patch) or seg.share_encoder:
            problems.append(f"M3D's SegVol has its own ViT at image_size={list(image)} "
                            f"patch_size={list(patch)}, the head has {list(seg.image_size)} / "
                            f"{list(seg.patch_size)}{' (shared encoder)' if seg.share_encoder else ''}"
                            " (head=segvol recipe.share_encoder=false)")
    if problems:
        raise CheckpointError(f"{source}/config.json does not describe this model: "
                              + "; ".join(problems) + PRESET_HINT)


# ----------------------------------------------------------------------------------- key rules
def _llm_root(model: nn.Module) -> str:
    return "lm.model.base_model.model." if model.lm.has_lora else "lm.model."


def zoo_key(model_keys: set[str], llm_root: str, key: str) -> tuple[str | None, str | None]:
    """The zoo name of one M3D key, or (None, reason) for a key skipped on purpose, or
    (None, None) for a key with no rule."""
    from encoders.vit3d import IGNORED_CHECKPOINT_PARTS
    from heads.segvol import segvol_to_zoo_keys

    k = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
    if k.startswith(VISION):
        rest = k[len(VISION):]
        if any(part in f".{rest}" for part in IGNORED_CHECKPOINT_PARTS):
            return None, "MONAI part vit3d does not have (never used by M3D's ViT)"
        return "encoder." + rest, None
    if k.startswith("model.mm_projector."):
        rest = k[len("model.mm_projector."):]
        if rest.startswith("linear."):  # M3D's FullLinear
            rest = "projector.0." + rest[len("linear."):]
        return "connector." + rest, None
    if k.startswith("model.seg_projector."):
        return "seg_projector." + k[len("model.seg_projector."):], None
    if k.startswith("model.seg_module."):
        renamed, ignored = segvol_to_zoo_keys({k[len("model.seg_module."):]: None})
        if ignored:
            return None, "SegVol part the zoo does not build (docs/segvol.md)"
        return "heads.seg." + next(iter(renamed)), None
    if k.startswith(LLM_PARTS):
        name = llm_root + k
        if name not in model_keys and k.endswith((".weight", ".bias")):
            module, leaf = name.rsplit(".", 1)
            if f"{module}.base_layer.{leaf}" in model_keys:  # merged weight under a LoRA layer
                return f"{module}.base_layer.{leaf}", None
        if ".lora_" in k and name not in model_keys:
            return None, None
        return name, None
    return None, None


# ------------------------------------------------------------------------------------- loading
def load_m3d_lamed(model: nn.Module, path: str | Path) -> LoadReport:
    """Load an M3D-LaMed release folder, ``mm_projector.bin`` or ``model_with_lora.bin`` into
    the zoo's LaMed ``model`` (built by the recipe); returns the report (also logged)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    config = read_config(folder) if (folder / "config.json").is_file() else None
    if config is not None and config.get("model_type") in LAMED_MODEL_TYPES:
        check_config(model, config, str(folder))
    elif path.is_dir():
        raise CheckpointError(f"{path}: config.json has model_type="
                              f"{(config or {}).get('model_type')!r}, not one of "
                              f"{sorted(LAMED_MODEL_TYPES)} (an M3D-LaMed release folder)")
    report = LoadReport(str(path))
    placer = Placer(model, report)
    keys = set(placer.targets)
    root = _llm_root(model)
    kind = "release"  # a folder is a release; a single file says what it is by its keys
    for file, state in iter_weights(path):
        if path.is_file():
            kind = file_kind(state)
        if kind == "projector":
            _place_new_rows(model, state, report, root, placer)
        if kind == "lora" and not model.lm.has_lora:
            raise CheckpointError(f"{file} holds LoRA adapters (model_with_lora.bin): build the "
                                  "LM with LoRA (recipe.train_lm=lora; r is read from the file)")
        placer.add(state, lambda k: zoo_key(keys, root, k))
    if kind == "projector":
        return placer.finish(lambda name: _stage1_keep(name, root), PRESET_HINT)
    return placer.finish(lambda name: "LoRA adapter not in a merged release: starts as in a new "
                         "run (B = 0)" if ".lora_" in name and kind != "lora" else None,
                         PRESET_HINT)


def file_kind(state: dict[str, Tensor]) -> str:
    """``lora`` (peft state dict), ``projector`` (stage 1) or ``release`` (merged weights)."""
    if any(k.startswith(PEFT_PREFIX) for k in state):
        return "lora"
    if state and all("mm_projector" in k or "embed_tokens" in k for k in state):
        return "projector"
    return "release"


def _stage1_keep(name: str, root: str) -> str | None:
    if name.startswith("connector.") or name == root + "model.embed_tokens.weight":
        return None
    return "not in a stage-1 projector file: the component's own weights"


def _place_new_rows(model: nn.Module, state: dict[str, Tensor], report: LoadReport, root: str,
                    placer: Placer) -> None:
    """M3D's rule for a 4-row ``embed_tokens`` (lamed_arch.py initialize_vision_tokenizer): the
    rows are the new tokens, in M3D's order; a full table is placed like any tensor."""
    key = "model.embed_tokens.weight"
    rows = state.get(key)
    name = root + key
    target = placer.targets[name]
    if rows is None or rows.shape[0] != len(M3D_NEW_TOKENS) or rows.shape == target.shape:
        return
    if rows.shape[1] != target.shape[1]:
        raise CheckpointError(f"{report.source}: {key} rows have width {rows.shape[1]}, the LM "
                              f"{target.shape[1]}")
    import torch

    ids = [model.lm.special_ids[t] for t in M3D_NEW_TOKENS]
    with torch.no_grad():
        target[ids] = rows.to(device=target.device, dtype=target.dtype)
    report.placed[name] = f"{key} (rows of {', '.join(M3D_NEW_TOKENS)})"
    del state[key]


# ------------------------------------------------------------------------------------- export
def m3d_lamed_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The zoo's LaMed in M3D's layout: a release (merged) state dict for an LM without LoRA,
    ``model_with_lora.bin``'s peft layout for one with LoRA. SegVol's mask-prompt convs, which
    the zoo does not build, are written as :func:`heads.segvol.zoo_to_segvol_keys` makes them."""
    from heads.segvol import zoo_to_segvol_keys

    root = _llm_root(model)
    out: dict[str, Tensor] = {}
    plain_linear = projector_signature(model.connector) == {"mm_projector_type": "linear"}
    seg: dict[str, Tensor] = {}
    for name, value in model.state_dict().items():
        if name.startswith("encoder."):
            out[VISION + name[len("encoder."):]] = value
        elif name.startswith("connector."):
            rest = name[len("connector."):]
            if plain_linear:  # M3D's FullLinear names its Linear "linear"
                rest = "linear." + rest[len("projector.0."):]
            out["model.mm_projector." + rest] = value
        elif name.startswith("seg_projector."):
            out["model." + name] = value
        elif name.startswith("heads.seg."):
            seg[name[len("heads.seg."):]] = value
        elif name.startswith(root):
            out[name[len(root):]] = value
        else:
            raise CheckpointError(f"{name}: no place in M3D's layout (a bridge has none)")
    out.update({"model.seg_module." + k: v for k, v in zoo_to_segvol_keys(seg).items()})
    if model.lm.has_lora:
        out = {PEFT_PREFIX + k: v for k, v in out.items()}
    return out


def m3d_lamed_config(model: nn.Module) -> dict[str, Any]:
    """``config.json`` of a release folder for ``model``: the LLM's config with M3D's fields."""
    llm = model.lm.model.get_base_model() if model.lm.has_lora else model.lm.model
    base = llm.config.to_dict()
    model_type = {v: k for k, v in LAMED_MODEL_TYPES.items()}.get(base["model_type"])
    if model_type is None:
        raise CheckpointError(f"M3D-LaMed has Phi-3 and LLaMA LLMs, not {base['model_type']!r}")
    sig = projector_signature(model.connector)
    if sig.get("proj_pooling_type") == "spatial":
        sig["proj_pooling_size"] = sig["proj_pooling_size"][0]
    elif sig.get("proj_pooling_type") == "sequence":
        sig["proj_pooling_size"] = round(sig["proj_pooling_size"] ** (1 / 3))
    return {**base, **sig, "model_type": model_type, "architectures": [ARCHITECTURES[model_type]],
            "image_channel": model.encoder.in_channels, "image_size": list(model.encoder.img_size),
            "patch_size": list(model.encoder.patch_size), "vision_tower": "vit3d",
            "vision_select_layer": -1, "vision_select_feature": "patch",
            "mm_hidden_size": model.encoder.out_dim,
            "segmentation_module": "segvol" if model.heads is not None else None,
            "seg_token_id": model.lm.special_ids["[SEG]"],
            "vocab_size": llm.get_input_embeddings().weight.shape[0]}
