"""Every component against its contract (zoo/types.py), driven by the registries: each ``test_*``
encoder, bridge and head, and every connector (all are small). A new variant joins these tests by
registering; a head with a new kind of input names itself in the failure below."""

import inspect
import typing

import pytest
import torch

from heads.seg_decoder import feature_spec
from zoo import BRIDGES, CONNECTORS, ENCODERS, HEADS
from zoo.types import Bridge, Conditioning, Connector, Encoder, VisualTokens

SIZE = (32, 64, 64)  # the built-in benchmark's volumes (data=synth)
GRID = (8, 4, 4)  # a token grid for bridges and connectors
WIDTHS = {"in_dim": 32, "out_dim": 48, "prompt_dim": 16}  # what recipes supply


def conditioning(module, batch: int = 2) -> Conditioning:
    width = getattr(module, "prompt_dim", None) or WIDTHS["prompt_dim"]
    return Conditioning(prompt_embedding=torch.randn(batch, width),
                        task_id=torch.zeros(batch, dtype=torch.long),
                        plane=torch.tensor([0, 2][:batch]), slice_index=torch.tensor([3, 5][:batch]))


def supplied(builder, **extra) -> dict:
    """The arguments a recipe supplies (widths), for those the builder requires."""
    required = [p.name for p in inspect.signature(builder).parameters.values()
                if p.default is p.empty and p.kind is not p.VAR_KEYWORD]
    return {k: extra.get(k, WIDTHS.get(k)) for k in required}


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def builds_the_same_on_meta(registry, name, kwargs, module) -> None:
    with torch.device("meta"):
        meta = registry.build(name, **kwargs)
    assert n_params(meta) == n_params(module), f"{name}: meta and CPU builds differ"


def backpropagates(module, value: torch.Tensor) -> None:
    """The output's gradient reaches the module's trainable parameters (if it has any)."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    if trainable:
        value.float().pow(2).mean().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)


@pytest.mark.parametrize("name", ENCODERS.list("test_*"))
def test_encoder_contract(name):
    encoder = ENCODERS.build(name)
    assert isinstance(encoder, Encoder)
    num_tokens, grid = encoder.output_layout(SIZE)
    out = encoder(torch.rand(2, 1, *SIZE), conditioning(encoder))
    assert isinstance(out, VisualTokens) and out.tokens.shape == (2, num_tokens, encoder.out_dim)
    assert out.grid == grid and torch.isfinite(out.tokens).all()
    backpropagates(encoder, out.tokens)
    builds_the_same_on_meta(ENCODERS, name, {}, encoder)


@pytest.mark.parametrize("name", BRIDGES.list("test_*"))
def test_bridge_contract(name):
    kwargs = supplied(BRIDGES.get(name))
    bridge = BRIDGES.build(name, **kwargs)
    assert isinstance(bridge, Bridge)
    in_dim = kwargs.get("in_dim", inspect.signature(BRIDGES.get(name)).parameters["in_dim"].default)
    n = GRID[0] * GRID[1] * GRID[2]
    num_tokens, grid = bridge.output_layout(n, GRID)
    out = bridge(VisualTokens(torch.randn(2, n, in_dim), GRID), conditioning(bridge))
    assert out.tokens.shape == (2, num_tokens, bridge.out_dim) and out.grid == grid
    assert torch.isfinite(out.tokens).all()
    backpropagates(bridge, out.tokens)
    builds_the_same_on_meta(BRIDGES, name, kwargs, bridge)


@pytest.mark.parametrize("name", CONNECTORS.list())
def test_connector_contract(name):
    try:
        kwargs = supplied(CONNECTORS.get(name))
        connector = CONNECTORS.build(name, **kwargs)
    except ValueError as err:  # a connector that keeps the width
        assert "in_dim == out_dim" in str(err)
        kwargs = supplied(CONNECTORS.get(name), out_dim=WIDTHS["in_dim"])
        connector = CONNECTORS.build(name, **kwargs)
    assert isinstance(connector, Connector) and connector.out_dim == kwargs["out_dim"]
    n = GRID[0] * GRID[1] * GRID[2]
    visual = VisualTokens(torch.randn(2, n, kwargs["in_dim"]), GRID, {"cls": torch.randn(2, 32)})
    expected = connector.num_out_tokens(n, GRID)  # known before any forward
    out = connector(visual)
    assert out.tokens.shape == (2, expected, kwargs["out_dim"]) and out.extras == visual.extras
    assert out.grid is None or out.grid[0] * out.grid[1] * out.grid[2] == expected
    try:  # gridless tokens (after a bridge or perceiver): handled, or refused by name
        gridless = connector(VisualTokens(torch.randn(1, 16, kwargs["in_dim"])))
        assert gridless.tokens.shape[1] == connector.num_out_tokens(16, None)
    except ValueError as err:
        assert "grid" in str(err)
    backpropagates(connector, out.tokens)
    builds_the_same_on_meta(CONNECTORS, name, kwargs, connector)


def _unetr_inputs(build):
    """A UNETR decoder reads a 3D CNN's multi-scale features (as med3dinsight_finetune wires it)."""
    from encoders.resnet3d import test_resnet3d
    from heads.seg_decoder import extract_features

    encoder, volume = test_resnet3d(), _volume()
    dims, strides = feature_spec(encoder)
    return ({"feature_dims": dims, "feature_strides": strides},
            lambda head: dict(features=extract_features(encoder, volume), volume=volume,
                              target=_target()))


