"""Causal-LM head: a Hugging Face decoder LLM that reads visual tokens through its input embeddings.

M3D-LaMed (Bai et al. 2024) feeds 256 projected visual tokens to LLaMA-2-7B / Phi-3-mini in place
of ``<im_patch>`` placeholders and adds the special tokens ``<im_patch>``, ``<bx_start>``,
``<bx_end>`` and ``[SEG]``; the last-layer hidden state that predicts ``[SEG]`` drives SegVol.

Shapes: ``input_ids (B, T)``, ``inputs_embeds (B, T, H)``, ``logits (B, T, V)``, hidden states
``(B, T, H)``; generation returns only the new tokens ``(B, T_new)``.

Registered LMs (``LMS``): ``test_llama`` / ``test_phi3`` (tiny, random, seeded, offline tokenizer),
``llama2_7b`` / ``phi3_mini`` (published configs; weights only from ``pretrained``), ``smollm2_135m``
(a real pretrained instruct LLM, fetched once with ``zoo models fetch smollm2_135m``), ``hf`` (any
local causal-LM directory).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from heads.lora import DEFAULT_LORA_TARGET, lora_parameter_names, wrap_with_lora
from zoo.build import on_meta
from zoo.checkpoint import reading_hf_folder
from zoo.errors import ConfigError, MissingFileError
from zoo.registry import LMS
from zoo.signature import renamed
from zoo.types import LMOutput, parameter_names

logger = logging.getLogger(__name__)

SPECIAL_TOKENS: tuple[str, ...] = ("<im_patch>", "<bx_start>", "<bx_end>", "[SEG]")

# Published architectures (config.json of meta-llama/Llama-2-7b-hf and
# microsoft/Phi-3-mini-4k-instruct), as keyword arguments of LlamaConfig / Phi3Config.
LLAMA2_7B: dict[str, Any] = dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=32, hidden_act="silu",
    max_position_embeddings=4096, rms_norm_eps=1e-5, initializer_range=0.02,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False,
    attention_bias=False, mlp_bias=False, bos_token_id=1, eos_token_id=2, pad_token_id=None)
PHI3_MINI: dict[str, Any] = dict(
    vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=32, hidden_act="silu",
    max_position_embeddings=4096, original_max_position_embeddings=4096, rms_norm_eps=1e-5,
    initializer_range=0.02, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    sliding_window=2047, tie_word_embeddings=False, attention_dropout=0.0, embd_pdrop=0.0,
    resid_pdrop=0.0, bos_token_id=1, eos_token_id=32000, pad_token_id=32000)
# HuggingFaceTB/SmolLM2-135M-Instruct as converted from its GGUF file (zoo/models.py)
SMOLLM2_135M: dict[str, Any] = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, head_dim=64, hidden_act="silu",
    max_position_embeddings=8192, rms_norm_eps=1e-5, initializer_range=0.02,
    rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, tie_word_embeddings=True,
    attention_bias=False, mlp_bias=False, bos_token_id=1, eos_token_id=2, pad_token_id=2)
# keys that must agree when a checkpoint directory is loaded under a published name
_ARCH_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads")


def add_special_tokens(model: nn.Module, tokenizer: Any, tokens: Iterable[str]) -> dict[str, int]:
    """Add ``tokens`` as special tokens and give their embedding rows the mean of the old rows.

    Rows are added with ``resize_token_embeddings`` only when the tokenizer outgrows the table
    (Phi-3's table has spare rows). Input and (untied) output rows of the *new* ids both start at
    the mean of the rows of the tokens the tokenizer had before. Returns ``{token: id}``.
    """
    from transformers import AddedToken

    tokens = list(tokens)
    old_len = len(tokenizer)
    vocab = tokenizer.get_vocab()
    new = [t for t in tokens if t not in vocab]
    if new:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in new],
                             special_tokens=True)
    ids = {t: int(tokenizer.convert_tokens_to_ids(t)) for t in tokens}
    for t, i in ids.items():
        encoded = tokenizer(t, add_special_tokens=False)["input_ids"]
        if encoded != [i]:
            raise ConfigError(f"special token {t!r} does not encode to its single id {i} "
                              f"(got {encoded})")
    embeddings = model.get_input_embeddings()
    if len(tokenizer) > embeddings.weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    new_ids = [ids[t] for t in new]
    if new_ids:
        inputs = model.get_input_embeddings().weight
        outputs = model.get_output_embeddings()
        tables = [inputs]
        if outputs is not None and outputs.weight is not inputs:
            tables.append(outputs.weight)
        with torch.no_grad():
            for table in tables:
                n_old = min(old_len, table.shape[0])
                table[new_ids] = table[:n_old].float().mean(0).to(table.dtype)
    return ids


class CausalLM(nn.Module):
    """A Hugging Face causal LM plus its tokenizer, with the zoo's special tokens added.

    Attributes: ``model`` (the HF model; the peft-wrapped one after :meth:`apply_lora`),
    ``tokenizer``, ``hidden_size``, ``special_ids`` (``{token: id}`` for :data:`SPECIAL_TOKENS`),
    ``pad_id``, ``eos_id``. A tokenizer without a pad token gets unk (else eos) as pad, as M3D
    does for LLaMA.
    """

    def __init__(self, model: nn.Module, tokenizer: Any,
                 special_tokens: Iterable[str] = SPECIAL_TOKENS) -> None:
        super().__init__()
        from transformers import PreTrainedModel
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase

        if not isinstance(model, PreTrainedModel):
            raise TypeError(f"model must be a transformers PreTrainedModel, got "
                            f"{type(model).__name__}")
        if not isinstance(tokenizer, PreTrainedTokenizerBase):
            raise TypeError(f"tokenizer must be a transformers tokenizer, got "
                            f"{type(tokenizer).__name__}")
        if tokenizer.eos_token_id is None:
            raise ConfigError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no eos "
                              "token; generation and labels need one")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
            logger.info("tokenizer has no pad token; using %r", tokenizer.pad_token)
        self.model = model
        self.tokenizer = tokenizer
        self.special_ids = add_special_tokens(model, tokenizer, special_tokens)
        self.pad_id = int(tokenizer.pad_token_id)
        self.eos_id = int(tokenizer.eos_token_id)
        self.hidden_size = int(model.config.get_text_config().hidden_size)

    @property
    def has_lora(self) -> bool:
        from peft import PeftModel

        return isinstance(self.model, PeftModel)

    def embed(self, input_ids: Tensor) -> Tensor:
        """Input embeddings ``(B, T) -> (B, T, H)``."""
        return self.model.get_input_embeddings()(input_ids)

    def _check_inputs(self, inputs_embeds: Tensor, attention_mask: Tensor) -> None:
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.hidden_size:
            raise ValueError(f"inputs_embeds must be (B, T, {self.hidden_size}), got "
                             f"{tuple(inputs_embeds.shape)}")
        if tuple(attention_mask.shape) != tuple(inputs_embeds.shape[:2]):
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} does not match "
                             f"inputs_embeds (B, T) = {tuple(inputs_embeds.shape[:2])}")

    def forward(self, inputs_embeds: Tensor, attention_mask: Tensor,
                labels: Tensor | None = None) -> LMOutput:
        """Logits ``(B, T, V)``, last-layer (post-norm) hidden states ``(B, T, H)``, and the HF
        shifted cross-entropy over ``labels`` (``-100`` ignored) when given."""
        self._check_inputs(inputs_embeds, attention_mask)
        if labels is not None and tuple(labels.shape) != tuple(attention_mask.shape):
            raise ValueError(f"labels shape {tuple(labels.shape)} does not match attention_mask "
                             f"{tuple(attention_mask.shape)}")
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels,
                         output_hidden_states=True, use_cache=False, return_dict=True)
        return LMOutput(logits=out.logits, hidden_states=out.hidden_states[-1], loss=out.loss)

    @torch.no_grad()
    def generate(self, inputs_embeds: Tensor, attention_mask: Tensor, max_new_tokens: int = 256,
                 return_hidden: bool = False, **kw: Any) -> Tensor | tuple[Tensor, Tensor]:
        """Greedy (unless ``do_sample=True`` is passed) generation from left-padded prompts.

        Returns the new tokens ``(B, T_new)`` (rows that stop early are filled with ``pad_id``);
        with ``return_hidden=True`` also ``(B, T_new, H)``: at position ``t`` the last-layer
        hidden state that predicted token ``t`` (the state that predicts ``[SEG]`` for the
        segmentation path). Extra keyword arguments go to ``transformers`` ``generate``.
        """
        self._check_inputs(inputs_embeds, attention_mask)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not bool(attention_mask[:, -1].all()):
            rows = (attention_mask[:, -1] == 0).nonzero().flatten().tolist()
            raise ValueError(f"generate needs left-padded prompts; rows {rows} end in padding")
        if return_hidden and kw.get("num_beams", 1) != 1:
            raise NotImplementedError("return_hidden=True supports greedy or sampled decoding, "
                                      "not beam search")
        kw.setdefault("do_sample", False)
        if not kw["do_sample"]:  # silence the checkpoint's sampling defaults under greedy
            for key in ("temperature", "top_p", "top_k"):
                kw.setdefault(key, None)
        kw.setdefault("pad_token_id", self.pad_id)
        kw.setdefault("eos_token_id", self.eos_id)
        out = self.model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  max_new_tokens=max_new_tokens, return_dict_in_generate=True,
                                  output_hidden_states=return_hidden, **kw)
        ids = out.sequences
        if not return_hidden:
            return ids
        hidden = torch.cat([step[-1][:, -1:] for step in out.hidden_states], dim=1)
        if hidden.shape[1] != ids.shape[1]:
            raise RuntimeError(f"generate returned {ids.shape[1]} tokens but {hidden.shape[1]} "
                               "hidden states")
        return ids, hidden

    def apply_lora(self, r: int = 16, alpha: int = 32, dropout: float = 0.05,
                   target: str = DEFAULT_LORA_TARGET,
                   modules_to_save: list[str] | None = None) -> list[str]:
        """Wrap ``model`` with peft LoRA on the Linears whose path inside the LLM fully matches
        ``target``; afterwards only LoRA weights of the LLM are trainable (the recipe unfreezes
        anything else). Returns the names of the LoRA parameters (relative to ``model``)."""
        if self.has_lora:
            raise RuntimeError("apply_lora was already called on this CausalLM")
        self.model = wrap_with_lora(self.model, r=r, alpha=alpha, dropout=dropout, target=target,
                                    modules_to_save=modules_to_save)
        return self.lora_parameter_names()

    def parameter_groups(self) -> dict[str, list[str]]:
        """Groups for a recipe's stages (:class:`zoo.types.ParameterGroups`): ``lora`` (the
        adapters, after :meth:`apply_lora`), ``input_embeddings`` (the token embedding matrix)
        and ``output_embeddings`` (the LM head; the same name when the two are tied)."""
        output = self.model.get_output_embeddings()
        return {"lora": ["model." + n for n in self.lora_parameter_names()],
                "input_embeddings": parameter_names(self, [self.model.get_input_embeddings()]),
                "output_embeddings": parameter_names(self, [output])}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Non-reentrant gradient checkpointing of the LLM's layers on or off (as the encoders'
        ``set_grad_checkpointing``)."""
        set_gradient_checkpointing(self.model, enable)

    def lora_parameter_names(self) -> list[str]:
        """Names (relative to ``model``) of the LoRA parameters; empty before :meth:`apply_lora`."""
        return lora_parameter_names(self.model)


