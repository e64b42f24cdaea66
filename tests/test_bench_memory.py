"""Per-GPU memory arithmetic of the sharding strategies (zoo/bench/memory.py): exact on a model
whose counts are known, and the bench section on the tiny LaMed."""

import pytest
import torch
from torch import nn

from zoo.bench.memory import (DEEPSPEED_REDUCE_BUCKET, count_parameters, full_m3d_memory,
                              saved_activation_bytes, strategy_bytes)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10, 10)  # 110 parameters


class Tiny(nn.Module):
    _no_split_modules = ["Block"]

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 10)  # 500, frozen, bf16
        self.blocks = nn.ModuleList([Block(), Block()])  # 2 x 110, trainable, fp32
        self.embed.to(torch.bfloat16).weight.requires_grad_(False)


def test_counts_and_strategies_follow_the_stated_rules():
    counts = count_parameters(Tiny())
    assert counts.trainable == {4: 220} and counts.frozen == {2: 500}
    assert (counts.root, counts.root_trainable, counts.block, counts.block_trainable) == \
        (500, 0, 110, 110)
    ddp = strategy_bytes(counts, "DDP", 4)
    assert ddp == {"weights": 220 * 4 + 500 * 2, "gradients": 220 * 4, "optimizer": 220 * 8,
                   "gathered": 220 * 2}
    fsdp = strategy_bytes(counts, "FSDP", 4)
    assert fsdp["weights"] == ddp["weights"] / 4 and fsdp["optimizer"] == ddp["optimizer"] / 4
    assert fsdp["gathered"] == 2 * (500 + 2 * 110) + 2 * 110
    zero2, zero3 = strategy_bytes(counts, "ZeRO-2", 4), strategy_bytes(counts, "ZeRO-3", 4)
    assert zero2 == {"weights": 2 * 720, "gradients": 2 * 220 / 4, "optimizer": 12 * 220 / 4,
                     "gathered": 2 * DEEPSPEED_REDUCE_BUCKET}
    assert zero3["weights"] == 2 * 720 / 4 and zero3["optimizer"] == zero2["optimizer"]
    with pytest.raises(ValueError, match="Did you mean: ZeRO-3"):
        strategy_bytes(counts, "ZeRO3", 4)


def test_saved_activations_leave_out_the_weights():
    with torch.device("meta"):
        linear = nn.Linear(8, 16)
        x = torch.empty(4, 8, requires_grad=True)
        assert saved_activation_bytes(linear, x) == 4 * 8 * 4  # the input; not the weight


def test_memory_section_on_the_tiny_lamed():
    body, metrics = full_m3d_memory(gpus=2, capacity_gb=1.0, tokens=64, overrides=["recipe=lamed"])
    assert body.count("| LoRA (recipe default) |") == 4 and body.count("| full fine-tuning |") == 4
    full = {s: metrics[f"memory/full/{s}/total_gb"] for s in ("DDP", "ZeRO-2", "FSDP", "ZeRO-3")}
    assert full["DDP"] > full["FSDP"] > 0 and full["ZeRO-2"] > full["ZeRO-3"] > 0  # sharding pays
    assert 0 < metrics["memory/activations_gb"] < 0.1
