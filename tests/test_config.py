import pytest

from blackbox_reprog.run.config import ConfigError, load_config, load_run_config, parse_override, to_toml


def test_defaults_file_overrides_and_options_in_order(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('budget = 5000\nseed = 3\n[estimator]\ndirections = 7\n[backend]\noptions = {device = "cpu"}\n')
    config = load_config(path, overrides=("estimator.directions=9", "data.name=Coffee"), seed=11)
    assert config.budget == 5000 and config.seed == 11
    assert config.estimator.directions == 9 and config.data.name == "Coffee"
    assert config.backend.options == {"device": "cpu"}


def test_resolved_config_round_trips_through_toml(tmp_path):
    config = load_config(overrides=("label_map.kind=linear", "optimizer.lr=0.2", 'backend.options={threads = 1}'))
    path = tmp_path / "config.toml"
    path.write_text(to_toml(config))
    assert load_config(path) == config


@pytest.mark.parametrize("overrides, message", [
    (["estimator.directons=5"], r"unknown config key estimator.directons for estimator.kind 'random'; did you mean "
                                r"estimator.directions\?"),
    (["budgett=5"], r"unknown config key 'budgett'; did you mean 'budget'\?"),
    (["estimator.directions=2.5"], "expected an integer for estimator.directions, got 2.5"),
    (["label_map.kind=linear", "label_map.refit=yes"], "expected true or false for label_map.refit, got 'yes'"),
    (["label_map.refit=true"], "unknown config key label_map.refit for label_map.kind 'frequency'; 'frequency' "
                               "takes per_class"),
    (["estimator.kind=spsa", "estimator.distribution=sphere"],
     "unknown config key estimator.distribution for estimator.kind 'spsa'; 'spsa' takes directions, smoothing"),
    (["transform.kind=frme"], r"unknown transform.kind 'frme'; did you mean 'frame'\? expected one of: signal, "
                              "frame, additive"),
    (["budget"], "expected an override like section.key=value, got 'budget'"),
    (["train=3"], "expected a table for train, got 3"),
    (["label_map=3"], "expected a table for label_map, got 3"),
])
def test_bad_keys_and_values_are_refused_with_a_suggestion(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=tuple(overrides))


def test_a_section_holds_its_kinds_parameters_and_only_those():
    config = load_config(overrides=("estimator.kind=spsa-gc", "estimator.gamma=0.2"))
    assert config.estimator.as_dict() == {"kind": "spsa-gc", "directions": 10, "smoothing": 0.005,
                                          "gamma": 0.2, "beta": 0.9}
    assert "l2" not in to_toml(config) and "blm_lambda" not in to_toml(config)


def test_parameters_set_for_another_kind_carry_over_where_the_new_kind_takes_them():
    # a suite's base sets one kind, a method another: what the new kind takes is kept, the rest dropped
    base = {"estimator": {"kind": "random", "directions": 5, "smoothing": 0.01, "distribution": "sphere"},
            "label_map": {"kind": "frequency", "per_class": 5}}
    method = {"estimator": {"kind": "spsa-gc"}, "label_map": {"kind": "linear", "refit": True}}
    config = load_config(base=[base, method])
    assert config.estimator.as_dict() == {"kind": "spsa-gc", "directions": 5, "smoothing": 0.01,
                                          "gamma": 0.1, "beta": 0.9}
    assert config.label_map.as_dict() == {"kind": "linear", "l2": 1e-3, "refit": True, "refit_every": 0,
                                          "cv_folds": 0}
    # within one layer the parameters are checked against that layer's kind
    with pytest.raises(ConfigError, match="unknown config key label_map.per_class for label_map.kind 'linear'"):
        load_config(base=[{"label_map": {"kind": "linear", "per_class": 5}}])


def test_a_run_folder_written_with_every_kinds_parameters_still_loads(tmp_path):
    # config.toml as blackbox-reprog wrote it before component sections (a0caef1): each section lists
    # the parameters of every kind
    old = (tmp_path / "config.toml")
    old.write_text(OLD_LAYOUT)
    config = load_run_config(tmp_path)
    assert config.estimator.as_dict() == {"kind": "spsa", "directions": 4, "smoothing": 0.02}
    assert config.label_map.as_dict() == {"kind": "frequency", "per_class": 3}
    assert config.optimizer.as_dict() == {"kind": "adam", "lr": 0.3, "schedule": "cosine", "decay": 0.96,
                                          "power": 0.4, "offset": 1.0}
    with pytest.raises(ConfigError, match="unknown config key transform.inner for transform.kind 'signal'"):
        load_config(old)                           # a user's file is checked strictly


OLD_LAYOUT = """seed = 0
budget = 1500
[transform]
kind = "signal"
grid = 16
scale = 1.0
inner = 0
epsilon = 0.5
subspace = 0
[label_map]
kind = "frequency"
per_class = 3
l2 = 0.001
refit = false
refit_every = 0
blm_lambda = 1.0
blm_topk = 0
[loss]
kind = "ce"
gamma = 2.0
margin = 1.0
[estimator]
kind = "spsa"
directions = 4
smoothing = 0.02
distribution = "gaussian"
[optimizer]
kind = "adam"
lr = 0.3
momentum = 0.9
schedule = "cosine"
decay = 0.96
power = 0.4
offset = 1.0
"""


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("budget = = 3")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(bad)


def test_override_values_are_toml_with_bare_word_strings():
    assert parse_override("a.b=20") == (["a", "b"], 20)
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("data.name=GunPoint") == (["data", "name"], "GunPoint")


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=0", "expected train.batch_size at least 1, got 0"),
    ("estimator.smoothing=0", "expected estimator.smoothing above 0, got 0.0"),
    ("optimizer.lr=-1", "expected optimizer.lr above 0, got -1.0"),
    ("label_map.per_class=0", "expected label_map.per_class at least 1, got 0"),
    ("data.validation_fraction=1", "expected data.validation_fraction below 1, got 1.0"),
    ("budget=-5", "expected budget at least 0, got -5"),
    ("budget=1.5", "expected an integer for budget, got 1.5"),
])
def test_values_out_of_range_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=(override,))


def test_the_config_reference_lists_every_kind_with_its_parameters():
    # docs/cli.md's table of component sections follows the registries: a new kind or parameter
    # must be documented there
    from pathlib import Path

    from blackbox_reprog.run.config import FAMILIES, toml_value
    page = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()
    for section, family in FAMILIES.items():
        for row in family.describe():
            parameters = ", ".join(f"`{k} = {toml_value(v)}`" for k, v in row["parameters"].items()) or "—"
            assert f"| `{section}` | `{row['kind']}` | {parameters} |" in page, (section, row["kind"])
