"""Conformance checks for a Method: each takes a MethodSubject and returns a CheckResult.

Every check states what it expected and what it saw, so a failure reads as a bug report.
See docs/plugins.md ("The conformance kit") for the list and the reasons behind each one.
"""
from __future__ import annotations

import copy
import io
import traceback
from typing import Callable

import torch
from torch import nn

from .. import api
from ..measure.flops import forward_flops, train_step_flops
from ..measure.params import count_params, stored_elements
from ..run.train import make_optimizer
from . import probes
from .outputs import compare_outputs, outputs as _outputs
from .results import CheckResult, failed, passed, skipped
from .run_checks import check_budget_monotone, check_inference_form, check_smoke_run, sweep
from .subject import MethodSubject

__all__ = ["METHOD_CHECKS", "run_method_check", "compare_outputs", "sweep"]

Check = Callable[[MethodSubject], CheckResult]


# ---- helpers ------------------------------------------------------------------------------

def _digests(model: nn.Module) -> dict[str, str]:
    """Digest of each distinct, non-constant floating parameter of the base."""
    out = {}
    for name, p in model.named_parameters():
        if p.is_floating_point() and p.layout == torch.strided and p.numel() > 1 and bool((p != p.flatten()[0]).any()):
            out[probes._digest(p)] = name
    return out


def _trainable_present(model: nn.Module) -> bool:
    return any(p.requires_grad for p in model.parameters())


# ---- the checks ---------------------------------------------------------------------------

def check_declaration(s: MethodSubject) -> CheckResult:
    """Class attributes are well-formed: kinds, knob, targets, description, knob range."""
    name, cls = "declaration", s.cls
    problems = []
    if not isinstance(cls.name, str) or not cls.name or cls.name != cls.name.strip():
        problems.append(f"name {cls.name!r} is not a non-empty string")
    if cls.kind not in api.KINDS:
        problems.append(f"kind {cls.kind!r} not in {api.KINDS}")
    if cls.kind not in cls.supported_kinds():
        problems.append(f"kind {cls.kind!r} missing from kinds {cls.kinds}")
    if cls.knob is not None and not isinstance(cls.knob, api.Knob):
        problems.append(f"knob {cls.knob!r} is not a Knob")
    if not isinstance(cls.targets, tuple) or not all(isinstance(t, str) for t in cls.targets):
        problems.append(f"targets {cls.targets!r} is not a tuple of module type names")
    if not isinstance(cls.identity_at_init, bool):
        problems.append(f"identity_at_init {cls.identity_at_init!r} is not a bool")
    if not cls.description:
        problems.append("description is empty (it is what `lowdim-bench list methods` shows)")
    if cls.knob is not None:
        lo, hi = s.method.knob_range(s.base())
        if not lo <= hi:
            problems.append(f"knob_range {lo}..{hi} is empty")
    if problems:
        return failed(name, s.label, "a well-formed Method declaration", "; ".join(problems))
    return passed(name, s.label)


def check_base_untouched(s: MethodSubject) -> CheckResult:
    """apply must not change the base (values, requires_grad, modules), not even through aliasing;
    a merge must not change the family's members either."""
    name = "base_untouched"
    base = s.base()
    members = s.members()
    before = probes.snapshot(base)
    members_before = {k: probes.snapshot(m) for k, m in members.items()}
    model = s.apply(base)
    if model is base or any(model is m for m in members.values()):
        return failed(name, s.label, "apply returns a new model", "it returned the base model (or a member) itself")
    diff = probes.diff_snapshots(before, probes.snapshot(base))
    if diff:
        return failed(name, s.label, "the base model unchanged by apply (values, requires_grad flags, modules)",
                      "after apply: " + "; ".join(diff))
    for k, m in members.items():
        diff = probes.diff_snapshots(members_before[k], probes.snapshot(m))
        if diff:
            return failed(name, s.label, "every member of the family unchanged by apply (ctx.members is read-only)",
                          f"after apply, member {k!r}: " + "; ".join(diff))
    if s.trains(model):
        s.train(model, steps=1)
        diff = probes.diff_snapshots(before, probes.snapshot(base))
        if diff:
            return failed(name, s.label, "training the applied model leaves the base alone",
                          "after one training step of the applied model, the base changed (they share tensors; "
                          "deep-copy before changing): " + "; ".join(diff))
    return passed(name, s.label)


