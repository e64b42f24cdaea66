"""Med3DInsight alignment losses between the 3D embedding and the 2D teacher's slice embeddings.

- :class:`InfoNCELoss`: the conference version's contrastive alignment, symmetric cross-entropy
  over cosine similarities with a fixed temperature (0.07).
- :class:`PartialOTLoss`: the journal version's partial entropic optimal transport. The cost between
  3D embedding ``x_i`` and teacher embedding ``y_j`` (both L2-normalised) is a learnable diagonal
  metric ``M_ij = sum_k w_k (x_ik - y_jk)^2`` with ``w = dim * softmax(theta)`` (positive, mean 1:
  it learns which dimensions matter without being able to rescale the cost, so it cannot shrink or
  blow up the entropic blur); ``theta = 0`` at start gives the squared Euclidean cost. POT's
  ``ot.partial.entropic_partial_wasserstein`` (log-domain Sinkhorn, ``method="sinkhorn_log"``,
  torch backend: differentiable through its iterations) solves for the plan ``P`` with uniform
  marginals ``1/B``, entropic regulariser ``epsilon = 0.03`` and transported mass
  ``m = 0.95``. The loss pushes ``P`` onto the diagonal as a cross-entropy of the row-normalised
  plan against the identity, weighted by each row's transported mass (rows the partial plan mostly
  drops, i.e. outlier pairs, count less; the weights are detached):
  ``L = - sum_i (r_i / m) log(P_ii / r_i)``, ``r_i = sum_j P_ij``.
- :class:`Med3DInsightLoss`: the pretraining objective, alignment to the slice-image and the
  slice-text teacher embeddings (one metric each) plus ``recon_weight * MSE`` reconstruction.

Both losses take the 3D side as ``(B, E)`` (sample ``a``'s own embedding, compared with every
teacher embedding ``y_b``) or as a grid ``(B, B, E)`` where ``x[a, b]`` is volume ``a`` embedded
under teacher sample ``b``'s plane and slice index: then every pair, positive or negative, shares
the teacher's plane and index, so the loss cannot be lowered by plane/index information alone
(the recipe's ``negatives="condition"``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.errors import ConfigError
from zoo.types import StepOutput


def _grid(x: Tensor, y: Tensor) -> Tensor:
    """Check the shapes and return the 3D side as a ``(B, B, E)`` grid, ``grid[a, b]`` to be
    compared with ``y[b]``: a ``(B, E)`` ``x`` is repeated along ``b``, a grid is returned as is."""
    b = y.shape[0] if y.dim() == 2 else -1
    if y.dim() != 2 or x.shape not in ((b, y.shape[1]), (b, b, y.shape[1])):
        raise ValueError(f"alignment needs x (B, E) or (B, B, E) and y (B, E), got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    if b < 2:
        raise ValueError(f"alignment needs a batch of at least 2 pairs, got {b}")
    return x if x.dim() == 3 else x.unsqueeze(1).expand(-1, b, -1)


class InfoNCELoss(nn.Module):
    """Symmetric InfoNCE with a fixed temperature t: ``(CE(S, I) + CE(S^T, I)) / 2`` with
    ``S_ab = cos(x_a, y_b) / t`` (``cos(x[a, b], y_b) / t`` for a grid ``x``)."""

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        grid = F.normalize(_grid(x, y), dim=-1)
        logits = (grid * F.normalize(y, dim=-1).unsqueeze(0)).sum(-1) / self.temperature
        target = torch.arange(y.shape[0], device=y.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class PartialOTLoss(nn.Module):
    """Partial entropic OT with a learnable diagonal metric; see the module docstring."""

    def __init__(self, dim: int, epsilon: float = 0.03, mass: float = 0.95,
                 num_iters: int = 200, tol: float = 1e-6, learn_metric: bool = True) -> None:
        super().__init__()
        if dim < 1:
            raise ConfigError(f"dim must be >= 1, got {dim}")
        if epsilon <= 0:
            raise ConfigError(f"epsilon must be > 0, got {epsilon}")
        if not 0.0 < mass <= 1.0:
            raise ConfigError(f"mass (fraction of the mass transported) must be in (0, 1], got "
                              f"{mass}")
        if num_iters < 1:
            raise ConfigError(f"num_iters must be >= 1, got {num_iters}")
        self.dim, self.epsilon, self.mass = dim, epsilon, mass
        self.num_iters, self.tol = num_iters, tol
        self.theta = nn.Parameter(torch.zeros(dim), requires_grad=learn_metric)

    def metric(self) -> Tensor:
        """Per-dimension weights ``(dim,)``, positive with mean 1."""
        return self.dim * torch.softmax(self.theta, dim=0)

    def cost(self, x: Tensor, y: Tensor) -> Tensor:
        """``(B, B)`` cost ``sum_k w_k (x_ak - y_bk)^2`` between L2-normalised embeddings
        (``x[a, b]`` in place of ``x_a`` for a grid ``x``)."""
        diff = F.normalize(_grid(x, y), dim=-1) - F.normalize(y, dim=-1).unsqueeze(0)
        return (diff.square() * self.metric()).sum(-1)

    def plan(self, x: Tensor, y: Tensor) -> Tensor:
        """The partial entropic transport plan ``(B, B)`` (total mass ``mass``), differentiable."""
        _grid(x, y)
        if y.shape[1] != self.dim:
            raise ValueError(f"PartialOTLoss built for dim {self.dim}, got embeddings of width "
                             f"{y.shape[1]}")
        cost = self.cost(x.float(), y.float()).double()
        b = cost.shape[0]
        marginal = torch.full((b,), 1.0 / b, dtype=cost.dtype, device=cost.device)
        # the log-domain solver needs m as a tensor on the torch backend; clamp against rounding
        mass = torch.minimum(torch.tensor(self.mass, dtype=cost.dtype, device=cost.device),
                             marginal.sum())
        import ot  # POT; imported here so the registry loads without it (slow, large)

        return ot.partial.entropic_partial_wasserstein(
            marginal, marginal, cost, reg=self.epsilon, m=mass, numItermax=self.num_iters,
            stopThr=self.tol, method="sinkhorn_log")

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        plan = self.plan(x, y)
        rows = plan.sum(1)
        weight = (rows / rows.sum()).detach()
        loss = -(weight * (plan.diagonal().clamp_min(1e-30).log() - rows.log())).sum()
        return loss.to(x.dtype)


class Med3DInsightLoss(nn.Module):
    """Alignment to the slice-image and slice-text embeddings plus weighted reconstruction MSE.

    ``kind="ot"`` (journal) or ``"contrastive"`` (conference). ``forward(embedding (B, E) or
    grid (B, B, E), image_emb (B, E), text_emb (B, E) or None, recon_loss scalar or None) ->
    StepOutput``.
    """

    def __init__(self, dim: int, kind: str = "ot", epsilon: float = 0.03, mass: float = 0.95,
                 temperature: float = 0.07, num_iters: int = 200, text_weight: float = 1.0,
                 recon_weight: float = 1.0) -> None:
        super().__init__()
        if kind not in ("ot", "contrastive"):
            raise ConfigError(f"kind must be 'ot' or 'contrastive', got {kind!r}")
        self.kind, self.text_weight, self.recon_weight = kind, text_weight, recon_weight
        if kind == "ot":
            self.image = PartialOTLoss(dim, epsilon, mass, num_iters)
            self.text = PartialOTLoss(dim, epsilon, mass, num_iters)
        else:
            self.image = self.text = InfoNCELoss(temperature)

    def forward(self, embedding: Tensor, image_emb: Tensor, text_emb: Tensor | None = None,
                recon_loss: Tensor | None = None) -> StepOutput:
        parts = {"align_image": self.image(embedding, image_emb)}
        if text_emb is not None:
            parts["align_text"] = self.text_weight * self.text(embedding, text_emb)
        if recon_loss is not None:
            parts["recon"] = self.recon_weight * recon_loss
        loss = torch.stack(list(parts.values())).sum()
        return StepOutput(loss, {k: v.detach() for k, v in parts.items()})