# ---------------------------------------------------------------- builders


def _torch_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    allowed = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in allowed:
        from zoo.registry import suggest

        raise ConfigError(f"lm dtype={dtype!r} is not one of {sorted(allowed)}."
                          f"{suggest(str(dtype), list(allowed))}")
    return allowed[dtype]


def _check_dir(path: str | os.PathLike, what: str = "pretrained") -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise MissingFileError(f"lm {what}={str(path)!r} is not a directory (a local Hugging "
                               "Face model folder is expected; nothing is downloaded)")
    return folder


def resolve_tokenizer(tokenizer: Any = None, corpus: Iterable[str] | None = None,
                      vocab_size: int = 4096, cache_dir: str | None = None):
    """A tokenizer object, a local tokenizer directory, or ``None`` for the offline BPE tokenizer
    (trained on ``corpus`` when given, else on the built-in benchmark's texts)."""
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    if tokenizer is not None:
        from transformers import AutoTokenizer

        folder = _check_dir(tokenizer, "tokenizer")
        with reading_hf_folder(folder, "tokenizer folder"):
            return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    from zoo.tokenizer import benchmark_tokenizer, build_local_tokenizer

    if corpus is not None:
        return build_local_tokenizer(corpus, vocab_size=vocab_size, cache_dir=cache_dir)
    return benchmark_tokenizer(vocab_size=vocab_size, cache_dir=cache_dir)


