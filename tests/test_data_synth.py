"""The synthetic phantom benchmark: determinism, sample contract, location questions, CLI."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.data import benchmark_corpus
from zoo.data import phantom as P
from zoo.data.synth import read_synth, write_benchmark
from zoo.data.templates import QUESTION_TYPES
from zoo.types import PLANES, TASK_NAMES


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return write_benchmark(tmp_path_factory.mktemp("synth") / "b", cases=8, size=(16, 32, 32))


def test_same_seed_gives_identical_bytes_and_other_seed_differs(bench, tmp_path):
    again = write_benchmark(tmp_path / "again", cases=8, size=(16, 32, 32))
    assert _digest(bench) == _digest(again)
    other = write_benchmark(tmp_path / "other", cases=8, size=(16, 32, 32), seed=1)
    assert _digest(other)["abdomen_00000/image.npy"] != _digest(bench)["abdomen_00000/image.npy"]


def test_samples_follow_the_contract(bench, tmp_path):
    source = read_synth(bench, manifest=tmp_path / "m.json")
    assert set(source.tasks()) == {"caption", "vqa_closed", "vqa_open", "rec", "reg", "seg",
                                   "refseg", "slice", "cls"}
    assert len(source.split_hash) == 64
    info = source.describe()
    assert sum(info["cases"].values()) == 8
    for split in ("train", "validation", "test"):
        ds = source.dataset(split)
        for i in range(0, len(ds), 7):
            s = ds[i]
            img = s["image"]
            assert img.dtype == torch.float32 and img.shape == (1, 16, 32, 32)
            assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
            assert s["task"] in TASK_NAMES and "<image>" not in s["prompt"]
            assert s["meta"]["plane"] in PLANES and len(s["meta"]["spacing"]) == 3
            if s["task"] == "vqa_closed":
                assert len(s["choices"]) == 4 and s["answer"][0] in "ABCD"
                assert s["meta"]["question_type"] in QUESTION_TYPES
            if s["task"] == "rec" and "box" in s:
                assert "<bx_start>[" in s["answer"] and all(0 <= v <= 1 for v in s["box"])
            if s["task"] in ("seg", "refseg"):
                assert s["mask"].shape == (1, 16, 32, 32)
                assert ("[SEG]" in s["answer"]) == bool(s["mask"].sum() > 0)
            if s["task"] == "slice":
                assert s["slice"]["image"].dim() == 3 and s["prompt"] == s["slice"]["text"]
    only = source.dataset("train", tasks=["vqa_closed"])
    assert all(it["task"] == "vqa_closed" for it in only.items)


def test_registered_test_synth_caches_by_parameters(tmp_path):
    from zoo.data.synth import test_synth

    a = test_synth(cache_dir=str(tmp_path))
    b = test_synth(cache_dir=str(tmp_path))
    assert a.split_hash == b.split_hash and len(list(tmp_path.glob("synth-*"))) == 1
    test_synth(cache_dir=str(tmp_path), seed=3)
    assert len(list(tmp_path.glob("synth-*"))) == 2


def test_lesion_scale_enlarges_abdominal_lesions_in_their_part_and_keeps_the_default_key():
    from zoo.data.synth import params_key

    assert params_key(6, (16, 32, 32), 0, "both") == params_key(6, (16, 32, 32), 0, "both", 1.0)
    assert params_key(6, (16, 32, 32), 0, "both") != params_key(6, (16, 32, 32), 0, "both", 2.0)
    grown = 0
    for i in range(40):
        small, big = (P.generate_case(i, 0, (16, 32, 32), "abdomen", scale) for scale in (1.0, 2.0))
        if not small.findings:
            continue
        lesion = len(small.classes)
        grown += int((big.labels == lesion).sum() > (small.labels == lesion).sum())
        assert big.findings[0].part == small.findings[0].part
        centre = _physical_centroid(big)
        organ = {"liver": -0.15, "spleen": -0.12, "kidney": 0.32, "lung": -0.72}[small.findings[0].organ]
        upper = big.findings[0].part == "upper"  # the organ centres jitter by up to 0.04
        assert centre["s"] < organ + 0.05 if upper else centre["s"] > organ - 0.05, big.case_id
    assert grown >= 30
    with pytest.raises(ValueError, match="lesion_scale"):
        P.generate_case(0, 0, (16, 32, 32), "abdomen", 0.0)


def _physical_centroid(case):
    coords = np.argwhere(case.labels == len(case.classes)).mean(0)
    axes = P.PLANE_AXES[case.plane]
    return {ax: (c + 0.5) / n * 2 - 1 for ax, c, n in zip(axes, coords, case.labels.shape)}


@pytest.fixture(scope="module")
def location_cases():
    cases = [P.generate_case(i, 7, (16, 32, 32), fam) for i in range(180)
             for fam in P.FAMILIES]
    return [c for c in cases if c.findings and c.findings[0].side is not None]


def test_location_answers_match_the_image(location_cases):
    for case in location_cases:
        f, centre = case.findings[0], _physical_centroid(case)
        assert (centre["l"] > 0) == (f.side == "left"), case.case_id
        organ_centre = {"head": -0.05 if f.kind == "intraventricular" else 0.0,
                        "abdomen": None}[case.family]
        if organ_centre is not None:
            assert (centre["s"] < organ_centre) == (f.part == "upper"), case.case_id


def _two_fold_accuracy(features, labels):
    """Ridge-regression classifier (closed form) on standardised features, 2-fold."""
    x = np.array(features, dtype=np.float64)
    x = np.hstack([(x - x.mean(0)) / (x.std(0) + 1e-6), np.ones((len(x), 1))])
    y = np.eye(4)[labels]
    correct = 0
    for fold in range(2):
        test = np.arange(len(y)) % 2 == fold
        a = x[~test]
        w = np.linalg.solve(a.T @ a + 1.0 * np.eye(a.shape[1]), a.T @ y[~test])
        correct += int(((x[test] @ w).argmax(1) == np.array(labels)[test]).sum())
    return correct / len(y)


def test_location_questions_defeat_global_intensity_baselines(location_cases):
    labels = [2 * (c.findings[0].side == "left") + (c.findings[0].part == "upper")
              for c in location_cases]
    assert len(labels) > 150
    counts = np.bincount(labels, minlength=4)
    half = len(labels) // 2
    majority = int(np.argmax(np.bincount(labels[:half], minlength=4)))
    majority_acc = float(np.mean(np.array(labels[half:]) == majority))
    hist = [np.histogram(c.image, bins=32, range=(0, 1))[0] / c.image.size for c in location_cases]
    hist_acc = _two_fold_accuracy(hist, labels)
    assert counts.min() / counts.max() > 0.6, counts        # balanced answers
    assert majority_acc < 0.4 and hist_acc < 0.4, (majority_acc, hist_acc)


def test_closed_vqa_answer_sets_are_balanced():
    from collections import Counter

    from zoo.data.templates import vqa_items

    answers = {}
    for i in range(60):
        for fam in P.FAMILIES:
            for q in vqa_items(P.generate_case(i, 0, (8, 16, 16), fam)):
                answers.setdefault(q["question_type"], Counter())[q["answer_choice"]] += 1
                assert q["choices"][q["answer_choice"] and "ABCD".index(q["answer_choice"])] == q["answer"]
    for qtype, letters in answers.items():
        assert len(letters) == 4 and max(letters.values()) < 0.45 * sum(letters.values()), qtype


def test_corpus_covers_every_benchmark_text(bench, tmp_path):
    import re

    tokens = re.compile(r"<[a-z_]+>|\[SEG\]|[A-Za-z]+|\d+|[^\sA-Za-z\d]").findall
    words = {w for text in benchmark_corpus() for w in tokens(text)}
    source = read_synth(bench, manifest=tmp_path / "m.json")
    for split in ("train", "validation", "test"):
        for s in source.dataset(split):
            for text in (s["prompt"], s["answer"], *(s.get("choices") or [])):
                for w in tokens(text):
                    assert w in words, (w, text)


def test_cli_synth_then_check(tmp_path, capsys):
    from zoo.cli import main

    out = tmp_path / "cli"
    assert main(["data", "synth", "--out", str(out), "--cases", "4", "--size", "16", "32", "32"]) == 0
    assert main(["data", "check", "--format", "synth", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith("ok")
    (out / "head_00000" / "image.npy").write_bytes(b"\x93NUMPY garbage")
    assert main(["data", "check", "--format", "synth", str(out)]) == 1
    assert "head_00000/image.npy" in capsys.readouterr().err
