"""Run configuration: frozen dataclasses filled from TOML, with ``key=value`` overrides.

Precedence: defaults < config file < ``--set`` overrides < explicit options. An unknown key is
refused with the closest known key suggested, before anything is built or spent.
"""
from __future__ import annotations

import dataclasses
import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..components import ComponentError, Family, Section, coerce
from ..errors import Refusal
from ..search.estimators import ESTIMATORS
from ..program.label_maps import LABEL_MAPS
from ..program.losses import LOSSES
from ..search.step_rules import STEP_RULES
from ..program.transforms import TRANSFORMS


class ConfigError(Refusal):
    """A configuration is invalid; the message is one sentence."""


@dataclass(frozen=True)
class BackendConfig:
    name: str = "onnx"              # entry point in blackbox_reprog.backends
    model: str = "crepe-tiny"       # zoo name, model file, or (callable) "module:function"
    options: dict = field(default_factory=dict)   # passed to the backend's constructor
    output: str = ""                # degrade the answers: "" (as they come) | probs | topk | label
    k: int = 5                      # labels kept by output = "topk"


@dataclass(frozen=True)
class DataConfig:
    name: str = "ItalyPowerDemand"  # built-in name or a path
    validation_fraction: float = 0.2
    test_fraction: float = 0.3      # only for datasets without their own test split
    length: int = 0                 # resample every series to this many points; 0 = as they are
    shots: int = 0                  # labelled examples per class the run may use, validation included; 0 = all

    def splits(self, seed: int, name: str | None = None):
        """The train, validation and test splits this section describes (of dataset ``name``
        instead, e.g. evaluating on another dataset)."""
        from ..data import make_splits
        return make_splits(name or self.name, validation_fraction=self.validation_fraction,
                           test_fraction=self.test_fraction, seed=seed, length=self.length, shots=self.shots)


#: config sections naming a component: ``kind`` plus that kind's parameters (components.py)
FAMILIES: dict[str, Family] = {"transform": TRANSFORMS, "label_map": LABEL_MAPS, "loss": LOSSES,
                               "estimator": ESTIMATORS, "optimizer": STEP_RULES}
DEFAULT_KINDS = {"transform": "signal", "label_map": "frequency", "loss": "ce", "estimator": "random",
                 "optimizer": "adam"}


def _default(section: str):
    return field(default_factory=lambda: FAMILIES[section].section_of(DEFAULT_KINDS[section]))


@dataclass(frozen=True)
class EvolutionConfig:
    optimizer: str = "DiagonalCMA"  # any nevergrad registry name: CMA, TwoPointsDE, TBPSA, NGOpt…
    popsize: int = 20               # candidates asked, scored in one call and told per step
    sigma: float = 0.1              # initial mutation scale (large ones overfit a small validation split)


@dataclass(frozen=True)
class TrainConfig:
    method: str = "blackbox"        # blackbox (zeroth-order) | whitebox (autograd) | evolution
    batch_size: int = 64
    max_steps: int = 0              # 0: until the budget is spent
    eval_every: int = 10            # steps between validation passes
    patience: int = 0               # stop after this many validation passes without a lower loss; 0: never
    checkpoint_every: int = 10
    compare_with: str = ""          # also run this method with the same seed and steps (e.g. whitebox)
    journal: str = "auto"           # write-ahead journal + answer store: auto (remote backends) | on | off
    answer_store: str = ""          # folder of stored answers shared between runs ("": the run folder's)


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    budget: int = 100_000           # queries, everything but the final test pass
    out: str = "runs"
    name: str = ""                  # run folder name; default <data>-<method>-s<seed>
    backend: BackendConfig = BackendConfig()
    data: DataConfig = DataConfig()
    transform: Section = _default("transform")
    label_map: Section = _default("label_map")
    loss: Section = _default("loss")
    estimator: Section = _default("estimator")
    optimizer: Section = _default("optimizer")
    evolution: EvolutionConfig = EvolutionConfig()
    train: TrainConfig = TrainConfig()

    def to_dict(self) -> dict:
        values = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            values[f.name] = (value.as_dict() if isinstance(value, Section) else
                              dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value)
        return values


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _unknown(key: str, known: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key.split(".")[-1], known, n=1)
    hint = f"; did you mean {where}{close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
    return ConfigError(f"unknown config key {where}{key!r}" + hint)