def _with_cls(width: int) -> VisualTokens:
    return VisualTokens(torch.randn(2, 9, width), None, {"cls": torch.randn(2, width)})


def _volume(size=(32, 32, 64), batch=1):
    return torch.rand(batch, 1, *size)


def _target(size=(32, 32, 64), channels=2, batch=1):
    return (torch.rand(batch, channels, *size) > 0.5).float()


# A head's inputs, by the class its builder returns: (build arguments, call arguments)
HEAD_INPUTS = {
    "ContrastiveHead": lambda build: ({}, lambda head: dict(
        visual=_with_cls(inspect.signature(build).parameters["image_dim"].default),
        input_ids=torch.randint(5, 200, (2, 12)), attention_mask=torch.ones(2, 12, dtype=torch.long))),
    "LinearClassifier": lambda build: ({"in_dim": 16}, lambda head: dict(
        visual=VisualTokens(torch.randn(2, 4, 16), (1, 2, 2)), labels=torch.tensor([0, 2]))),
    "ReconDecoder3D": lambda build: ({"in_dim": 16}, lambda head: dict(
        visual=VisualTokens(torch.randn(1, 4, 16), (1, 2, 2)), target=_volume((32, 64, 64)))),
    "SegVolHead": lambda build: ({}, lambda head: dict(
        volume=_volume((16, 32, 32)), text=[["liver"]], target=_target((16, 32, 32), channels=1))),
    "SliceTeacher": lambda build: ({}, lambda head: dict(slices=torch.rand(2, 1, 40, 24),
                                                         texts=["liver", "kidney"])),
    "UNETRDecoder": _unetr_inputs,
}


@pytest.mark.parametrize("name", HEADS.list("test_*"))
def test_head_contract(name):
    builder = HEADS.get(name)
    kind = str(inspect.signature(builder).return_annotation)
    if kind not in HEAD_INPUTS:
        pytest.fail(f"head {name!r} returns {kind}: add its inputs to HEAD_INPUTS in "
                    "tests/test_contracts.py")
    kwargs, inputs = HEAD_INPUTS[kind](builder)
    head = HEADS.build(name, **kwargs)
    out = head(**inputs(head))
    returns = typing.get_type_hints(type(head).forward)["return"]
    assert isinstance(out, returns), f"{name}: forward returned {type(out).__name__}"
    tensors = [v for v in vars(out).values() if isinstance(v, torch.Tensor)]
    assert tensors and all(torch.isfinite(t).all() for t in tensors)
    loss = getattr(out, "loss", None)
    if loss is not None:
        assert loss.dim() == 0
        backpropagates(head, loss)
    else:  # no target: a frozen module (a teacher)
        assert not any(p.requires_grad for p in head.parameters())
    builds_the_same_on_meta(HEADS, name, kwargs, head)
