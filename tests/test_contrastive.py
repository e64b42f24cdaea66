import math

import pytest
import torch
import torch.nn.functional as F

from zoo import ENCODERS, HEADS
from zoo.retrieval import retrieval_recall
from zoo.types import EmbeddingOutput, VisualTokens


def make_tokenizer():
    from transformers import BertTokenizer  # transformers 5: the fast tokenizer, vocab in memory

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "liver", "lesion", "no", "kidney",
             "cyst", "normal", "ct", "the", "a"]
    return BertTokenizer(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)


def batch(head, b=4):
    visual = VisualTokens(torch.randn(b, 8, 64), None, {"cls": torch.randn(b, 64)})
    ids = torch.randint(5, head.text_model.config.vocab_size, (b, 6))
    ids[:, 0] = 2
    return visual, ids, torch.ones_like(ids)


def reference_loss(image, text, scale):
    logits = scale * image @ text.T
    labels = torch.arange(len(image))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def test_registered_builders():
    assert {"contrastive", "test_contrastive"} <= set(HEADS.list())
    with torch.device("meta"):
        head = HEADS.build("contrastive")
    assert head.text_dim == 768 and head.image_dim == 768 and head.out_dim == 768
    assert head.text_model.config.num_hidden_layers == 12
    assert head.image_proj.weight.shape == (768, 768) and head.text_proj.weight.shape == (768, 768)


def test_forward_loss_and_scale():
    head = HEADS.build("test_contrastive")
    visual, ids, mask = batch(head)
    out = head(visual, ids, mask)
    assert isinstance(out, EmbeddingOutput)
    assert out.image.shape == (4, 32) and out.text.shape == (4, 32)
    torch.testing.assert_close(out.image.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(out.text.norm(dim=-1), torch.ones(4))
    assert math.isclose(float(head.logit_scale.detach()), math.log(1 / 0.07), rel_tol=1e-6)
    assert math.isclose(float(out.logit_scale), 1 / 0.07, rel_tol=1e-5)
    torch.testing.assert_close(out.loss, reference_loss(out.image, out.text, 1 / 0.07))
    out.loss.backward()
    assert head.logit_scale.grad is not None and head.image_proj.weight.grad.abs().sum() > 0
    assert head.text_model.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert head(visual).text is None and head(visual).loss is None
    with torch.no_grad():
        head.logit_scale.fill_(10.0)
    assert float(head.scale().detach()) == 100.0  # clamped


def test_m3d_as_coded_scale_uses_raw_parameter():
    head = HEADS.build("test_contrastive", m3d_as_coded_scale=True)
    visual, ids, mask = batch(head)
    out = head(visual, ids, mask)
    raw = math.log(1 / 0.07)
    assert math.isclose(float(out.logit_scale), raw, rel_tol=1e-6)
    torch.testing.assert_close(out.loss, reference_loss(out.image, out.text, raw))


def test_image_pooling_and_input_errors():
    head = HEADS.build("test_contrastive")
    visual, ids, mask = batch(head)
    with pytest.raises(ValueError, match="no extras\\['cls'\\]"):
        head(VisualTokens(visual.tokens, None, {}))
    mean_head = HEADS.build("test_contrastive", image_pool="mean")
    assert mean_head(VisualTokens(visual.tokens, None, {})).image.shape == (4, 32)
    assert head(torch.randn(4, 64)).image.shape == (4, 32)
    with pytest.raises(ValueError, match=r"\(B, 64\)"):
        head(torch.randn(4, 10))
    with pytest.raises(ValueError, match="Did you mean: mean"):
        HEADS.build("test_contrastive", image_pool="maen")
    with pytest.raises(ValueError, match="4 images but 3 texts"):
        head(visual, ids[:3], mask[:3])
    with pytest.raises(ValueError, match="outside the text tower's vocabulary"):
        head(visual, ids + 1000, mask)
    with pytest.raises(ValueError, match="no tokenizer"):
        head.tokenize(["liver"])


def test_with_vit_encoder_cls():
    encoder = ENCODERS.build("test_vit3d")
    head = HEADS.build("test_contrastive", image_dim=encoder.out_dim)
    visual = encoder(torch.randn(2, 1, 32, 64, 64))
    _, ids, mask = batch(head, b=2)
    out = head(visual, ids, mask)
    out.loss.backward()
    assert encoder.cls_token.grad is not None and encoder.cls_token.grad.abs().sum() > 0


def test_tokenizer_object_and_local_text_pretrained(tmp_path):
    from transformers import BertConfig, BertModel

    tok = make_tokenizer()
    head = HEADS.build("test_contrastive", tokenizer=tok)
    assert head.text_model.config.vocab_size == len(tok)
    enc = head.tokenize(["liver lesion", "no kidney cyst at all"])
    assert enc["input_ids"].shape[0] == 2 and int(enc["input_ids"][0, 0]) == tok.cls_token_id
    visual, _, _ = batch(head, b=2)
    assert head(visual, **enc).loss.isfinite()

    model_dir = tmp_path / "tiny-bert"
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=24, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=48)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    local = HEADS.build("contrastive", image_dim=64, embed_dim=16, text_pretrained=str(model_dir))
    assert local.text_dim == 24 and local.tokenizer is not None
    out = local(visual, **local.tokenize(["normal ct", "liver cyst"]))
    assert out.text.shape == (2, 16) and out.loss.isfinite()
    with pytest.raises(FileNotFoundError, match="text_pretrained"):
        HEADS.build("contrastive", text_pretrained=str(tmp_path / "missing"))


