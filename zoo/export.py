"""``zoo export RUN OUT_DIR``: a trained run as a self-contained folder (docs/usage.md "Export").

Layout (Hugging Face's ``save_pretrained`` conventions where they exist)::

    OUT_DIR/config.json          the zoo's record: the run's resolved configuration, how its
                                 volumes were prepared, sha256 of every file, provenance, metrics
    OUT_DIR/model.safetensors    the whole model's state dict as the zoo holds it (shards with
                                 model.safetensors.index.json above 5 GB)
    OUT_DIR/tokenizer*.json ...  the LM's tokenizer, the four added special tokens included
    OUT_DIR/README.md            model card: components, parameter counts, data, split, metrics
    OUT_DIR/llm/                 --merge-lora, or an LM trained without LoRA: the LLM with LoRA
                                 merged, loadable by AutoModelForCausalLM.from_pretrained
    OUT_DIR/llm_adapter/         otherwise: the peft adapter, with the resized and trained input
                                 embedding and LM head saved beside it (save_embedding_layers)
    OUT_DIR/llm_base/            ... and the base it applies to (the LLM without LoRA, its
                                 vocabulary already resized to the tokenizer)

The run is loaded through :func:`zoo.trained.locate` (registered builders only, the checkpoint's
sha256 checked against the run's record) and the folder is written under a temporary name and
renamed into place. ``zoo predict``, ``zoo eval`` and ``recipe.init_from=`` read the folder.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from zoo.errors import ConfigError

MAX_SHARD = "5GB"


def export(name: str, out_dir: str | Path, merge_lora: bool = False,
           tracking_uri: str | None = None) -> dict[str, Any]:
    """Write the export of run ``name`` (a run id or run folder) into ``out_dir`` (which must not
    exist or be empty); returns the record written as ``config.json``."""
    from zoo.trained import locate

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: exists and is not empty; export into a new folder")
    trained = locate(name, tracking_uri)
    if trained.kind == "export":
        raise ConfigError(f"{name}: already an exported folder (export a run id or run folder)")
    model = trained.load()
    model.eval()
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        return _write(trained, model, tmp, out, merge_lora)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write(trained: Any, model: Any, tmp: Path, out: Path, merge_lora: bool) -> dict[str, Any]:
    """Fill ``tmp`` (the export's files), then rename it to ``out``; returns the record."""
    from omegaconf import OmegaConf

    from zoo.checkpoint import file_sha256
    from zoo.config import chosen_options
    from zoo.params import parameter_report
    from zoo.tracking import git_commit
    from zoo.trained import EXPORT_FILE, EXPORT_FORMAT

    params = parameter_report(model)
    save_state_dict(model, tmp)
    weights = {p.name: file_sha256(p) for p in sorted(tmp.glob("model*.safetensors"))}
    llm = save_llm(model, tmp, merge_lora)
    checkpoint = next(iter(trained.weights.items()))
    record = {
        "format": EXPORT_FORMAT, "version": 1,
        "config": OmegaConf.to_container(trained.cfg, resolve=True),
        "preparation": trained.preparation_record(),
        "weights": weights, "llm": llm,
        "components": chosen_options(trained.cfg),
        "parameters": {"total": params["total"],
                       "components": {k: v["total"] for k, v in params["components"].items()}},
        "run": {"id": trained.run_id, "folder": str(trained.folder),
                "split_hash": trained.split_hash, "checkpoint": str(checkpoint[0]),
                "checkpoint_sha256": checkpoint[1],
                "git_commit": trained.record.get("zoo.git_commit"),
                "test_metrics": trained.test_metrics()},
        "exported": {"git_commit": git_commit(),
                     "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }
    record["files"] = {p.relative_to(tmp).as_posix(): file_sha256(p)
                       for p in sorted(tmp.rglob("*")) if p.is_file()}
    (tmp / EXPORT_FILE).write_text(json.dumps(record, indent=1) + "\n")
    (tmp / "README.md").write_text(model_card(record, out.name))
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return record


def save_state_dict(model: Any, folder: Path) -> None:
    """The model's state dict as safetensors (shards above :data:`MAX_SHARD`); a tensor tied to
    another is stored once (``zoo.checkpoint.load_weights`` fills it back)."""
    from huggingface_hub import save_torch_state_dict

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_torch_state_dict(state, folder, filename_pattern="model{suffix}.safetensors",
                          max_shard_size=MAX_SHARD)


def save_llm(model: Any, folder: Path, merge_lora: bool) -> dict[str, Any] | None:
    """The LM part in Hugging Face form (module docstring) and the tokenizer; returns the
    record's ``llm`` entry (None for a model without an LM). Changes ``model``'s LM in place
    (merged or unloaded): call it after the state dict is saved."""
    lm = getattr(model, "lm", None)
    if lm is None or not hasattr(lm, "tokenizer"):
        if merge_lora:
            raise ConfigError(f"--merge-lora: the {type(model).__name__} has no language model")
        return None
    tokenizer = lm.tokenizer
    tokenizer.save_pretrained(folder)
    entry: dict[str, Any] = {"tokenizer": ".", "class": type(lm.model).__name__}
    if lm.has_lora and not merge_lora:
        peft_model = lm.model
        peft_model.save_pretrained(folder / "llm_adapter", save_embedding_layers=True)
        (folder / "llm_adapter" / "README.md").unlink(missing_ok=True)  # peft's blank card
        base = peft_model.unload()
        base.save_pretrained(folder / "llm_base")
        tokenizer.save_pretrained(folder / "llm_base")
        entry.update(form="adapter", adapter="llm_adapter", base="llm_base",
                     architecture="llm_base", **{"class": type(base).__name__})
    else:
        merged = lm.model.merge_and_unload() if lm.has_lora else lm.model
        merged.save_pretrained(folder / "llm")
        tokenizer.save_pretrained(folder / "llm")
        entry.update(form="merged" if lm.has_lora else "plain", folder="llm",
                     architecture="llm", **{"class": type(merged).__name__})
    entry["vocabulary"] = len(tokenizer)
    return entry


def model_card(record: dict[str, Any], folder_name: str) -> str:
    """``README.md``: what the folder holds and how to load it, from the record alone."""
    from zoo.data.preparation import describe

    run, cfg, llm = record["run"], record["config"], record.get("llm")
    components = record["components"]
    counts = record["parameters"]["components"]
    lines = [f"# {folder_name}: {components.get('recipe', 'model')} (medzoo3d export)", "",
             f"Exported by `zoo export` from MLflow run `{run['id']}` (trained at zoo commit "
             f"`{run.get('git_commit') or 'unknown'}`, exported at "
             f"`{record['exported']['git_commit']}`, {record['exported']['time']}).", "",
             "## Components", "", "| part | choice | parameters |", "|---|---|---|"]
    parts = {"encoder": "encoder", "bridge": "bridge", "connector": "connector", "lm": "lm",
             "head": "heads"}
    for group, part in parts.items():
        if group in components or part in counts:
            n = f"{counts[part]:,}" if part in counts else "-"
            lines.append(f"| {group} | {components.get(group, '-')} | {n} |")
    lines += [f"| all | {components.get('recipe', '-')} | {record['parameters']['total']:,} |", ""]
    data = cfg.get("data") or {}
    prep = record.get("preparation") or {}
    lines += ["## Data", "",
              f"- data: `{str(data.get('_target_', '?')).rsplit('.', 1)[-1]}`"
              + (f" at `{data['root']}`" if data.get("root") else ""),
              f"- split hash: `{run.get('split_hash')}` (the split manifest's sha256; `zoo eval` "
              "refuses another split)",
              f"- preparation of NIfTI / DICOM inputs: {describe(prep.get('spec'))}"
              + (f" (from {prep['source']})" if prep.get("source") else
                 f" ({prep['note']})" if prep.get("note") else ""), "",
              "## Test metrics", ""]
    metrics = run.get("test_metrics") or {}
    if metrics:
        lines += ["The run's evaluation on its test split at train time:", "",
                  "| metric | value |", "|---|---|"]
        lines += [f"| {k[len('test/'):]} | {v:.4f} |" for k, v in metrics.items()]
    else:
        lines.append("The run logged no test metrics (evaluation was off, or found nothing to "
                     "score).")
    lines += ["", "## Files", "",
              "- `config.json`: the zoo's record (configuration, preparation, sha256 of every "
              "file, provenance)",
              "- " + ", ".join(f"`{f}`" for f in record["weights"]) + ": the whole model as the "
              "zoo holds it"]
    if llm:
        lines.append("- tokenizer files: the LM's tokenizer with the zoo's four special tokens")
        if llm["form"] == "adapter":
            lines.append("- `llm_adapter/`: the LoRA adapter (peft) with the resized, trained input "
                         "embedding and LM head; `llm_base/`: the LLM it applies to")
        else:
            lines.append("- `llm/`: the LLM in Hugging Face form"
                         + (", LoRA merged" if llm["form"] == "merged" else ""))
    lines += ["", "## How to load", "", "```bash",
              f"zoo predict {folder_name} scan.nii.gz --question \"What is the finding?\"",
              f"zoo eval {folder_name}              # its test split (data.root=... elsewhere)",
              f"zoo train recipe.init_from={folder_name} ...   # continue from these weights",
              "```"]
    if llm:
        lines += ["", "The language model alone, with transformers:", "", "```python"]
        if llm["form"] == "adapter":
            lines += ["from peft import PeftModel",
                      "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                      f"tokenizer = AutoTokenizer.from_pretrained(\"{folder_name}\")",
                      f"base = AutoModelForCausalLM.from_pretrained(\"{folder_name}/llm_base\")",
                      "# or the original LLM, resized: base.resize_token_embeddings(len(tokenizer))",
                      f"model = PeftModel.from_pretrained(base, \"{folder_name}/llm_adapter\")"]
        else:
            lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                      f"model = AutoModelForCausalLM.from_pretrained(\"{folder_name}/llm\")",
                      f"tokenizer = AutoTokenizer.from_pretrained(\"{folder_name}/llm\")"]
        lines += ["```", "",
                  "Image tokens (`<im_patch>`) stand for the projected visual tokens, which only "
                  "the whole model supplies."]
    return "\n".join(lines) + "\n"
