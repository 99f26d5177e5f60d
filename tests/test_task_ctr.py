"""The ctr tasks: the generator's Bayes AUC, AUC itself, the Criteo reader, the models, honest
counts of embedding tables, the ctr metric and the conformance kit."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from lowdim_bench.api import MeasureContext, PluginError
from lowdim_bench.measure.params import count_params
from lowdim_bench.run.train import train
from lowdim_bench.testing import check_metric, check_task
from lowdim_bench_builtin.methods.dense import DenseMethod
from lowdim_bench_builtin.tasks._ctr_data import (CtrGenerator, GeneratorSpec, auc, auc_standard_error, criteo_bucket,
                                                  read_criteo, soft_auc)
from lowdim_bench_builtin.tasks._ctr_models import CtrModel, InteractingLayer
from lowdim_bench_builtin.tasks.ctr import CtrAutoIntTask, CtrMetric, CtrTask

SMALL = dict(n_train=2000, n_val=500, n_test=1000, vocab=100, vocab_min=10, n_fields=5, bayes_rows=20_000,
             hidden=[16], steps=30, batch_size=64)


@pytest.fixture(scope="module")
def task():
    return CtrTask(**SMALL)


def brute_auc(s, pos_w, neg_w):
    num = den = 0.0
    for i, j in itertools.permutations(range(len(s)), 2):
        w = pos_w[i] * neg_w[j]
        den += w
        num += w * (1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0)
    return num / den


def test_auc_and_soft_auc_match_their_definitions_with_ties():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 30).astype(float)  # many ties
    y = rng.random(30) < 0.4
    assert auc(s, y) == pytest.approx(brute_auc(s, y.astype(float), (~y).astype(float)), abs=1e-12)
    p = rng.random(30)
    assert soft_auc(s, p) == pytest.approx(brute_auc(s, p, 1 - p), abs=1e-12)
    assert np.isnan(auc(s, np.ones(30)))


def test_bayes_auc_matches_an_empirical_estimate():
    """The stated ceiling (soft labels, fresh rows) agrees with the AUC of the true logit
    against drawn clicks on independent rows, within 4 standard errors (Hanley-McNeil)."""
    gen = CtrGenerator(GeneratorSpec(n_fields=6, vocab=300, vocab_min=10))
    for stage in ("source", "target"):
        stated = gen.bayes_auc(stage, 100_000)
        rows = gen.split(stage, "test", 60_000, 0)
        empirical = auc(rows.true_logit.numpy(), rows.y.numpy())
        n_pos = int(rows.y.sum())
        se = auc_standard_error(empirical, n_pos, len(rows) - n_pos)
        assert abs(stated - empirical) < 4 * se, (stage, stated, empirical, se)
        assert 0.7 < stated < 0.97
    assert gen.bayes_auc("target", 100_000) != pytest.approx(gen.bayes_auc("source", 100_000), abs=1e-3)


def test_generator_ids_are_frequency_ranks_and_rows_ignore_the_run_seed(task):
    counts = task.feature_counts("target")
    for c in counts:
        head, tail = c[: len(c) // 4].double().mean(), c[-(len(c) // 4):].double().mean()
        assert head > 5 * tail  # power law: id 0 side far more frequent
        assert c[0] == c.max()
    a, b = task.splits("target", 0), CtrTask(**SMALL).splits("target", 7)
    assert torch.equal(a["train"].x, b["train"].x) and torch.equal(a["train"].y, b["train"].y)
    src = task.splits("source", 0)
    assert not torch.equal(src["train"].x, a["train"].x)  # other rows, same distribution
    z_src = task.generator.logit(a["test"].x.numpy(), "source")
    assert np.corrcoef(z_src, a["test"].true_logit.numpy())[0, 1] < 0.99  # the click function moved
    assert abs(float(src["train"].y.mean()) - 0.25) < 0.04  # the source click rate is the option


def test_models_shapes_and_autoint_layer_matches_its_equations():
    torch.manual_seed(0)
    layer = InteractingLayer(8, 12, 3)
    e = torch.randn(4, 5, 8)
    q, k, v = (torch.relu(m(e)) for m in (layer.query, layer.key, layer.value))
    out = torch.zeros(4, 5, 12)
    for h in range(3):
        sl = slice(4 * h, 4 * h + 4)
        att = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / 2.0, dim=-1)
        out[..., sl] = att @ v[..., sl]
    want = layer.norm(torch.relu(out + torch.relu(layer.residual(e))))
    assert torch.allclose(layer(e), want, atol=1e-6)
    for arch in ("mlp", "autoint"):
        m = CtrModel([10, 20, 30], arch, 8, [16], 2, 2, 8)
        assert m(torch.tensor([[1, 2, 3], [0, 19, 29]])).shape == (2,)
    assert CtrModel([10, 20], "autoint", 8, [16], 2, 2, 8).embedding_consumer() is None


def test_stored_bytes_count_embedding_tables_honestly(task):
    model = task.make_model(0)
    sizes, d = task.vocab_sizes(), task.options["embed_dim"]
    tables = sum(sizes) * d
    mlp = (len(sizes) * d * 16 + 16) + (16 + 1)
    c = count_params(model)
    assert (c.total, c.stored, c.stored_bytes, c.index_bytes) == (tables + mlp, tables + mlp, 4 * (tables + mlp), 0)
    assert count_params(model.embed).stored == tables


def test_training_learns_and_stays_under_the_ceiling(task):
    model = task.make_model(0)
    splits = task.splits("target", 0)
    before = task.evaluate(model, splits["test"])
    train(model, task, None, splits["train"], task.recipe("pretrain").replace(steps=150, lr=1e-2), 0, torch.device("cpu"))
    after = task.evaluate(model, splits["test"])
    ceiling = auc(splits["test"].true_logit.numpy(), splits["test"].y.numpy())
    assert after > before + 0.05 and after > 0.6
    assert after < ceiling + 0.02


def test_ctr_metric_directions_and_ceiling(task):
    model = task.make_model(0)
    ctx = MeasureContext(task=task, method=DenseMethod(), model=model, inference_model=model, kind="train",
                         device=torch.device("cpu"), protocol={}, make_optimizer=lambda m: None,
                         dense_params=0, splits=task.splits("target", 0))
    got = {m.metric: m for m in CtrMetric().measure(ctx)}
    assert got["logloss"].higher_is_better is False and got["logloss"].unit == "nats"
    test = task.splits("target", 0)["test"]
    z = task.logits(model, test)
    p = torch.sigmoid(z.double())
    want = -float((test.y * torch.log(p) + (1 - test.y) * torch.log1p(-p)).mean())
    assert got["logloss"].value == pytest.approx(want, rel=1e-9)
    assert got["auc_bayes_test"].higher_is_better is True and got["auc_bayes_test"].value > 0.7
    assert got["logloss_bayes"].value < got["logloss"].value
    assert got["params_embedding"].value == sum(task.vocab_sizes()) * task.options["embed_dim"]
    assert CtrTask.quality.higher_is_better is True


def test_kit_passes_for_both_tasks_and_the_metric():
    for t in (CtrTask(**SMALL), CtrAutoIntTask(**SMALL, att_layers=1, att_units=8)):
        failed = [str(r) for r in check_task(t) if r.failed]
        assert not failed, failed
    assert not [str(r) for r in check_metric(CtrMetric, CtrTask(**SMALL)) if r.failed]


def test_bad_options_are_clear_errors():
    with pytest.raises(PluginError, match="needs the option `path`"):
        CtrTask(data="criteo")
    with pytest.raises(PluginError, match="arch"):
        CtrTask(arch="dcn")
    with pytest.raises(PluginError, match="att_units 10 is not divisible"):
        CtrTask(att_units=10, att_heads=3)
    with pytest.raises(PluginError, match="does not exist"):
        CtrTask(data="criteo", path="/nonexistent/criteo.txt").splits("target", 0)


# ---- Criteo ---------------------------------------------------------------------------------

def write_criteo(path, n=60):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        ints = ["" if rng.random() < 0.2 else str(int(rng.integers(0, 50))) for _ in range(13)]
        cats = ["" if rng.random() < 0.1 else f"{j:02x}{int(rng.zipf(2.0)) % 7:04x}" for j in range(26)]
        lines.append("\t".join([str(int(rng.random() < 0.3))] + ints + cats))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_criteo_reader_builds_frequency_ordered_vocabularies(tmp_path):
    path = write_criteo(tmp_path / "day.txt")
    data = read_criteo(path, min_count=2, max_rows=0)
    assert [len(data.splits[k]) for k in ("train", "val", "test")] == [48, 6, 6]
    assert len(data.vocab_sizes) == 39
    train_x = data.splits["train"].x
    for f, c in enumerate(data.counts):
        assert torch.all(c[:-1] >= c[1:])  # id order = training frequency order
        assert torch.equal(torch.bincount(train_x[:, f], minlength=len(c)), c)
    assert criteo_bucket("") == "" and criteo_bucket("2") == "v2" and criteo_bucket("100") == "b21"
    rows = set(torch.cat([data.splits[k].row for k in data.splits]).tolist())
    assert rows == set(range(60))
    assert read_criteo(path, 2, max_rows=30).splits["train"].x.shape[0] == 24


def test_criteo_task_runs_and_names_bad_lines(tmp_path):
    path = write_criteo(tmp_path / "day.txt", n=300)
    t = CtrTask(data="criteo", path=str(path), min_count=2, hidden=[8], embed_dim=4)
    model = t.make_model(0)
    assert 0.0 <= t.evaluate(model, t.splits("target", 0)["test"]) <= 1.0
    with pytest.raises(PluginError, match="no shifted 'source' stage"):
        t.splits("source", 0)
    assert t.fingerprint() == CtrTask(data="criteo", path=str(path), min_count=2).fingerprint()
    bad = tmp_path / "bad.txt"
    bad.write_text(path.read_text().splitlines()[0] + "\n1\t2\t3\n")
    with pytest.raises(PluginError, match=r"bad.txt:2: expected 40 tab-separated columns"):
        read_criteo(bad, 1, 0)
    bad.write_text("x" + path.read_text()[1:])
    with pytest.raises(PluginError, match=r"bad.txt:1: label must be 0 or 1"):
        read_criteo(bad, 1, 0)


def test_ctr_suite_loads_and_pairs_its_claims_with_rows():
    from pathlib import Path

    from lowdim_bench.registry import Registry
    from lowdim_bench.plan import expand
    from lowdim_bench.suite import load_suite

    reg = Registry.load()
    suite = load_suite(Path(__file__).resolve().parents[1] / "suites" / "ctr.toml", reg)
    cells = expand(suite, reg)
    shown = {(c.task, c.alias or c.method, c.kind) for c in cells}
    assert ("ctr-autoint", "dense-train", "train") in shown and ("ctr", "dense-train", "train") in shown
    for claim in suite.analyses["claims"]:
        for check in claim["checks"]:
            for ref in (check["a"], check["b"]):
                task, _, entry = ref.rpartition("/")  # "ctr-autoint/dense-train": a row of another task
                assert (task or claim["task"], entry.partition("@")[0], claim["kind"]) in shown
    dnis = next(c for c in cells if c.method == "dnis")
    assert dnis.recipe["steps"] + dnis.hparams["search_steps"] == CtrTask().recipe("pretrain").steps
