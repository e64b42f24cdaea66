"""LaMed's [SEG] path (SegVol prompts from LM hidden states) and REC/REG boxes, miniature."""

from functools import partial

import numpy as np
import pytest
import torch

from connectors.spatial_pool import spatial_pool
from encoders.vit3d import test_vit3d as tiny_vit
from heads import causal_lm as clm
from heads.segvol import test_segvol as tiny_segvol
from recipes.lamed import lamed
from zoo.types import Segmenter
from recipes.lamed_seg import generated_seg_positions, save_mask_nifti, teacher_seg_positions
from zoo.boxes import box_from_mask, box_iou, format_box, parse_box, precision_at_iou
from zoo.seam import decode_generated
from zoo.tokenizer import build_local_tokenizer

SIZE = (16, 32, 32)
CORPUS = ["Please segment the liver. Sure, it is [SEG].", "There is no spleen in this image.",
          "The liver is [SEG] and the spleen is [SEG].", "The target is kidney.",
          "Where is the liver? Coordinates are <bx_start>[0.250, 0.125, 0.500, 0.750, 0.625, "
          "0.875]<bx_end>. What is the target in the region <bx_start>[0.000, 1.000]<bx_end>?"] * 3


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread avoids oversubscription on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_local_tokenizer(CORPUS, vocab_size=300, cache_dir=tmp_path_factory.mktemp("tok"))


def build(tokenizer, share_encoder=False, **kw):
    torch.manual_seed(0)
    return lamed(encoder=partial(tiny_vit, img_size=SIZE, depth=1),
                 connector=partial(spatial_pool, kernel=(2, 1, 1)),
                 lm=partial(clm.test_llama, tokenizer=tokenizer, num_layers=1, hidden_size=32,
                            num_heads=2, intermediate_size=64),
                 head=partial(tiny_segvol), image_size=SIZE, train_lm="full", max_length=96,
                 share_encoder=share_encoder, **kw)


@pytest.fixture(scope="module")
def model(tokenizer):
    return build(tokenizer)


