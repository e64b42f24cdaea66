import json

import pytest

from zoo.cli import main
from zoo.registry import REGISTRIES


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_json_is_valid_and_complete(capsys):
    code, out, _ = run(capsys, "list", "--json")
    listing = json.loads(out)
    assert code == 0
    assert set(listing) == set(REGISTRIES)
    assert "lamed" in listing["recipe"] and "test_vit3d" in listing["encoder"]
    assert all(list(entries) == sorted(entries) for entries in listing.values())
    # one line of description per entry, from the builder's docstring
    assert all(text and "\n" not in text for entries in listing.values() for text in entries.values())
    assert listing["connector"]["identity"].startswith("No-op connector")


def test_list_takes_a_pattern_like_timm(capsys):
    code, out, _ = run(capsys, "list", "encoder", "*vit*", "--json")
    assert code == 0 and list(json.loads(out)["encoder"]) == ["test_vit3d", "vit3d",
                                                              "vit3d_base_m3d"]
    code, out, _ = run(capsys, "list", "*perceiver*", "--json")  # a pattern over every kind
    assert code == 0 and json.loads(out) == {"connector": {
        "perceiver": json.loads(out)["connector"]["perceiver"],
        "test_perceiver": json.loads(out)["connector"]["test_perceiver"]}}
    code, out, _ = run(capsys, "list", "connector", "*pool")
    assert code == 0 and out.splitlines()[0] == "connector:"
    names = [line.split()[0] for line in out.splitlines()[1:]]
    assert names == ["max_pool", "sequence_pool", "spatial_pool"]


def test_show_a_recipe_lists_arguments_stages_and_data_tasks(capsys):
    code, out, _ = run(capsys, "show", "recipe", "lamed", "--json")
    report = json.loads(out)
    args = {a["name"]: a for a in report["arguments"]}
    assert code == 0 and args["lora_r"]["default"] == "16" and args["lora_r"]["type"] == "int"
    assert "LoRA" in args["train_lm"]["doc"] or "lora" in args["train_lm"]["doc"]
    assert args["image_size"]["option_file"] == "${data.size}"
    assert report["components"] == {"encoder": "required", "bridge": "optional",
                                    "connector": "required", "lm": "required", "head": "optional"}
    stages = {s["name"]: s for s in report["stages"]}
    assert list(stages) == ["align", "instruct"] and stages["align"]["tasks"] == ["caption"]
    code, out, _ = run(capsys, "show", "recipe", "lamed")
    assert code == 0 and "align: data tasks caption" in out


def test_show_an_encoder_lists_its_preset_arguments(capsys):
    code, out, _ = run(capsys, "show", "encoder", "vit3d_base_m3d")
    assert code == 0 and "hidden_size: int = 768" in out and "depth: int = 12" in out
    code, out, _ = run(capsys, "show", "encoder", "slice2d", "--json")
    args = {a["name"]: a for a in json.loads(out)["arguments"]}
    assert args["depth_pos"]["default"] == "'rope'" and "RoPE" in args["depth_pos"]["doc"]
    code, _, err = run(capsys, "show", "encoder", "vit3d_bse")
    assert code == 2 and "Did you mean: vit3d_base_m3d" in err


def test_list_one_kind_accepts_plural(capsys):
    code, out, _ = run(capsys, "list", "connectors", "--json")
    assert code == 0 and list(json.loads(out)) == ["connector"]


def test_params_json_shape_on_meta(capsys):
    code, out, _ = run(capsys, "params", "--json")
    report = json.loads(out)
    assert code == 0
    assert {"total", "trainable", "components", "stage"} <= set(report)
    assert set(report["components"]) == {"encoder", "connector", "lm"}
    assert report["total"] >= sum(c["total"] for c in report["components"].values()) - 1
    assert report["stage"] == "align"
    assert report["components"]["encoder"]["trainable"] == 0  # align freezes the encoder


def test_params_m3d_connector_counts(capsys):
    for lm, expected in (("llama2_7b", 19_931_136), ("phi3_mini", 11_802_624)):
        code, out, _ = run(capsys, "params", "recipe=lamed", "encoder=vit3d_base_m3d",
                           "connector=spatial_pool", f"lm={lm}", "--json")
        report = json.loads(out)
        assert code == 0 and report["components"]["connector"]["total"] == expected
        assert report["components"]["encoder"]["total"] == 87_389_184


@pytest.mark.parametrize("override,needle", [
    ("recipe=lamd", "Did you mean: lamed"),
    ("encoder=test_vit", "Did you mean: test_vit3d"),
    ("connector=spatial_pol", "Did you mean: spatial_pool"),
])
def test_misspelt_name_exits_2_with_one_line_suggestion(capsys, override, needle):
    code, out, err = run(capsys, "params", override)
    assert code == 2 and out == ""
    assert needle in err and len(err.strip().splitlines()) == 1


def test_unknown_kind_is_named(capsys):
    code, _, err = run(capsys, "list", "encodrs")
    assert code == 2 and "Did you mean: encoder" in err


