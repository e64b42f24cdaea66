"""`zoo export`: a self-contained folder (record, weights, tokenizer, model card, the LLM in
Hugging Face form) that loads back to identical logits in the zoo and in transformers / peft,
and that `zoo eval` and `recipe.init_from=` read; stored configs name registered builders only
and every weight file is checked against its recorded sha256."""

import json
import shutil

import pytest
import torch

from zoo.cli import main
from zoo.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def exports(byo_run, tmp_path_factory):
    """The shared run exported twice: LoRA as an adapter, and merged."""
    out = tmp_path_factory.mktemp("exports")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(byo_run.home)
        assert main(["-q", "export", byo_run.run_id, str(out / "adapter")]) == 0
        assert main(["-q", "export", str(byo_run.run_dir), str(out / "merged"),
                     "--merge-lora"]) == 0
    return {"adapter": out / "adapter", "merged": out / "merged"}


def text_and_image_batch(model, byo_run):
    from zoo.data.input_volume import read_input
    from zoo.trained import locate
    from zoo.data.preparation import spec_for

    spec = spec_for(locate(str(byo_run.run_dir)).preparation_record(), model.image_size)
    volume = read_input(byo_run.hospital / "p00" / "ct.nii.gz", spec, model.image_size)
    return model.collator([{"image": torch.from_numpy(volume.image), "task": "vqa_open",
                            "prompt": "What is seen?", "answer": "A hyperdense lesion."}])


def logits(model, batch):
    with torch.no_grad():
        return model.lm(model.embed_inputs(batch)[0], batch["attention_mask"]).logits


def test_the_folder_holds_record_weights_tokenizer_card_and_llm(exports, byo_run):
    from zoo.checkpoint import file_sha256

    folder = exports["adapter"]
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json",
            "tokenizer_config.json", "llm_adapter/adapter_config.json",
            "llm_adapter/adapter_model.safetensors", "llm_base/config.json",
            "llm_base/model.safetensors"} <= names
    assert "llm/config.json" in {p.relative_to(exports["merged"]).as_posix()
                                 for p in exports["merged"].rglob("*")}
    record = json.loads((folder / "config.json").read_text())
    assert record["format"] == "medzoo3d-export" and record["version"] == 1
    assert record["weights"] == {"model.safetensors": file_sha256(folder / "model.safetensors")}
    assert record["config"]["head"]["_target_"] == "heads.segvol.test_segvol"
    assert record["preparation"]["spec"]["window"] == "brain"
    assert record["llm"]["form"] == "adapter" and record["llm"]["architecture"] == "llm_base"
    assert record["run"]["id"] == byo_run.run_id and len(record["run"]["split_hash"]) == 64
    assert record["run"]["test_metrics"]["test/vqa_closed/accuracy"] in (0.0, 0.5, 1.0)
    assert all(file_sha256(folder / f) == d for f, d in record["files"].items())
    card = (folder / "README.md").read_text()
    for text in ("| encoder | test_vit3d |", "| lm | test_llama |", "| head | test_segvol |",
                 record["run"]["split_hash"], "| vqa_closed/accuracy |", "window brain",
                 "PeftModel.from_pretrained", f"`{byo_run.run_id}`",
                 f"{record['parameters']['total']:,}"):
        assert text in card, text


@pytest.mark.parametrize("form", ["adapter", "merged"])
def test_export_loads_back_to_identical_logits(exports, byo_run, form):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zoo.trained import locate

    trained = locate(str(byo_run.run_dir)).load().eval()
    exported = locate(str(exports[form])).load().eval()
    batch = text_and_image_batch(trained, byo_run)
    assert torch.equal(logits(trained, batch), logits(exported, batch))
    # the LLM alone in Hugging Face form, on text ids (image tokens need the whole model)
    tokenizer = AutoTokenizer.from_pretrained(str(exports[form]))
    assert tokenizer.get_vocab() == trained.lm.tokenizer.get_vocab()
    ids = torch.tensor([tokenizer("The liver shows a [SEG] lesion <bx_start>")["input_ids"]])
    with torch.no_grad():
        reference = trained.lm.model(input_ids=ids).logits
        if form == "merged":
            llm = AutoModelForCausalLM.from_pretrained(str(exports[form] / "llm")).eval()
            assert torch.allclose(llm(input_ids=ids).logits, reference, atol=1e-5)
        else:
            from peft import PeftModel

            from heads.causal_lm import test_llama

            base = AutoModelForCausalLM.from_pretrained(str(exports[form] / "llm_base"))
            llm = PeftModel.from_pretrained(base, str(exports[form] / "llm_adapter")).eval()
            assert torch.equal(llm(input_ids=ids).logits, reference)
            # the original base, resized to the tokenizer (the added rows come from the adapter)
            original = test_llama().model
            assert original.get_input_embeddings().weight.shape[0] == len(tokenizer)
            llm = PeftModel.from_pretrained(original, str(exports[form] / "llm_adapter")).eval()
            assert torch.equal(llm(input_ids=ids).logits, reference)


