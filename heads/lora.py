"""LoRA on a Hugging Face causal LM with regex targets on full module paths (docs/design.md section 5).

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"; M3D-LaMed uses r 16,
alpha 32, dropout 0.05 on every Linear of the LLM. The target is one regular expression matched
(``re.fullmatch``, peft's rule for a string ``target_modules``) against module paths *inside the
LLM* (``model.layers.0.self_attn.q_proj``), never a list of leaf names: leaf names such as
``q_proj`` also occur in vision towers.
"""

from __future__ import annotations

import re
import warnings

from torch import nn
from zoo.errors import ConfigError

# Every projection of the decoder layers' attention and MLP: q/k/v/o and gate/up/down for LLaMA,
# qkv/o and gate_up/down for Phi-3, also Mistral/Qwen2. Anchored at the decoder stack
# (``model.layers``) so the encoder layers of a CLIP tower inside a multimodal checkpoint
# (``...vision_model.encoder.layers.N.self_attn.q_proj``) do not match.
DEFAULT_LORA_TARGET = r"model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj"


def matching_linears(model: nn.Module, target: str) -> list[str]:
    """Full paths of the ``nn.Linear`` modules of ``model`` whose path fully matches ``target``."""
    try:
        pattern = re.compile(target)
    except re.error as err:
        raise ConfigError(f"lora_target={target!r}: not a valid regular expression: "
                          f"{err}") from err
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and pattern.fullmatch(name)]


def wrap_with_lora(model: nn.Module, r: int = 16, alpha: int = 32, dropout: float = 0.05,
                   target: str = DEFAULT_LORA_TARGET, modules_to_save: list[str] | None = None):
    """Return ``peft.get_peft_model(model, LoraConfig(...))``; only LoRA weights stay trainable.

    Raises ``ConfigError`` naming the recipe option (``lora_r``, ``lora_alpha``,
    ``lora_dropout``, ``lora_target``); for a target that matches no Linear of ``model`` also a
    few Linear paths that exist.
    """
    if not isinstance(r, int) or r < 1:
        raise ConfigError(f"lora_r={r!r}: expected an integer >= 1 (LoRA rank)")
    if alpha <= 0:
        raise ConfigError(f"lora_alpha={alpha!r}: expected a number > 0")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"lora_dropout={dropout!r}: expected a number in [0, 1)")
    hits = matching_linears(model, target)
    if not hits:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ConfigError(f"lora_target={target!r} matches no Linear inside the LLM; Linear "
                          f"paths look like: {', '.join(linears[:4]) or '(none)'}")
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target,
                        bias="none", modules_to_save=modules_to_save)
    with warnings.catch_warnings():
        # peft (0.21.2, the newest) reads transformers' deprecated `is_gradient_checkpointing`,
        # which warns on every wrap; only that message is silenced, here only
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                category=FutureWarning)
        return get_peft_model(model, config)


def lora_parameter_names(model: nn.Module) -> list[str]:
    """Names of the LoRA adapter parameters (``lora_A`` / ``lora_B`` ...) of ``model``."""
    return [name for name, _ in model.named_parameters() if "lora_" in name]
