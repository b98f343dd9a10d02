"""Run keys and references: parsing, formatting, round trips, malformed input."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayml import RunKey, UsageError, parse_reference
from relayml.keys import day_bounds_ms, format_time, parse_key

names = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_\-]{0,20}\Z")
moments = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2999, 12, 31), timezones=st.just(UTC)
)


@given(names, names, moments)
def test_key_round_trip(step: str, variant: str, moment: datetime) -> None:
    key = RunKey.at(step, variant, moment)
    assert RunKey.parse(str(key)) == key
    assert parse_reference(str(key)).key == key
    assert key.moment == moment.replace(microsecond=0)


@given(st.lists(moments, min_size=2, max_size=10))
def test_keys_sort_like_their_times(times: list[datetime]) -> None:
    keys = [RunKey.at("training", "logreg", t) for t in times]
    assert [k.time for k in sorted(keys)] == sorted(format_time(t) for t in times)
    assert sorted(str(k) for k in keys) == [str(k) for k in sorted(keys)]


def test_key_format() -> None:
    key = RunKey.at("processing", "plain", datetime(2019, 2, 9, 10, 15, tzinfo=UTC))
    assert str(key) == "processing/plain@20190209101500"
    assert str(key.next_second()) == "processing/plain@20190209101501"


def test_key_time_is_utc() -> None:
    tokyo = datetime(2019, 2, 9, 19, 15, tzinfo=ZoneInfo("Asia/Tokyo"))
    assert RunKey.at("load", "tx", tokyo).time == "20190209101500"


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        (
            "processing/plain@20190209101500",
            {"step": "processing", "variant": "plain", "time": "20190209101500"},
        ),
        ("processing/plain@2019-02-09", {"variant": "plain", "day": date(2019, 2, 9)}),
        ("processing/plain@latest", {"variant": "plain", "latest": True}),
        ("processing@latest", {"step": "processing", "variant": None, "latest": True}),
        ("processing@2019-02-09", {"variant": None, "day": date(2019, 2, 9)}),
        ("0123456789abcdef0123456789abcdef", {"run_id": "0123456789abcdef0123456789abcdef"}),
        ("  training/rf@latest ", {"step": "training", "variant": "rf"}),
    ],
)
def test_reference_forms(text: str, fields: dict) -> None:
    ref = parse_reference(text)
    for name, value in fields.items():
        assert getattr(ref, name) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty reference"),
        ("processing", "malformed reference"),
        ("processing/plain", "malformed reference"),
        ("processing/plain@yesterday", "malformed reference"),
        ("processing/plain@2019-02-30", "malformed reference"),
        ("processing/plain@20191309101500", "invalid run time"),
        ("processing@20190209101500", "a full key needs the variant"),
        ("proc essing/plain@latest", "malformed reference"),
        ("processing/pl@in@latest", "malformed reference"),
        ("0123456789ABCDEF0123456789ABCDEZ", "malformed reference"),
    ],
)
def test_malformed_references_say_why(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        parse_reference(text)
    assert (
        "expected" in str(info.value) or "invalid" in str(info.value) or "needs" in str(info.value)
    )


def test_parse_key_rejects_references_that_are_not_keys() -> None:
    with pytest.raises(UsageError, match="expected step/variant@YYYYMMDDHHMMSS"):
        parse_key("processing/plain@latest")


def test_day_bounds_follow_the_time_zone() -> None:
    lo, hi = day_bounds_ms(date(2019, 2, 9), ZoneInfo("Asia/Tokyo"))
    assert datetime.fromtimestamp(lo / 1000, UTC) == datetime(2019, 2, 8, 15, tzinfo=UTC)
    assert hi - lo == 86_400_000
