"""Codebook use of a vector quantiser: utilisation, perplexity and dead codes on the test split.

A model's quantisers are its modules with an integer `codebook_size`; the codes come from the
task's optional `codes(model, split) -> (codes (n,), codebook size) | None` (vq-digits has it).
- utilisation: distinct codes used / K (fraction; 1 = every code used);
- perplexity: exp(entropy of the code histogram), in codes (K when all are used equally);
- dead fraction: 1 - utilisation, lower is better, so paper checks can say "fewer dead codes".
A model without a quantiser reports `codebook_size` 0 and nothing else.
"""
from __future__ import annotations

import torch

from lowdim_bench.api import Measurement, MeasureContext, Metric, PluginError
from lowdim_bench.hookspecs import hookimpl


def code_statistics(codes: torch.Tensor, size: int) -> dict[str, float]:
    counts = torch.bincount(codes.reshape(-1).long(), minlength=size).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    used = float((counts > 0).sum()) / size
    return {"utilisation": used, "perplexity": float(entropy.exp()), "dead_fraction": 1.0 - used}


class CodebookMetric(Metric):
    name = "codebook"
    description = "Codebook size, utilisation, perplexity and dead-code fraction of a quantiser on the test split."

    def measure(self, ctx: MeasureContext) -> list[Measurement]:
        model = ctx.inference_model.eval()
        sizes = [m.codebook_size for m in model.modules() if isinstance(getattr(m, "codebook_size", None), int)]
        out = [Measurement("codebook_size", sum(sizes), "codes")]
        codes_of = getattr(ctx.task, "codes", None)
        if not sizes or codes_of is None:
            return out
        split = ctx.splits.get("test")
        if split is None:
            raise PluginError("metric 'codebook' needs the cell's test split in MeasureContext.splits['test'] "
                              "(filled by the harness since core v2)")
        got = codes_of(model, split)
        if got is None:
            return out
        stats = code_statistics(*got)
        return out + [
            Measurement("codebook_utilisation", stats["utilisation"], "fraction", higher_is_better=True),
            Measurement("codebook_perplexity", stats["perplexity"], "codes", higher_is_better=True),
            Measurement("codebook_dead_fraction", stats["dead_fraction"], "fraction", higher_is_better=False)]


@hookimpl
def register_metrics(register) -> None:
    register(CodebookMetric)
