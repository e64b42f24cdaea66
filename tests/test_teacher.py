"""Frozen 2D teacher (open_clip) and its on-disk embedding cache."""

import json

import pytest
import torch

from heads import teacher2d
from heads.teacher2d import TEST_CLIP, TeacherCache

TEXTS = ["axial slice 12: liver and spleen", "coronal slice 40: both kidneys", "sagittal: spine"]


@pytest.fixture(scope="module")
def teacher():
    return teacher2d.test_teacher()


def test_embeddings_are_normalised_and_the_teacher_frozen(teacher):
    out = teacher(torch.rand(3, 1, 40, 24), TEXTS)
    assert out.image.shape == out.text.shape == (3, 16)
    torch.testing.assert_close(out.image.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out.text.norm(dim=-1), torch.ones(3))
    teacher.train()
    assert not teacher.training and not teacher.model.training
    assert not any(p.requires_grad for p in teacher.parameters())
    again = teacher2d.test_teacher()
    torch.testing.assert_close(again.embed_texts(TEXTS), out.text)  # seeded: deterministic
    assert again.identity == teacher.identity != teacher2d.test_teacher(seed=1).identity


def test_average_pooling_teacher_tells_similar_slices_apart(teacher):
    avg = teacher2d.test_teacher(pool_type="avg")
    assert avg.identity != teacher.identity  # separate caches
    torch.testing.assert_close(avg.embed_texts(TEXTS), teacher.embed_texts(TEXTS))  # same weights
    base = torch.rand(1, 1, 32, 32) * 0.2 + 0.4
    varied = base.clone()
    varied[..., 8:16, 8:16] = 1.0  # a bright structure in one quarter of the slice
    pair = torch.cat([base, varied])

    def distance(t):  # 1 - cosine of the two slices' embeddings
        e = t.embed_images(pair).double()
        return float(1 - e[0] @ e[1])

    # the random class token hardly sees the change (measured 1.3e-4); the patch mean does (1e-2)
    assert distance(avg) > 10 * distance(teacher)
    with pytest.raises(ValueError, match="pool_type"):
        teacher2d.test_teacher(pool_type="max")


def test_grey_slices_become_three_normalised_channels(teacher):
    x = teacher.preprocess(torch.full((2, 1, 20, 50), 0.5))
    assert x.shape == (2, 3, 32, 32)
    expected = (0.5 - teacher.mean) / teacher.std
    torch.testing.assert_close(x, expected.expand_as(x))
    with pytest.raises(ValueError, match=r"\(B, 1, h, w\)"):
        teacher.preprocess(torch.rand(2, 20, 50))


def test_local_directory_loads_through_open_clip(teacher, tmp_path):
    config = {"model_cfg": TEST_CLIP, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    torch.save(teacher.model.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    local = teacher2d.biomedclip_teacher(str(tmp_path))
    torch.testing.assert_close(local.embed_texts(TEXTS), teacher.embed_texts(TEXTS))
    assert local.image_size == 32 and local.embed_dim == 16
    torch.testing.assert_close(local.mean.flatten(), torch.full((3,), 0.5))
    with torch.device("meta"):
        assert next(teacher2d.biomedclip_teacher(str(tmp_path)).parameters()).is_meta
    (tmp_path / "open_clip_pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="no weights file"):
        teacher2d.biomedclip_teacher(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        teacher2d.biomedclip_teacher(str(tmp_path / "nope"))


def test_cache_second_call_does_not_run_the_teacher(teacher, tmp_path, monkeypatch):
    cache = TeacherCache(teacher, tmp_path)
    keys = [("case1", "axial", 12), ("case1", "coronal", 40), ("case2", "sagittal", 7)]
    slices = torch.rand(3, 1, 32, 32)
    image, text = cache.get_or_compute(keys, slices, TEXTS)
    assert cache.misses == 3 and cache.hits == 0

    def fail(*args, **kwargs):
        raise AssertionError("the teacher ran on a cached slice")

    monkeypatch.setattr(teacher.model, "encode_image", fail)
    monkeypatch.setattr(teacher.model, "encode_text", fail)
    image2, text2 = cache.get_or_compute(keys, slices, TEXTS)
    assert cache.hits == 3 and torch.equal(image, image2) and torch.equal(text, text2)
    # a changed slice text is a different key: the teacher must run again
    with pytest.raises(AssertionError, match="ran on a cached slice"):
        cache.get_or_compute(keys[:1], slices[:1], ["another description"])


def test_cache_is_separate_per_teacher_and_survives_a_truncated_file(teacher, tmp_path):
    keys, slices = [("c", "axial", 1)], torch.rand(1, 1, 32, 32)
    first = TeacherCache(teacher, tmp_path)
    other = TeacherCache(teacher2d.test_teacher(seed=1), tmp_path)
    assert first.dir != other.dir
    a, _ = first.get_or_compute(keys, slices, TEXTS[:1])
    b, _ = other.get_or_compute(keys, slices, TEXTS[:1])
    assert other.misses == 1 and not torch.allclose(a, b)
    path = next(first.dir.rglob("*.safetensors"))
    path.write_bytes(path.read_bytes()[:10])
    again, _ = TeacherCache(teacher, tmp_path).get_or_compute(keys, slices, TEXTS[:1])
    torch.testing.assert_close(again, a)
    with pytest.raises(ValueError, match="must match"):
        first.get_or_compute(keys, slices, TEXTS)
