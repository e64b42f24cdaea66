"""Med3DInsight alignment losses and the reconstruction decoder."""

import pytest
import torch

from heads import recon3d as recon_mod
from heads.alignment import InfoNCELoss, Med3DInsightLoss, PartialOTLoss
from zoo.types import VisualTokens


def pairs(b=8, e=16, noise=0.3):
    teacher = torch.randn(b, e)
    return teacher + noise * torch.randn(b, e), teacher


def test_ot_prefers_the_diagonal_over_a_shuffled_batch():
    x, y = pairs()
    loss = PartialOTLoss(16)
    shuffled = y[torch.roll(torch.arange(8), 1)]
    assert loss(x, y) < 0.5 < loss(x, shuffled)


def test_ot_plan_is_partial_with_uniform_marginal_bounds():
    x, y = pairs()
    plan = PartialOTLoss(16, mass=0.95).plan(x, y)
    assert plan.shape == (8, 8)
    assert plan.sum().item() == pytest.approx(0.95, abs=1e-6)
    assert bool((plan.sum(0) <= 1 / 8 + 1e-6).all()) and bool((plan.sum(1) <= 1 / 8 + 1e-6).all())


def test_ot_gradients_reach_the_embedding_and_the_metric():
    x, y = pairs(noise=2.0)
    x.requires_grad_(True)
    loss = PartialOTLoss(16)
    loss(x, y).backward()
    assert x.grad.abs().sum() > 0 and loss.theta.grad.abs().sum() > 0
    torch.testing.assert_close(loss.metric().mean(), torch.tensor(1.0))


def test_learning_the_metric_lowers_the_loss():
    torch.manual_seed(1)
    y = torch.randn(8, 16)
    x = y.clone()
    x[:, 8:] = torch.randn(8, 8)  # only the first half of the dimensions matches
    loss = PartialOTLoss(16)
    opt = torch.optim.Adam(loss.parameters(), lr=0.3)
    start = loss(x, y).item()
    for _ in range(6):
        opt.zero_grad()
        loss(x, y).backward()
        opt.step()
    assert loss(x, y).item() < start
    assert loss.metric()[:8].mean() > loss.metric()[8:].mean()


def test_infonce_prefers_the_diagonal():
    x, y = pairs()
    nce = InfoNCELoss(0.07)
    assert nce(x, y) < nce(x, y[torch.roll(torch.arange(8), 1)])


@pytest.mark.parametrize("kind", ["ot", "contrastive"])
def test_pretraining_objective_sums_its_parts(kind):
    x, y = pairs()
    objective = Med3DInsightLoss(16, kind=kind, recon_weight=0.5)
    out = objective(x, y, y, recon_loss=torch.tensor(2.0))
    assert set(out.logs) == {"align_image", "align_text", "recon"} and out.logs["recon"] == 1.0
    assert out.loss.item() == pytest.approx(float(sum(out.logs.values())), rel=1e-5)


@pytest.mark.parametrize("loss", [InfoNCELoss(0.07), PartialOTLoss(16, num_iters=50)])
def test_a_grid_of_one_embedding_per_row_equals_the_plain_loss(loss):
    x, y = pairs()
    grid = x.unsqueeze(1).expand(-1, 8, -1)  # x[a] under every teacher's condition
    torch.testing.assert_close(loss(grid, y), loss(x, y))


@pytest.mark.parametrize("loss", [InfoNCELoss(0.07), PartialOTLoss(16, num_iters=50)])
def test_grid_negatives_are_compared_with_their_own_teacher(loss):
    # same diagonal (positives); off the diagonal grid[a, b] is compared with y[b]: negatives that
    # resemble their teacher (hard) must cost more than negatives pointing away from it (easy)
    x, y = pairs()
    eye = torch.eye(8, dtype=torch.bool)[..., None]
    positives = x.unsqueeze(1).expand(-1, 8, -1)
    hard = torch.where(eye, positives, y.unsqueeze(0) + 0.3 * torch.randn(8, 8, 16))
    easy = torch.where(eye, positives, -y.unsqueeze(0))
    assert loss(easy, y) < loss(hard, y)


def test_alignment_errors():
    with pytest.raises(ValueError, match=r"x \(B, E\) or \(B, B, E\)"):
        PartialOTLoss(16)(torch.randn(4, 16), torch.randn(5, 16))
    with pytest.raises(ValueError, match=r"\(B, B, E\)"):
        InfoNCELoss()(torch.randn(4, 5, 16), torch.randn(4, 16))
    with pytest.raises(ValueError, match="dim 16"):
        PartialOTLoss(16)(torch.randn(4, 8), torch.randn(4, 8))
    with pytest.raises(ValueError, match="mass"):
        PartialOTLoss(16, mass=1.5)
    with pytest.raises(ValueError, match="kind"):
        Med3DInsightLoss(16, kind="mse")


def test_reconstruction_decoder_anisotropic_stride():
    dec = recon_mod.test_recon3d(in_dim=32, stride=(4, 16, 16))
    target = torch.randn(2, 1, 8, 32, 32)
    out = dec(VisualTokens(torch.randn(2, 8, 32), (2, 2, 2)), target)
    assert out.volume.shape == target.shape and out.loss > 0
    out.loss.backward()
    with pytest.raises(ValueError, match="produces"):
        dec(VisualTokens(torch.randn(2, 8, 32), (2, 2, 2)), torch.randn(2, 1, 8, 16, 16))
    with pytest.raises(ValueError, match="grid"):
        dec(VisualTokens(torch.randn(2, 8, 32), None))
    with pytest.raises(ValueError, match="power of two"):
        recon_mod.recon3d(in_dim=8, stride=24)
