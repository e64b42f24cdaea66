"""``zoo data check`` finds volumes whose content is in more than one split."""

import json

import numpy as np
import torch

from zoo.data.leaks import LeakFinder, fingerprint, near_pairs


def volume(seed: int) -> np.ndarray:
    """A smooth (1, 16, 32, 32) volume in [0, 1] (a blurred random field: structure at the
    scale of the fingerprint's cells, as in a scan)."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(np.random.default_rng(seed).normal(size=(16, 32, 32)), 3)
    field = (field - field.min()) / (field.max() - field.min())
    return field[None].astype(np.float32)


def test_near_pairs_equal_brute_force():
    rng = np.random.default_rng(0)
    prints = rng.normal(0, 0.15, (300, 8 * 16 * 16)).astype(np.float16)
    prints[1] = prints[0] + rng.uniform(-0.1, 0.1, prints.shape[1]).astype(np.float16)
    prints[7] = prints[3]
    found = {(i, j) for i, j, _ in near_pairs(prints, 0.5)}
    full = prints.astype(np.float32)
    brute = {(i, j) for i in range(len(full)) for j in range(i + 1, len(full))
             if np.abs(full[i] - full[j]).max() <= 0.5}
    assert found == brute and {(0, 1), (3, 7)} <= found


def test_copies_match_and_different_volumes_do_not():
    base = torch.from_numpy(volume(0))
    copies = {"rescaled": base * 0.7 + 0.1,
              "noised": base + 0.01 * torch.randn(base.shape, generator=torch.Generator().manual_seed(1))}
    for name, copy in copies.items():
        assert np.abs(fingerprint(base).astype(np.float32) - fingerprint(copy)).max() <= 0.2, name
    assert np.abs(fingerprint(base).astype(np.float32) - fingerprint(torch.from_numpy(volume(1)))).max() > 0.2
    finder = LeakFinder()
    for i, (split, image) in enumerate([("train", base), ("test", base.clone()), ("test", copies["noised"]),
                                        ("train", torch.from_numpy(volume(2)))]):
        finder.add(f"v{i}.npy", split, f"case{i}", image)
    report = finder.report()
    assert [[v["case"] for v in group] for group in report["exact"]] == [["case0", "case1"]]
    assert [(p["a"]["case"], p["b"]["case"]) for p in report["near"]] == [("case0", "case2")]
    assert report["groups"] == {"case0": "case0", "case1": "case0", "case2": "case0"}


def test_check_reports_a_leaking_file_split_and_the_grouped_hash_split_removes_it(tmp_path, capsys):
    """M3D-Cap's own split can hold one scan in train and test; check names it, writes the
    groups, and ``split_by=hash patients=<groups>`` puts the copies in one split."""
    from zoo.data.cli import main

    entries = {}
    for i in range(8):
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        image = volume(0) if i in (0, 5) else volume(i)          # case5 is a copy of case0
        if i == 6:
            image = np.clip(volume(0) * 0.9 + 0.05, 0, 1)        # case6: case0 re-windowed
        np.save(folder / "image.npy", image)
        (folder / "text.txt").write_text(f"Report {i}.")
        entries[i] = {"image": f"case{i}/image.npy", "text": f"case{i}/text.txt"}
    (tmp_path / "M3D_Cap.json").write_text(json.dumps({
        "train": [entries[i] for i in (0, 1, 2, 3)], "validation": [entries[4]],
        "test": [entries[i] for i in (5, 6, 7)]}))
    groups = tmp_path / "groups.csv"
    args = ["check", "--format", "m3d_cap", str(tmp_path), "--option", "size=[16,32,32]",
            "--option", f"manifest={tmp_path / 'file.json'}"]
    assert main(args + ["--groups", str(groups)]) == 0
    out = capsys.readouterr().out
    assert "LEAK: m3d_cap: 1 volume content(s) in more than one split (exact), 1 near-duplicate" in out
    assert "case0/image.npy [train, case case0] = " in out and "case5/image.npy [test, case case5]" in out
    assert main(args + ["--strict"]) == 1
    capsys.readouterr()
    assert groups.read_text() == "case,patient_id\ncase0,case0\ncase5,case0\ncase6,case0\n"
    assert main(["check", "--format", "m3d_cap", str(tmp_path), "--strict",
                 "--option", "size=[16,32,32]",
                 "--option", "split_by=hash", "--option", f"patients={groups}",
                 "--option", f"manifest={tmp_path / 'hash.json'}"]) == 0
    assert "no volume is in more than one split (8 volumes" in capsys.readouterr().out
