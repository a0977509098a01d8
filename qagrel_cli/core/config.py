"""The resolved configuration of one training run, and its stable run id.

A run is named by what determines its result (dataset, architecture, rule,
seed, hyperparameters), never by a timestamp: the same config is the same run
in every sweep that contains it, so finished runs are never redone.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping

from qagrel_cli.core.catalog import (ARCH_NAMES, RULE_NAMES, RULE_SETTINGS, Arch, QagrelError, Rule, arch_info, reads,
                                     rule_info)


class Dataset(str, Enum):
    mnist = "mnist"
    fashion_mnist = "fashion-mnist"
    cifar10 = "cifar10"
    cifar100 = "cifar100"


class Optimizer(str, Enum):
    sgd = "sgd"
    adam = "adam"


class Feedback(str, Enum):
    symmetric = "symmetric"  # W' starts equal to W and changes as W does (the paper's strict reciprocity)
    random = "random"  # W' drawn independently, from the same distribution as W; then changes as W does
    fixed = "fixed"  # W' drawn independently and never changed (as in feedback alignment)


# The protocol choices the paper leaves open (docs/reproduction.md). The first value of each is the
# literal reading and the default.
class InputScaling(str, Enum):
    unit = "unit"  # pixels / 255, in [0, 1]
    standardize = "standardize"  # then per channel (x - mean) / SD, over the run's training split


class Init(str, Enum):
    uniform = "uniform"  # W ~ U[-r, r] with r = init_range (section 3: 0.02, fc 0.05)
    he = "he"  # He-uniform: W ~ U[-b, b], b = sqrt(6 / fan_in): the usual scale for ReLU networks
    normal = "normal"  # W ~ N(0, init_sd^2): the authors' later code (BrainProp: SD 0.005, fc 0.01)


class Padding(str, Enum):
    valid = "valid"  # the first layer's 3x3 filters stay inside the image: Table 1's hidden units (21632, 28800)
    same = "same"  # zero padding keeps the image's size (the authors' later conv code): 25088, 32768


class Validation(str, Enum):
    held_out = "held-out"  # val_size training images, held out per seed (section 3)
    test = "test"  # the test set as validation set (the authors' later code); held-out accuracy is still logged


# The init SD of `init: normal` when none is given: the authors' later code (BrainProp, get_architecture.py).
NORMAL_INIT_SD = {"fc": 0.01, "conv": 0.005}

# Table 1's names, in Table 1's order (tables, figures and estimates all print these; rules and
# architectures are named by their records, core/catalog.py).
DATASET_NAMES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100"}

# Section 3: "a dropout of 0.8 (i.e. 80% of the neurons in the layer were silent)" after the strided conv
# layer. The literal reading and the default of `conv_dropout`; 0.2 reads the 0.8 as a keep probability.
CONV_DROPOUT = 0.8

# Fields that change how a run is executed but not what it computes.
_NOT_IDENTITY = frozenset({"device"})
# Fields added after runs were recorded: a config may lack them (they take their default), and they
# enter the run id only when they differ from their default, so every run id recorded before them
# stays valid. A stored config lacking any other field is damaged, not old.
FIELDS_ADDED_LATER = ("input_scaling", "init", "conv_dropout", "batch_norm", "padding", "init_sd", "lr_halve_every",
                      "min_delta", "validation")
# The paper's open protocol choices (docs/reproduction.md) and the training choices of the authors' later
# code (core/recipes.py). Their defaults are the literal reading; any other value is a reading of the paper,
# and reports always show which.
PROTOCOL_READINGS = ("input_scaling", "init", "optimizer", "conv_dropout", "batch_norm", "padding", "init_sd",
                     "lr_halve_every", "min_delta", "validation")
# The settings whose values are an Enum's; the declaration order is the paper's (its reading first).
ENUM_FIELDS: dict[str, type[Enum]] = {"dataset": Dataset, "arch": Arch, "rule": Rule, "optimizer": Optimizer,
                                      "feedback": Feedback, "init": Init, "input_scaling": InputScaling,
                                      "padding": Padding, "validation": Validation}
# Settings of the conv and loccon nets' first two layers: a fully connected net has none of them.
_CONV_ONLY = {"conv_dropout": "a fully connected net has no strided conv layer",
              "batch_norm": "batch normalisation follows the conv and loccon layers only",
              "padding": "a fully connected net has no filters to pad"}


def dataset_family(dataset: Dataset) -> str:
    """'mnist' for the 28x28 grey datasets, 'cifar' for the 32x32 colour ones."""
    return "cifar" if dataset in (Dataset.cifar10, Dataset.cifar100) else "mnist"


def paper_lr(rule: Rule, arch: Arch, dataset: Dataset) -> float:
    """The rule's default alpha for this architecture and dataset: Table 1's for Q-AGREL and Error-BP."""
    alphas, family = rule_info(rule).lr, arch_info(arch).family
    return alphas.get((family, dataset_family(dataset)), alphas[(family, "mnist")])  # Table 1 has no fc on CIFAR


def parse_fc(text: str | int | list | tuple | None) -> tuple[int, ...] | None:
    """Parse hidden fully connected sizes: '1000,500', 500, [1000, 500] or None."""
    if text is None:
        return None
    if isinstance(text, bool):
        raise QagrelError(f"fc must be a list of positive integers, got {text!r}")
    if isinstance(text, int):
        parts: list[Any] = [text]
    elif isinstance(text, (list, tuple)):
        parts = list(text)
    elif isinstance(text, str):
        parts = [p.strip() for p in text.replace("-", ",").split(",")]
    else:
        raise QagrelError(f"fc must be a list of positive integers, got {text!r}")
    try:
        sizes = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise QagrelError(f"fc must be comma-separated positive integers like 1000,500, got {text!r}") from None
    if not sizes or any(s <= 0 for s in sizes) or any(isinstance(p, (float, bool)) for p in parts):
        raise QagrelError(f"fc must be comma-separated positive integers like 1000,500, got {text!r}")
    return sizes


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run.

    Built resolved: a field given as `None` takes the paper's default (fc sizes,
    learning rate, init range) when the config is made, so every TrainConfig
    holds the values the run uses. Combinations that make no sense are refused.
    """

    dataset: Dataset = Dataset.mnist
    arch: Arch = Arch.conv
    rule: Rule = Rule.qagrel
    fc: tuple[int, ...] | None = None
    seed: int = 0
    lr: float | None = None
    optimizer: Optimizer = Optimizer.sgd
    epsilon: float = 0.02
    feedback: Feedback = Feedback.symmetric
    init: Init = Init.uniform
    init_range: float | None = None
    init_sd: float | None = None
    input_scaling: InputScaling = InputScaling.unit
    conv_dropout: float = CONV_DROPOUT
    batch_norm: bool = False
    padding: Padding = Padding.valid
    batch_size: int = 100
    lr_halve_every: int = 0  # halve alpha after every this many epochs; 0: alpha stays (the paper)
    max_epochs: int = 500
    patience: int = 20
    min_delta: float = 0.0  # early stopping: an epoch is better only when it beats the best by more than this
    validation: Validation = Validation.held_out
    train_size: int | None = None
    val_size: int = 1000
    device: str = "auto"

    def __post_init__(self) -> None:
        self._check_fields()
        for name in RULE_SETTINGS:
            if not reads(self.rule, name) and getattr(self, name) != self.__dataclass_fields__[name].default:
                readers = ", ".join(r.value for r in Rule if reads(r, name))
                raise QagrelError(f"{name} applies to rule {readers} only: {rule_info(self.rule).why_not}")
        if not arch_info(self.arch).conv_layers:
            for name, why in _CONV_ONLY.items():
                if getattr(self, name) != self.__dataclass_fields__[name].default:
                    raise QagrelError(f"{name} applies to arch conv and loccon only: {why}")
        if self.init != Init.uniform and self.init_range is not None:
            raise QagrelError(f"init_range applies to init uniform only: init {self.init.value} sets its own scale")
        if self.init != Init.normal and self.init_sd is not None:
            raise QagrelError(f"init_sd applies to init normal only: init {self.init.value} sets its own scale")
        self._resolve()

    @classmethod
    def check_value(cls, name: str, value: Any) -> Any:
        """Check one option's value on its own (as a sweep file lists it); returns it normalised."""
        if name not in CONFIG_FIELDS:
            raise QagrelError(f"unknown option {name!r}; known: {', '.join(CONFIG_FIELDS)}")
        probe = object.__new__(cls)
        for f in dataclasses.fields(cls):
            object.__setattr__(probe, f.name, value if f.name == name else f.default)
        probe._check_fields()
        return getattr(probe, name)

    def _check_fields(self) -> None:
        """Each field's type and range, normalised in place (enums from strings, fc from text)."""
        for name, enum in ENUM_FIELDS.items():
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, enum(value))
            except ValueError:
                choices = ", ".join(e.value for e in enum)
                raise QagrelError(f"unknown {name} {value!r}; choose one of: {choices}") from None
        object.__setattr__(self, "fc", parse_fc(self.fc))
        for name in ("seed", "batch_size", "max_epochs", "patience", "lr_halve_every"):
            _check_int(name, getattr(self, name), minimum=0 if name in ("seed", "lr_halve_every") else 1)
        if isinstance(self.val_size, bool) or not isinstance(self.val_size, int) or self.val_size < 1:
            raise QagrelError(f"val_size must be an integer >= 1: early stopping needs validation images (and "
                              f"the held-out accuracy is logged every epoch), got {self.val_size!r}")
        if not isinstance(self.batch_norm, bool):
            raise QagrelError(f"batch_norm must be true or false, got {self.batch_norm!r}")
        if self.train_size is not None:
            _check_int("train_size", self.train_size, minimum=1)
        for name in ("lr", "init_range", "init_sd"):
            value = getattr(self, name)
            if value is not None:
                _check_positive_float(name, value)
                object.__setattr__(self, name, float(value))
        if isinstance(self.epsilon, bool) or not isinstance(self.epsilon, (int, float)) or not 0 <= self.epsilon <= 1:
            raise QagrelError(f"epsilon must be a number in [0, 1], got {self.epsilon!r}")
        object.__setattr__(self, "epsilon", float(self.epsilon))
        if isinstance(self.conv_dropout, bool) or not isinstance(self.conv_dropout, (int, float)) \
                or not 0 <= self.conv_dropout < 1:
            raise QagrelError(f"conv_dropout must be a fraction in [0, 1), got {self.conv_dropout!r}")
        object.__setattr__(self, "conv_dropout", float(self.conv_dropout))
        if isinstance(self.min_delta, bool) or not isinstance(self.min_delta, (int, float)) \
                or not 0 <= self.min_delta < 1:
            raise QagrelError(f"min_delta must be an accuracy in [0, 1), got {self.min_delta!r}")
        object.__setattr__(self, "min_delta", float(self.min_delta))
        if not isinstance(self.device, str):
            raise QagrelError(f"device must be a string like auto, cpu or cuda:0, got {self.device!r}")

    def _resolve(self) -> None:
        """Fill every paper default (fc sizes, learning rate, init range or SD; He init has neither)."""
        if self.fc is None:
            object.__setattr__(self, "fc", arch_info(self.arch).default_fc)
        if self.lr is None:
            object.__setattr__(self, "lr", paper_lr(self.rule, self.arch, self.dataset))
        if self.init_range is None and self.init == Init.uniform:
            object.__setattr__(self, "init_range", arch_info(self.arch).init_range)
        if self.init_sd is None and self.init == Init.normal:
            object.__setattr__(self, "init_sd", NORMAL_INIT_SD[arch_info(self.arch).family])

    def lr_at(self, epoch: int) -> float:
        """Alpha in epoch `epoch` (1-based): `lr`, halved after every `lr_halve_every` epochs when that is set."""
        return self.lr * 0.5 ** ((epoch - 1) // self.lr_halve_every) if self.lr_halve_every else self.lr

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-friendly values (enums as strings, fc as a list)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Enum):
                value = value.value
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """Build from a mapping, rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise QagrelError(f"unknown option {unknown[0]!r}; known: {', '.join(sorted(known))}")
        return cls(**{k.replace("-", "_"): v for k, v in data.items()})

    @property
    def fc_label(self) -> str:
        """Hidden fc sizes joined by '_' (file-name safe), e.g. '1000_500'."""
        return "_".join(str(s) for s in (self.fc or ()))

    @functools.cached_property
    def run_id(self) -> str:
        """Readable, stable id: e.g. 'mnist-conv-500-qagrel-s3-1a2b3c4d' (computed once per config)."""
        identity = {k: v for k, v in self.to_dict().items() if k not in _NOT_IDENTITY}
        for name in FIELDS_ADDED_LATER:
            if identity[name] == DEFAULTS[name]:
                del identity[name]
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.dataset.value}-{self.arch.value}-{self.fc_label}-{self.rule.value}-s{self.seed}-{digest}"


def parse_seeds(value: Any) -> list[int]:
    """The one seed-list syntax: a count (`10` in YAML: seeds 0-9), a list of seeds, or text like
    '0-9', '0,3,5' or '0-4,7' (what `--seeds` gets). Rejects negatives, reversed ranges and repeats."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise QagrelError(f"seeds: give a number of seeds >= 1 (10 = seeds 0-9), got {value!r}")
        return list(range(value))
    if isinstance(value, list) and value:
        seeds = []
        for seed in value:
            _check_int("seed", seed, minimum=0)
            seeds.append(seed)
    elif isinstance(value, str) and value.strip():
        seeds = []
        for part in value.split(","):
            lo, sep, hi = part.strip().partition("-")
            try:
                first, last = int(lo), int(hi) if sep else int(lo)
            except ValueError:
                raise QagrelError(f"seeds must look like 0-9 or 0,3,5, got {value!r}") from None
            if first < 0 or last < first:
                raise QagrelError(f"seed range {part.strip()!r} must be ascending and non-negative")
            seeds.extend(range(first, last + 1))
    else:
        raise QagrelError(f"seeds: give a number of seeds (10 = seeds 0-9), a list, or text like 0-9 or 0,3,5; "
                          f"got {value!r}")
    if len(set(seeds)) != len(seeds):
        raise QagrelError(f"seeds {value!r} name a seed twice")
    return seeds


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise QagrelError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_positive_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise QagrelError(f"{name} must be a positive finite number, got {value!r}")


CONFIG_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainConfig))
DEFAULTS: dict[str, Any] = TrainConfig().to_dict()  # every option's default (fc, lr, init_range: conv MNIST's)
__all__ = ["TrainConfig", "QagrelError", "Dataset", "Arch", "Rule", "Optimizer", "Feedback", "Init", "InputScaling",
           "Padding", "Validation", "NORMAL_INIT_SD",
           "CONFIG_FIELDS", "DEFAULTS", "ENUM_FIELDS", "FIELDS_ADDED_LATER", "PROTOCOL_READINGS", "RULE_SETTINGS",
           "reads", "paper_lr", "parse_fc", "parse_seeds", "dataset_family", "CONV_DROPOUT", "DATASET_NAMES",
           "RULE_NAMES", "ARCH_NAMES"]
