"""The shared layer helpers: suffix matching, selection rules, error content, swapping without copying."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lowdim_bench.api import PluginError
from lowdim_bench.layers import (
    as_rank, check_suffixes, copy_swapping, find_layers, matches, replace_module, split_by_suffixes, tied_params)


class Tied(nn.Module):
    """An embedding tied to the head, an attention block, and one plain Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.attn = nn.MultiheadAttention(4, 1)
        self.fc = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight


def test_matches_whole_dotted_parts_only() -> None:
    assert matches("fc", "fc") and matches("block.0.fc", "fc") and matches("block.0.fc", "0.fc")
    assert not matches("block.xfc", "fc") and not matches("fc.bias", "fc")


def test_find_layers_skips_attention_children_and_tied_weights() -> None:
    model = Tied()
    assert [n for n, _ in find_layers(model, (nn.Linear,))] == ["fc", "head"]
    assert [n for n, _ in find_layers(model, (nn.Linear,), skip_tied=True)] == ["fc"]
    assert tied_params(model) == {id(model.emb.weight)}
    # with no owners, attention's out_proj (a Linear subclass) is found too
    assert "attn.out_proj" in [n for n, _ in find_layers(model, (nn.Linear,), owners=())]


def test_find_layers_extra_owner_hides_its_children() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)))
    assert [n for n, _ in find_layers(model, (nn.Linear,), owners=(nn.Sequential,))] == []
    inner_only = find_layers(model[1], (nn.Linear,), owners=())
    assert [n for n, _ in inner_only] == ["0"]


def test_split_by_suffixes_partitions_and_names_the_missing() -> None:
    found = find_layers(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)), (nn.Linear,))
    hit, rest = split_by_suffixes(found, ["2"], method="m", hparam="target_modules", what="Linear")
    assert [n for n, _ in hit] == ["2"] and [n for n, _ in rest] == ["0"]
    with pytest.raises(PluginError) as err:
        split_by_suffixes(found, ["2", "nope"], method="m", hparam="target_modules", what="Linear")
    assert str(err.value) == "m: target_modules ['nope'] match no Linear; have ['0', '2']"


def test_check_suffixes_word_list_and_empty() -> None:
    check_suffixes("all", "all", method="m", hparam="h")
    check_suffixes(["a", "b.c"], "all", method="m", hparam="h")
    check_suffixes([], "auto", method="m", hparam="h", allow_empty=True)
    for bad in ([], "auto", [1], "fc"):
        with pytest.raises(PluginError, match=r"m: h must be 'all' or a list of module-name suffixes"):
            check_suffixes(bad, "all", method="m", hparam="h")


@pytest.mark.parametrize("bad", [None, 0, -1, 2.5])
def test_as_rank_rejects_non_positive_or_fractional(bad: object) -> None:
    with pytest.raises(PluginError, match=r"method 'svd': rank must be an integer >= 1"):
        as_rank(bad, "svd")  # type: ignore[arg-type]


def test_as_rank_accepts_integral_floats() -> None:
    assert as_rank(3.0, "svd") == 3 and isinstance(as_rank(3.0, "svd"), int)


def test_replace_module_nested_and_root() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)))
    new = nn.Identity()
    assert replace_module(model, "1.0", new) is model and model[1][0] is new
    assert replace_module(model, "", new) is new


def test_copy_swapping_leaves_the_original_and_never_copies_the_old() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3))
    replacement = nn.Linear(3, 3)
    copied = copy_swapping(model, [(model[2], replacement)])
    assert copied[2] is replacement and model[2] is not replacement
    assert copied[0] is not model[0] and torch.equal(copied[0].weight, model[0].weight)
    root = nn.Linear(2, 2)
    assert copy_swapping(root, [(root, replacement)]) is replacement
