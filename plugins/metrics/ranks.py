"""Inner ranks of a model's factored layers, per layer and in total (Maestro's final ranks).

A factored layer is any module with an integer `rank` attribute (Maestro's MaestroLinear, svd's
FactoredLinear, SLTrain's low-rank part): the metric reads the trained model, so a method that
prunes its rank during training (Maestro) reports where pruning ended. A model without such a
layer reports 0 layers and rank 0, so the figure is there for every cell of a suite.
"""
from __future__ import annotations

from lowdim_bench.api import Measurement, MeasureContext, Metric
from lowdim_bench.hookspecs import hookimpl


def layer_ranks(model) -> dict[str, int]:
    out = {}
    for name, m in model.named_modules():
        rank = getattr(m, "rank", None)
        if isinstance(rank, int) and not isinstance(rank, bool):
            out[name or "<root>"] = rank
    return out


class RanksMetric(Metric):
    name = "ranks"
    description = "Inner rank of every factored layer (a module with an int `rank`) of the trained model, and the sum."

    def measure(self, ctx: MeasureContext) -> list[Measurement]:
        ranks = layer_ranks(ctx.model)
        out = [Measurement("rank_total", sum(ranks.values()), "rank"),
               Measurement("factored_layers", len(ranks), "layers")]
        out += [Measurement(f"rank.{name}", r, "rank") for name, r in ranks.items()]
        return out


@hookimpl
def register_metrics(register) -> None:
    register(RanksMetric)