def test_bad_builder_argument_is_one_line(capsys):
    code, _, err = run(capsys, "params", "encoder.depth=-1")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "depth" in err


def test_pass_through_commands_receive_a_leading_option(capsys):
    from zoo.cli import main

    assert main(["bench", "--strict"]) == 2  # bench's own parser saw --strict
    assert "--strict only applies with --check" in capsys.readouterr().err


def test_commands_print_no_library_warnings(capsys):
    """A plain command shows no warning (peft's FutureWarning is silenced at its one call site)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["params", "--json"]) == 0
    shown = [f"{w.category.__name__}: {w.message}" for w in caught
             if not issubclass(w.category, DeprecationWarning)]
    assert not shown, shown


def test_options_and_overrides_in_any_order():
    from zoo.cli import parse_args

    args = parse_args(["eval", "RUN", "--tracking-uri", "sqlite:///x.db", "eval.max_items=2"])
    assert (args.model, args.tracking_uri, args.overrides) == ("RUN", "sqlite:///x.db",
                                                                ["eval.max_items=2"])
    args = parse_args(["-q", "params", "encoder=test_vit3d", "--json", "lm=test_llama",
                       "--stage", "instruct"])
    assert args.overrides == ["encoder=test_vit3d", "lm=test_llama"] and args.json and args.quiet
    assert args.stage == "instruct" and parse_args(["train", "-v", "seed=1"]).verbose
    bench = parse_args(["-q", "bench", "--quick"])  # a pass-through command keeps its options
    assert bench.args == ["--quick"] and bench.quiet


def test_cfg_job_prints_the_composed_config_with_builder_defaults(capsys):
    import yaml

    code, out, _ = run(capsys, "params", "--cfg", "job", "encoder.depth=1", "-p", "encoder")
    node = yaml.safe_load(out)
    assert code == 0 and node["_target_"].endswith("test_vit3d") and node["depth"] == 1
    assert node["hidden_size"] == 64  # filled from the builder's signature
    code, out, _ = run(capsys, "train", "--cfg", "job", "--resolve", "-p", "recipe.image_size")
    assert code == 0 and yaml.safe_load(out) == [32, 64, 64]
    code, _, err = run(capsys, "train", "--cfg", "hydra")
    assert code == 2 and "--cfg job" in err and len(err.strip().splitlines()) == 1


def test_sweep_cfg_job_prints_every_job_and_accepts_multirun(capsys):
    code, out, _ = run(capsys, "sweep", "-m", "--cfg", "job", "-p", "connector._target_",
                       "experiment=compare_strategies_mini")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("# job 1/2 vit3d_spatial_pool")
    assert lines[1:4:2] == ["connectors.spatial_pool.spatial_pool",
                            "connectors.sequence_pool.sequence_pool"]


@pytest.mark.parametrize("argv,needle", [
    (["train", "-m", "encoder=test_vit3d"], "zoo sweep"),
    (["train", "hydra.run.dir=out"], "trainer.output_dir"),
    (["sweep", "hydra.sweep.dir=out"], "MLflow parent run"),
    (["params", "hydra.job.chdir=true"], "never changes directory"),
    (["params", "hydra.launcher.n_jobs=2"], "only zoo sweep launches jobs"),
    (["params", "trainer.nokey=1"], "To append to your config use +trainer.nokey=1"),
    (["params", "trainer.max_steps=1,2"], "run it with `zoo sweep`"),
    (["params", "recipe.lora_rr=4"], "Did you mean: lora_r"),
    (["params", "bridge.num_queries=4"], "set bridge=NAME first"),
])
def test_hydra_habits_are_refused_in_one_line_with_what_to_use(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "" and needle in err and len(err.strip().splitlines()) == 1


def test_verbosity_switches_and_hydra_verbose(capsys, monkeypatch):
    import logging

    from zoo import verbosity

    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "warning")  # -q/-v only set it when unset
    try:
        assert main(["-q", "list", "head"]) == 0
        assert not verbosity.show_progress()
        assert main(["params", "--json", "hydra.verbose=[zoo.training]"]) == 0
        assert verbosity.show_progress()
        assert logging.getLogger("zoo.training").level == logging.DEBUG
        assert main(["list", "head", "-v"]) == 0
        assert logging.getLogger("zoo").level == logging.DEBUG
    finally:
        logging.getLogger("zoo.training").setLevel(logging.NOTSET)
        verbosity.set_verbosity(verbosity.NORMAL)
    verbosity.get_logger("zoo.test").info("a progress line")
    assert "a progress line" in capsys.readouterr().out


def test_quiet_keeps_mlflows_store_creation_lines_out(tmp_path):
    """-q: a fresh tracking store is created without MLflow's INFO lines (MLflow sets its loggers'
    level when it is imported, after the switch); stderr holds the one error line alone."""
    import os
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    code = "import sys; from zoo.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, "-q", "eval", "--tracking-uri", uri,
                           "0123456789abcdef"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"zoo eval: run '0123456789abcdef': not found in the tracking store {uri}"]