@contextlib.contextmanager
def _seeded(seed: int | None):
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _from_config(config: Any, dtype: torch.dtype | None, seed: int | None = None) -> nn.Module:
    from transformers import AutoModelForCausalLM

    with _seeded(seed):
        return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")


def folder_config(folder: Path) -> Any:
    """The LLM config of a local folder: ``AutoConfig``'s, or for an M3D-LaMed release
    (``lamed_phi3`` / ``lamed_llama``, which transformers does not know) its Phi-3 / LLaMA part
    (:func:`zoo.pretrained.m3d_lamed.base_llm_config`)."""
    from transformers import AutoConfig

    from zoo.pretrained.m3d_lamed import base_llm_config

    lamed = base_llm_config(folder)
    if lamed is not None:
        return lamed
    with reading_hf_folder(folder, "model folder (config.json)"):
        return AutoConfig.from_pretrained(str(folder), local_files_only=True)


def _from_pretrained(path: Path, dtype: torch.dtype | None) -> nn.Module:
    """Weights of ``path``; in an M3D-LaMed release only the LLM's tensors are read here (the
    vision, projector and SegVol tensors are the recipe's, ``recipe.init_from``)."""
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": dtype} if dtype is not None else {}
    with reading_hf_folder(path, "causal LM folder"):
        return AutoModelForCausalLM.from_pretrained(str(path), config=folder_config(path),
                                                    local_files_only=True,
                                                    attn_implementation="sdpa", **kwargs)


