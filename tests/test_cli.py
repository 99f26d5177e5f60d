"""The CLI: listing, exit codes, and the headless path never importing Textual."""
import subprocess
import sys

import pytest

from conftest import write_suite
from lowdim_bench.cli import main


def test_list_methods_shows_kind_and_source(capsys):
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    for name, kind in (("dense", "train/adapt/compress"), ("lora", "adapt"), ("svd", "compress"), ("sltrain", "train")):
        line = next(ln for ln in out.splitlines() if ln.startswith(name + " "))
        assert kind in line and "built-in" in line


def test_list_plugins_shows_broken_module_and_goes_on(capsys, monkeypatch, fake_plugins):
    monkeypatch.setenv("LOWDIM_BENCH_PLUGIN_MODULES", "fakeplugins,no_such_plugin_module")
    assert main(["list", "plugins"]) == 0
    out = capsys.readouterr().out
    assert "no_such_plugin_module" in out and "broken" in out and "ModuleNotFoundError" in out
    assert "fakeplugins" in out and "method:fake-head" in out
    assert main(["--strict-plugins", "list", "plugins"]) == 2
    assert "no_such_plugin_module" in capsys.readouterr().err


def test_malformed_suite_exits_2_naming_file_and_field(tmp_path, capsys):
    suite = write_suite(tmp_path / "bad.toml", 'name = "x"\ntasks = ["digits-mlp"]\nmethods = ["lora"]\nseeds = ["a"]\n')
    assert main(["run", str(suite)]) == 2
    err = capsys.readouterr().err
    assert f"{suite}:4: field 'seeds'" in err


def test_unknown_suite_name_lists_known(capsys):
    assert main(["run", "smokey"]) == 2
    assert "known: " in capsys.readouterr().err


def test_no_arguments_opens_the_app(monkeypatch):
    import lowdim_bench.tui.app as app

    calls = []
    monkeypatch.setattr(app, "main", lambda argv: calls.append(argv) or 7)
    assert main([]) == 7 and calls == [[]]


@pytest.mark.parametrize("module", ["lowdim_bench.cli", "lowdim_bench.run.runner", "lowdim_bench.run.worker",
                                    "lowdim_bench.report", "lowdim_bench.suite", "lowdim_bench.registry"])
def test_headless_modules_do_not_import_textual(module):
    code = f"import sys, {module}; from lowdim_bench.registry import Registry; Registry.load(); " \
           "bad = [m for m in sys.modules if m.split('.')[0] in ('textual', 'textual_plotext', 'plotext')]; " \
           "assert not bad, bad"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_methods_filter_uses_suite_names_and_knobs_replace_budgets(tmp_path, monkeypatch, fake_plugins):
    suite = write_suite(tmp_path / "s.toml", 'name = "f"\ntasks = ["tiny"]\nbudgets = [0.5]\n[methods.dense]\n'
                        '[methods.fake-width]\n[methods.narrow]\nmethod = "fake-width"\n')
    calls = []
    monkeypatch.setattr("lowdim_bench.run.runner.run_cells", lambda cells, *a, **k: calls.append(cells) or
                        (_ for _ in ()).throw(SystemExit(0)))
    with pytest.raises(SystemExit):
        main(["run", str(suite), "--methods", "narrow", "--knobs", "3,5", "--device", "cpu"])
    cells = calls[0]
    assert {c.shown_name for c in cells} == {"narrow"} and sorted(c.knob for c in cells) == [3.0, 5.0]
    assert all(c.budget is None and c.device == "cpu" for c in cells)
    assert main(["run", str(suite), "--methods", "lora"]) == 2
