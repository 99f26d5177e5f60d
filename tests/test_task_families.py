"""Task families: member stages, the head-swapping view, the cosine head, conformance."""
from __future__ import annotations

import copy
from importlib import metadata

import pytest
import torch

from lowdim_bench.api import PluginError
from lowdim_bench.testing import check_task
from lowdim_bench_builtin.tasks.digits_mlp import DigitsTask
from lowdim_bench_builtin.tasks.families import (DIGIT_MEMBERS, CosineHead, DigitsCnnFamily, DigitsMlpFamily,
                                                 StdlibLmFamily, swap_head)

SMALL_LM = {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "context": 32, "eval_windows": 8,
            "max_corpus_bytes": 200_000, "member_corpus_bytes": 60_000}


def test_families_register_through_the_entry_point() -> None:
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="lowdim_bench")}
    assert eps["task-families"] == "lowdim_bench_builtin.tasks.families"


@pytest.mark.parametrize("cls", [DigitsMlpFamily, DigitsCnnFamily])
def test_digit_members_transform_the_same_split(cls) -> None:
    task, plain = cls(), DigitsTask(shift="none")
    src = plain.splits("source", 0)
    assert task.members() == ["transpose", "flip-lr", "flip-ud", "rot90"]
    for m in task.members():
        s = task.splits(f"member:{m}", 0)
        for part in ("train", "val", "test"):
            x = s[part].x.reshape(-1, 8, 8)
            raw = src[part].x.reshape(-1, 8, 8)
            want = {"transpose": raw.transpose(1, 2), "flip-lr": raw.flip(2), "flip-ud": raw.flip(1),
                    "rot90": torch.rot90(raw, 1, (1, 2))}[m]
            assert torch.equal(x, want)
            assert torch.equal(s[part].y, src[part].y)
    assert task.splits("member:transpose", 0)["train"].x.shape[1:] == ((64,) if cls is DigitsMlpFamily else (1, 8, 8))


def test_label_members_map_labels() -> None:
    task = DigitsMlpFamily(members=["permute", "parity", "mod3", "high"])
    y = DigitsTask(shift="none").splits("source", 0)["test"].y
    assert torch.equal(task.splits("member:parity", 0)["test"].y, y % 2)
    assert torch.equal(task.splits("member:high", 0)["test"].y, (y >= 5).long())
    assert not torch.equal(task.splits("member:permute", 0)["test"].y, y)


def test_bad_members_are_clear_errors() -> None:
    with pytest.raises(PluginError, match="unknown member"):
        DigitsMlpFamily(members=["transpose", "sideways"])
    with pytest.raises(PluginError, match="distinct"):
        DigitsMlpFamily(members=["transpose", "transpose"])
    with pytest.raises(PluginError, match="unknown member 'nope'"):
        DigitsMlpFamily().splits("member:nope", 0)


def test_fingerprint_tracks_the_members() -> None:
    a, b = DigitsMlpFamily(), DigitsMlpFamily(members=["transpose", "rot90"])
    assert a.fingerprint() == DigitsMlpFamily().fingerprint() != b.fingerprint()
    assert a.fingerprint() != DigitsTask(shift="none").fingerprint()


def test_cosine_head_is_frozen_and_scale_bounded() -> None:
    task = DigitsMlpFamily()
    model = task.make_model(0)
    assert isinstance(model.head, CosineHead) and not any(p.requires_grad for p in model.head.parameters())
    assert all(p.requires_grad for p in model.body.parameters())
    x = torch.rand(5, 64)
    logits = model(x)
    assert logits.abs().max() <= 16.0 + 1e-4
    with torch.no_grad():  # scaling the features up cannot buy confidence
        assert torch.allclose(model.head(model.body(x) * 7), logits, atol=1e-5)
    linear = DigitsMlpFamily(head_scale=0.0, frozen_head=False).make_model(0)
    assert isinstance(linear.head, torch.nn.Linear) and linear.head.weight.requires_grad


def test_member_view_swaps_only_the_head() -> None:
    task = DigitsMlpFamily(frozen_head=False)
    merged, member = task.make_model(0), task.make_model(1)
    view = task.member_view(merged, "transpose", member)
    assert view.head is member.head and view.body is merged.body and merged.head is not member.head
    names = dict(view.named_parameters())
    assert names["body.0.weight"] is merged.body[0].weight and names["head.weight"] is member.head.weight
    x = torch.rand(3, 64)
    assert torch.equal(view(x), member.head(merged.body(x)))
    again = swap_head(merged, member.head)
    assert again is not merged and merged._modules["head"] is not member.head


def test_cnn_member_view_runs_the_merged_convs() -> None:
    task = DigitsCnnFamily(frozen_head=False, width=8)
    merged, member = task.make_model(0), task.make_model(1)
    view = task.member_view(merged, "rot90", member)
    x = torch.rand(2, 1, 8, 8)
    twin = copy.deepcopy(merged)
    twin.head = member.head
    assert torch.allclose(view(x), twin(x))


@pytest.mark.slow
@pytest.mark.parametrize("cls,opts", [(DigitsMlpFamily, {}), (DigitsCnnFamily, {"width": 8}),
                                      (StdlibLmFamily, SMALL_LM)])
def test_families_pass_the_task_kit(cls, opts) -> None:
    failures = [str(r) for r in check_task(cls(**opts)) if r.failed]
    assert not failures, "\n".join(failures)


def test_lm_members_are_disjoint_library_groups() -> None:
    task = StdlibLmFamily(**SMALL_LM)
    assert task.members() == ["concurrency", "web", "gui", "tooling"]
    data = {m: task.splits(f"member:{m}", 0) for m in task.members()}
    for m, s in data.items():
        assert {"train", "val", "test"} <= set(s) and all(len(v) > task.context + 1 for v in s.values())
    files = {m: {f.relpath for f in task._corpus(m).files} for m in task.members()}
    assert all(p.startswith(("asyncio/", "concurrent/", "multiprocessing/")) for p in files["concurrency"])
    assert not files["concurrency"] & files["web"]
    assert task.member_view(torch.nn.Linear(2, 2), "web", torch.nn.Linear(2, 2)).in_features == 2  # merged as is
    assert task.fingerprint() != StdlibLmFamily(**{**SMALL_LM, "members": ["web", "gui"]}).fingerprint()


def test_known_members_cover_transforms_and_label_maps() -> None:
    assert {"transpose", "permute", "parity"} <= set(DIGIT_MEMBERS)