def test_global_negatives_match_the_full_batch(monkeypatch):
    """Two simulated ranks: the mean of their local losses equals the single-process loss."""
    head = HEADS.build("test_contrastive")
    torch.manual_seed(3)
    image = F.normalize(torch.randn(6, 32), dim=-1)
    text = F.normalize(torch.randn(6, 32), dim=-1)
    scale = head.scale()
    full = head.loss(image, text, scale)
    halves = [(image[:3], text[:3]), (image[3:], text[3:])]
    dist = torch.distributed
    losses = []
    for rank in (0, 1):
        local_image, local_text = halves[rank]

        def gather(t, rank=rank, local_image=local_image):
            parts = [h[0] if t is local_image else h[1] for h in halves]
            parts[rank] = t
            return tuple(parts)

        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(dist, "get_world_size", lambda: 2)
        monkeypatch.setattr(dist.nn, "all_gather", gather)
        losses.append(head.loss(local_image, local_text, scale))
    torch.testing.assert_close((losses[0] + losses[1]) / 2, full)


def test_real_process_group_of_one(tmp_path):
    dist = torch.distributed
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        head = HEADS.build("test_contrastive")
        visual, ids, mask = batch(head)
        out = head(visual, ids, mask)
        torch.testing.assert_close(out.loss, reference_loss(out.image, out.text, 1 / 0.07))
        out.loss.backward()
        assert head.image_proj.weight.grad.abs().sum() > 0
    finally:
        dist.destroy_process_group()


def test_retrieval_recall_hand_computed():
    # 3 pairs in 2D. similarities image i (rows) x text j (columns):
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    text = torch.tensor([[1.0, 0.1], [1.0, 0.0], [0.0, 1.0]])
    # cosine: img0 ranks t1 (1.0) > t0 (0.995): own rank 1; img1: t2 (1.0) > t0 > t1: own rank 2;
    # img2: t0 (0.774) > t1 = t2 (0.707): own text t2 is tied behind t0 -> rank 1.
    # text queries: t0 -> i0 (0.995) > i2 (0.774): rank 0; t1 -> i0 (1.0) > i2: rank 2;
    # t2 -> i1 (1.0) > i2 (0.707): rank 1.
    result = retrieval_recall(image, text, ks=(1, 2, 3), sizes=(2, 5))
    assert set(result) == {f"{s}/{d}/R@{k}" for s in ("2", "all")
                           for d in ("image_to_text", "text_to_image") for k in (1, 2, 3)}
    assert result["all/image_to_text/R@1"] == 0.0
    assert result["all/image_to_text/R@2"] == pytest.approx(2 / 3)
    assert result["all/image_to_text/R@3"] == 1.0
    assert result["all/text_to_image/R@1"] == pytest.approx(1 / 3)
    assert result["all/text_to_image/R@2"] == pytest.approx(2 / 3)
    # first 2 pairs: img0 -> t1 (1.0) > t0: rank 1; img1 -> t1 (0) vs t0 (0.0995): rank 1
    assert result["2/image_to_text/R@1"] == 0.0 and result["2/image_to_text/R@2"] == 1.0
    # t0 -> i0 first; t1 -> i0 (1.0) > i1 (0): rank 1
    assert result["2/text_to_image/R@1"] == 0.5


def test_retrieval_recall_matches_torchmetrics():
    from torchmetrics.functional.retrieval import retrieval_recall as tm_recall

    image, text = torch.randn(40, 8), torch.randn(40, 8)
    result = retrieval_recall(image, text, ks=(1, 5), sizes=(20,))
    sim = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    for label, n in (("20", 20), ("all", 40)):
        s = sim[:n, :n]
        for direction, m in (("image_to_text", s), ("text_to_image", s.T)):
            for k in (1, 5):
                expected = torch.stack([tm_recall(m[i], torch.eye(n, dtype=torch.bool)[i], top_k=k)
                                        for i in range(n)]).mean()
                assert result[f"{label}/{direction}/R@{k}"] == pytest.approx(float(expected))
    with pytest.raises(ValueError, match="equal shape"):
        retrieval_recall(image, text[:3])