def set_gradient_checkpointing(model: nn.Module, enable: bool = True) -> None:
    """Turn non-reentrant gradient checkpointing of a Hugging Face model on or off (transformers
    5.x renamed ``gradient_checkpointing_*`` to ``activation_checkpointing_*``)."""
    new_api = hasattr(model, "activation_checkpointing_enable")
    if enable:
        (model.activation_checkpointing_enable if new_api
         else model.gradient_checkpointing_enable)({"use_reentrant": False})
    else:
        (model.activation_checkpointing_disable if new_api
         else model.gradient_checkpointing_disable)()


def _finish(model: nn.Module, tokenizer: Any, gradient_checkpointing: bool) -> CausalLM:
    if gradient_checkpointing:
        set_gradient_checkpointing(model)
    return CausalLM(model, tokenizer)


def _published(name: str, config_cls: Any, published: dict[str, Any], pretrained: str | None,
               tokenizer: Any, dtype: str | None, gradient_checkpointing: bool,
               corpus: Iterable[str] | None) -> CausalLM:
    """Shared body of the published-architecture builders."""
    torch_dtype = _torch_dtype(dtype)
    if pretrained is None:
        if not on_meta():
            logger.warning("lm %s: pretrained=None, building the published architecture with "
                           "RANDOM weights (set lm.pretrained to a local model folder)", name)
        model = _from_config(config_cls(**published), torch_dtype)
        return _finish(model, resolve_tokenizer(tokenizer, corpus), gradient_checkpointing)
    folder = _check_dir(pretrained)
    config = folder_config(folder)
    for key in _ARCH_KEYS:
        if key in published and getattr(config, key, None) != published[key]:
            raise ConfigError(f"lm {name}: {folder}/config.json has {key}="
                              f"{getattr(config, key, None)}, but {name} has {published[key]}; "
                              f"use lm=hf for other architectures")
    if on_meta():
        model = _from_config(config, torch_dtype)
    else:
        model = _from_pretrained(folder, torch_dtype)
    return _finish(model, resolve_tokenizer(tokenizer if tokenizer is not None else folder),
                   gradient_checkpointing)


def _tiny(config_cls: Any, tokenizer: Any, corpus: Iterable[str] | None, tokenizer_vocab_size: int,
          seed: int, dtype: str | None, gradient_checkpointing: bool, **arch: Any) -> CausalLM:
    tok = resolve_tokenizer(tokenizer, corpus, vocab_size=tokenizer_vocab_size)
    config = config_cls(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                        tie_word_embeddings=False, **arch)
    return _finish(_from_config(config, _torch_dtype(dtype), seed), tok, gradient_checkpointing)


@LMS.register
def test_llama(tokenizer: Any = None, corpus: Iterable[str] | None = None,
               tokenizer_vocab_size: int = 4096, hidden_size: int = 64, num_layers: int = 2,
               num_heads: int = 4, intermediate_size: int = 128,
               max_position_embeddings: int = 2048, seed: int = 0, dtype: str | None = None,
               gradient_checkpointing: bool = False) -> CausalLM:
    """Tiny random LLaMA (seeded) for tests and CPU runs; vocab = the tokenizer's size.

    ``tokenizer``: a local HF tokenizer folder (or object); ``None`` trains/loads the offline BPE
    tokenizer on ``corpus`` or, when that is ``None`` too, on the built-in benchmark's texts.
    """
    from transformers import LlamaConfig

    return _tiny(LlamaConfig, tokenizer, corpus, tokenizer_vocab_size, seed, dtype,
                 gradient_checkpointing, hidden_size=hidden_size, num_hidden_layers=num_layers,
                 num_attention_heads=num_heads, num_key_value_heads=num_heads,
                 intermediate_size=intermediate_size,
                 max_position_embeddings=max_position_embeddings)


