"""Template of a metric: the effective rank of the learned update W - W0 (it reads ctx.base_model)."""
from __future__ import annotations

CODE = '''"""$metric_name: effective rank of the learned update W - W0 (the scaffold's metric example).

For every nn.Linear of the base model (`ctx.base_model`: what the method was applied to), the
trained model's layer of the same name is read as an affine map whatever its form (a LoRA
wrapper, two SVD factors): W = f(I) - f(0). The effective rank (Roy and Vetterli 2007) of
W - W0 is exp of the entropy of its normalised singular values. Reported: the mean over layers
whose update is not zero, and how many there were. A metric that wants the model before
training declares `needs = ("applied_model",)` and reads `ctx.applied_model`.
"""
from __future__ import annotations

import torch
from torch import nn

from lowdim_bench.api import Measurement, MeasureContext, Metric


def effective_rank(matrix: torch.Tensor) -> float:
    s = torch.linalg.svdvals(matrix.detach().double())
    if float(s.sum()) <= 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def as_matrix(layer: nn.Module, d_in: int) -> torch.Tensor:
    """The (d_out, d_in) matrix of a layer that maps the last dimension affinely."""
    ref = next(layer.parameters(), None)
    like = {"dtype": ref.dtype, "device": ref.device} if ref is not None else {}
    with torch.no_grad():
        return (layer(torch.eye(d_in, **like)) - layer(torch.zeros(1, d_in, **like))).T


class ${cls}Metric(Metric):
    name = "$metric_name"
    description = "Effective rank of the learned update W - W0 of each Linear, mean over updated layers."

    def measure(self, ctx: MeasureContext) -> list[Measurement]:
        trained = dict(ctx.model.named_modules())
        was_training = ctx.model.training
        ctx.model.eval()  # no dropout while reading the maps; the model is left as it was
        try:
            ranks = []
            for name, base in ctx.base_model.named_modules():
                if isinstance(base, nn.Linear) and name in trained:
                    delta = as_matrix(trained[name], base.in_features) - base.weight.detach()
                    if float(delta.abs().max()) > 1e-12:
                        ranks.append(effective_rank(delta))
        finally:
            ctx.model.train(was_training)
        if not ranks:
            return [Measurement("update_layers", 0, "layers")]
        return [Measurement("update_effective_rank", sum(ranks) / len(ranks), "rank", higher_is_better=None),
                Measurement("update_layers", len(ranks), "layers")]
'''

TEST = '''"""The conformance kit on $metric_name and the effective rank of known spectra."""
import torch

from $module.metric import ${cls}Metric, effective_rank
$task_import


def test_conforms(lowdim_kit):
    lowdim_kit.metric(${cls}Metric, $task)


def test_effective_rank_of_known_spectra():
    assert abs(effective_rank(torch.eye(5)) - 5.0) < 1e-9
    assert abs(effective_rank(torch.outer(torch.ones(4), torch.arange(1.0, 4.0))) - 1.0) < 1e-6
    assert effective_rank(torch.zeros(3, 3)) == 0.0
'''
