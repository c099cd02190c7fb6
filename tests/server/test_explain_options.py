"""Explain options: translated from the message as sent, checked in one place into trusted settings."""

from __future__ import annotations

import pytest

from allxai.explainer.engine import ExplainSettings
from allxai.explainer.segmentation import SegmentationSpec
from allxai.server import convert
from allxai.server.errors import InvalidInput
from allxai.server.explain_options import ExplainOptions, explain_plan
from allxai.server.settings import Settings
from allxai.v1 import diagnosis_pb2 as pb

LIMITS = Settings(
    metrics_port=0,
    explain_default_samples=300,
    explain_max_samples=2000,
    predict_batch_size=32,
    explain_max_in_flight=3,
    explain_compose_batch_size=500,
    explain_max_segments=400,
)


def test_defaults_come_from_the_server_limits() -> None:
    plan = explain_plan(ExplainOptions(seed=7), LIMITS)
    assert plan.settings == ExplainSettings(
        num_samples=300,
        top_k=5,
        num_features=100000,
        seed=7,
        batch_size=32,
        max_in_flight=3,
        compose_batch_size=500,
        segmentation=SegmentationSpec("quickshift", {}),
        max_segments=400,
    )
    assert plan.target_label is None and plan.pictures == ("overlay",)
    assert 0 <= explain_plan(ExplainOptions(), LIMITS).settings.seed < 2**31  # drawn when unset


def test_the_message_translates_without_checks() -> None:
    message = pb.ExplainOptions(
        num_samples=50,
        seed=4,
        segmentation=pb.SEGMENTATION_SLIC,
        segmentation_params={"n_segments": 12.0},
        hide_color=[0, 0, 0],
        composition=pb.COMPOSITION_GATEWAY,
        pictures=[pb.PICTURE_KIND_HEATMAP, pb.PICTURE_KIND_FIGURE],
        target_label="Pro",
    )
    options = convert.explain_options(message)
    assert (options.segmentation, options.composition, options.hide_color) == ("slic", "gateway", (0, 0, 0))
    plan = explain_plan(options, LIMITS)
    assert plan.settings.segmentation == SegmentationSpec("slic", {"n_segments": 12.0})
    assert plan.settings.composition == "gateway" and plan.settings.hide_color == (0, 0, 0)
    assert plan.pictures == ("heatmap", "figure") and plan.target_label == "Pro"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("segmentation", 9, "unknown segmentation 9"),
        ("composition", 9, "unknown composition 9"),
        ("pictures", [9], "unknown picture kind 9"),
    ],
)
def test_unknown_enum_numbers_are_refused_by_the_check(field: str, value: object, message: str) -> None:
    options = convert.explain_options(pb.ExplainOptions(**{field: value}))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput) as info:
        explain_plan(options, LIMITS)
    assert info.value.violations[0].field == f"options.{field}"
    assert info.value.violations[0].description == message


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (ExplainOptions(num_samples=2001), "options.num_samples"),
        (ExplainOptions(num_samples=-1), "options.num_samples"),
        (ExplainOptions(top_k=-1), "options.top_k"),
        (ExplainOptions(batch_size=33), "options.batch_size"),
        (ExplainOptions(num_features=-1), "options.num_features"),
        (ExplainOptions(seed=2**32), "options.seed"),
        (ExplainOptions(hide_color=(1, 2)), "options.hide_color"),
        (ExplainOptions(hide_color=(0, 0, 256)), "options.hide_color"),
        (ExplainOptions(segmentation_params={"n_segments": 3.0}), "options.segmentation_params"),
        (ExplainOptions(segmentation="watershed"), "options.segmentation"),
        (ExplainOptions(composition="remote"), "options.composition"),
        (ExplainOptions(pictures=("thumbnail",)), "options.pictures"),
    ],
)
def test_each_wrong_option_is_named(options: ExplainOptions, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        explain_plan(options, LIMITS)
    assert [v.field for v in info.value.violations] == [field]
