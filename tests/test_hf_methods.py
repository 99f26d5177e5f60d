"""Every built-in method on a (tiny, random) BertModel classifier, the structure of all-MiniLM-L6-v2
at width 32: it applies to the attention and MLP Linears, keeps the output at init where it
should, records what it leaves out, and its inference FLOPs equal the closed form
2 x (Linear weights) x tokens + 4 L^2 d per layer + each method's own documented terms."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lowdim_bench.api import ApplyContext, Inputs
from lowdim_bench.registry import Registry
from lowdim_bench_builtin.metrics.text import forward_flops

transformers = pytest.importorskip("transformers", reason="needs the hf extra: pip install 'lowdim-bench[hf]'")

from lowdim_bench_builtin.methods._quantise import VQLinear  # noqa: E402
from lowdim_bench_builtin.methods._skips import skipped  # noqa: E402
from lowdim_bench_builtin.methods.afm import collect_outputs  # noqa: E402
from lowdim_bench_builtin.methods.flora import FloraLayer, contraction_flops  # noqa: E402
from lowdim_bench_builtin.methods.intrinsic import IntrinsicModel  # noqa: E402
from lowdim_bench_builtin.methods.svfit import SvfitLayer  # noqa: E402
from lowdim_bench_builtin.tasks._hf_model import TextClassifier, _drop_pooler  # noqa: E402

D, LAYERS, B, L = 32, 2, 3, 12
BODY = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
        "intermediate.dense", "output.dense")


def tiny_bert(keep_pooler: bool = False) -> TextClassifier:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=2,
                                  intermediate_size=2 * D, max_position_embeddings=64)
    enc = transformers.BertModel(cfg)
    if not keep_pooler:
        _drop_pooler(enc)
    return TextClassifier(enc, nn.Linear(D, 3), "mean").eval()


def inputs() -> Inputs:
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[0, 7:] = 0
    return Inputs((), {"input_ids": torch.randint(1, 100, (B, L), generator=g), "attention_mask": mask})


def ctx(kind: str = "adapt") -> ApplyContext:
    def calibration():
        for _ in range(3):
            yield inputs()
    return ApplyContext(seed=0, device=torch.device("cpu"), task=None, calibration=calibration,  # type: ignore[arg-type]
                        generator=torch.Generator().manual_seed(0), kind=kind)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load()


def build(registry: Registry, name: str, size, **hp) -> tuple[dict[str, type], nn.Module, nn.Module]:
    """(module types of the applied model, the applied model, its deployed form); the types are
    read before `for_inference`, which may rewrite the model in place (PEFT's merge_and_unload)."""
    method = registry.method(name).cls(**hp)
    applied = method.apply(tiny_bert(), size, ctx())
    types = {n: type(m) for n, m in applied.named_modules()}
    return types, applied, method.for_inference(applied).eval()


# name, size, hyper-parameters; sizes small enough that svd/afm factor every body Linear
CASES = [("dense", None, {}), ("lora", 4, {}), ("lora", 4, {"merged_inference": True}), ("svd", 4, {}),
         ("afm", 4, {}), ("svfit", 4, {}), ("svfit", 4, {"merged_inference": True}), ("flora", 4, {}),
         ("flora", 4, {"merged_inference": True}), ("intrinsic", 500, {}), ("said", 500, {"projection": "sparse"}),
         ("said", 500, {"merged_inference": True}), ("sltrain", 4, {}), ("pq", 16, {}), ("lr2vq", 16, {"lowrank_steps": 0}),  # its low-rank stage trains on a task; none here
         ("peft-lora", 4, {}), ("peft-lora", 4, {"merged_inference": True}), ("peft-loha", 4, {"merged_inference": True}),
         ("peft-lokr", 2, {"merged_inference": True}), ("peft-vera", 8, {"merged_inference": True})]
IDENTITY = {"dense", "lora", "svfit", "flora", "intrinsic", "said", "peft-lora", "peft-loha", "peft-lokr", "peft-vera"}


def _ids(case) -> str:
    return case[0] + ("-merged" if case[2].get("merged_inference") else "") + (f"-{case[2]['projection']}" if "projection" in case[2] else "")


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_each_method_applies_to_bert_linears(registry, case):
    name, size, hp = case
    base = tiny_bert()
    x = inputs()
    with torch.no_grad():
        want = x.call(base)
    types, _, deployed = build(registry, name, size, **hp)
    with torch.no_grad():
        got = x.call(deployed)
    assert got.shape == want.shape and torch.isfinite(got).all()
    if name in IDENTITY:
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    if name in ("dense", "intrinsic", "said"):
        return  # whole-model methods: no per-layer rewrite to look at
    # every attention and MLP Linear of every layer is rewritten (no longer a plain nn.Linear there)
    for i in range(LAYERS):
        for suffix in BODY:
            hits = [t for n, t in types.items() if n.endswith(f"layer.{i}.{suffix}")]
            assert hits and hits[-1] is not nn.Linear, f"{name}: layer.{i}.{suffix} left as {hits[-1].__name__}"


def test_the_head_and_break_even_layers_are_recorded_as_skipped(registry):
    _, applied, _ = build(registry, "svd", 10_000)  # full rank: every layer at or above break-even
    skips = skipped(applied)
    assert set(skips) == {n for n, m in tiny_bert().named_modules() if isinstance(m, nn.Linear)}
    assert all("break-even" in why for why in skips.values())
    _, applied, _ = build(registry, "afm", 4)
    assert list(skipped(applied)) == ["head"] and "skip_modules" in skipped(applied)["head"]


def test_afm_leaves_an_unused_linear_dense_and_says_so(registry):
    model = tiny_bert()
    model.spare = nn.Linear(D, D)  # registered, never called
    new = registry.method("afm").cls().apply(model, 4, ctx("compress"))
    assert "never reached" in skipped(new)["spare"]
    assert type(new.get_submodule("spare")) is nn.Linear
    assert type(new.get_submodule("encoder.encoder.layer.0.intermediate.dense")) is not nn.Linear


def test_the_encoder_pooler_is_dropped():
    """BertModel runs its pooler (CLS dense + tanh) in every forward even when mean pooling ignores
    it: kept, it would cost FLOPs and latency and count in budgets."""
    with_pooler, without = tiny_bert(keep_pooler=True), tiny_bert()
    assert with_pooler.encoder.pooler is not None and without.encoder.pooler is None
    x = inputs()
    assert forward_flops(with_pooler, x).executed - forward_flops(without, x).executed == 2 * D * D * B
    with torch.no_grad():
        assert torch.equal(x.call(with_pooler), x.call(without))


def test_afm_statistics_leave_padding_out():
    model = tiny_bert()
    layers = [("q", model.get_submodule("encoder.encoder.layer.0.attention.self.query"))]
    x = inputs()
    padded = collect_outputs(model, layers, [x], 1)["q"]
    rows = [Inputs((), {"input_ids": x.kwargs["input_ids"][i:i + 1, :int(x.kwargs["attention_mask"][i].sum())]})
            for i in range(B)]
    unpadded = collect_outputs(model, layers, rows, B)["q"]
    assert padded.count == unpadded.count == int(x.kwargs["attention_mask"].sum())
    assert torch.allclose(padded.mean, unpadded.mean, atol=1e-5)
    assert torch.allclose(padded.scatter, unpadded.scatter, atol=1e-4)


# ---- FLOPs against the closed form --------------------------------------------------------------

def linear_flops(model: nn.Module) -> int:
    """2 x weight elements x rows of every executed Linear (VQ layers decode, then run a Linear):
    the head runs once per text, the encoder's Linears once per token."""
    total = 0
    for name, m in model.named_modules():
        rows = B if "head" in name.split(".") else B * L
        if isinstance(m, nn.Linear):
            total += 2 * m.weight.numel() * rows
        elif isinstance(m, VQLinear):
            total += 2 * m.in_features * m.out_features * rows
            if m.projection is not None:  # the codebook decoded each call: (k x d~) @ (d~ x m)
                total += 2 * m.k * m.clustering_dim * m.m
    for name, m in model.named_modules():  # merged adapters keep their factor Linears, unexecuted
        if getattr(m, "merged", None) is True:
            rows = B if "head" in name.split(".") else B * L
            total -= sum(2 * c.weight.numel() * rows for c in m.modules() if isinstance(c, nn.Linear) and c is not m.base)
    return total


def method_terms(model: nn.Module) -> int:
    """Each method's documented extra per call: SVFit rebuilds W' (2 d_out r d_in), FLoRA runs the
    update as a second Linear plus its Tucker contraction, a sparse projection costs 2 nnz."""
    total = 0
    for name, m in model.named_modules():
        rows = B if "head" in name.split(".") else B * L
        if isinstance(m, SvfitLayer) and not m.merged:
            total += 2 * m.u.shape[0] * m.rank * m.v.shape[1]
        if isinstance(m, FloraLayer) and not m.merged:
            total += 2 * m.base.weight.numel() * rows + contraction_flops(m.dims, m.ranks)
        if isinstance(m, IntrinsicModel) and m.projection.kind == "sparse":
            total += 2 * m.projection.nnz
    return total


@pytest.mark.parametrize("case", [c for c in CASES if c[0] != "sltrain"], ids=_ids)
def test_inference_flops_equal_the_closed_form(registry, case):
    name, size, hp = case
    _, _, deployed = build(registry, name, size, **hp)
    attention = LAYERS * 4 * L * L * D * B
    expected = linear_flops(deployed) + attention + method_terms(deployed)
    assert forward_flops(deployed, inputs()).executed == expected


def test_sltrain_flops_are_its_declared_ideal(registry):
    _, _, deployed = build(registry, "sltrain", 4)
    count = forward_flops(deployed, inputs())
    layers = [m for m in deployed.modules() if hasattr(m, "nnz") and hasattr(m, "rank")]
    assert layers
    expected = LAYERS * 4 * L * L * D * B + sum(
        2 * B * L * (m.rank * (m.in_features + m.out_features) + m.nnz) for m in layers) + 2 * D * 3 * B
    assert count.ideal == expected