def check_kind(s: MethodSubject) -> CheckResult:
    """The declared kind's contract: adapt freezes every base tensor and trains only new ones."""
    name = "kind"
    base = s.base()
    ref = _outputs(base, s.inputs())
    model = s.apply(base)
    out = _outputs(model, s.inputs())
    if [t.shape for t in out] != [t.shape for t in ref]:
        return failed(name, s.label, f"the applied model's output shapes {[tuple(t.shape) for t in ref]} (as the base)",
                      f"{[tuple(t.shape) for t in out]}")
    if s.kind == "merge":
        return passed(name, s.label, f"merged {len(s.members())} members; output shapes as the base's")
    trainable = sum(stored_elements(p) for p in model.parameters() if p.requires_grad)
    declared = s.cls.kind
    if declared in ("adapt", "train", "head") and s.kind == declared and trainable == 0 \
            and s.method.configure_optimizer(model, 1e-3, 0.0) is None:
        return failed(name, s.label, f"a {declared} method leaves something to train", "no trainable parameter")
    if declared == "adapt" and s.kind == "adapt":
        base_digests = _digests(base)
        trained_base = [f"{base_digests[d]} (as {n})" for n, p in model.named_parameters() if p.requires_grad
                        for d in [probes._digest(p)] if d in base_digests]
        if trained_base:
            return failed(name, s.label, "adapt: every base parameter frozen, only new parameters trainable",
                          f"base parameters left trainable: {trained_base[:5]}")
    return passed(name, s.label, f"{trainable} trainable elements")


def check_identity_at_init(s: MethodSubject) -> CheckResult:
    name = "identity_at_init"
    if not s.cls.identity_at_init:
        return skipped(name, s.label, "the method does not declare identity_at_init")
    if s.kind == "merge":
        return skipped(name, s.label, "a merge is not meant to compute what the base computes")
    inputs = s.inputs()
    ref = _outputs(s.base(), inputs)
    out = _outputs(s.apply(), inputs)
    ok, what = compare_outputs(out, ref, s.options.atol, s.options.rtol)
    if not ok:
        return failed(name, s.label, f"outputs equal to the base's on the task's example inputs "
                      f"(atol {s.options.atol:g}, rtol {s.options.rtol:g}), as identity_at_init declares", what)
    return passed(name, s.label, what)


def check_params_honest(s: MethodSubject) -> CheckResult:
    """count_params sees every tensor the method stores or trains, and sparse parts are stored sparse."""
    name = "params_honest"
    model = s.trained()
    c = count_params(model)
    problems = []
    params = {id(p): p for p in model.parameters()}.values()
    total = sum(stored_elements(p) for p in params)
    trainable = sum(stored_elements(p) for p in params if p.requires_grad)
    if (total, trainable) != (c.total, c.trainable):
        problems.append(f"count_params total/trainable {c.total}/{c.trainable}, an independent recount {total}/{trainable}")
    try:
        opt = make_optimizer(model, s.method, 1e-3, 0.0)
    except ValueError:
        opt = None
    if opt is not None:
        known = {id(p) for p in model.parameters()}
        outside = [t for g in opt.param_groups for t in g["params"] if id(t) not in known]
        if outside:
            n = sum(t.numel() for t in outside)
            problems.append(f"the optimizer updates {len(outside)} tensor(s), {n} elements, that are not parameters of "
                            f"the model (count_params reports {c.trainable} trainable)")
    hidden = probes.hidden_tensors(model)
    if hidden:
        problems.append("tensors held as plain attributes, invisible to count_params and state_dict: "
                        + ", ".join(f"{p} {tuple(t.shape)}" for p, t in hidden[:5]))
    zeros = probes.mostly_zero_tensors(model)
    if zeros:
        problems.append("dense tensors that are mostly zeros after training (a sparse part stored dense, so "
                        "params and bytes count every zero): "
                        + ", ".join(f"{n} {shape} {frac:.0%} zeros" for n, shape, frac in zeros[:5]))
    sd_bytes = probes.state_dict_bytes(model.state_dict())
    if sd_bytes != c.stored_bytes:
        problems.append(f"state_dict holds {sd_bytes} bytes of tensors, count_params.stored_bytes says {c.stored_bytes}")
    seen = f"total {c.total}, trainable {c.trainable}, stored {c.stored}, stored_bytes {c.stored_bytes}"
    if problems:
        return failed(name, s.label, "count_params sees every stored and trained tensor, sparse parts stored sparse",
                      "; ".join(problems) + f" ({seen})")
    return passed(name, s.label, seen)


def check_flops(s: MethodSubject) -> CheckResult:
    """Non-zero FLOPs, and no mostly-zero weight multiplied as a dense matrix (counted dense)."""
    name = "flops"
    bs = s.options.batch_size
    trained = s.trained()
    deployed = s.method.for_inference(copy.deepcopy(trained)).eval()
    fwd = forward_flops(deployed, s.inputs(bs))
    dense = forward_flops(s.base(), s.inputs(bs)).executed
    problems = []
    if fwd.executed <= 0 or fwd.ideal <= 0:
        problems.append(f"forward FLOPs executed {fwd.executed}, ideal {fwd.ideal}")
    if _trainable_present(trained) and s.kind != "merge":
        m = copy.deepcopy(trained).train()
        batch = s.task.example_batch(bs, torch.device("cpu"))
        step = train_step_flops(m, lambda: s.task.loss(m, batch))
        if step.executed <= 0:
            problems.append(f"training-step FLOPs executed {step.executed}")
    for form, model in (("deployed", deployed), ("training", trained)):
        found = probes.sparse_as_dense_operands(model, s.inputs(bs), s.inputs(bs + 3))
        if found:
            problems.append(f"{form} form multiplies mostly-zero weights as dense matrices, so FLOPs count every zero: "
                            + ", ".join(f"{f.op} operand {f.shape} {f.zero_fraction:.0%} zeros" for f in found[:4]))
    seen = f"forward executed {fwd.executed / bs:.0f}, ideal {fwd.ideal / bs:.0f}, dense base {dense / bs:.0f} FLOPs/sample"
    if problems:
        return failed(name, s.label, "non-zero FLOPs; sparse parts executed sparse or declared through ideal_flops",
                      "; ".join(problems) + f" ({seen})")
    return passed(name, s.label, seen)


