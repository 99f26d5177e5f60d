"""stdlib-lm: hash-based corpus splits, the decoder's shape and causality, and bits per byte."""
from __future__ import annotations

import math
import random
from importlib import metadata
from pathlib import Path

import pytest
import torch
from torch import nn

from lowdim_bench import api
from lowdim_bench.registry import Registry
from lowdim_bench_builtin.tasks import _stdlib_corpus as corpus
from lowdim_bench_builtin.tasks import stdlib_lm
from lowdim_bench_builtin.tasks.stdlib_lm import ByteSplit, StdlibLM, eval_starts

CPU = torch.device("cpu")
TINY = dict(d_model=32, n_layers=1, n_heads=2, d_ff=64, context=32, max_corpus_bytes=200_000, eval_windows=16)


@pytest.fixture(scope="module")
def task() -> StdlibLM:
    return StdlibLM(**TINY)


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


FAKE = {f"pkg{i % 3}/mod{i}.py": f"x = {i}\n".encode() * (10 + i) for i in range(40)}


def test_registers_through_its_entry_point() -> None:
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="lowdim_bench")}
    assert eps["stdlib-lm"] == "lowdim_bench_builtin.tasks.stdlib_lm"
    assert Registry.from_objects({"stdlib-lm": stdlib_lm}).task("stdlib-lm").cls is StdlibLM


def test_test_files_are_classified_by_folder_or_name() -> None:
    assert corpus.is_test_file("test/test_os.py")
    assert corpus.is_test_file("test/support/__init__.py")
    assert corpus.is_test_file("unittest/test/test_case.py")
    assert corpus.is_test_file("idlelib/idle_test/htest.py")
    assert corpus.is_test_file("ctypes/test_x.py")
    assert not corpus.is_test_file("unittest/case.py")
    assert not corpus.is_test_file("contest.py") and not corpus.is_test_file("testing/util.py")


def test_split_is_a_stable_hash_of_the_path() -> None:
    names = [f"m{i}.py" for i in range(2000)]
    counts = {s: sum(corpus.split_of(n) == s for n in names) for s in corpus.SPLITS}
    assert 1500 < counts["train"] < 1700 and 120 < counts["val"] < 280 and 120 < counts["test"] < 280
    # pinned: a change of hash or thresholds would move every split and every cache key
    pinned = {"os.py": "train", "typing.py": "train", "_py_abc.py": "val",
              "asyncio/base_events.py": "val", "__future__.py": "test", "_strptime.py": "test"}
    assert {n: corpus.split_of(n) for n in pinned} == pinned
    assert corpus.path_hash("os.py") % 100 == 29


def test_corpus_does_not_depend_on_listing_order(tmp_path: Path) -> None:
    write_tree(tmp_path, FAKE)
    names = sorted(FAKE)
    shuffled = names[:]
    random.Random(1).shuffle(shuffled)
    a = corpus.build_corpus(tmp_path, "library", names, 10_000)
    b = corpus.build_corpus(tmp_path, "library", shuffled, 10_000)
    assert a == b and a.fingerprint() == b.fingerprint()
    for f in a.files:
        assert f.split == corpus.split_of(f.relpath)
    by_split = {s: {f.relpath for f in a.files if f.split == s} for s in corpus.SPLITS}
    assert not (by_split["train"] & by_split["val"]) and not (by_split["train"] & by_split["test"])
    assert not (by_split["val"] & by_split["test"])
    assert sum(len(v) for v in a.data.values()) == sum(len(d) for d in FAKE.values())


def test_byte_cap_is_shared_80_10_10_and_reads_a_prefix_of_the_hash_order(tmp_path: Path) -> None:
    write_tree(tmp_path, FAKE)
    full = corpus.build_corpus(tmp_path, "library", sorted(FAKE), 10_000)
    capped = corpus.build_corpus(tmp_path, "library", sorted(FAKE), 700)
    assert {s: len(v) for s, v in capped.data.items()} == {"train": 560, "val": 70, "test": 70}
    assert sum(f.n_bytes for f in capped.files) == 700
    for split in corpus.SPLITS:
        order = [f.relpath for f in full.files if f.split == split]
        got = [f.relpath for f in capped.files if f.split == split]
        assert got == order[: len(got)] and got
        assert full.data[split].startswith(capped.data[split])


def test_fingerprint_follows_file_contents(tmp_path: Path) -> None:
    write_tree(tmp_path, FAKE)
    before = corpus.build_corpus(tmp_path, "library", sorted(FAKE), 10_000).fingerprint()
    (tmp_path / "pkg0/mod0.py").write_bytes(b"changed\n")
    after = corpus.build_corpus(tmp_path, "library", sorted(FAKE), 10_000).fingerprint()
    assert before != after


