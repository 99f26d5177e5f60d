"""The plugin contract: loading, attribution of failures, strict mode, allow-list."""
import subprocess
import sys

import pytest

from lowdim_bench.api import Knob, Method
from lowdim_bench.hookspecs import hookimpl
from lowdim_bench.registry import PluginLoadError, Registry, UnknownName


class Good:
    class Lr(Method):
        name = "good"
        kind = "adapt"
        knob = Knob("rank", 1, 8)

    @hookimpl
    def register_methods(self, register):
        register(self.Lr)


class Raises:
    @hookimpl
    def register_methods(self, register):
        raise RuntimeError("plugin bug")


class Duplicate:
    @hookimpl
    def register_methods(self, register):
        register(Good.Lr)


class BadKind:
    class M(Method):
        name = "badkind"
        kind = "sideways"

    @hookimpl
    def register_methods(self, register):
        register(self.M)


def test_raising_hook_is_recorded_and_others_still_register():
    reg = Registry.from_objects({"good": Good(), "raises": Raises()})
    assert "good" in reg.methods
    broken = {p.name: p for p in reg.broken}
    assert list(broken) == ["raises"]
    assert "plugin bug" in broken["raises"].error and "Traceback" in broken["raises"].error


def test_duplicate_and_bad_kind_are_attributed():
    reg = Registry.from_objects({"good": Good(), "dup": Duplicate(), "bad": BadKind()})
    errors = {p.name: p.error for p in reg.broken}
    assert "already registered by plugin 'good'" in errors["dup"]
    assert "sideways" in errors["bad"]
    assert reg.method("good").plugin.name == "good"


def test_strict_mode_raises_with_plugin_name():
    reg = Registry.from_objects({"raises": Raises()})
    with pytest.raises(PluginLoadError, match="raises"):
        reg.raise_if_broken()


def test_unknown_name_lists_known():
    reg = Registry.from_objects({"good": Good()})
    with pytest.raises(UnknownName, match="unknown method 'lroa'; known: good"):
        reg.method("lroa")


def test_builtins_load_through_entry_points():
    reg = Registry.load()
    for name in ("dense", "lora", "svd", "sltrain"):
        assert reg.method(name).plugin.builtin
    for name in ("digits-mlp", "stdlib-lm"):
        assert reg.task(name).plugin.builtin
    assert {"params", "flops", "latency", "memory"} <= set(reg.metrics)
    assert any(f.stem == "smoke" for f in reg.suite_files())
    assert not reg.broken, [p.error for p in reg.broken]


def test_code_version_changes_with_source(tmp_path, monkeypatch):
    mod = tmp_path / "vplug.py"
    src = ("from lowdim_bench.api import Method\nfrom lowdim_bench.hookspecs import hookimpl\n"
           "class M(Method):\n    name='v'\n    kind='adapt'\n{extra}"
           "@hookimpl\ndef register_methods(register):\n    register(M)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib, sys
    mod.write_text(src.format(extra=""))
    v1 = Registry.from_objects({"v": importlib.import_module("vplug")}).method("v").code_version
    mod.write_text(src.format(extra="    description='changed'\n"))
    del sys.modules["vplug"]
    v2 = Registry.from_objects({"v": importlib.import_module("vplug")}).method("v").code_version
    assert v1 != v2


def test_empty_allow_list_keeps_builtins_and_named_modules(monkeypatch, fake_plugins):
    monkeypatch.setenv("LOWDIM_BENCH_PLUGINS", "")
    reg = Registry.load()
    assert "dense" in reg.methods  # built-ins always load
    assert "fake-head" in reg.methods  # explicitly named modules load too


def test_loading_the_registry_imports_no_scipy_or_sklearn():
    """Every plugin module imports scipy and scikit-learn where it uses them: at plugin load they cost
    4 s, paid by every CLI start and every warm cell server (issue 19)."""
    code = ("import sys; from lowdim_bench.registry import Registry; r = Registry.load(); "
            "assert not r.broken, r.broken; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('scipy', 'sklearn', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
