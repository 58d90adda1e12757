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

from .errors import Refusal


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


@dataclass(frozen=True)
class TransformConfig:
    kind: str = "signal"            # signal | frame | additive
    grid: int = 0                   # control points (signal) / grid side (images); 0 = full
    scale: float = 1.0              # signal: program amplitude per unit θ
    inner: int = 0                  # frame: side of the resized target (0 = half the canvas)
    epsilon: float = 0.5            # additive: bound of the perturbation
    subspace: int = 0               # search θ = A·z in a random k-dim subspace (BBT); 0 = off


@dataclass(frozen=True)
class LabelMapConfig:
    kind: str = "frequency"         # random | frequency | iterative | linear
    per_class: int = 1              # source labels per target class (many-to-one maps)
    l2: float = 1e-3                # linear head penalty
    refit: bool = False             # linear head: refit as training goes (the other maps that refit always do)
    refit_every: int = 0            # steps between refits, on each example's latest answers; 0 = once an epoch
    blm_lambda: float = 1.0         # blm / blm+: smoothing λ of ω = C / (ΣC + λ)
    blm_topk: int = 0               # blm+: top-k source probabilities summed (0: max(1, ⌊0.15·K⌋), the authors' rule)


@dataclass(frozen=True)
class LossConfig:
    kind: str = "ce"                # ce | focal | margin | zero-one
    gamma: float = 2.0              # focal
    margin: float = 1.0             # margin (multi-class hinge)


@dataclass(frozen=True)
class EstimatorConfig:
    kind: str = "random"            # random | antithetic | coordinate | spsa | spsa-gc
    directions: int = 10            # q
    smoothing: float = 0.005        # μ (random, antithetic, coordinate) or c (SPSA)
    distribution: str = "gaussian"  # gaussian | sphere


@dataclass(frozen=True)
class OptimizerConfig:
    kind: str = "adam"              # sgd | adam | adamm | signsgd
    lr: float = 0.05
    momentum: float = 0.9
    schedule: str = "constant"      # constant | exp | poly | cosine
    decay: float = 0.96             # exp schedule factor per step
    power: float = 0.4              # poly schedule exponent α
    offset: float = 1.0             # poly schedule offset o


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
    transform: TransformConfig = TransformConfig()
    label_map: LabelMapConfig = LabelMapConfig()
    loss: LossConfig = LossConfig()
    estimator: EstimatorConfig = EstimatorConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    evolution: EvolutionConfig = EvolutionConfig()
    train: TrainConfig = TrainConfig()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _unknown(key: str, known: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key.split(".")[-1], known, n=1)
    hint = f"; did you mean {where}{close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
    return ConfigError(f"unknown config key {where}{key!r}" + hint)


def _build(cls, values: dict, where: str = ""):
    """Nested dict → frozen dataclass, checking keys and scalar types."""
    fields = _fields(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise _unknown(key, list(fields), where)
        f = fields[key]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"expected a table for {where}{key}, got {value!r}")
            kwargs[key] = _build(type(default), value, f"{where}{key}.")
        else:
            kwargs[key] = _coerce(value, default, f"{where}{key}")
    return cls(**kwargs)


def _coerce(value: Any, default: Any, key: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false for {key}, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(value, bool) and isinstance(value, (int, float)):
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"expected an integer for {key}, got {value!r}")
        return int(value)
    if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, type(value)):
        return value
    kind = {"int": "an integer", "float": "a number", "str": "a string", "dict": "a table"}.get(type(default).__name__, type(default).__name__)
    raise ConfigError(f"expected {kind} for {key}, got {value!r}")


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
    "train.eval_every": (1, True), "train.checkpoint_every": (0, True),
    "estimator.directions": (1, True), "estimator.smoothing": (0, False), "optimizer.lr": (0, False),
    "transform.grid": (0, True), "transform.inner": (0, True), "transform.epsilon": (0, False),
    "label_map.per_class": (1, True), "transform.subspace": (0, True), "backend.k": (1, True),
    "evolution.popsize": (1, True), "evolution.sigma": (0, False), "label_map.blm_lambda": (0, True),
    "label_map.blm_topk": (0, True), "loss.margin": (0, True), "label_map.l2": (0, True), "loss.gamma": (0, True),
    "label_map.refit_every": (0, True),
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


def load_config(path: str | Path | None = None, *, base: dict | None = None,
                overrides: tuple[str, ...] = (), **options: Any) -> RunConfig:
    """Defaults < ``base`` (a built-in config) < the TOML file < overrides < options (not None)."""
    values: dict = dict(base or {})
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as error:
            raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
        try:
            loaded = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
        for key, value in flatten(loaded):
            values = merge(values, key, value)
    for text in overrides:
        key, value = parse_override(text)
        values = merge(values, key, value)
    for key, value in options.items():
        if value is not None:
            values = merge(values, [key], value)
    config = _build(RunConfig, values)
    _check_limits(config)
    return config


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
                    inline = ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items())
                    tables.append(f"{sub} = {{{inline}}}")
                else:
                    tables.append(f"{sub} = {_toml_value(v)}")
        else:
            top.append(f"{key} = {_toml_value(value)}")
    return "\n".join(top + tables) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
