import pytest

from blackbox_reprog.config import ConfigError, load_config, parse_override, to_toml


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


@pytest.mark.parametrize("override, message", [
    ("estimator.directons=5", r"unknown config key estimator.'directons'; did you mean estimator.'directions'\?"),
    ("budgett=5", r"unknown config key 'budgett'; did you mean 'budget'\?"),
    ("estimator.directions=2.5", "expected an integer for estimator.directions, got 2.5"),
    ("label_map.refit=yes", "expected true or false for label_map.refit, got 'yes'"),
    ("budget", "expected an override like section.key=value, got 'budget'"),
    ("train=3", "expected a table for train, got 3"),
])
def test_bad_keys_and_values_are_refused_with_a_suggestion(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=(override,))


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
