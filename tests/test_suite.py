"""Suite files: validation errors name file, line, table and field; expansion to cells."""
import pytest

from conftest import write_suite
from lowdim_bench.registry import Registry
from lowdim_bench.plan import expand
from lowdim_bench.suite import SuiteError, load_suite

GOOD = """
name = "t"
version = "3"
budgets = [0.25, 0.5]
seeds = [0, 1]
measure = ["params"]
tasks = ["tiny"]

[methods.dense]
[methods.fake-width]
[methods.narrow]
method = "fake-width"
knobs = [2, 4]
timeout_s = 7
"""


@pytest.fixture
def reg(fake_plugins):
    return Registry.load()


def test_expand_counts_and_keys(tmp_path, reg):
    suite = load_suite(write_suite(tmp_path / "s.toml", GOOD), reg)
    cells = expand(suite, reg)
    # dense runs once per seed under the kind of the others (compress); width at 2 budgets; narrow at 2 knobs
    assert len(cells) == 2 + 4 + 4
    assert {c.kind for c in cells if c.method == "dense"} == {"compress"}
    narrow = [c for c in cells if c.alias == "narrow"]
    assert {c.knob for c in narrow} == {2.0, 4.0} and all(c.budget is None and c.timeout_s == 7 for c in narrow)
    assert len({c.key for c in cells}) == len(cells)
    assert cells[0].versions["method"] and cells[0].versions["task"]


def test_key_changes_with_config_and_code_version(tmp_path, reg):
    c = expand(load_suite(write_suite(tmp_path / "s.toml", GOOD), reg), reg)[0]
    from dataclasses import replace
    assert replace(c, seed=9).key != c.key
    assert replace(c, versions={**c.versions, "method": "other"}).key != c.key
    assert replace(c, timeout_s=1).key == c.key  # how long we wait does not change the result


@pytest.mark.parametrize("body, expected", [
    ("name = 't'\ntasks = ['tiny']\nmethods = ['lroa']\n", r"s.toml:3: field 'methods': unknown method 'lroa'; known: .*dense"),
    ("name = 't'\ntasks = ['tni']\nmethods = ['dense']\n", r"unknown task 'tni'; known: .*tiny"),
    ("name = 't'\ntasks = ['tiny']\nmethods = ['dense']\nbudgets = [0.5, 2]\n",
     r"s.toml:4: field 'budgets': Input should be less than or equal to 1, got 2"),
    ("name = 't'\ntasks = ['tiny']\n\n[methods.fake-width]\nrnak = 3\n",
     r"s.toml:5: \[methods.fake-width\] field 'rnak': method 'fake-width': unknown hyper-parameter\(s\) \['rnak'\]"),
    ("name = 't'\ntasks = ['tiny']\nmethods = ['dense']\n[protocol]\nrepeats = 'many'\n",
     r"s.toml:5: \[protocol\] field 'repeats': Input should be a valid integer, got 'many'"),
    ("name = 't'\nmethods = ['dense']\n", r"field 'tasks': required field is missing"),
    ("name = 't'\ntasks = ['tiny']\nmethods = ['dense']\nmeasure = ['flop']\n", r"unknown metric 'flop'"),
    ("name = 't'\ntasks = ['tiny']\nmethods = ['dense'\n", r"s.toml: not valid TOML: Unclosed array"),
    ("name = 't'\ntasks = ['tiny']\n[methods.dense]\nbudgets = [0.5]\n", r"method 'dense' has no size knob"),
    ("name = 't'\ntasks = ['tiny']\n[methods.dense]\nkinds = ['head']\n", r"field 'kinds': expected a list drawn from"),
    ("name = 't'\ntasks = ['tiny']\nmethods = ['dense']\ntimeout = 3\n", r"field 'timeout': unknown top-level field"),
    ("name = 't'\n[tasks.tiny]\nwidht = 3\n[methods.dense]\n", r"s.toml:3: \[tasks.tiny\] field 'widht': task 'tiny': unknown option\(s\) \['widht'\]"),
    ("name = 't'\ntasks = ['tiny']\n[methods.x]\nmethod = 'nope'\n", r"\[methods.x\] field 'method': unknown method 'nope'"),
])
def test_errors_name_file_line_and_field(tmp_path, reg, body, expected):
    with pytest.raises(SuiteError, match=expected):
        load_suite(write_suite(tmp_path / "s.toml", body), reg)


def test_builtin_suites_validate():
    reg = Registry.load()
    for f in reg.suite_files():
        suite = load_suite(f, reg)
        assert expand(suite, reg), f


def test_method_entry_restricted_to_tasks(tmp_path, reg):
    body = ('name = "r"\nmeasure = ["params"]\n[tasks.tiny]\n[tasks.digits-mlp]\n'
            '[methods.dense]\n[methods.fake-width]\ntasks = ["tiny"]\nknobs = [2]\n')
    cells = expand(load_suite(write_suite(tmp_path / "s.toml", body), reg), reg)
    assert {(c.task, c.method) for c in cells} == {("tiny", "dense"), ("digits-mlp", "dense"), ("tiny", "fake-width")}
    with pytest.raises(SuiteError, match=r"\[methods.fake-width\] field 'tasks': expected a list drawn from"):
        load_suite(write_suite(tmp_path / "s.toml", body.replace('["tiny"]', '["tni"]')), reg)
