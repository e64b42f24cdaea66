"""Med3DInsight recipes: pretraining with the cached teacher, fine-tuning from its checkpoint,
slice-to-volume retrieval (tiny components on test_synth)."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from recipes.med3dinsight import plane_ids, retrieval_eval, slice_to_volume_recall
from recipes.med3dinsight_finetune import class_of, evaluate, load_encoder, summarize
from zoo.build import build_model, build_on_meta
from zoo.config import compose
from zoo.errors import CheckpointError
from zoo.jobs import build_data
from zoo.training import Trainer
from zoo.types import VisualTokens


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny convolutions: one thread is faster, and much faster on a loaded machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pretrain_cfg(tmp_path, *extra):
    return compose(["experiment=m3di_pretrain_tiny", f"trainer.output_dir={tmp_path / 'pt'}",
                    "trainer.validate=false", "trainer.log_every=1", "recipe.ot_iters=50", *extra])


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A pretraining run of two epochs (36 train slices, batch 6: 6 steps per epoch)."""
    tmp_path = tmp_path_factory.mktemp("m3di")
    torch.manual_seed(0)
    cfg = pretrain_cfg(tmp_path, "trainer.max_steps=12")
    model, data = build_model(cfg), build_data(cfg)
    teacher = model.heads["teacher"]
    calls = []
    original = teacher.forward

    def counting(slices, texts=None):
        calls.append(slices.shape[0])
        return original(slices, texts)

    teacher.forward = counting
    logs = []
    results = Trainer(model, data, cfg.trainer, seed=0,
                      on_log=lambda stage, step, values: logs.append(values)).fit()
    return {"cfg": cfg, "model": model, "data": data, "calls": calls, "logs": logs,
            "results": results, "root": tmp_path / "pt",
            "cache": (model.cache.misses, model.cache.hits)}


def test_pretrain_runs_and_second_epoch_reuses_teacher_cache(pretrained):
    model, logs = pretrained["model"], pretrained["logs"]
    assert pretrained["results"][0].steps == 12
    # every train slice went through the teacher exactly once: epoch 2 read the cache only
    assert sum(pretrained["calls"]) == 36
    assert pretrained["cache"] == (36, 36)  # (misses, hits)
    assert {"align_image", "align_text", "recon"} <= set(logs[0])
    assert all(torch.isfinite(torch.tensor(v["loss"])) for v in logs)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("heads.teacher.") for n in trainable)
    assert any(n.startswith("heads.objective.") for n in trainable)  # the OT metrics


def test_collate_converts_planes_and_pads(pretrained):
    model, data = pretrained["model"], pretrained["data"]
    samples = [data.dataset("train", tasks=["slice"])[i] for i in range(3)]
    batch = model.collate(samples)
    assert batch["image"].shape[-3:] == (32, 32, 32)  # test_synth (16, 32, 32) padded to 32s
    assert batch["plane"].tolist() == plane_ids([s["slice"]["plane"] for s in samples]).tolist()
    assert batch["slices"].shape == (3, 1, 32, 32)  # the test teacher's input size
    with pytest.raises(ValueError, match="plane 'oblique' is unknown"):
        plane_ids(["axial", "oblique"])
    vqa = data.dataset("train", tasks=["vqa_closed"])[0]
    with pytest.raises(ValueError, match="has no 'slice'"):
        model.collate([vqa])


def test_condition_negatives_embed_every_volume_under_every_condition(tmp_path):
    cfg = pretrain_cfg(tmp_path, "recipe.negatives=condition")
    model, data = build_model(cfg).eval(), build_data(cfg)
    samples = [data.dataset("train", tasks=["slice"])[i] for i in (0, 10, 20)]
    batch = model.collate(samples)
    visual = model.encoder(batch["image"])
    grid = model.condition_grid(visual, batch["plane"], batch["slice_index"])
    assert grid.shape == (3, 3, 16)
    for a in range(3):
        alone = VisualTokens(visual.tokens[a:a + 1].expand(3, -1, -1), visual.grid, {})
        own = model.condition(alone, batch["plane"], batch["slice_index"])  # volume a, each b
        torch.testing.assert_close(grid[a], own)
    out = model.train()(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and {"align_image", "align_text", "recon"} <= set(out.logs)
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in model.encoder.parameters())
    with pytest.raises(ValueError, match="negatives must be one of"):
        build_model(pretrain_cfg(tmp_path, "recipe.negatives=shuffled"))


