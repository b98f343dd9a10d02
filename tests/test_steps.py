"""Declaring steps and variants: signatures become params; bad declarations fail clearly."""

from __future__ import annotations

from typing import Literal

import pytest

import relayml as relay
from relayml import ConfigError, UsageError
from relayml.pipeline import Pipeline


def _training():
    training = relay.step("training", upstream="processing")

    @training.variant("logreg")
    def logreg(
        ctx,
        processing,
        C: float = 1.0,
        penalty: Literal["l1", "l2"] = "l2",
        max_iter: int = 100,
        balanced: bool = False,
        depth: int | None = None,
        note="x",
    ):
        """Logistic regression."""

    return training


def test_signature_becomes_params() -> None:
    v = _training().variants["logreg"]
    assert list(v.params) == ["C", "penalty", "max_iter", "balanced", "depth", "note"]
    assert v.inputs == ("processing",)
    assert v.wants_ctx
    assert v.doc == "Logistic regression."
    assert v.params["note"].type is str  # inferred from the default


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, {"C": 1.0, "penalty": "l2", "max_iter": 100, "balanced": False, "depth": None}),
        ({"C": "10"}, {"C": 10.0}),
        ({"C": 3}, {"C": 3.0}),
        ({"max_iter": "250"}, {"max_iter": 250}),
        ({"balanced": "yes"}, {"balanced": True}),
        ({"balanced": "false"}, {"balanced": False}),
        ({"depth": "none"}, {"depth": None}),
        ({"depth": "4"}, {"depth": 4}),
        ({"penalty": "l1"}, {"penalty": "l1"}),
    ],
)
def test_values_are_coerced_to_declared_types(given: dict, expected: dict) -> None:
    bound = _training().variants["logreg"].bind(given)
    for name, value in expected.items():
        assert bound[name] == value
        assert type(bound[name]) is type(value)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"C": "ten"}, "parameter 'C' expects float, got 'ten'"),
        ({"max_iter": "2.5"}, "parameter 'max_iter' expects int"),
        ({"balanced": "maybe"}, "parameter 'balanced' expects bool"),
        ({"penalty": "l3"}, "must be one of 'l1', 'l2'"),
        ({"C": True}, "parameter 'C' expects float"),
        ({"Cc": "1"}, "unknown parameter 'Cc' for training/logreg; did you mean"),
        ({"gamma": "1"}, r"valid: C: float = 1.0"),
    ],
)
def test_wrong_values_name_what_is_valid(given: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        _training().variants["logreg"].bind(given)


def test_required_param_must_be_given() -> None:
    s = relay.step("load")

    @s.variant("tx")
    def tx(table: str): ...

    with pytest.raises(UsageError, match=r"needs parameter 'table'.*-P table="):
        s.variants["tx"].bind({})
    assert s.variants["tx"].bind({"table": "t"}) == {"table": "t"}


def test_unknown_variant_suggests_the_nearest() -> None:
    with pytest.raises(
        UsageError, match="unknown variant 'lgreg' of step 'training'; did you mean 'logreg'"
    ):
        _training().get("lgreg")


def test_bad_declarations() -> None:
    s = relay.step("training")
    with pytest.raises(ConfigError, match="params must be bool, int, float, str"):

        @s.variant("bad")
        def bad(x: list = None): ...  # noqa: RUF013

    with pytest.raises(ConfigError, match=r"\*args and \*\*kwargs"):

        @s.variant("star")
        def star(**kw): ...

    @s.variant("ok")
    def ok(): ...

    with pytest.raises(ConfigError, match="declared twice"):

        @s.variant("ok")
        def ok2(): ...

    with pytest.raises(UsageError, match="invalid variant name"):
        s.variant("has space")


def test_pipeline_checks_upstream_and_cycles() -> None:
    with pytest.raises(UsageError, match="unknown step 'load'"):
        Pipeline.from_steps([relay.step("processing", upstream="load")])
    a = relay.step("a", upstream="b")
    b = relay.step("b", upstream="a")
    with pytest.raises(ConfigError, match="cycle"):
        Pipeline.from_steps([a, b])
    p = Pipeline.from_steps(
        [
            relay.step("t", upstream=["p", "c"]),
            relay.step("p", upstream="l"),
            relay.step("l"),
            relay.step("c"),
        ]
    )
    order = p.order
    assert order.index("l") < order.index("p") < order.index("t")
    assert order.index("c") < order.index("t")
