"""What a learning rule is and what an architecture is: one record each, and nothing that dispatches on them
anywhere else.

A rule's record says how reports name it, which of the rule-specific settings it reads, whether an
optimizer applies its updates, where its feedback weights W' come from, whether a vmapped seed pack can
train it, and its default alpha. Its computation is one function in core/rules.py (`RULE_UPDATES`). An
architecture's record says how Table 1 names its first layer, its default hidden fc sizes, its init range,
whose alpha it takes, and whether it has the two conv/loccon layers that dropout, batch
norm and padding act on; models.py builds its first layer. Adding a rule is one record here and one function
there (docs/design.md shows it for `fa`). Looking up a name that has no record is an error, never a default.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class QagrelError(Exception):
    """A user-facing error: printed as one line, never as a traceback."""


class Rule(str, Enum):
    qagrel = "qagrel"
    bp = "bp"
    fa = "fa"
    dfa = "dfa"


class Arch(str, Enum):
    conv = "conv"
    loccon = "loccon"
    fc = "fc"


class FeedbackSource(str, Enum):
    """Where a rule's feedback weights W' come from."""

    setting = "setting"  # the run's `feedback` option (Q-AGREL: symmetric, random or fixed)
    fixed = "fixed"  # drawn apart from W and never changed (feedback alignment)
    unused = "unused"  # the rule sends nothing through W' (Error-BP: autograd through W)
    direct = "direct"  # fixed random matrices from the output to every hidden layer; W' unused (DFA)


# The settings some rules read and others do not, and what a rule that does not read one would do instead.
RULE_SETTINGS = ("optimizer", "epsilon", "feedback")


@dataclass(frozen=True)
class RuleInfo:
    """One learning rule."""

    name: Rule
    display: str  # Table 1's name
    summary: str  # one line for --help and docs
    reads: frozenset[str]  # which of RULE_SETTINGS it reads
    uses_optimizer: bool  # its updates are gradients an optimizer applies (else it applies its own changes)
    feedback: FeedbackSource
    vmappable: bool  # a vmapped seed pack (the GPU strategy) can train it
    lr: dict[tuple[str, str], float]  # default alpha by (alpha family of the arch, dataset family)
    why_not: str  # why it ignores the settings it does not read
    line: str = "-"  # its line style in figures (matplotlib's), so each rule reads apart in every panel


# Table 1's alphas: (alpha family, dataset family) -> alpha. The paper has no fc net on CIFAR; its MNIST
# alpha stands in.
_QAGREL_LR = {("fc", "mnist"): 0.5, ("conv", "mnist"): 1.0, ("conv", "cifar"): 1.0}
_BP_LR = {("fc", "mnist"): 0.1, ("conv", "mnist"): 0.01, ("conv", "cifar"): 0.001}

RULES: dict[Rule, RuleInfo] = {info.name: info for info in (
    RuleInfo(Rule.qagrel, "Q-AGREL", "trial and error: one selected action, reward 1 or 0, four-factor update",
             frozenset({"epsilon", "feedback"}), False, FeedbackSource.setting, True, _QAGREL_LR,
             "Q-AGREL applies its four-factor update directly"),
    RuleInfo(Rule.bp, "Error-BP", "error-backpropagation: softmax cross-entropy, autograd through W",
             frozenset({"optimizer"}), True, FeedbackSource.unused, True, _BP_LR,
             "Error-BP selects no action and sends its error through W, never W'", "--"),
    # Feedback alignment (Lillicrap et al. 2016) and its direct variant (Nokland 2016) learn Error-BP's
    # objective, so they start from Error-BP's alpha (docs/rules.md).
    RuleInfo(Rule.fa, "FA", "feedback alignment: Error-BP's output error sent down through fixed random W'",
             frozenset({"optimizer"}), True, FeedbackSource.fixed, False, _BP_LR,
             "feedback alignment selects no action and its W' is fixed random by definition", ":"),
    RuleInfo(Rule.dfa, "DFA", "direct feedback alignment: the output error sent to every hidden layer by a "
             "fixed random matrix of its own", frozenset({"optimizer"}), True, FeedbackSource.direct, False, _BP_LR,
             "direct feedback alignment selects no action and sends its error by fixed random matrices of its own",
             "-."),
)}


@dataclass(frozen=True)
class ArchInfo:
    """One architecture (section 3 of the paper)."""

    name: Arch
    display: str  # Table 1's "1st layer"
    default_fc: tuple[int, ...]
    init_range: float  # the paper's uniform init range
    family: str  # "fc" or "conv": whose alpha (Table 1) and normal-init SD (the authors' later code) it takes
    conv_layers: bool  # has the two conv/loccon layers (dropout .8, batch norm and padding act there)


ARCHS: dict[Arch, ArchInfo] = {info.name: info for info in (
    ArchInfo(Arch.fc, "Full", (1500, 1000, 500), 0.05, "fc", False),
    ArchInfo(Arch.conv, "Conv", (500,), 0.02, "conv", True),
    ArchInfo(Arch.loccon, "LocCon", (500,), 0.02, "conv", True),  # Table 1 gives loccon conv's alpha
)}


def rule_info(rule: Rule | str) -> RuleInfo:
    """The record of `rule`; an unknown rule is an error naming the known ones."""
    try:
        return RULES[Rule(rule)]
    except (ValueError, KeyError):
        raise QagrelError(f"unknown rule {rule!r}; choose one of: {', '.join(r.value for r in RULES)}") from None


def arch_info(arch: Arch | str) -> ArchInfo:
    """The record of `arch`; an unknown architecture is an error naming the known ones."""
    try:
        return ARCHS[Arch(arch)]
    except (ValueError, KeyError):
        raise QagrelError(f"unknown arch {arch!r}; choose one of: {', '.join(a.value for a in ARCHS)}") from None


def reads(rule: Rule | str, setting: str) -> bool:
    """Whether `rule` reads `setting`; every rule reads the settings outside RULE_SETTINGS."""
    return setting not in RULE_SETTINGS or setting in rule_info(rule).reads


# Display names in Table 1's order (tables, figures and estimates all print these).
RULE_NAMES = {rule.value: info.display for rule, info in RULES.items()}
ARCH_NAMES = {arch.value: info.display for arch, info in ARCHS.items()}

__all__ = ["QagrelError", "Rule", "Arch", "FeedbackSource", "RuleInfo", "ArchInfo", "RULES", "ARCHS", "RULE_SETTINGS",
           "rule_info", "arch_info", "reads", "RULE_NAMES", "ARCH_NAMES"]