def test_missing_test_folder_names_it(tmp_path: Path) -> None:
    write_tree(tmp_path, FAKE)
    with pytest.raises(corpus.MissingCorpusPart, match=str(tmp_path / "test")):
        corpus.part_files(tmp_path, "tests")
    lm = StdlibLM(**TINY)
    lm.root = str(tmp_path)
    with pytest.raises(api.PluginError, match="test folder"):
        lm.splits("source", 0)
    assert len(lm.fingerprint()) == 64  # a missing part is recorded, not fatal


def test_listing_skips_site_packages_and_caches(tmp_path: Path) -> None:
    write_tree(tmp_path, {"a.py": b"a\n", "site-packages/b.py": b"b\n", "test/test_a.py": b"t\n", "c.txt": b"c"})
    assert corpus.list_files(tmp_path) == ["a.py", "test/test_a.py"]
    assert corpus.part_files(tmp_path, "library") == ["a.py"]
    assert corpus.part_files(tmp_path, "tests") == ["test/test_a.py"]


def test_real_stdlib_stages_use_disjoint_parts(task: StdlibLM) -> None:
    lib = corpus.load_corpus(task.root, "library", TINY["max_corpus_bytes"])
    tests = corpus.load_corpus(task.root, "tests", TINY["max_corpus_bytes"])
    assert lib.files and not any(corpus.is_test_file(f.relpath) for f in lib.files)
    assert tests.files and all(corpus.is_test_file(f.relpath) for f in tests.files)
    assert not any("site-packages" in f.relpath for f in lib.files + tests.files)
    target, source = task.splits("target", 0), task.splits("source", 3)
    assert bytes(target["train"].data.numpy()) == lib.data["train"]
    assert bytes(source["test"].data.numpy()) == tests.data["test"]
    again = StdlibLM(**TINY).splits("target", 5)
    assert all(torch.equal(target[s].data, again[s].data) for s in corpus.SPLITS)
    swapped = StdlibLM(**TINY, target="tests")
    assert torch.equal(swapped.splits("source", 0)["val"].data, target["val"].data)


def test_fingerprint_is_stable(task: StdlibLM) -> None:
    fp = task.fingerprint()
    assert fp == StdlibLM(**TINY).fingerprint() and len(fp) == 64
    assert fp != StdlibLM(**{**TINY, "max_corpus_bytes": 150_000}).fingerprint()
    assert fp != StdlibLM(**TINY, target="tests").fingerprint()


def test_model_shapes_names_and_parts(task: StdlibLM) -> None:
    model = task.make_model(0)
    (tokens,) = task.example_inputs(3, CPU)
    assert tokens.shape == (3, 32) and tokens.dtype == torch.int64
    assert model(tokens).shape == (3, 32, 256)
    assert model(tokens[:, :5]).shape == (3, 5, 256)
    assert isinstance(model.head, nn.Linear) and model.head.weight.shape == (256, 32)
    assert model.head.weight.data_ptr() != model.embed.weight.data_ptr()
    kinds = {type(m) for m in model.modules() if not list(m.children())}
    assert kinds <= {nn.Linear, nn.Embedding, nn.RMSNorm}
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Linear))
    assert not any("rope" in k for k in model.state_dict())
    with pytest.raises(ValueError):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_model_is_causal(task: StdlibLM) -> None:
    model = task.make_model(0).eval()
    (tokens,) = task.example_inputs(1, CPU)
    changed = tokens.clone()
    changed[0, 20] = (changed[0, 20] + 1) % 256
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.allclose(a[:, :20], b[:, :20], atol=1e-6)
    assert not torch.allclose(a[:, 20:], b[:, 20:])


def test_loss_is_finite_and_near_uniform_at_init(task: StdlibLM) -> None:
    x, y = task.example_batch(4, CPU)
    assert x.shape == y.shape == (4, 32) and torch.equal(x[:, 1:], y[:, :-1])
    loss = task.loss(task.make_model(0), (x, y))
    assert torch.isfinite(loss) and abs(loss.item() - math.log(256)) < 0.1