def test_finetune_loads_pretrained_encoder_and_trains(pretrained, tmp_path):
    root = pretrained["root"]
    weights = load_file(str(root / "checkpoints" / "pretrain-final" / "model.safetensors"))
    cfg = compose(["experiment=m3di_finetune_tiny", f"recipe.init_from={root}",
                   f"trainer.output_dir={tmp_path / 'ft'}", "trainer.max_steps=2",
                   "trainer.validate=false"])
    model = build_model(cfg)
    for name, value in model.encoder.state_dict().items():
        assert torch.equal(value, weights[f"encoder.{name}"]), name
    results = Trainer(model, build_data(cfg), cfg.trainer, seed=0).fit()
    assert results[0].steps == 2 and results[0].train_loss == results[0].train_loss
    rows = evaluate(model, build_data(cfg).dataset("test", tasks=["seg"]))
    assert rows and all(0.0 <= r["dice"] <= 1.0 for r in rows)
    assert set(summarize(rows)["dice_per_class"]) == {r["class"] for r in rows}
    model.eval()
    _, probs = model.segment([build_data(cfg).dataset("test", tasks=["seg"])[0]])
    assert probs.shape == (1, 1, 16, 32, 32)


def test_init_from_accepts_file_and_folder_and_names_missing_keys(pretrained, tmp_path):
    root = pretrained["root"]
    file = root / "checkpoints" / "pretrain-final" / "model.safetensors"
    encoder = build_model(compose(["experiment=m3di_finetune_tiny"])).encoder
    assert load_encoder(encoder, file) == file
    assert load_encoder(encoder, file.parent) == file
    weights = load_file(str(file))
    dropped = sorted(k for k in weights if k.startswith("encoder."))[0]
    del weights[dropped]
    save_file(weights, str(tmp_path / "partial.safetensors"))
    with pytest.raises(CheckpointError, match=dropped[len("encoder."):]):
        load_encoder(encoder, tmp_path / "partial.safetensors")
    with pytest.raises(FileNotFoundError, match="init_from="):
        load_encoder(encoder, tmp_path / "nowhere")


def test_classification_finetune_runs(tmp_path):
    cfg = compose(["experiment=m3di_finetune_cls_tiny", f"trainer.output_dir={tmp_path}",
                   "trainer.max_steps=2", "trainer.validate=false"])
    model, data = build_model(cfg), build_data(cfg)
    results = Trainer(model, data, cfg.trainer, seed=0).fit()
    assert results[0].steps == 2
    rows = evaluate(model, data.dataset("train", tasks=["cls"]))
    assert len(rows) == 4 and all(abs(sum(r["prob"]) - 1) < 1e-5 for r in rows)
    assert 0.0 <= summarize(rows)["accuracy"] <= 1.0


def test_retrieval_recall_hand_made():
    e = torch.eye(3)
    # query 0: its volume (0) is best; query 1: volume 1 ties volume 2 (tie counts in its favour);
    # query 2: volume 2 ranks third
    volume = torch.stack([e, torch.stack([e[0], e[1], e[1]]), torch.stack([e[2], e[2] + e[0],
                                                                         -e[2]])])
    slices = torch.stack([e[0], e[1], e[2]])
    out = slice_to_volume_recall(volume, slices, torch.tensor([0, 1, 2]), ks=(1, 2, 3))
    assert out == {"R@1": pytest.approx(2 / 3), "R@2": pytest.approx(2 / 3), "R@3": 1.0}
    with pytest.raises(ValueError, match="volume indices"):
        slice_to_volume_recall(volume, slices, torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="volume_emb"):
        slice_to_volume_recall(volume[0], slices, torch.tensor([0, 1, 2]))


def test_retrieval_eval_on_model(pretrained):
    model, data = pretrained["model"], pretrained["data"]
    out = retrieval_eval(model, data.dataset("train", tasks=["slice"]))
    assert out["queries"] == 36 and out["volumes"] == 4
    assert 0.0 <= out["image/R@1"] <= out["image/R@5"] == 1.0  # 4 volumes: R@5 is certain


def test_seg_class_from_target_or_prompt():
    classes = ("kidney", "left kidney", "liver")
    sample = {"meta": {"id": "c/seg/1"}, "prompt": "Please segment the left kidney."}
    assert class_of(sample, classes) == 1
    assert class_of({"meta": {"id": "x", "target": "liver"}, "prompt": ""}, classes) == 2
    with pytest.raises(ValueError, match="none of recipe.classes"):
        class_of({"meta": {"id": "c/seg/2"}, "prompt": "Segment the spleen."}, classes)


def test_teacherless_build_only_on_meta():
    cfg = compose(["recipe=med3dinsight", "~head", "recipe.teacher_dim=16"])
    counted = build_on_meta(cfg)
    reference = build_on_meta(compose(["recipe=med3dinsight"]))
    assert (sum(p.numel() for p in counted.bridge.parameters())
            == sum(p.numel() for p in reference.bridge.parameters()))
    with pytest.raises(ValueError, match="needs a teacher"):
        build_model(cfg)
