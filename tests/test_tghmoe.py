"""TGH-MoE: upcycled experts equal the dense tower at init, hierarchical routing, losses, cost."""

import pytest
import torch

import zoo  # noqa: F401
from encoders.moe import GroupedMoE, RouteContext
from encoders.tghmoe import DEFAULT_TASK_GROUPS, TASK_GROUP_NAMES, tghmoe_param_formula
from zoo.params import count
from zoo.registry import ENCODERS
from zoo.types import TASK_NAMES, Conditioning, VisualTokens

VOL = (3, 1, 4, 32, 32)


def task_ids(*names):
    return torch.tensor([TASK_NAMES.index(n) for n in names])


def cond(batch=3, prompt_dim=16, tasks=("caption", "seg", "vqa_open")):
    return Conditioning(prompt_embedding=torch.randn(batch, prompt_dim), task_id=task_ids(*tasks))


def pair(seed=0, **options):
    torch.manual_seed(seed)
    moe = ENCODERS.build("test_tghmoe", **options).eval()
    torch.manual_seed(seed)
    dense_options = {k: v for k, v in options.items() if k in ("attn3d_blocks", "depth_pos")}
    dense = ENCODERS.build("test_slice2d", **dense_options).eval()
    return moe, dense


@pytest.mark.parametrize("routing", ["shared", "specific"])
def test_upcycled_moe_equals_dense_encoder_at_init(routing):
    moe, dense = pair(routing=routing)
    vol = torch.rand(*VOL)
    with torch.no_grad():
        out, ref = moe(vol, cond()), dense(vol)
    assert isinstance(out, VisualTokens) and out.grid == ref.grid
    assert (out.tokens - ref.tokens).abs().max() < 1e-5


def test_upcycled_moe_equals_dense_with_all_blocks_and_top1():
    moe, dense = pair(moe_blocks=-1, top_k=1, experts_per_group=4, routing="specific")
    vol = torch.rand(*VOL)
    with torch.no_grad():
        assert (moe(vol, cond()).tokens - dense(vol).tokens).abs().max() < 1e-5
    assert moe.moe_indices == (0, 1)


def test_task_mapping_covers_every_task():
    moe = ENCODERS.build("test_tghmoe")
    assert moe.group_names == TASK_GROUP_NAMES
    table = {t: moe.group_names[g] for t, g in zip(TASK_NAMES, moe.task_to_group.tolist())}
    for task, group in DEFAULT_TASK_GROUPS.items():
        assert table[task] == group
    assert all(table[t] == "other" for t in TASK_NAMES if t not in DEFAULT_TASK_GROUPS)
    custom = ENCODERS.build("test_tghmoe", task_groups={"caption": "report", "vqa_open": "vqa"})
    assert custom.group_names == ("vqa", "other", "report")


def test_shared_and_specific_routing_choose_groups():
    moe = ENCODERS.build("test_tghmoe").eval()
    vol, c = torch.rand(*VOL), cond(tasks=("caption", "seg", "rec"))
    assert moe(vol, c).extras["task_group"].tolist() == [0, 0, 0]
    moe.set_routing("specific")
    assert moe(vol, c).extras["task_group"].tolist() == [0, 3, 2]
    stats = moe(vol, c).extras["router_stats"]
    assert {"moe/caption/entropy", "moe/segmentation/load_e0", "moe/positioning/lb"} <= set(stats)
    assert "moe/vqa/entropy" not in stats  # no vqa sample in the batch
    # without labels the task router predicts the group from the prompt
    moe.task_source = "auto"
    unlabeled = Conditioning(prompt_embedding=c.prompt_embedding)
    expected = moe.task_router(c.prompt_embedding).argmax(-1)
    assert moe(vol, unlabeled).extras["task_group"].tolist() == expected.tolist()
    router_only = ENCODERS.build("test_tghmoe", task_source="router", routing="specific")
    predicted = router_only.task_router(c.prompt_embedding).argmax(-1)
    assert router_only(vol, c).extras["task_group"].tolist() == predicted.tolist()


def test_aux_loss_and_router_stats():
    moe = ENCODERS.build("test_tghmoe", routing="specific").train()
    out = moe(torch.rand(*VOL), cond())
    aux, stats = out.extras["aux_loss"], out.extras["router_stats"]
    assert aux.dim() == 0 and aux.requires_grad
    expected = 0.01 * stats["moe/lb_loss"] + stats["moe/task_router_loss"]
    torch.testing.assert_close(aux.detach(), expected)
    for group in ("caption", "segmentation", "vqa"):
        loads = [stats[f"moe/{group}/load_e{e}"] for e in range(3)]
        assert float(sum(loads)) == pytest.approx(1.0)
        assert 0.0 <= float(stats[f"moe/{group}/entropy"]) <= float(torch.log(torch.tensor(3.0))) + 1e-6
    assert 0.0 <= float(stats["moe/task_router_acc"]) <= 1.0
    (out.tokens.square().mean() + aux).backward()
    mlp = moe.backbone.blocks[1].mlp
    assert mlp.gates[0].weight.grad is not None and mlp.prompt_proj.weight.grad is not None
    assert moe.task_router.net[1].weight.grad.abs().sum() > 0


