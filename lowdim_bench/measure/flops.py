"""FLOP counts at the ATen level: torch's FlopCounterMode plus formulas for the ops it misses.

FLOPs = 2 x multiply-accumulates of matmul, convolution and attention kernels, for one whole
call (all samples of the batch); divide by the batch size for per-sample figures. Bias adds,
elementwise ops, norms and softmax are not counted.

Why our own formulas for some ops: flop_formulas.py.

Per module: each counted op is given to ONE module, the innermost one running it: in forward,
the innermost module on the call stack (global forward hooks); in backward, the module that
created the autograd node being run (nodes are tagged with their module after each forward
call, and a node pre-hook says which one runs). `by_module` sums those per top-level child by
structure (a call inside `blocks.0` belongs to `blocks`, an nn.ModuleList that is never called
itself; PEFT's `base_model` though PeftModel calls the inner model directly), plus "(root)" for
the root's own ops and "(outside)" for ops outside the model (a loss): the entries sum to the
total exactly. Why not torch's ModuleTracker: it credits an op to every module it thinks is
open, never to an uncalled container, and in backward leaves open every module whose inputs
need no gradient, so one op was counted in two children (intrinsic's projection).

Executed vs ideal: `executed` is what the kernels did. A module whose kernels do more than its
math needs (an SLTrain layer rebuilding a dense W each call) declares `ideal_flops(*inputs)`,
and optionally `ideal_backward_flops(*inputs)`; `ideal` swaps its executed share for those.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..api import Inputs
from .flop_formulas import flop_mapping

@dataclass
class FlopCount:
    """FLOPs of one call (whole batch). by_module: executed per top-level child module."""

    executed: int
    ideal: int
    by_module: dict[str, int] = field(default_factory=dict)
    opt_einsum: bool = False


def opt_einsum_active() -> bool:
    """Whether torch.einsum plans its contraction path with opt_einsum (changes the count)."""
    backend = torch.backends.opt_einsum
    return bool(backend.is_available() and backend.enabled)


ROOT, OUTSIDE = "(root)", "(outside)"


class _Attribution:
    """Which module each counted op ran in (see the module docstring); FLOPs per module and phase."""

    def __init__(self, model: nn.Module) -> None:
        self.names: dict[int, str] = {}
        for name, m in model.named_modules(remove_duplicate=False):
            self.names.setdefault(id(m), name)
        self.stack: list[tuple[nn.Module, set]] = []
        self.node_owner: dict[Any, nn.Module] = {}
        self.backward_owner: nn.Module | None = None
        self.flops: dict[tuple[int, bool], int] = {}  # (id(module) or 0, in backward) -> FLOPs
        self._handles: list[Any] = []

    # forward: the call stack; each call's new autograd nodes are tagged with it when it returns
    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if id(module) in self.names:
            inputs = [t.grad_fn for t in _tensors((args, kwargs)) if t.grad_fn is not None]
            self.stack.append((module, set(inputs)))

    def _post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if id(module) not in self.names or not self.stack or self.stack[-1][0] is not module:
            return
        _, before = self.stack.pop()
        todo = [t.grad_fn for t in _tensors(output) if t.grad_fn is not None]
        while todo:
            node = todo.pop()
            if node is None or node in before or node in self.node_owner:
                continue
            self.node_owner[node] = module
            node.register_prehook(self._runs(module))
            todo.extend(fn for fn, _ in node.next_functions)

    def _runs(self, module: nn.Module) -> Callable[..., None]:
        def hook(grad_outputs: Any) -> None:
            self.backward_owner = module
        return hook

    def add(self, flops: int) -> None:
        backward = torch._C._current_graph_task_id() != -1
        owner = self.backward_owner if backward else (self.stack[-1][0] if self.stack else None)
        key = (id(owner) if owner is not None else 0, backward)
        self.flops[key] = self.flops.get(key, 0) + flops

    def __enter__(self) -> "_Attribution":
        # global hooks: they see every module call, also of modules outside the model (ignored)
        self._handles = [torch.nn.modules.module.register_module_forward_pre_hook(
                             lambda m, a: self._pre(m, a, {})),
                         torch.nn.modules.module.register_module_forward_hook(
                             lambda m, a, kw, o: self._post(m, a, kw, o), with_kwargs=True, always_call=True)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.node_owner.clear()
        self.stack.clear()

    # reading
    def _name(self, key: int) -> str | None:
        return self.names.get(key) if key else None

    def by_child(self, model: nn.Module) -> dict[str, int]:
        """FLOPs per top-level child (every child listed), ROOT and OUTSIDE when not zero."""
        out = {name: 0 for name, _ in model.named_children()}
        if not out:  # a leaf model has no split to show
            return {}
        for (key, _), v in self.flops.items():
            name = self._name(key)
            bucket = OUTSIDE if name is None else (name.split(".")[0] if name else ROOT)
            out[bucket] = out.get(bucket, 0) + v
        return {k: v for k, v in out.items() if v or k not in (ROOT, OUTSIDE)}

    def subtree(self, module: nn.Module, backward: bool) -> int:
        """FLOPs of the ops run inside `module` or its descendants, in forward or in backward."""
        prefix = self.names.get(id(module))
        if prefix is None:
            return 0
        total = 0
        for (key, bw), v in self.flops.items():
            name = self._name(key)
            if bw == backward and name is not None and (prefix == "" or name == prefix or name.startswith(prefix + ".")):
                total += v
        return total


def _tensors(obj: Any) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_flatten

    return [t for t in tree_flatten(obj)[0] if isinstance(t, torch.Tensor)]


class _Counter(FlopCounterMode):
    """FlopCounterMode that also hands each counted op to the attribution."""

    def __init__(self, attribution: _Attribution) -> None:
        super().__init__(display=False, custom_mapping=flop_mapping())
        self.attribution = attribution

    def _count_flops(self, func_packet: Any, out: Any, args: Any, kwargs: Any) -> Any:
        if func_packet in self.flop_registry:
            flops = self.flop_registry[func_packet](*args, **kwargs, out_val=out)
            self.flop_counts["Global"][func_packet] += flops
            self.attribution.add(flops)
        return out


# ---- ideal FLOPs: modules that declare what their math needs ------------------------------

@dataclass
class _Call:
    module: nn.Module
    args: tuple
    kwargs: dict
    executed: int  # forward FLOPs of the module's subtree during this call


class _IdealHooks:
    """Records each outermost call of a module that defines `ideal_flops` and its executed share."""

    def __init__(self, model: nn.Module, counter: FlopCounterMode, attribution: _Attribution) -> None:
        self.counter = counter
        self.attribution = attribution
        self.modules = [m for m in model.modules() if callable(getattr(m, "ideal_flops", None))]
        self.calls: list[_Call] = []
        self._depth = 0
        self._start = 0
        self._handles: list[Any] = []

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._depth == 0:
            self._start = self.counter.get_total_flops()
        self._depth += 1

    def _post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        self._depth -= 1
        if self._depth == 0:
            spent = self.counter.get_total_flops() - self._start
            self.calls.append(_Call(module, args, kwargs, spent))

    def __enter__(self) -> "_IdealHooks":
        for m in self.modules:
            self._handles.append(m.register_forward_pre_hook(self._pre, with_kwargs=True))
            self._handles.append(m.register_forward_hook(self._post, with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def ideal(self, executed: int, backward: bool) -> int:
        """Executed total with each declared module's share swapped for its ideal figure."""
        total = executed
        with torch.no_grad():
            for c in self.calls:
                total += int(c.module.ideal_flops(*c.args, **c.kwargs)) - c.executed
            if backward:
                total += self._backward_delta()
        return total

    def _backward_delta(self) -> int:
        """Swap the executed backward FLOPs of each declaring module's subtree for its ideal figure."""
        delta = 0
        for m in {id(c.module): c.module for c in self.calls}.values():
            ideal_bw = getattr(m, "ideal_backward_flops", None)
            if not callable(ideal_bw):
                continue
            mine = [c for c in self.calls if c.module is m]
            delta += sum(int(ideal_bw(*c.args, **c.kwargs)) for c in mine) - self.attribution.subtree(m, backward=True)
        return delta


