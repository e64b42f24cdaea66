"""experiments/location_readout.py: labels, the frozen read-out stage, and a miniature run."""

import json

import pytest
import torch

from experiments.location_readout import LOCATION_CLASSES, location_label, main, read


@pytest.mark.parametrize("answer, expected", [
    ("B. lower part of the right kidney", "lower right"),
    ("upper part of the left lung", "upper left"),
    ("D. Upper part of the Right kidney", "upper right"),
])
def test_location_label(answer, expected):
    assert LOCATION_CLASSES[location_label(answer)] == expected


@pytest.mark.parametrize("answer", ["A. the liver", "upper and lower part of the left lung",
                                    "upper part of the left and right lung"])
def test_location_label_refuses_other_answers(answer):
    with pytest.raises(ValueError, match="does not name exactly one"):
        location_label(answer)


def test_read_trains_only_the_lm():
    from zoo.build import build_model
    from zoo.config import compose

    model = build_model(compose(["experiment=compare_strategies"]))
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("lm.")}
    lm_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("lm.")}
    sample = {"image": torch.rand(1, 32, 64, 64), "prompt": "Where is the lesion?",
              "answer": "lower part of the right kidney", "task": "vqa_open"}
    loss = read(model, [sample], steps=2, lr=1e-2, seed=0, batch_size=2)
    assert loss > 0
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
    assert any(not torch.equal(after[k], v) for k, v in lm_before.items())


def test_miniature_run_prints_a_table_and_json_and_pools_saved_runs(tmp_path, capsys):
    saved = tmp_path / "run.json"
    assert main(["data.cases=60", f"data.cache_dir={tmp_path}/data", "lm_warmup.steps=2",
                 f"lm_warmup.cache_dir={tmp_path}/cache",
                 "sweep.only=[vit3d_spatial_pool,vit3d_perceiver]",
                 "--expose-steps", "2", "--read-steps", "2", "--save", str(saved)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert main(["--pool", str(saved), str(saved)]) == 0  # a run pooled with itself: same table
    pooled = capsys.readouterr().out.strip().splitlines()
    keep = [line.rsplit(" | ", 1)[0] for line in lines if line.startswith("| vit3d_")]
    assert [line.rsplit(" | ", 1)[0] for line in pooled if line.startswith("| vit3d_")] == keep
    rows = [line for line in lines if line.startswith("| vit3d_")]
    assert [row.split(" | ")[0] for row in rows] == ["| vit3d_spatial_pool", "| vit3d_perceiver"]
    result = json.loads(lines[-1])
    assert [r["name"] for r in result["results"]] == ["vit3d_spatial_pool", "vit3d_perceiver"]
    for r in result["results"]:
        assert r["items"] > 0
        assert all(0.0 <= r[f"{k}_accuracy"] <= 1.0 for k in ("exposed", "read", "majority"))


def test_pool_refuses_runs_on_other_items():
    from experiments.location_readout import pool

    run = [{"name": "a", "items": 2, "seconds": 1.0, "ids": ["x", "y"],
            "scores": {"read": [1.0, 0.0]}}]
    other = [{**run[0], "ids": ["x", "z"]}]
    assert pool([run, run])[0]["scores"] == {"read": [1.0, 0.0]}
    with pytest.raises(ValueError, match="different test items"):
        pool([run, other])
    with pytest.raises(ValueError, match="same variants"):
        pool([run, [{**run[0], "name": "b"}]])
