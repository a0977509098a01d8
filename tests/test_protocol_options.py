"""The protocol choices the paper leaves open: each is an explicit, recorded option with the literal default."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from qagrel_cli.core.config import Arch, Init, QagrelError, TrainConfig
from qagrel_cli.core.data import PixelScaling
from qagrel_cli.core.models import build_network
from qagrel_cli.core.run_folder import read_config

REPO = Path(__file__).resolve().parents[1]


def test_the_defaults_are_the_literal_reading():
    config = TrainConfig()
    assert (config.input_scaling.value, config.init.value, config.optimizer.value) == ("unit", "uniform", "sgd")
    assert config.init_range == 0.02 and TrainConfig(arch="fc").init_range == 0.05
    assert config.conv_dropout == 0.8


@pytest.mark.parametrize("run_dir", sorted(p for p in (REPO / "results" / "smoke").iterdir() if p.is_dir()),
                         ids=lambda p: p.name)
def test_runs_recorded_before_the_options_existed_keep_their_run_ids(run_dir):
    # Their folders were named by the run ids of the time; their configs hold no protocol options.
    assert "input_scaling" not in run_dir.joinpath("_config.yaml").read_text()
    assert read_config(run_dir).run_id == run_dir.name


@pytest.mark.parametrize("reading", [{"input_scaling": "standardize"}, {"init": "he"},
                                     {"rule": "bp", "optimizer": "adam"}, {"feedback": "fixed"},
                                     {"conv_dropout": 0.2}])
def test_a_reading_other_than_the_default_changes_the_run_id(reading):
    base = TrainConfig(rule=reading.get("rule", "qagrel"))
    assert TrainConfig(**{"rule": base.rule, **reading}).run_id != base.run_id


def test_he_init_draws_each_layer_uniformly_within_sqrt_6_over_its_fan_in():
    for arch in (Arch.conv, Arch.loccon, Arch.fc):
        net = build_network(arch, (500,), (3, 32, 32), 10)
        net.reset_weights(Init.he, None, True, torch.Generator().manual_seed(0))
        for layer in net.layers:
            bound = math.sqrt(6 / layer.fan_in)
            w = layer.weight.detach()
            assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
            assert torch.equal(layer.feedback_weight, w)


def test_fan_in_counts_the_synapses_onto_one_unit():
    net = build_network(Arch.loccon, (500,), (3, 32, 32), 10)
    assert [layer.fan_in for layer in net.layers] == [3 * 3 * 3, 32 * 3 * 3, 32 * 15 * 15, 500]


@pytest.mark.parametrize("arch", [Arch.conv, Arch.loccon])
def test_conv_dropout_silences_that_fraction_after_the_strided_conv_layer_only(arch):
    assert build_network(arch, (500,), (1, 28, 28), 10).dropout == [0.0, 0.8, 0.3]  # the paper's
    assert build_network(arch, (500,), (1, 28, 28), 10, conv_dropout=0.2).dropout == [0.0, 0.2, 0.3]


def test_a_run_builds_its_network_with_its_conv_dropout():
    from qagrel_cli.core.data import Splits
    from qagrel_cli.core.trainer import Trainer

    images = torch.zeros((4, 1, 28, 28), dtype=torch.uint8)
    labels = torch.zeros(4, dtype=torch.long)
    splits = Splits(images, labels, images, labels, images, labels, 10)
    trainer = Trainer(TrainConfig(conv_dropout=0.2, device="cpu"), splits, torch.device("cpu"))
    assert trainer.net.dropout == [0.0, 0.2, 0.3]


def test_conv_dropout_on_a_fully_connected_net_is_refused():
    with pytest.raises(QagrelError, match="conv_dropout applies to arch conv and loccon only"):
        TrainConfig(arch="fc", conv_dropout=0.2)


@pytest.mark.parametrize("value", [1.0, -0.1, True, "0.2"])
def test_a_conv_dropout_outside_0_to_1_is_refused(value):
    with pytest.raises(QagrelError, match=r"conv_dropout must be a fraction in \[0, 1\)"):
        TrainConfig(conv_dropout=value)


def test_an_init_range_with_he_init_is_refused():
    with pytest.raises(QagrelError, match="init_range applies to init uniform only"):
        TrainConfig(init="he", init_range=0.1)


@pytest.mark.parametrize("rule, setting, value", [("qagrel", "optimizer", "adam"), ("bp", "epsilon", 0.05),
                                                  ("bp", "feedback", "random"), ("bp", "feedback", "fixed")])
def test_a_setting_the_rule_does_not_read_is_refused(rule, setting, value):
    readers = "bp, fa, dfa" if setting == "optimizer" else "qagrel"
    with pytest.raises(QagrelError, match=f"^{setting} applies to rule {readers} only"):
        TrainConfig(rule=rule, **{setting: value})


@pytest.mark.parametrize("rule, setting, value", [("bp", "optimizer", "adam"), ("qagrel", "epsilon", 0.05),
                                                  ("qagrel", "feedback", "fixed")])
def test_a_setting_the_rule_reads_is_accepted(rule, setting, value):
    assert getattr(TrainConfig(rule=rule, **{setting: value}), setting) == TrainConfig.check_value(setting, value)


def test_he_init_has_no_init_range():
    assert TrainConfig(init="he").init_range is None


def test_standardized_input_has_mean_0_and_sd_1_per_channel_over_the_images_it_was_fitted_on():
    images = torch.randint(0, 256, (500, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    images[:, 1] //= 4  # channels with different statistics
    x = PixelScaling.fit("standardize", images)(images)
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)


def test_unit_scaling_is_pixels_over_255():
    images = torch.tensor([[[[0, 51, 255]]]], dtype=torch.uint8)
    torch.testing.assert_close(PixelScaling.fit("unit", images)(images), torch.tensor([[[[0.0, 0.2, 1.0]]]]))


def test_stacked_scalings_scale_each_member_by_its_own_statistics():
    a = torch.randint(0, 128, (50, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    b = a * 2
    fits = [PixelScaling.fit("standardize", a), PixelScaling.fit("standardize", b)]
    shared = a[:5]  # one batch of images, seen by both members
    stacked = PixelScaling.stack(fits)(shared)
    assert stacked.shape == (2, 5, 1, 4, 4)
    torch.testing.assert_close(stacked[0], fits[0](shared))
    torch.testing.assert_close(stacked[1], fits[1](shared))


@pytest.mark.parametrize("value", [math.inf, -1.0, 0.0, math.nan])
def test_a_learning_rate_that_is_not_positive_and_finite_is_refused(value):
    with pytest.raises(QagrelError, match="lr must be a positive finite number"):
        TrainConfig(lr=value)