def test_a_large_model_is_written_in_shards_that_load_back(byo_run, monkeypatch, tmp_path):
    import zoo.export
    from zoo.trained import locate

    monkeypatch.chdir(byo_run.home)
    monkeypatch.setattr(zoo.export, "MAX_SHARD", "400KB")
    record = zoo.export.export(byo_run.run_id, tmp_path / "sharded", merge_lora=True)
    assert len(record["weights"]) > 1 and all(f.startswith("model-0") for f in record["weights"])
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    trained = locate(str(byo_run.run_dir)).load().eval()
    exported = locate(str(tmp_path / "sharded")).load().eval()
    batch = text_and_image_batch(trained, byo_run)
    assert torch.equal(logits(trained, batch), logits(exported, batch))


def test_recipe_init_from_reads_an_export(exports, byo_run):
    from zoo.build import build_model
    from zoo.config import compose
    from zoo.trained import locate

    overrides = ["data=table", f"data.root={byo_run.home / 'prepared'}", "head=test_segvol"]
    model = build_model(compose([*overrides, f"recipe.init_from={exports['merged']}"]))
    exported = locate(str(exports["merged"])).load()
    assert all(torch.equal(v, exported.state_dict()[k]) for k, v in model.state_dict().items())
    assert "tensors placed" in model.init_report.summary()
    with pytest.raises(CheckpointError, match="its LLM carries LoRA adapters"):
        build_model(compose([*overrides, "recipe.train_lm=full",
                             f"recipe.init_from={exports['adapter']}"]))


def test_zoo_eval_reads_an_export(exports, byo_run, monkeypatch, capsys):
    from zoo.tracking import Tracker

    monkeypatch.chdir(byo_run.home)
    assert main(["eval", str(exports["adapter"]), "eval.tasks=[vqa_closed]",
                 "eval.max_items=2"]) == 0
    out = capsys.readouterr().out
    assert "eval vqa_closed: 2 items" in out and str(exports["adapter"]) in out
    run_id = out.split("to mlflow run ")[1].split()[0]
    tags = Tracker(byo_run.tracking_uri).get_run(run_id).data.tags
    assert tags["zoo.eval_of"] == str(exports["adapter"])
    assert tags["zoo.exported_from"] == byo_run.run_id


def test_export_refuses_other_weights_foreign_targets_and_used_folders(exports, byo_run,
                                                                      monkeypatch, tmp_path):
    from zoo.export import export
    from zoo.trained import locate

    monkeypatch.chdir(byo_run.home)
    copy = tmp_path / "run"
    shutil.copytree(byo_run.run_dir, copy)
    weights = copy / "checkpoints" / "instruct-final" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 differs from the one run .* recorded"):
        export(str(copy), tmp_path / "out")
    config = copy / "config.yaml"
    config.write_text(config.read_text().replace("_target_: heads.segvol.test_segvol",
                                                 "_target_: shutil.rmtree", 1))
    with pytest.raises(ConfigError, match=r"head._target_='shutil.rmtree' is not a registered"):
        export(str(copy), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="exists and is not empty"):
        export(byo_run.run_id, exports["adapter"])
    with pytest.raises(ConfigError, match="already an exported folder"):
        export(str(exports["adapter"]), tmp_path / "again")
    # an export whose weights changed after it was written is refused by every reader
    changed = tmp_path / "changed"
    shutil.copytree(exports["merged"], changed)
    weights = changed / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 differs from the one .*config.json recorded"):
        locate(str(changed)).load()
