import torch
from torch import nn

from zoo.evaluation.cost import flops_per_sample


class ExpandedQueries(nn.Module):
    """Learned queries expanded (a view of a parameter) into a submodule, like PSAT's decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(4, 8))
        self.mix = nn.Linear(8, 8)

    def collate(self, samples):
        return torch.stack([s["image"] for s in samples])

    def forward(self, batch):
        return self.mix(self.queries.unsqueeze(0).expand(batch.shape[0], -1, -1)).sum()


def test_flops_of_a_model_that_expands_parameters_into_submodules():
    model = ExpandedQueries()
    flops = flops_per_sample(model, {"image": torch.zeros(3)})
    assert flops == 2 * 4 * 8 * 8  # one (4 x 8) @ (8 x 8) matmul
    assert all(p.requires_grad for p in model.parameters()) and model.training