def sample(answer, mask_channels=1, task="seg", seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(mask_channels, *SIZE)
    for k in range(mask_channels):
        mask[k, 4 + k:10, 8:20, 6 + 4 * k:18] = 1
    return {"image": torch.rand(1, *SIZE, generator=g), "task": task,
            "prompt": "Please segment the liver.", "answer": answer,
            "mask": mask if mask_channels else None, "meta": {"id": f"s{seed}"}}


def test_instruct_stage_trains_the_seg_path_and_gradients_reach_mlp_and_head(model):
    trainable = model.apply_stage("instruct")
    assert any(n.startswith("seg_projector.") for n in trainable)
    assert any(n.startswith("heads.seg.image_encoder.") for n in trainable)
    assert not any(n.startswith("heads.seg.mask_decoder.iou_prediction_head") for n in trainable)
    model.zero_grad()
    out = model(model.collate([sample("Sure, it is [SEG].", seed=1),
                               sample("The liver is [SEG] and the spleen is [SEG].", 2, seed=2)]))
    assert out.logs["seg_masks"] == 3.0 and out.logs["seg_loss"] > 0
    assert out.loss.item() == pytest.approx(float(out.logs["lm_loss"] + out.logs["seg_loss"]),
                                           rel=1e-5)
    out.loss.backward()
    seg = {n: p for n, p in model.named_parameters()
           if p.requires_grad and n.startswith(("seg_projector.", "heads."))}
    missing = [n for n, p in seg.items() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert seg and not missing
    # the LM itself gets the seg gradient too (through the [SEG] hidden states)
    assert model.lm.model.get_input_embeddings().weight.grad is not None


def test_no_target_answers_and_mixed_batches_carry_no_seg_loss(model):
    model.apply_stage("instruct")
    no_target = sample("There is no spleen in this image.", seed=3)   # mask, but no [SEG]
    text_only = sample("The target is kidney.", 0, task="reg", seed=4)
    batch = model.collate([no_target, text_only])
    assert isinstance(batch["mask"], list) and batch["mask"][1] is None
    out = model(batch)
    assert out.logs["seg_masks"] == 0.0 and "seg_loss" not in out.logs
    assert out.loss.item() == pytest.approx(float(out.logs["lm_loss"]))
    mixed = model.collate([text_only, sample("Sure, it is [SEG].", seed=5)])  # first has no mask
    assert mixed["mask"][0] is None and mixed["mask"][1].shape == (1, *SIZE)
    assert model(mixed).logs["seg_masks"] == 1.0


def test_multiple_seg_tokens_get_their_own_masks_and_targets(model, tokenizer):
    model.apply_stage("instruct")
    two = sample("The liver is [SEG] and the spleen is [SEG].", 2, seed=6)
    batch = model.collate([two])
    seg_id = model.lm.special_ids["[SEG]"]
    where = teacher_seg_positions(batch["labels"], seg_id)
    assert where.sum() == 2 and bool((batch["input_ids"][:, 1:][where[:, :-1]] == seg_id).all())
    assert model(batch).logs["seg_masks"] == 2.0
    shared = model(model.collate([sample("The liver is [SEG] and the spleen is [SEG].", 1)]))
    assert shared.logs["seg_masks"] == 2.0            # one channel is shared by both tokens
    with pytest.raises(ValueError, match="2 \\[SEG\\] tokens but the mask has 3 channels"):
        model(model.collate([sample("The liver is [SEG] and the spleen is [SEG].", 3)]))


class Script:
    """Forces greedy decoding to emit a scripted token sequence per row (then eos)."""

    def __init__(self, rows, eos):
        self.rows, self.eos = rows, eos

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1]  # generation from embeddings: input_ids hold new tokens only
        forced = torch.full_like(scores, float("-inf"))
        for r, row in enumerate(self.rows):
            forced[r, row[step] if step < len(row) else self.eos] = 0
        return forced


def test_segment_returns_one_probability_mask_per_generated_seg(model, tokenizer):
    from transformers import LogitsProcessorList

    ids = model.lm.special_ids
    word = tokenizer("liver", add_special_tokens=False)["input_ids"][0]
    script = Script([[word, ids["[SEG]"], word, ids["[SEG]"], model.lm.eos_id, ids["[SEG]"]],
                     [word, model.lm.eos_id, ids["[SEG]"], ids["[SEG]"], word, word]],
                    model.lm.eos_id)
    samples = [sample("", seed=7), sample("", seed=8)]
    model.train()
    texts, masks = model.segment(samples, max_new_tokens=6,
                                 logits_processor=LogitsProcessorList([script]))
    assert texts[0].count("[SEG]") == 2 and "[SEG]" not in texts[1]   # cut at eos
    assert masks[0].shape == (2, *SIZE) and masks[1].shape == (0, *SIZE)
    assert masks[0].dtype == torch.float32 and 0 <= masks[0].min() and masks[0].max() <= 1
    assert not torch.equal(masks[0][0], masks[0][1])   # different hidden states, own masks
    assert model.training                              # the previous mode is restored


def test_generated_seg_positions_stop_at_eos():
    ids = torch.tensor([[5, 9, 2, 9], [9, 9, 9, 2]])
    assert generated_seg_positions(ids, 9, 2).tolist() == [[False, True, False, False],
                                                          [True, True, True, False]]


def test_unparsable_generated_boxes_are_misses_not_crashes(model, tokenizer):
    rec = sample("Coordinates are " + format_box([0.25, 0.125, 0.5, 0.75, 0.625, 0.875]) + ".",
                 0, task="rec", seed=9)
    texts = model.generate([rec, rec], max_new_tokens=6)        # an untrained model: garbage
    garbage = texts + ["<bx_start>[0.1, 0.2]<bx_end>", "[nan, 0, 0, 1, 1, 1]",
                       "<bx_start>[0.9, 0.2, 0.3, 0.1, 0.5, 0.6]<bx_end>", "", None]
    preds = [parse_box(t) for t in garbage]
    assert all(p is None for p in preds[2:])
    target = [0.25, 0.125, 0.5, 0.75, 0.625, 0.875]
    assert precision_at_iou(preds[2:], [target] * len(preds[2:])) == 0.0
    assert precision_at_iou([target] + preds[2:], [target] * (len(preds) - 1)) == pytest.approx(
        1 / (len(preds) - 1))


def test_rec_reg_boxes_round_trip_through_the_tokenizer(model):
    mask = torch.zeros(*SIZE)
    mask[3:9, 5:20, 10:30] = 1
    box = box_from_mask(mask)
    rec = {"image": torch.zeros(1, *SIZE), "task": "rec", "prompt": "Where is the liver?",
           "answer": f"Coordinates are {format_box(box)}."}
    reg = {"image": torch.zeros(1, *SIZE), "task": "reg",
           "prompt": f"What is the target in the region {format_box(box)}?",
           "answer": "The target is liver."}
    batch = model.collate([rec, reg])
    answer_ids = batch["input_ids"][0][batch["labels"][0] != -100][None]
    decoded = decode_generated(model.lm.tokenizer, answer_ids)[0]
    assert parse_box(decoded) == box and box_iou(parse_box(decoded), box) == pytest.approx(1.0)
    prompt_ids = batch["input_ids"][1][(batch["labels"][1] == -100) & (batch["attention_mask"][1] > 0)]
    prompt_text = decode_generated(model.lm.tokenizer, prompt_ids[None])[0]
    assert parse_box(prompt_text) == box


def test_shared_encoder_feeds_the_recipe_encoders_tokens(tokenizer):
    shared = build(tokenizer, share_encoder=True)
    assert shared.heads["seg"].image_encoder is None
    assert shared.heads["seg"].embed_dim == shared.encoder.out_dim
    trainable = shared.apply_stage("instruct")
    assert not any(n.startswith("heads.seg.image_encoder") for n in trainable)
    out = shared(shared.collate([sample("Sure, it is [SEG].", seed=10)]))
    out.loss.backward()
    patch = shared.encoder.patch_embedding.patch_embeddings[1].weight
    assert out.logs["seg_masks"] == 1.0 and patch.grad is not None
    # the encoder's gradient includes the seg loss: it differs from the LM-only gradient
    lm_only = patch.grad.clone()
    shared.zero_grad()
    lm_out = shared(shared.collate([sample("There is no spleen in this image.", seed=10)]))
    lm_out.loss.backward()
    assert not torch.allclose(lm_only, patch.grad)


def test_segment_needs_a_head(tokenizer):
    plain = lamed(encoder=partial(tiny_vit, img_size=SIZE, depth=1),
                  connector=partial(spatial_pool, kernel=(2, 1, 1)),
                  lm=partial(clm.test_llama, tokenizer=tokenizer, num_layers=1, hidden_size=32,
                             num_heads=2, intermediate_size=64),
                  image_size=SIZE, train_lm="full", max_length=96)
    assert plain.heads is None and "seg_projector" not in dict(plain.named_children())
    assert not isinstance(plain, Segmenter)  # only a model built with a SegVol head segments


def test_masks_are_saved_as_nifti_in_the_prepared_scans_world_frame(tmp_path):
    import nibabel as nib

    from zoo.data.prepare import load_raw_item
    from zoo.data.prepare import PrepSpec

    # a source scan (X, Y, Z) with an oblique-free, shifted, anisotropic affine and a bright cube
    source = np.full((40, 36, 20), -1000.0, dtype=np.float32)
    source[4:36, 4:32, 2:18] = 40.0                       # body (foreground for cropping)
    source[10:18, 20:28, 5:11] = 300.0                    # the "organ"
    affine = np.diag([-0.8, 0.9, 2.5, 1.0])
    affine[:3, 3] = [30.0, -20.0, 5.0]
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(source, affine), str(path))
    spec = PrepSpec(modality="ct", size=(16, 32, 32), window=(0.0, 400.0))
    from dataclasses import asdict

    data, meta = load_raw_item({"image": path, "spec": asdict(spec)})
    assert np.allclose(meta["source_affine"], affine)
    organ = torch.from_numpy(data[0] > 0.5)               # model-space mask (D, H, W)
    out = save_mask_nifti(organ.float(), meta, tmp_path / "mask.nii.gz")
    saved = nib.load(str(out))
    assert np.allclose(saved.affine, meta["affine"]) and saved.shape == organ.shape[::-1]

    def world_centroid(volume, aff):
        index = np.argwhere(volume > 0.5).mean(0)
        return aff[:3, :3] @ index + aff[:3, 3]

    expected = world_centroid((source > 200).astype(np.float32), affine)
    got = world_centroid(np.asarray(saved.dataobj), saved.affine)
    assert np.linalg.norm(got - expected) < 2.5           # mm; resampled grid, not voxel-exact