def test_switch_loss_formula():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))
    layer = GroupedMoE(mlp, 8, ("a", "b"), experts_per_group=4, top_k=2)
    x = torch.randn(2, 5, 8)
    route = RouteContext(torch.tensor([1, 1]))
    y, lb, stats = layer(x, route)
    torch.testing.assert_close(y, mlp(x), atol=1e-6, rtol=1e-5)
    probs = layer.gates[1](x.reshape(10, 8)).softmax(-1)
    top = probs.topk(2, dim=-1).indices
    f = torch.stack([(top == e).float().sum() for e in range(4)]) / top.numel()
    torch.testing.assert_close(lb, 4 * (f * probs.mean(0)).sum())
    torch.testing.assert_close(stats["b/load"], f)
    with torch.no_grad():  # uniform router: the loss is exactly 1
        layer.gates[1].weight.zero_()
        layer.gates[1].bias.zero_()
    assert float(layer(x, route)[1].detach()) == pytest.approx(1.0)


def test_init_groups_from_shared_copies_group_zero():
    moe = ENCODERS.build("test_tghmoe")
    layer = moe.backbone.blocks[1].mlp
    with torch.no_grad():
        for p in layer.experts[0].parameters():
            p.add_(1.0)
        layer.gates[0].weight.add_(1.0)
    e = layer.num_experts
    assert not torch.equal(layer.experts[0].fc1.weight, layer.experts[3 * e].fc1.weight)
    moe.init_groups_from_shared()
    for g in range(1, len(layer.group_names)):
        assert torch.equal(layer.experts[g * e].fc1.weight, layer.experts[0].fc1.weight)
        assert torch.equal(layer.gates[g].weight, layer.gates[0].weight)


def test_any_prompt_width_and_no_prompt():
    vol = torch.rand(2, 1, 2, 32, 32)
    wide = ENCODERS.build("test_tghmoe", prompt_dim=7, routing="specific")
    prompt = torch.randn(2, 7).bfloat16()  # an LLM's dtype and width
    out = wide(vol, Conditioning(prompt_embedding=prompt, task_id=task_ids("seg", "cls")))
    assert out.tokens.shape == (2, 8, 32)
    textless = ENCODERS.build("test_tghmoe", prompt_dim=None, routing="specific")
    assert textless.task_router is None
    assert textless(vol, Conditioning(task_id=task_ids("seg", "cls"))).extras["task_group"].tolist() == [3, 4]


def test_gradient_checkpointing_keeps_values_and_aux():
    vol, c = torch.rand(*VOL), cond()
    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        moe = ENCODERS.build("test_tghmoe", routing="specific", grad_checkpointing=ckpt).train()
        out = moe(vol, c)
        (out.tokens.square().mean() + out.extras["aux_loss"]).backward()
        results.append((out.tokens.detach(), out.extras["aux_loss"].detach(),
                        moe.backbone.blocks[1].mlp.gates[3].weight.grad.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_errors_are_clear():
    moe = ENCODERS.build("test_tghmoe", routing="specific")
    vol = torch.rand(2, 1, 2, 32, 32)
    with pytest.raises(ValueError, match="needs Conditioning.prompt_embedding"):
        moe(vol, Conditioning(task_id=task_ids("seg", "cls")))
    with pytest.raises(ValueError, match=r"shape \(2, 16\)"):
        moe(vol, Conditioning(prompt_embedding=torch.randn(2, 8)))
    with pytest.raises(ValueError, match="task_id must hold 2 indices"):
        moe(vol, Conditioning(prompt_embedding=torch.randn(2, 16), task_id=torch.tensor([0, 99])))
    idonly = ENCODERS.build("test_tghmoe", task_source="id", routing="specific")
    with pytest.raises(ValueError, match="needs Conditioning.task_id"):
        idonly(vol, Conditioning(prompt_embedding=torch.randn(2, 16)))
    with pytest.raises(ValueError, match="Did you mean: specific"):
        moe.set_routing("specifc")
    with pytest.raises(ValueError, match="Did you mean: refseg"):
        ENCODERS.build("test_tghmoe", task_groups={"refsegg": "segmentation"})
    with pytest.raises(ValueError, match="top_k"):
        ENCODERS.build("test_tghmoe", top_k=4)
    with pytest.raises(ValueError, match="set prompt_dim"):
        ENCODERS.build("test_tghmoe", prompt_dim=None, task_source="router")


def test_parameter_groups_name_routers_as_new_and_moe_layers_as_experts():
    moe = ENCODERS.build("test_tghmoe")
    groups = moe.parameter_groups()
    assert groups["new"] and all(("gates" in n or "prompt_" in n or "task_router" in n)
                                 for n in groups["new"])
    assert not any("experts" in n for n in groups["new"]) and groups["frozen"] == []
    # the MoE layer (top block only) and the task router; the dense FFN of block 0 is no expert
    assert groups["experts"] and all(n.startswith(("backbone.blocks.1.mlp.", "task_router."))
                                     for n in groups["experts"])
    assert any(".experts." in n for n in groups["experts"])


def test_full_size_parameter_arithmetic_on_meta():
    """Counts documented in docs/tghmoe.md: CLIP ViT-L/14-336 visual tower plus experts/routers."""
    import open_clip

    with torch.device("meta"):
        clip = open_clip.create_model("ViT-L-14-336", pretrained=None, device="meta")
        enc = ENCODERS.build("tghmoe", prompt_dim=3072)
    visual = count(clip.visual)["total"]
    assert visual == 304_293_888
    ffn = sum(p.numel() for p in clip.visual.transformer.resblocks[0].mlp.parameters())
    kept = visual - clip.visual.proj.numel()  # the CLIP projection is not part of the token path
    formula = tghmoe_param_formula(kept, 1024, ffn, moe_blocks=6, groups=5, experts=4, prompt_dim=3072)
    assert count(enc)["total"] == formula["total"] == 1_280_226_941
    assert enc.num_moe_blocks == 6 and enc.attn3d_blocks == 6
    assert enc.output_layout((32, 256, 256)) == (2048, (32, 8, 8))
