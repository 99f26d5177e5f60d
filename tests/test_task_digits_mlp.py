"""digits-mlp: fixed splits, model shape, training works, and the source->target shift is real."""
from __future__ import annotations

import copy
from importlib import metadata

import numpy as np
import pytest
import torch
from torch import nn

from lowdim_bench import api
from lowdim_bench.registry import Registry
from lowdim_bench_builtin.tasks import digits_mlp
from lowdim_bench_builtin.tasks.digits_mlp import DigitsTask, split_indices

CPU = torch.device("cpu")


def fit(task: api.Task, model: nn.Module, split, recipe: api.Recipe, seed: int = 0) -> nn.Module:
    """Plain AdamW at a constant lr: enough to check the task trains (the harness has the real loop)."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr)
    stream = task.batches(split, recipe.batch_size, torch.Generator().manual_seed(seed))
    model.train()
    for _ in range(recipe.steps):
        loss = task.loss(model, next(stream))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@pytest.fixture(scope="module")
def task() -> DigitsTask:
    return DigitsTask()


@pytest.fixture(scope="module")
def source_base(task: DigitsTask) -> nn.Module:
    return fit(task, task.make_model(0), task.splits("source", 0)["train"], task.recipe("pretrain"))


def test_registers_through_its_entry_point() -> None:
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="lowdim_bench")}
    assert eps["digits-mlp"] == "lowdim_bench_builtin.tasks.digits_mlp"
    reg = Registry.from_objects({"digits-mlp": digits_mlp})
    assert reg.task("digits-mlp").cls is DigitsTask


def test_splits_are_disjoint_stratified_and_cover_everything() -> None:
    labels = np.repeat(np.arange(10), 50)
    parts = split_indices(labels)
    all_idx = np.concatenate(list(parts.values()))
    assert len(all_idx) == len(set(all_idx.tolist())) == 500
    for name, share in zip(("train", "val", "test"), digits_mlp.FRACTIONS):
        counts = np.bincount(labels[parts[name]], minlength=10)
        assert (counts == round(share * 50)).all(), (name, counts)


def test_splits_do_not_depend_on_seed_or_instance(task: DigitsTask) -> None:
    a, b = task.splits("target", 0), DigitsTask().splits("target", 7)
    for name in ("train", "val", "test"):
        assert torch.equal(a[name].x, b[name].x) and torch.equal(a[name].y, b[name].y)
    assert [len(a[name]) for name in ("train", "val", "test")] == [1078, 359, 360]


def test_target_is_the_transposed_source(task: DigitsTask) -> None:
    src, tgt = task.splits("source", 0), task.splits("target", 0)
    for name in ("train", "test"):
        assert torch.equal(tgt[name].y, src[name].y)
        flipped = src[name].x.view(-1, 8, 8).transpose(1, 2).reshape(-1, 64)
        assert torch.equal(tgt[name].x, flipped)
        assert not torch.equal(tgt[name].x, src[name].x)
    x = src["train"].x
    assert x.dtype == torch.float32 and x.shape[1] == 64 and x.min() >= 0 and x.max() <= 1


def test_fingerprint_is_stable_and_tracks_the_shift(task: DigitsTask) -> None:
    assert task.fingerprint() == DigitsTask().fingerprint()
    assert len(task.fingerprint()) == 64
    assert task.fingerprint() != DigitsTask(shift="flip").fingerprint()


def test_model_shape_and_layer_names(task: DigitsTask) -> None:
    model = DigitsTask(hidden=32, depth=3).make_model(0)
    (x,) = task.example_inputs(5, CPU)
    assert model(x).shape == (5, 10)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert linears == ["body.0", "body.2", "body.4", "head"]
    assert model.head.out_features == 10 and model.body[0].in_features == 64
    owned = {id(p) for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters()}
    assert all(id(p) in owned for p in model.parameters())


def test_make_model_is_seeded_and_leaves_global_rng_alone(task: DigitsTask) -> None:
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = task.make_model(1), task.make_model(1), task.make_model(2)
    assert torch.equal(torch.rand(1), expected)
    assert torch.equal(a.head.weight, b.head.weight) and not torch.equal(a.head.weight, c.head.weight)


def test_loss_is_finite_on_example_batch(task: DigitsTask) -> None:
    x, y = task.example_batch(8, CPU)
    assert x.shape == (8, 64) and y.shape == (8,) and y.dtype == torch.int64
    loss = task.loss(task.make_model(0), (x, y))
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_batches_are_endless_and_shuffled_by_the_generator(task: DigitsTask) -> None:
    split = task.splits("target", 0)["val"]  # 359 examples: batches of 100 span passes
    take = lambda seed: [next(it) for it in [task.batches(split, 100, torch.Generator().manual_seed(seed))] for _ in range(8)]
    a, b, c = take(0), take(0), take(1)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])
    assert all(batch[0].shape == (100, 64) for batch in a)
    first_pass = torch.cat([bx for bx, _ in a])[:359]
    assert len({tuple(r.tolist()) for r in first_pass}) == len({tuple(r.tolist()) for r in split.x})


def test_evaluate_runs_in_eval_mode_and_restores_the_mode(task: DigitsTask) -> None:
    seen: list[bool] = []

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(self.training and torch.is_grad_enabled())
            return self.head(x)

    model = Spy().train()
    acc = task.evaluate(model, task.splits("target", 0)["test"])
    assert 0.0 <= acc <= 1.0 and seen and not any(seen) and model.training
    model.eval()
    task.evaluate(model, task.splits("target", 0)["test"])
    assert not model.training


def test_recipes_and_bad_options() -> None:
    task = DigitsTask(steps=10, finetune_lr=0.5)
    assert task.recipe("pretrain").steps == 10 and task.recipe("finetune").lr == 0.5
    assert task.recipe("recover").steps == DigitsTask.defaults["recover_steps"]
    with pytest.raises(api.PluginError):
        task.recipe("distill")
    with pytest.raises(api.PluginError, match="widht"):
        DigitsTask(widht=3)
    with pytest.raises(api.PluginError, match="shift"):
        DigitsTask(shift="rotate")
    with pytest.raises(api.PluginError, match="stage"):
        task.splits("other", 0)


def test_training_from_scratch_on_target_reaches_090(task: DigitsTask) -> None:
    # 200 steps: measured 0.95-0.97 test accuracy over 10 seeds.
    tgt = task.splits("target", 0)
    model = fit(task, task.make_model(0), tgt["train"], task.recipe("pretrain").replace(steps=200))
    assert task.evaluate(model, tgt["test"]) > 0.9


def test_source_base_is_poor_on_target_until_fine_tuned(task: DigitsTask, source_base: nn.Module) -> None:
    # Measured over 10 seeds: source test 0.96-0.98, target test 0.10-0.125 (chance),
    # full fine-tuning with the finetune recipe 0.96-0.97.
    src, tgt = task.splits("source", 0), task.splits("target", 0)
    assert task.evaluate(source_base, src["test"]) > 0.9
    assert task.evaluate(source_base, tgt["test"]) < 0.3
    tuned = fit(task, copy.deepcopy(source_base), tgt["train"], task.recipe("finetune"))
    assert task.evaluate(tuned, tgt["test"]) > 0.9


def test_mild_shifts_do_what_they_say() -> None:
    """translate / blur / dim: the targets where the base keeps a sensible score (paper-checks)."""
    rng = np.random.default_rng(0)
    x, y = rng.random((3, 64), dtype=np.float32), np.arange(3)
    moved, _ = digits_mlp.apply_shift(x, y, "translate")
    im, out = x.reshape(-1, 8, 8), moved.reshape(-1, 8, 8)
    assert np.array_equal(out[:, :, 1:], im[:, :, :-1]) and not out[:, :, 0].any()
    blurred, _ = digits_mlp.apply_shift(x, y, "blur")
    assert blurred.dtype == np.float32
    assert np.isclose(blurred.reshape(-1, 8, 8)[0, 3, 3], im[0, 2:5, 2:5].mean())
    dimmed, same = digits_mlp.apply_shift(x, y, "dim")
    assert np.array_equal(same, y) and np.array_equal(dimmed.reshape(-1, 8, 8)[:, :4], im[:, :4])
    np.testing.assert_allclose(dimmed.reshape(-1, 8, 8)[:, 4:], 0.3 * im[:, 4:], rtol=1e-6)


def test_digits_read_without_sklearn_match_load_digits():
    """The loader reads scikit-learn's bundled file directly (no 2 s sklearn import in the warm cell
    server); it must give exactly load_digits's rows."""
    from sklearn.datasets import load_digits

    digits_mlp._load_digits.cache_clear()
    x, y = digits_mlp._load_digits()
    ref = load_digits()
    np.testing.assert_array_equal(x, (ref.data / 16.0).astype(np.float32))
    np.testing.assert_array_equal(y, ref.target)