@LMS.register
def test_phi3(tokenizer: Any = None, corpus: Iterable[str] | None = None,
              tokenizer_vocab_size: int = 4096, hidden_size: int = 64, num_layers: int = 2,
              num_heads: int = 4, intermediate_size: int = 128,
              max_position_embeddings: int = 2048, seed: int = 0, dtype: str | None = None,
              gradient_checkpointing: bool = False) -> CausalLM:
    """Tiny random Phi-3 (fused ``qkv_proj``, ``gate_up_proj``); arguments as :func:`test_llama`."""
    from transformers import Phi3Config

    return _tiny(Phi3Config, tokenizer, corpus, tokenizer_vocab_size, seed, dtype,
                 gradient_checkpointing, hidden_size=hidden_size, num_hidden_layers=num_layers,
                 num_attention_heads=num_heads, num_key_value_heads=num_heads,
                 intermediate_size=intermediate_size,
                 max_position_embeddings=max_position_embeddings,
                 original_max_position_embeddings=max_position_embeddings)


@LMS.register
@renamed(path="pretrained=VALUE")
def llama2_7b(pretrained: str | None = None, tokenizer: Any = None, dtype: str | None = None,
              gradient_checkpointing: bool = False,
              corpus: Iterable[str] | None = None) -> CausalLM:
    """LLaMA-2-7B (M3D-LaMed's LLM; 6,738,415,616 parameters with its 32000-token vocabulary).

    Weights only from ``pretrained`` (a local folder such as ``Llama-2-7b-chat-hf``; its tokenizer
    too). ``pretrained=None`` builds the published config with random weights (a warning is logged) and the
    offline tokenizer, whose ids fit inside the 32000-row table; on the meta device nothing is
    read except ``config.json``.
    """
    from transformers import LlamaConfig

    return _published("llama2_7b", LlamaConfig, LLAMA2_7B, pretrained, tokenizer, dtype,
                      gradient_checkpointing, corpus)


@LMS.register
@renamed(path="pretrained=VALUE")
def phi3_mini(pretrained: str | None = None, tokenizer: Any = None, dtype: str | None = None,
              gradient_checkpointing: bool = False,
              corpus: Iterable[str] | None = None) -> CausalLM:
    """Phi-3-mini-4k (M3D-LaMed's small LLM; 3,821,079,552 parameters, 32064-row vocabulary).

    Same loading rules as :func:`llama2_7b` (``pretrained`` e.g. ``Phi-3-mini-4k-instruct``).
    """
    from transformers import Phi3Config

    return _published("phi3_mini", Phi3Config, PHI3_MINI, pretrained, tokenizer, dtype,
                      gradient_checkpointing, corpus)


@LMS.register
@renamed(path="pretrained=VALUE")
def smollm2_135m(pretrained: str | None = None, dtype: str | None = None,
                 gradient_checkpointing: bool = False) -> CausalLM:
    """SmolLM2-135M-Instruct (Allal et al. 2025; Apache-2.0): a 30-layer LLaMA, hidden 576, 9 query
    and 3 key-value heads, tied embeddings, 49,152-token BPE tokenizer with a ChatML chat template;
    134,515,008 parameters before the zoo's 4 special tokens (docs/lm.md).

    Weights from ``pretrained`` (a Hugging Face folder), by default the folder that
    ``zoo models fetch smollm2_135m`` converts from the GGUF release into the zoo's cache; a
    model never fetched raises one line naming that command. Nothing is downloaded here.
    """
    from transformers import LlamaConfig

    from zoo.models import fetched_folder

    folder = fetched_folder("smollm2_135m") if pretrained is None else pretrained
    return _published("smollm2_135m", LlamaConfig, SMOLLM2_135M, folder, None, dtype,
                      gradient_checkpointing, None)


@LMS.register
@renamed(path="pretrained=VALUE")
def hf(pretrained: str, tokenizer: Any = None, dtype: str | None = None,
       gradient_checkpointing: bool = False) -> CausalLM:
    """Any local Hugging Face causal-LM folder (``AutoModelForCausalLM``; an M3D-LaMed release
    gives its LLM and tokenizer), its tokenizer from the same folder unless ``tokenizer`` names
    another; on the meta device only ``config.json`` is read."""
    if pretrained is None:
        raise ConfigError("lm=hf needs lm.pretrained=/a/local/model/folder")
    folder = _check_dir(pretrained)
    torch_dtype = _torch_dtype(dtype)
    if on_meta():
        model = _from_config(folder_config(folder), torch_dtype)
    else:
        model = _from_pretrained(folder, torch_dtype)
    return _finish(model, resolve_tokenizer(tokenizer if tokenizer is not None else folder),
                   gradient_checkpointing)