def _build(cls, values: dict, where: str = "", carried: dict | None = None):
    """Nested dict → frozen dataclass, checking keys and scalar types. ``carried``: per
    component section, parameters set for another kind (dropped where this kind lacks them)."""
    fields = _fields(cls)
    kwargs = {}
    values = {**{section: {} for section, params in (carried or {}).items() if params}, **values}
    for key, value in values.items():
        if key not in fields:
            raise _unknown(key, list(fields), where)
        f = fields[key]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, Section):
            if not isinstance(value, dict):
                raise ConfigError(f"expected a table for {where}{key}, got {value!r}")
            kwargs[key] = _section(key, value, (carried or {}).get(key, {}))
        elif dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"expected a table for {where}{key}, got {value!r}")
            kwargs[key] = _build(type(default), value, f"{where}{key}.")
        else:
            kwargs[key] = _coerce(value, default, f"{where}{key}")
    return cls(**kwargs)


def _coerce(value: Any, default: Any, key: str) -> Any:
    try:
        return coerce(value, default, key)
    except ComponentError as error:
        raise ConfigError(str(error)) from None


def _section(name: str, values: dict, carried: dict) -> Section:
    """A component section: its kind's parameters checked against the kind's class, plus
    those ``carried`` from a layer that set another kind, where this kind takes them."""
    family = FAMILIES[name]
    kind = values.get("kind", DEFAULT_KINDS[name])
    if not isinstance(kind, str):
        raise ConfigError(f"expected a string for {name}.kind, got {kind!r}")
    own = {k: v for k, v in values.items() if k != "kind"}
    try:
        family.cls(kind)
        inherited = {k: v for k, v in carried.items() if family.takes(kind, k) and k not in own}
        return family.section_of(kind, {**inherited, **own})
    except ComponentError as error:
        raise ConfigError(str(error)) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """'estimator.directions=20' → (['estimator', 'directions'], 20). Values are TOML; bare
    words are strings."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"expected an override like section.key=value, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip().split("."), value


def merge(base: dict, path: list[str], value: Any) -> dict:
    out = dict(base)
    if len(path) == 1:
        out[path[0]] = value
    else:
        out[path[0]] = merge(out.get(path[0], {}) if isinstance(out.get(path[0]), dict) else {},
                             path[1:], value)
    return out


_LIMITS = {  # key: (lowest allowed, whether the lowest itself is allowed)
    "budget": (0, True), "train.batch_size": (1, True), "train.max_steps": (0, True),
    "train.eval_every": (1, True), "train.checkpoint_every": (0, True), "train.patience": (0, True),
    "backend.k": (1, True), "evolution.popsize": (1, True), "evolution.sigma": (0, False), "data.length": (0, True),
    "data.shots": (0, True),
    "data.validation_fraction": (0, False), "data.test_fraction": (0, False),
}


#: The largest budget a run accepts. A budget is a ceiling on money spent, not a way to say
#: "no limit": a larger one never binds, so nothing would end the run (bound a long run with
#: train.max_steps instead). A trillion queries is beyond any API bill; it is also the budget
#: bench gives its baselines, which train nothing (their cell digests include it).
MAX_BUDGET = 10**12


CHOICES = {"train.method": ("blackbox", "whitebox", "evolution"), "backend.output": ("", "probs", "topk", "label"),
           "train.compare_with": ("", "blackbox", "whitebox", "evolution"),
           "train.journal": ("auto", "on", "off")}


def _check_limits(config: RunConfig) -> None:
    values = config.to_dict()
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        if values[section][name] not in allowed:
            raise ConfigError(f"expected {key} among {', '.join(repr(a) for a in allowed)}, got {values[section][name]!r}")
    for key, (lowest, inclusive) in _LIMITS.items():
        value = values
        for part in key.split("."):
            value = value[part]
        if value < lowest or (value == lowest and not inclusive):
            bound = f"at least {lowest}" if inclusive else f"above {lowest}"
            raise ConfigError(f"expected {key} {bound}, got {value}")
    if config.budget > MAX_BUDGET:
        raise ConfigError(f"expected a budget of at most {MAX_BUDGET:,} queries (bound a long run with "
                          f"train.max_steps instead), got {config.budget:,}")
    for key in ("data.validation_fraction", "data.test_fraction"):
        section, name = key.split(".")
        if values[section][name] >= 1:
            raise ConfigError(f"expected {key} below 1, got {values[section][name]}")


def load_config(path: str | Path | None = None, *, base: dict | list[dict] | None = None,
                overrides: tuple[str, ...] = (), run_folder: bool = False, **options: Any) -> RunConfig:
    """Defaults < ``base`` (a built-in config, or a list of layers) < the TOML file < overrides <
    options (not None). ``run_folder``: the file is a run folder's config.toml, written by the
    toolkit; one written before component sections (0.2) lists every kind's parameters in each
    section, and those the kind does not take are dropped instead of refused."""
    layers = [base] if isinstance(base, dict) else list(base or [])
    if path is not None:
        layers.append(_read_toml(path))
    layers.append(merged([parse_override(text) for text in overrides]))
    layers.append(merged([([key], value) for key, value in options.items() if value is not None]))
    values, carried = compose(layers, carry_all=len(layers) - 3 if run_folder else None)
    config = _build(RunConfig, values, carried=carried)
    _check_limits(config)
    return config


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The config a run folder was trained with."""
    return load_config(Path(run_dir) / "config.toml", run_folder=True)


