"""Property-based fuzzing of the suite loader and the run overrides (hypothesis).

Any input either plans or fails with SuiteError whose message names the file (or the option);
never a traceback. Suites are valid ones with random parts replaced by random TOML values at
random places, plus raw text; overrides are random values for every flag.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TESTS
from lowdim_bench.plan import make_plan
from lowdim_bench.registry import Registry
from lowdim_bench.suite import Overrides, SuiteError

EXAMPLES = int(os.environ.get("LOWDIM_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])

BASE = {
    "name": "fuzz", "version": "1", "seeds": [0], "budgets": [0.3], "measure": ["params"],
    "tasks": {"tiny": {"n": 90, "recipe": {"steps": 3}}},
    "methods": {"fake-head": {}, "fake-width": {"budgets": [0.5]}, "narrow": {"method": "fake-width", "knobs": [2]},
                "dense": {"kinds": ["adapt"]}},
    "protocol": {"batch_sizes": [1, 4], "repeats": 3},
    "claims": [{"name": "c", "text": "t", "task": "tiny", "checks": [{"a": "fake-head", "b": "dense"}]}],
}
KEYS = ["name", "version", "tasks", "methods", "budgets", "seeds", "measure", "protocol", "tuning", "recipe",
        "timeout_s", "reference", "analyses", "save", "claims", "intrinsic_dimension", "description", "steps",
        "n", "lr", "batch_size", "schedule", "knobs", "kinds", "method", "lr_grid", "repeats", "threads",
        "batch_sizes", "checks", "relation", "a", "b", "tolerance", "alpha", "rank", "x" * 80, "ünï", "a.b", ""]

scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.text(max_size=30), st.sampled_from(KEYS), st.just(0), st.just(-1), st.just(0.5),
    st.just(float("nan")), st.just(float("inf")), st.just(1e6))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)), max_leaves=12)
paths = st.lists(st.one_of(st.sampled_from(KEYS), st.sampled_from(["tiny", "fake-head", "fake-width", "narrow"]),
                           st.integers(0, 3)), min_size=1, max_size=4)


def mutate(doc: dict, path: list, value) -> dict:
    node = doc
    for step in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(str(step), {}) if not isinstance(node.get(str(step)), (dict, list)) \
                else node[str(step)]
        elif isinstance(node, list) and node:
            node = node[int(step) % len(node)] if isinstance(step, int) else node[0]
        if not isinstance(node, (dict, list)):
            return doc
    last = path[-1]
    if isinstance(node, dict):
        node[str(last)] = value
    elif isinstance(node, list):
        if node and isinstance(last, int):
            node[last % len(node)] = value
        else:
            node.append(value)
    return doc


@pytest.fixture(scope="module")
def registry():
    old = {k: os.environ.get(k) for k in ("LOWDIM_BENCH_PLUGIN_MODULES",)}
    os.environ["LOWDIM_BENCH_PLUGIN_MODULES"] = "fakeplugins"
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    try:
        yield Registry.load(strict=True)
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def plans_or_names_the_file(path: Path, registry: Registry, overrides: Overrides | None = None) -> None:
    try:
        plan = make_plan(path, registry, overrides)
    except SuiteError as e:
        text = str(e)
        assert text.startswith(str(path)) or text.startswith("--") or text.startswith("suite "), text
        assert "Traceback" not in text and len(text) < 2000, text[:300]
        return
    assert plan.cells and all(c.key for c in plan.cells)


def dump(doc: dict) -> str | None:
    try:
        return tomli_w.dumps(doc)
    except (TypeError, ValueError):  # not representable as TOML (e.g. a list mixing tables and numbers)
        return None


@FUZZ
@given(changes=st.lists(st.tuples(paths, values), min_size=1, max_size=3))
def test_fuzzed_suites_plan_or_fail_with_the_file_named(tmp_path, registry, changes):
    import copy

    doc = copy.deepcopy(BASE)
    for path, value in changes:
        doc = mutate(doc, path, value)
    text = dump(doc)
    if text is None:
        return
    path = tmp_path / "fuzz.toml"
    path.write_text(text)
    plans_or_names_the_file(path, registry)


@FUZZ
@given(text=st.one_of(st.text(max_size=300), st.builds(lambda n: "a = " + "[" * n + "]" * n, st.integers(1, 5000))))
def test_raw_text_never_tracebacks(tmp_path, registry, text):
    path = tmp_path / "raw.toml"
    path.write_text(text)
    plans_or_names_the_file(path, registry)


floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(math.nan), st.just(0.0), st.just(5.0))
maybe = lambda s: st.one_of(st.none(), s)  # noqa: E731


@FUZZ
@given(budgets=maybe(st.lists(floats, min_size=1, max_size=4)), knobs=maybe(st.lists(floats, min_size=1, max_size=4)),
       seeds=maybe(st.lists(st.integers(-5, 2**40), min_size=1, max_size=4)), timeout=maybe(floats),
       methods=maybe(st.lists(st.sampled_from(["fake-head", "fake-width", "narrow", "dense", "lora", ""]),
                              min_size=1, max_size=3)),
       tasks=maybe(st.lists(st.sampled_from(["tiny", "digits-mlp", "x"]), min_size=1, max_size=2)),
       device=st.sampled_from(["auto", "cpu", "cuda", "cuda:99", "gpu", "", "cpu:0"]))
def test_fuzzed_overrides_plan_or_name_the_option(tmp_path, registry, budgets, knobs, seeds, timeout, methods, tasks,
                                                  device):
    path = tmp_path / "base.toml"
    path.write_text(tomli_w.dumps(BASE))
    plans_or_names_the_file(path, registry, Overrides(budgets=budgets, knobs=knobs, seeds=seeds, timeout_s=timeout,
                                                      methods=methods, tasks=tasks, device=device))