def check_deterministic(s: MethodSubject) -> CheckResult:
    """Two applies with the same seed give the same state, whatever ran in between.

    The global RNG is moved between the applies and both get one shared ctx.generator, as in
    the budget search: a method that draws from either would make the model at a knob depend
    on which other knobs the search tried first.
    """
    name = "deterministic"
    base = s.base()
    gen = torch.Generator().manual_seed(s.seed)
    torch.manual_seed(1234)
    a = s.apply(base, generator=gen).state_dict()
    torch.manual_seed(98765)
    b = s.apply(base, generator=gen).state_dict()
    if a.keys() != b.keys():
        return failed(name, s.label, "the same state_dict keys from two applies with one seed",
                      f"only in the first: {sorted(a.keys() - b.keys())[:5]}, only in the second: {sorted(b.keys() - a.keys())[:5]}")
    differ = [k for k in a if isinstance(a[k], torch.Tensor) and not probes._same(a[k], b[k])]
    if differ:
        return failed(name, s.label, "identical tensors from two applies with the same seed (draw randomness from a "
                      "generator seeded with ctx.seed, not the global RNG or the shared ctx.generator)",
                      f"tensors differ: {differ[:5]}")
    return passed(name, s.label)


def check_state_dict_round_trip(s: MethodSubject) -> CheckResult:
    """Save the trained state, load it (weights_only) into a fresh apply: same outputs.

    The fresh apply uses the same seed, as the harness would: a method may regenerate frozen
    random state from the seed instead of storing it (intrinsic dimension's projection). Whether
    the checkpoint also works under another seed is reported, not required.
    """
    name = "state_dict_round_trip"
    trained = s.trained()
    buf = io.BytesIO()
    torch.save(trained.state_dict(), buf)
    buf.seek(0)
    try:
        state = torch.load(buf, weights_only=True)
    except Exception as exc:
        return failed(name, s.label, "a state_dict of tensors that torch.load(weights_only=True) reads",
                      f"{type(exc).__name__}: {str(exc)[:200]}")
    want = _outputs(trained, s.inputs())
    verdicts = []
    for seed in (s.seed, s.seed + 1):
        fresh = s.apply(seed=seed)
        try:
            fresh.load_state_dict(state, strict=True)
        except Exception as exc:
            if seed != s.seed:
                verdicts.append(f"does not load into an apply with another seed ({type(exc).__name__})")
                break
            return failed(name, s.label, "the saved state loads (strict) into a fresh apply",
                          f"{type(exc).__name__}: {str(exc)[:300]}")
        ok, what = compare_outputs(_outputs(fresh, s.inputs()), want, s.options.atol, s.options.rtol)
        if seed == s.seed and not ok:
            return failed(name, s.label, "a fresh apply with the saved state loaded computes what the trained model "
                          "computes (state outside the state_dict is lost on save)", what)
        verdicts.append(what if seed == s.seed else
                        ("self-contained: also under another seed" if ok else
                         "needs its seed: frozen state is regenerated from ctx.seed, not stored"))
    return passed(name, s.label, "; ".join(verdicts))


METHOD_CHECKS: dict[str, Check] = {
    "declaration": check_declaration,
    "base_untouched": check_base_untouched,
    "kind": check_kind,
    "identity_at_init": check_identity_at_init,
    "params_honest": check_params_honest,
    "flops": check_flops,
    "deterministic": check_deterministic,
    "state_dict_round_trip": check_state_dict_round_trip,
    "budget_monotone": check_budget_monotone,
    "smoke_run": check_smoke_run,
    "inference_form": check_inference_form,
}


def run_method_check(check: str, s: MethodSubject) -> CheckResult:
    """One check by name; an exception inside it is a failure that shows the traceback's end."""
    if check not in METHOD_CHECKS:
        raise KeyError(f"unknown method check {check!r}; known: {', '.join(METHOD_CHECKS)}")
    try:
        return METHOD_CHECKS[check](s)
    except Exception as exc:
        tb = traceback.format_exc().strip().splitlines()
        return failed(check, s.label, "the check to run", f"{type(exc).__name__}: {exc} ({' | '.join(tb[-3:])})")