def _read_toml(path: str | Path) -> dict:
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None


def merged(settings: list[tuple[list[str], Any]]) -> dict:
    values: dict = {}
    for key, value in settings:
        values = merge(values, key, value)
    return values


def compose(layers: list[dict], carry_all: int | None = None) -> tuple[dict, dict]:
    """Nested layers merged, later ones winning, and what component sections carry.

    A component section's parameters belong to its kind. Those set in a layer whose kind (after
    that layer) is the final one are the section's own, checked strictly; those set in a layer
    that had another kind (a suite's base before a method changes the kind) are *carried*: kept
    where the final kind takes them, dropped where it does not. ``carry_all``: the index of a
    layer whose component parameters are all carried (an old run folder's file)."""
    final = dict(DEFAULT_KINDS)
    for layer in layers:
        for section in FAMILIES:
            if isinstance(layer.get(section), dict) and "kind" in layer[section]:
                final[section] = layer[section]["kind"]
    kind = dict(DEFAULT_KINDS)
    values: dict = {}
    carried: dict[str, dict] = {section: {} for section in FAMILIES}
    for index, layer in enumerate(layers):
        for section in FAMILIES:
            if isinstance(layer.get(section), dict) and "kind" in layer[section]:
                kind[section] = layer[section]["kind"]
        for key, value in leaves(layer):
            section = key[0]
            if (section in FAMILIES and len(key) == 2 and key[1] != "kind"
                    and (kind[section] != final[section] or index == carry_all)):
                carried[section][key[1]] = value
            else:
                values = merge(values, key, value)
    return values, carried


def leaves(table: dict, prefix: tuple = ()):
    """(key path, value) for every value that is not a table, backend options included."""
    for key, value in table.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, prefix + (key,))
        else:
            yield list(prefix + (key,)), value


def flatten(table: dict, prefix: tuple = ()):
    for key, value in table.items():
        if isinstance(value, dict) and key != "options":
            yield from flatten(value, prefix + (key,))
        else:
            yield list(prefix + (key,)), value


def with_absolute_paths(config: RunConfig) -> RunConfig:
    """The config with its relative paths made absolute (a dataset or model file that exists,
    the answer store), so that the run folder's config.toml works from any folder: evaluate,
    predict, export and resume read it wherever they are started."""
    def absolute(value: str, exists: Callable[[Path], bool] | None) -> str:
        path = Path(value).expanduser()
        if not value or (exists is not None and not exists(path)):
            return value                          # a built-in name, a zoo name, a URL, "module:function"
        return str(path.resolve())

    return dataclasses.replace(
        config,
        # a dataset may be a folder (a path wins over a built-in name, as data.load reads it)
        data=dataclasses.replace(config.data, name=absolute(config.data.name, Path.exists)),
        # a model is a file; a folder named like a zoo model must not hide the zoo name
        backend=dataclasses.replace(config.backend, model=absolute(config.backend.model, Path.is_file)),
        train=dataclasses.replace(config.train, answer_store=absolute(config.train.answer_store, None)))


def to_toml(config: RunConfig) -> str:
    """The resolved configuration as TOML (the run folder's ``config.toml``)."""
    top, tables = [], []
    for key, value in config.to_dict().items():
        if isinstance(value, dict):
            tables.append(f"\n[{key}]")
            for sub, v in value.items():
                if isinstance(v, dict):
                    inline = ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items())
                    tables.append(f"{sub} = {{{inline}}}")
                else:
                    tables.append(f"{sub} = {toml_value(v)}")
        else:
            top.append(f"{key} = {toml_value(value)}")
    return "\n".join(top + tables) + "\n"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
