"""hf-text: its offline data (stdlib docstrings, local CSV/JSONL), option checks, budget scope, and
the task end to end on a tiny BERT saved to a folder (fast). The real MiniLM is in
tests/test_hf_minilm.py (slow)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from lowdim_bench.api import Inputs, PluginError
from lowdim_bench_builtin.tasks import _hf_data as data_mod
from lowdim_bench_builtin.tasks._stdlib_corpus import stdlib_root
from lowdim_bench_builtin.tasks import hf_text
from lowdim_bench_builtin.tasks._hf_model import find_head
from lowdim_bench_builtin.tasks.hf_text import HfText

CAPS = (100000, 100000, 100000)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LOWDIM_BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# ---- the stdlib docstring corpus ----------------------------------------------------------------

def test_docstrings_are_labelled_by_package_and_split_disjointly():
    d = data_mod.stdlib_docstrings(str(stdlib_root()), 20, 1000, 40, 10, CAPS)
    assert 2 <= len(d.classes) <= 10 and list(d.classes) == sorted(d.classes)
    texts = {s: {t for t, _ in rows} for s, rows in d.splits.items()}
    assert not (texts["train"] & texts["val"]) and not (texts["train"] & texts["test"]) and not (texts["val"] & texts["test"])
    n = sum(d.sizes().values())
    assert 0.7 < d.sizes()["train"] / n < 0.9  # 80/10/10 by hash
    for rows in d.splits.values():  # every class index valid, and every class present in train
        assert all(0 <= y < len(d.classes) for _, y in rows)
    assert {y for _, y in d.splits["train"]} == set(range(len(d.classes)))


def test_docstring_items_carry_their_top_level_package(tmp_path):
    pkg = tmp_path / "alpha" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "toplevel.py").write_text('"""A top-level module is not in a package, so it is left out."""\n')
    (pkg / "mod.py").write_text('"""Module docstring long enough."""\n\ndef f():\n    """Function docstring long enough."""\n')
    (tmp_path / "alpha" / "test_x.py").write_text('"""Test files are left out of the corpus."""\n')
    (tmp_path / "alpha" / "broken.py").write_text("def (:\n")
    items = data_mod.docstring_items(tmp_path, 10, 1000)
    assert sorted((i.key, i.label) for i in items) == [("alpha/sub/mod.py::<module>", "alpha"), ("alpha/sub/mod.py::f", "alpha")]


def test_a_text_under_two_labels_is_dropped_and_repeats_kept_once():
    items = [data_mod.Item("a::1", "same text", "x"), data_mod.Item("b::1", "same text", "y"),
             data_mod.Item("c::1", "again", "x"), data_mod.Item("c::2", "again", "x")]
    assert [(i.key, i.text) for i in data_mod.dedupe(items)] == [("c::1", "again")]


def test_a_smaller_cap_keeps_a_prefix_of_the_same_order():
    big = data_mod.stdlib_docstrings(str(stdlib_root()), 20, 1000, 40, 10, CAPS)
    small = data_mod.stdlib_docstrings(str(stdlib_root()), 20, 1000, 40, 10, (50, 10, 10))
    assert small.splits["train"] == big.splits["train"][:50]
    assert small.fingerprint != big.fingerprint


# ---- local files --------------------------------------------------------------------------------

def _rows(n: int = 60) -> list[dict]:
    return [{"text": f"sample number {i} about {'cats' if i % 2 else 'dogs'}", "label": "cat" if i % 2 else "dog"}
            for i in range(n)]


def test_csv_and_jsonl_give_the_same_data(tmp_path):
    csv_path, jl_path = tmp_path / "d.csv", tmp_path / "d.jsonl"
    csv_path.write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in _rows()))
    jl_path.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    a = data_mod.load_table(str(csv_path), "text", "label", CAPS)
    b = data_mod.load_table(str(jl_path), "text", "label", CAPS)
    assert a.classes == b.classes == ("cat", "dog")
    assert a.splits == b.splits and a.fingerprint != "" and sum(a.sizes().values()) == 60


def test_a_split_column_is_obeyed(tmp_path):
    rows = [{**r, "split": ("train", "val", "test")[i % 3]} for i, r in enumerate(_rows(30))]
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = data_mod.load_table(str(p), "text", "label", CAPS)
    assert d.sizes() == {"train": 10, "val": 10, "test": 10}
    assert {t for t, _ in d.splits["val"]} == {r["text"] for r in rows if r["split"] == "val"}


@pytest.mark.parametrize("content, suffix, expected", [
    ('{"text": "a", "label": 1}\n{"text": "b", "label": \n', ".jsonl", r"d\.jsonl:2: not valid JSON"),
    ('{"text": "a", "label": 1}\n["x"]\n', ".jsonl", r"d\.jsonl:2: expected a JSON object"),
    ('{"text": "a", "label": 1}\n{"txt": "b", "label": 2}\n', ".jsonl", r"d\.jsonl:2: no 'text' column"),
    ('{"text": "a", "label": true}\n', ".jsonl", r"d\.jsonl:1: 'label' must be a string or an integer"),
    ('{"text": "", "label": 1}\n', ".jsonl", r"d\.jsonl:1: 'text' must be a non-empty string"),
    ("text,label\na,1\nb,1\na,2\n", ".csv", r"d\.csv:4: the same text as line 2"),
    ("text,label\n" + "".join(f"t{i},same\n" for i in range(30)), ".csv", r"needs at least 2 classes"),
    ("text,label,split\na,1,train\nb,2,dev\n", ".csv", r"d\.csv:3: split must be one of"),
    ("text,label,split\na,1,train\nb,2,val\nc,1,test\n", ".csv", r"class\(es\) \['2'\] have no row in the train split"),
])
def test_bad_files_name_the_file_and_line(tmp_path, content, suffix, expected):
    p = tmp_path / f"d{suffix}"
    p.write_text(content)
    with pytest.raises(PluginError, match=expected):
        data_mod.load_table(str(p), "text", "label", CAPS)


def test_options_are_checked_when_the_task_is_built(tmp_path):
    with pytest.raises(PluginError, match=r"data file .*nope\.csv does not exist"):
        HfText(data=str(tmp_path / "nope.csv"))
    with pytest.raises(PluginError, match=r"neither 'stdlib-docstrings' nor"):
        HfText(data=str(tmp_path / "d.parquet"))
    with pytest.raises(PluginError, match=r"model folder .*missing does not exist"):
        HfText(model=str(tmp_path / "missing"))
    with pytest.raises(PluginError, match=r"max_length"):
        HfText(max_length="long")
    with pytest.raises(PluginError, match=r"pooling"):
        HfText(pooling="median")


def test_budget_scope_leaves_embeddings_out_unless_asked():
    task = HfText()
    for name in ("encoder.embeddings.word_embeddings.weight", "base_model.model.encoder.embeddings.LayerNorm.bias",
                 "base.transformer.wte.weight", "model.model.embed_tokens.weight"):
        assert not task.in_budget(name), name
    for name in ("encoder.encoder.layer.0.attention.self.query.weight", "head.weight", "z"):
        assert task.in_budget(name), name
    wide = HfText(budget_embeddings=True)
    assert wide.in_budget("encoder.embeddings.word_embeddings.weight") and "included" in wide.budget_scope
    assert "embedding" in task.budget_scope


# ---- the task on a tiny BERT in a folder (needs the hf extra) -------------------------------------

WORDS = [f"w{i}" for i in range(40)]


def tiny_model_folder(folder: Path, architecture: str = "encoder", family: str = "bert") -> Path:
    """A 2-layer BERT (or GPT-2) of width 32 with a word-level tokenizer, saved as transformers saves models."""
    transformers = pytest.importorskip("transformers", reason="needs the hf extra: pip install 'lowdim-bench[hf]'")
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                                cls_token="[CLS]", sep_token="[SEP]")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    if family == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=len(vocab), n_embd=32, n_layer=2, n_head=2, n_positions=64)
        transformers.GPT2Model(cfg).save_pretrained(folder)
        return folder
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    cls = transformers.BertModel if architecture == "encoder" else transformers.BertForSequenceClassification
    cls(cfg).save_pretrained(folder)
    return folder


def word_data(path: Path, n: int = 120) -> Path:
    """Two classes told apart by their words (w0-w19 vs w20-w39), lengths 3 to 12."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        y = i % 2
        k = int(torch.randint(3, 13, (1,), generator=g))
        words = [WORDS[20 * y + int(j)] for j in torch.randint(0, 20, (k,), generator=g)]
        rows.append({"text": " ".join(words) + f" w{i % 3}", "label": ["even", "odd"][y]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def tiny_task(tmp_path) -> HfText:
    folder = tiny_model_folder(tmp_path / "tiny")
    return HfText(model=str(folder), data=str(word_data(tmp_path / "words.jsonl")), max_length=16, batch_size=8)


def test_the_probe_base_separates_a_separable_task(tiny_task):
    model = tiny_task.pretrained("target", 0)
    splits = tiny_task.splits("target", 0)
    assert tiny_task.evaluate(model, splits["train"]) >= 0.9
    logits, labels = tiny_task.predictions(model, splits["test"])
    assert logits.shape == (len(splits["test"]), 2) and labels.tolist() == splits["test"].labels.tolist()
    feats, _ = tiny_task.features(model, splits["test"])
    assert feats.shape == (len(splits["test"]), 32)
    # the same seed gives the same base; the probe is fitted, not drawn
    again = tiny_task.pretrained("target", 0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_the_probe_is_fitted_once_and_read_back(tiny_task, monkeypatch):
    """Every cell and every rebuild of the interleaved latency pass builds the base: the probe fit
    ran each time (most of the interleave pass on real-minilm). Now the second build reads it."""
    first = tiny_task.pretrained("target", 0)
    fits = []
    monkeypatch.setattr(hf_text, "fit_probe", lambda *a, **k: fits.append(a))
    second = tiny_task.pretrained("target", 1)  # another seed: the probe does not depend on it
    assert fits == []
    head = lambda m: find_head(m, m.head_name)
    assert torch.equal(head(first).weight, head(second).weight) and torch.equal(head(first).bias, head(second).bias)
    other = HfText(model=tiny_task.options["model"], data=tiny_task.options["data"], max_length=16, batch_size=8,
                   probe_c=0.01)
    other.pretrained("target", 0)
    assert len(fits) == 1  # another probe_c is another probe


def test_the_untouched_base_s_outputs_are_computed_once(tiny_task, monkeypatch):
    """Every cell scores the pretrained base the same way (quality_before, the embedding-cosine
    reference): read back from the cache, but only for that very model, unchanged."""
    base = tiny_task.pretrained("target", 0)
    test = tiny_task.splits("target", 0)["test"]
    first = tiny_task.features(base, test)
    calls = []
    real = HfText._forward_split
    monkeypatch.setattr(HfText, "_forward_split", lambda self, *a: calls.append(a) or real(self, *a))
    assert torch.equal(tiny_task.features(base, test)[0], first[0])
    fresh = HfText(model=tiny_task.options["model"], data=tiny_task.options["data"], max_length=16, batch_size=8)
    other_cell = fresh.pretrained("target", 1)  # another cell's base: the file cache serves it too
    assert torch.equal(fresh.features(other_cell, fresh.splits("target", 1)["test"])[0], first[0])
    assert calls == []
    copy_ = copy.deepcopy(base)  # what a method starts from: computed
    tiny_task.features(copy_, test)
    assert len(calls) == 1
    with torch.no_grad():
        find_head(base, base.head_name).bias.add_(1.0)  # written in place: computed, and it differs
    changed, _ = tiny_task.predictions(base, test)
    assert len(calls) == 2
    assert not torch.equal(changed, real(tiny_task, copy_, test, False)[0])


def test_batches_are_dicts_padded_to_their_longest_text(tiny_task):
    split = tiny_task.splits("target", 0)["train"]
    batch = next(tiny_task.batches(split, 8, torch.Generator().manual_seed(0)))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert int(batch["attention_mask"].sum(1).max()) == batch["input_ids"].shape[1] <= 16
    inputs = tiny_task.model_inputs(batch)
    assert set(inputs.kwargs) == {"input_ids", "attention_mask"}
    model = tiny_task.make_model(0)
    assert tiny_task.loss(model, batch).dim() == 0


def test_measurement_inputs_are_padded_or_cut_to_the_length_asked(tiny_task):
    padded = tiny_task.example_inputs(4, torch.device("cpu"))
    assert isinstance(padded, Inputs) and padded.kwargs["input_ids"].shape == (4, 16)
    assert tiny_task.sequence_length(padded) == 16
    lengths = tiny_task.sequence_lengths()
    assert lengths["padded"] == 16 and 3 <= lengths["mean_length"] <= 14
    short = tiny_task.example_inputs_at(3, lengths["mean_length"], torch.device("cpu"))
    assert short.kwargs["input_ids"].shape == (3, lengths["mean_length"])
    assert set(tiny_task.example_batch(5, torch.device("cpu"))) == {"input_ids", "attention_mask", "labels"}


def test_padding_does_not_change_a_text_s_logits(tiny_task):
    model = tiny_task.pretrained("target", 0).eval()
    split = tiny_task.splits("target", 0)["test"]
    one = split.batch(torch.tensor([0]))
    with torch.no_grad():
        alone = model(input_ids=one["input_ids"], attention_mask=one["attention_mask"])
        padded = model(input_ids=split.input_ids[:1], attention_mask=split.attention_mask[:1])
    assert torch.allclose(alone, padded, atol=1e-5)


def test_a_sequence_classification_checkpoint_loads_with_its_own_head(tmp_path):
    folder = tiny_model_folder(tmp_path / "seqcls", architecture="sequence-classification")
    task = HfText(model=str(folder), data=str(word_data(tmp_path / "w.jsonl")), architecture="sequence-classification",
                  max_length=16)
    model = task.pretrained("target", 0)
    assert model.head_name == "model.classifier"
    assert task.evaluate(model, task.splits("target", 0)["train"]) >= 0.8


def test_a_decoder_is_pooled_like_an_encoder(tmp_path):
    """GPT-2 (causal attention, no pooler): mean-pooled last states + the probe; wte/wpe out of budgets."""
    folder = tiny_model_folder(tmp_path / "gpt2", family="gpt2")
    task = HfText(model=str(folder), data=str(word_data(tmp_path / "w.jsonl")), max_length=16)
    model = task.pretrained("target", 0)
    assert type(model.encoder).__name__ == "GPT2Model"
    assert task.evaluate(model, task.splits("target", 0)["train"]) >= 0.8
    names = [n for n, _ in model.named_parameters()]
    assert {n for n in names if not task.in_budget(n)} == {"encoder.wte.weight", "encoder.wpe.weight"}


def test_missing_weights_are_a_clear_error(tmp_path):
    folder = tiny_model_folder(tmp_path / "noweights")
    for f in folder.glob("*.safetensors"):
        f.unlink()
    task = HfText(model=str(folder), data=str(word_data(tmp_path / "w.jsonl")))
    with pytest.raises(PluginError, match=r"model folder .*noweights: transformers could not load it"):
        task.pretrained("target", 0)


def test_an_uncached_hub_id_offline_is_a_clear_error():
    pytest.importorskip("huggingface_hub")
    task = HfText(model="nobody-here/no-such-model")
    with pytest.raises(PluginError, match=r"no-such-model.*local hub cache \(HF_HUB_OFFLINE is set\)"):
        task.folder


def test_an_unwritable_cache_costs_the_caching_not_the_base(tiny_task, tmp_path, monkeypatch):
    """docs/reports.md: an unwritable cache means the base is built and used uncached."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("LOWDIM_BENCH_CACHE", str(blocked))
    model = tiny_task.pretrained("target", 0)
    assert tiny_task.evaluate(model, tiny_task.splits("target", 0)["train"]) >= 0.9


def test_a_run_of_hf_text_cells_has_its_warm_server_import_transformers_once():
    from lowdim_bench.core.cells import Cell
    from lowdim_bench.registry import Registry
    from lowdim_bench.run.runner import preload_modules

    cells = [Cell(suite="t", suite_version="1", task="hf-text", task_options={}, method=m, hparams={}, kind="adapt",
                  budget=0.01, knob=None, seed=0, device="cpu", measure=[], protocol={}) for m in ("lora", "peft-lora")]
    got = preload_modules(cells, Registry.load())
    assert "transformers.modeling_utils" in got and "peft" in got
    assert preload_modules(cells[:1], Registry.load()) == HfText.preload
