"""The shipped Accelerate configs (parsed by Accelerate itself) and the Slurm multi-node launcher:
the command a fake 2 x 8 GPU Slurm environment produces, and a real 2-node rendezvous of two
CPU processes (gloo) through the same code."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pytest
import torch
from omegaconf import OmegaConf

from tests.toy import ToyData, ToyModel
from zoo.errors import ConfigError, MissingFileError, RunError
from zoo.launch import ACCELERATE_CONFIGS, CONFIG_DIR, accelerate_config
from zoo.launch.slurm import accelerate_command, gpus_on_node, slurm_rendezvous

ROOT = Path(__file__).resolve().parents[1]


def accelerate_environment(name):
    """What ``accelerate launch --config_file <shipped config>`` hands its processes: the
    launcher's own argument validation and environment preparation."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(
        ["--config_file", str(accelerate_config(name)), "-m", "zoo", "train"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:  # as launch_command does before the DeepSpeed launcher
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        return args, defaults, prepare_deepspeed_cmd_env(args)[1]
    return args, defaults, prepare_multi_gpu_env(args)


@pytest.mark.parametrize("name", ACCELERATE_CONFIGS)
def test_shipped_configs_are_package_data_and_parse(name):
    from accelerate.commands.config.config_args import load_config_from_file

    path = accelerate_config(name)
    assert path.parent == CONFIG_DIR and path.is_file()
    config = load_config_from_file(str(path))  # refuses unknown keys
    assert config.mixed_precision == "bf16" and config.num_processes == 8
    args, _, env = accelerate_environment(name)
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert args.module and args.training_script == "zoo"


def test_fsdp_config_is_fsdp2_full_shard_wrapping_llm_and_vit_blocks():
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    from zoo.build import build_on_meta
    from zoo.config import compose

    args, _, env = accelerate_environment("fsdp")
    assert args.use_fsdp and env["ACCELERATE_USE_FSDP"] == "true"
    with mock.patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    from torch.distributed.fsdp import CPUOffloadPolicy

    assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"
    assert not isinstance(plugin.cpu_offload, CPUOffloadPolicy)
    assert plugin.transformer_cls_names_to_wrap is None  # the model's _no_split_modules decide
    model = build_on_meta(compose(["recipe=lamed"]))
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = sorted({type(m).__name__ for m in model.modules() if policy(m)})
    assert wrapped == ["Block", "LlamaDecoderLayer"]
    assert sum(policy(m) for m in model.modules()) == 2 + 2  # test_vit3d and test_llama: 2 each


def test_deepspeed_config_gives_zero_2():
    from accelerate.utils import DeepSpeedPlugin

    args, _, env = accelerate_environment("deepspeed_zero2")
    assert args.use_deepspeed
    with mock.patch.dict(os.environ, env):
        plugin = DeepSpeedPlugin()  # accelerate's own plugin, built from the launcher's environment
    zero = plugin.deepspeed_config["zero_optimization"]
    assert plugin.zero_stage == 2 and zero["stage"] == 2
    assert plugin.deepspeed_config["gradient_clipping"] == "auto"  # the trainer's max_grad_norm
    assert plugin.deepspeed_config["gradient_accumulation_steps"] == "auto"  # = trainer.grad_accum


def test_config_lookup_names_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean: fsdp"):
        accelerate_config("fsdb")
    with pytest.raises(MissingFileError, match="nope.yaml: no such file"):
        accelerate_config(tmp_path / "nope.yaml")
    own = tmp_path / "mine.yaml"
    own.write_text("distributed_type: MULTI_GPU\n")
    assert accelerate_config(own) == own


def slurm_env(monkeypatch, **values):
    for key in [k for k in os.environ if k.startswith("SLURM_") or k == "MASTER_PORT"]:
        monkeypatch.delenv(key)
    for key, value in values.items():
        monkeypatch.setenv(key, str(value))


def test_two_nodes_of_eight_gpus_compose_one_accelerate_launch_per_node(monkeypatch):
    slurm_env(monkeypatch, SLURM_JOB_ID=123456, SLURM_JOB_NUM_NODES=2, SLURM_NODEID=1,
              SLURM_JOB_NODELIST="gpu-a[017-018]", SLURM_GPUS_ON_NODE=8)
    rendezvous = slurm_rendezvous()
    assert (rendezvous.num_nodes, rendezvous.node_rank, rendezvous.processes_per_node) == (2, 1, 8)
    assert rendezvous.master_addr == "gpu-a017" and rendezvous.num_processes == 16
    assert rendezvous.master_port == 20000 + 123456 % 20000  # the same on every node
    command = accelerate_command(rendezvous, "fsdp", ["-m", "zoo", "train", "recipe=lamed"])
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    flags = dict(zip(command[3:15:2], command[4:15:2]))
    assert flags == {"--config_file": str(CONFIG_DIR / "fsdp.yaml"), "--num_machines": "2",
                     "--machine_rank": "1", "--num_processes": "16",
                     "--main_process_ip": "gpu-a017", "--main_process_port": "23456"}
    assert command[15:] == ["-m", "zoo", "train", "recipe=lamed"]
    monkeypatch.setenv("MASTER_PORT", "29999")
    assert slurm_rendezvous().master_port == 29999


def test_slurm_cli_dry_run_prints_the_command(monkeypatch, capsys):
    from zoo.launch.__main__ import main

    slurm_env(monkeypatch, SLURM_JOB_ID=7, SLURM_JOB_NUM_NODES=1, SLURM_JOB_NODELIST="node1",
              SLURM_GPUS_PER_NODE="h100:4")
    assert main(["slurm", "--config", "deepspeed_zero2", "--dry-run", "train", "lm=llama2_7b"]) == 0
    out = capsys.readouterr().out
    assert "--num_processes 4 --main_process_ip node1 --main_process_port 20007" in out
    assert out.strip().endswith("-m zoo train lm=llama2_7b")
    assert main(["config", "ddp"]) == 0 and capsys.readouterr().out.strip().endswith("ddp.yaml")


@pytest.mark.parametrize("value,count", [("8", 8), ("h100:8", 8), ("gpu:a100:4(IDX:0-3)", 4)])
def test_gpus_per_node_forms(monkeypatch, value, count):
    slurm_env(monkeypatch, SLURM_GPUS_PER_NODE=value)
    assert gpus_on_node() == count


def test_bad_slurm_environments_are_one_line_errors(monkeypatch, capsys):
    from zoo.launch.__main__ import main

    slurm_env(monkeypatch)
    assert main(["slurm", "--dry-run", "train"]) == 2
    assert "not inside a Slurm job (SLURM_JOB_ID is unset)" in capsys.readouterr().err
    slurm_env(monkeypatch, SLURM_JOB_ID=1, SLURM_JOB_NUM_NODES=2, SLURM_JOB_NODELIST="n[1-2]")
    with pytest.raises(RunError, match="SLURM_NODEID is unset"):
        slurm_rendezvous(processes_per_node=1)
    slurm_env(monkeypatch, SLURM_JOB_ID=1, SLURM_JOB_NUM_NODES=3, SLURM_NODEID=0,
              SLURM_JOB_NODELIST="n[1-2]")
    with pytest.raises(RunError, match="expands to 2 host"):
        slurm_rendezvous(processes_per_node=1)
    slurm_env(monkeypatch, SLURM_JOB_ID=1, SLURM_GPUS_PER_NODE="many")
    with pytest.raises(ConfigError, match="SLURM_GPUS_PER_NODE='many'"):
        slurm_rendezvous()
    if not torch.cuda.is_available():
        slurm_env(monkeypatch, SLURM_JOB_ID=1)
        with pytest.raises(ConfigError, match="--processes-per-node"):
            slurm_rendezvous()


NODE_SCRIPT = textwrap.dedent("""
    import json, os, sys, torch
    from omegaconf import OmegaConf
    sys.path.insert(0, {root!r})
    import zoo
    from tests.toy import ToyData, ToyModel
    from zoo.training import Trainer
    from accelerate import PartialState
    torch.manual_seed(0)
    model = ToyModel()
    Trainer(model, ToyData(), OmegaConf.load({cfg!r}), seed=0).fit()
    state = PartialState()
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")
    seen = {{k: os.environ.get(k) for k in keys}}
    seen.update(process_index=state.process_index, num_processes=state.num_processes)
    with open(os.path.join({out!r}, f"env{{state.process_index}}.json"), "w") as f:
        json.dump(seen, f)
    if state.is_main_process:
        torch.save(model.state_dict(), os.path.join({out!r}, "weights.pt"))
""")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_slurm_nodes_meet_and_train_like_one_process(tmp_path):
    """Two 'nodes' on this machine (one process each, gloo), each started by run_node from a
    fake Slurm environment, exactly as on a cluster: they must rendezvous and train to the
    weights of a single process at the same global batch. About 20-40 s (two launchers)."""
    cfg = OmegaConf.load(ROOT / "experiments" / "conf" / "trainer" / "default.yaml")
    cfg.update(output_dir=str(tmp_path / "run"), log_every=1, validate=False, max_steps=3,
               mixed_precision="no")  # the ddp config says bf16, for GPUs
    OmegaConf.save(cfg, tmp_path / "cfg.yaml")
    script = tmp_path / "node_job.py"
    script.write_text(NODE_SCRIPT.format(root=str(ROOT), cfg=str(tmp_path / "cfg.yaml"),
                                         out=str(tmp_path)))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(SLURM_JOB_ID="99", SLURM_JOB_NUM_NODES="2", SLURM_JOB_NODELIST="localhost,localhost",
               ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    call = ("import sys; from zoo.launch.slurm import run_node; "
            f"sys.exit(run_node('ddp', [{str(script)!r}], processes_per_node=1, port={port}))")
    nodes = [subprocess.Popen([sys.executable, "-c", call], cwd=tmp_path, text=True,
                              env={**env, "SLURM_NODEID": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=280)[0] for node in nodes]
    for node, output in zip(nodes, outputs):
        assert node.returncode == 0, output[-3000:]
    import json

    seen = [json.loads((tmp_path / f"env{i}.json").read_text()) for i in (0, 1)]
    assert [s["RANK"] for s in seen] == ["0", "1"] and {s["GROUP_RANK"] for s in seen} == {"0", "1"}
    assert all(s["WORLD_SIZE"] == "2" and s["num_processes"] == 2 for s in seen)
    assert all(s["MASTER_ADDR"] == "localhost" and s["MASTER_PORT"] == str(port) for s in seen)
    torch.manual_seed(0)
    single = ToyModel()
    cfg.output_dir = str(tmp_path / "single")
    from zoo.training import Trainer

    Trainer(single, ToyData(), cfg, seed=0).fit()
    distributed = torch.load(tmp_path / "weights.pt", weights_only=True)
    for key, value in single.state_dict().items():
        torch.testing.assert_close(distributed[key], value, rtol=1e-4, atol=1e-5)


def test_sweep_runs_one_accelerate_launch_per_node_for_multi_process_jobs():
    from functools import partial

    from zoo.launch.slurm import sweep_job_function, sweep_node_job
    from zoo.sweep import plan, run_job, submitit_parameters

    slurm = plan(["experiment=compare_strategies_mini", "launcher=submitit_slurm",
                  "+sweep.accelerate_config=fsdp"]).launcher
    assert slurm["accelerate_config"] == "fsdp"
    assert "slurm_accelerate_config" not in submitit_parameters(slurm)
    assert sweep_job_function({**slurm, "accelerate_config": None}) is run_job  # 1 node x 1 GPU
    two_nodes = plan(["experiment=compare_strategies_mini", "launcher=submitit_slurm",
                      "hydra.launcher.nodes=2", "hydra.launcher.gpus_per_node=8",
                      "+sweep.accelerate_config=fsdp"]).launcher
    params = submitit_parameters(two_nodes)
    assert (params["nodes"], params["gpus_per_node"], params["tasks_per_node"]) == (2, 8, 1)
    job = sweep_job_function(two_nodes)
    assert isinstance(job, partial) and job.func is sweep_node_job
    assert job.keywords == {"config": "fsdp"}
    assert sweep_job_function({"nodes": 1, "gpus_per_node": 8}).keywords == {"config": "ddp"}
    with pytest.raises(ConfigError, match="set tasks_per_node: 1"):
        sweep_job_function({"nodes": 2, "gpus_per_node": 8, "tasks_per_node": 8})


def test_job_entry_hands_the_overrides_to_run_job(monkeypatch):
    import zoo.sweep
    from zoo.launch.__main__ import main

    calls = []
    monkeypatch.setattr(zoo.sweep, "run_job", lambda *args: calls.append(args))
    assert main(["job", "--variant", "tghmoe", "--parent", "abc", "--", "seed=1",
                 "lm=test_llama"]) == 0
    assert main(["job", "--variant", "v", "--seed", "2", "--", "seed=2"]) == 0
    assert calls == [(["seed=1", "lm=test_llama"], "abc", "tghmoe", None),
                     (["seed=2"], None, "v", 2)]


def test_the_trainer_refuses_deepspeed_zero3_in_one_line():
    from types import SimpleNamespace

    from zoo.training import check_strategy

    def accelerator(kind, stage=None):
        plugin = SimpleNamespace(zero_stage=stage) if stage else None
        return SimpleNamespace(distributed_type=kind,
                               state=SimpleNamespace(deepspeed_plugin=plugin))

    with pytest.raises(ConfigError, match="DeepSpeed ZeRO-3 is not supported: .* use the fsdp"):
        check_strategy(accelerator("DEEPSPEED", 3))
    for kind, stage in (("DEEPSPEED", 2), ("FSDP", None), ("MULTI_GPU", None), ("NO", None)):
        check_strategy(accelerator(kind, stage))