# ---- public entry points ------------------------------------------------------------------

def _count(model: nn.Module, run: Callable[[], None], backward: bool) -> FlopCount:
    attribution = _Attribution(model)
    counter = _Counter(attribution)
    with _IdealHooks(model, counter, attribution) as hooks, attribution, counter:
        run()
    executed = counter.get_total_flops()
    return FlopCount(
        executed=executed,
        ideal=hooks.ideal(executed, backward=backward),
        by_module=attribution.by_child(model),
        opt_einsum=opt_einsum_active(),
    )


def forward_flops(model: nn.Module, inputs: tuple | torch.Tensor | Inputs) -> FlopCount:
    """FLOPs of one forward call (`model(*args, **kwargs)` of the inputs) under no_grad, for the
    whole batch. The model's train/eval mode is left as the caller set it.
    """
    inp = Inputs.of(inputs)

    def run() -> None:
        with torch.no_grad():
            inp.call(model)

    return _count(model, run, backward=False)


def train_step_flops(model: nn.Module, step: Callable[[], torch.Tensor]) -> FlopCount:
    """FLOPs of `step()` (a forward returning the loss) plus `loss.backward()`; no optimizer.

    Backward is measured, not assumed: frozen weights and inputs that need no gradient cost
    nothing. Gradients are left accumulated in `.grad`; zero them if the model is reused.
    """

    def run() -> None:
        loss = step()
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError("train_step_flops: step() must return a scalar loss tensor")
        loss.backward()

    return _count(model, run, backward=True)