def test_uniform_logits_score_exactly_eight_bits(task: StdlibLM) -> None:
    class Uniform(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(1, 1)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return torch.zeros(*tokens.shape, 256)

    assert task.evaluate(Uniform(), task.splits("target", 0)["test"]) == pytest.approx(8.0, abs=1e-6)


def test_a_half_sure_model_scores_one_bit_on_a_constant_text(task: StdlibLM) -> None:
    class HalfSure(nn.Module):
        """Gives byte 'a' probability 1/2 and spreads the rest evenly."""

        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(1, 1)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            logits = torch.full((*tokens.shape, 256), math.log(0.5 / 255))
            logits[..., ord("a")] = math.log(0.5)
            return logits

    split = ByteSplit("test", torch.full((1000,), ord("a"), dtype=torch.uint8))
    assert task.evaluate(HalfSure(), split) == pytest.approx(1.0, abs=1e-5)


def test_eval_windows_are_fixed_disjoint_and_capped() -> None:
    starts = eval_starts(10_000, 32, 16)
    assert torch.equal(starts, eval_starts(10_000, 32, 16)) and len(starts) == 16
    assert (starts[1:] - starts[:-1] >= 32).all() and starts[-1] + 33 <= 10_000
    assert len(eval_starts(100, 32, 16)) == 3  # all that fit
    with pytest.raises(api.PluginError):
        eval_starts(20, 32, 16)


def test_evaluate_restores_training_mode(task: StdlibLM) -> None:
    model = task.make_model(0).train()
    split = task.splits("target", 0)["val"]
    bpb = task.evaluate(model, split)
    assert model.training and 7.5 < bpb < 8.6
    model.eval()
    assert task.evaluate(model, split) == bpb and not model.training


def test_batches_follow_the_generator(task: StdlibLM) -> None:
    split = task.splits("target", 0)["train"]
    a = next(task.batches(split, 4, torch.Generator().manual_seed(0)))
    b = next(task.batches(split, 4, torch.Generator().manual_seed(0)))
    c = next(task.batches(split, 4, torch.Generator().manual_seed(1)))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
    assert a[0].dtype == torch.int64 and torch.equal(a[0][:, 1:], a[1][:, :-1])


def test_options_and_recipes() -> None:
    with pytest.raises(api.PluginError, match="dmodel"):
        StdlibLM(dmodel=64)
    with pytest.raises(api.PluginError, match="target"):
        StdlibLM(target="docs")
    with pytest.raises(api.PluginError, match="divisible"):
        StdlibLM(d_model=30, n_heads=4)
    lm = StdlibLM(steps=7, lr=0.1, batch_size=5)
    assert (lm.recipe("pretrain").steps, lm.recipe("pretrain").lr, lm.recipe("finetune").batch_size) == (7, 0.1, 5)
    with pytest.raises(api.PluginError):
        lm.recipe("distill")


def test_a_few_dozen_steps_lower_the_loss(task: StdlibLM) -> None:
    splits = task.splits("target", 0)
    model = task.make_model(0)
    before = task.evaluate(model, splits["val"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    stream = task.batches(splits["train"], 16, torch.Generator().manual_seed(0))
    for _ in range(40):
        loss = task.loss(model, next(stream))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = task.evaluate(model, splits["val"])
    assert after < before - 1.0, (before, after)


ADAPT_TO_TESTS = """
name = "stdlib-adapt-tiny"
version = "1"
budgets = [0.05]
seeds = [0]
measure = ["params"]
timeout_s = 120
[tasks.stdlib-lm]
target = "tests"
d_model = 64
n_heads = 4
d_ff = 192
context = 64
steps = 30
finetune_steps = 30
max_corpus_bytes = 200000
eval_windows = 32
[methods.dense]
kinds = ["adapt"]
[methods.lora]
[protocol]
threads = 1  # two threads on a shared 2-core box spin against each other: 20x slower steps
"""


@pytest.mark.slow
def test_adapt_variant_runs_end_to_end_through_the_cli(tmp_path: Path) -> None:
    """Base pretrained on library code (source), then dense and LoRA adapted to the tests (target)."""
    import json

    import polars as pl

    from lowdim_bench.cli import main

    if not corpus.part_files(corpus.stdlib_root(), "tests"):
        pytest.skip("this Python ships no stdlib tests")
    suite = tmp_path / "adapt.toml"
    suite.write_text(ADAPT_TO_TESTS)
    assert main(["run", str(suite), "--out", str(tmp_path / "reports"), "--device", "cpu"]) == 0
    (run_dir,) = (tmp_path / "reports").iterdir()
    df = pl.read_parquet(run_dir / "records.parquet")
    assert set(df["status"]) == {"ok"} and set(df["kind"]) == {"adapt"}
    quality = {r["method"]: r["value"] for r in df.filter(pl.col("metric") == "quality").to_dicts()}
    assert sorted(quality) == ["dense", "lora"]
    assert all(0 < q < 8 for q in quality.values()), quality  # both learned something beyond uniform
    config = json.loads(df.filter(pl.col("method") == "lora")["config"][0])
    assert config["base_model"]["stage"] == "source" and config["cell"]["task_options"]["target"] == "tests"
    lora = df.filter((pl.col("method") == "lora") & (pl.col("metric") == "params_trainable")).row(0, named=True)
    dense = df.filter((pl.col("method") == "dense") & (pl.col("metric") == "params_trainable")).row(0, named=True)
    assert 0 < lora["budget_reached"] <= 0.05 and lora["value"] < dense["value"]
