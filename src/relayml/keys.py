"""Run keys and references: parse, format, compare. Pure functions, no I/O.

A **run key** is ``step/variant@YYYYMMDDHHMMSS`` (UTC): unique, sortable and readable.
A **reference** names a run in one of these forms:

=================================  =====================================================
``processing/plain@20190209101500``  one run, by its key
``processing/plain@2019-02-09``      newest FINISHED run of that day (project time zone)
``processing/plain@latest``          newest FINISHED run of that variant
``processing@latest``                newest FINISHED run of the step, any variant
``processing@2019-02-09``            newest FINISHED run of the step on that day
``3f2a...`` (32 hex digits)          an MLflow run id
=================================  =====================================================

Example:
    >>> key = RunKey("processing", "plain", "20190209101500")
    >>> str(key)
    'processing/plain@20190209101500'
    >>> parse_reference("processing/plain@2019-02-09").day
    datetime.date(2019, 2, 9)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from relayml import tags as tag
from relayml.errors import UsageError

__all__ = [
    "NAME_PATTERN",
    "Reference",
    "RunKey",
    "check_name",
    "day_bounds_ms",
    "format_time",
    "parse_key",
    "parse_reference",
    "parse_time",
]

NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_\-]*"
_NAME = re.compile(rf"^{NAME_PATTERN}$")
_TIME = re.compile(r"^\d{14}$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_REF = re.compile(rf"^(?P<step>{NAME_PATTERN})(?:/(?P<variant>{NAME_PATTERN}))?@(?P<when>.+)$")

_FORMS = (
    "expected step/variant@YYYYMMDDHHMMSS, step/variant@YYYY-MM-DD, step/variant@latest, "
    "step@latest or a 32-digit MLflow run id"
)


def check_name(kind: str, name: str) -> str:
    """Validate a step, variant or project name and return it.

    Example:
        >>> check_name("step", "processing")
        'processing'
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise UsageError(
            f"invalid {kind} name {name!r}: use letters, digits, '_' and '-', "
            "starting with a letter or '_'"
        )
    return name


def format_time(moment: datetime) -> str:
    """Format a moment as the UTC ``YYYYMMDDHHMMSS`` of a run key.

    Example:
        >>> format_time(datetime(2019, 2, 9, 10, 15, tzinfo=UTC))
        '20190209101500'
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S")


def parse_time(text: str) -> datetime:
    """Parse the ``YYYYMMDDHHMMSS`` of a run key into an aware UTC datetime.

    Example:
        >>> parse_time("20190209101500").isoformat()
        '2019-02-09T10:15:00+00:00'
    """
    if not _TIME.match(text):
        raise UsageError(f"invalid run time {text!r}: expected YYYYMMDDHHMMSS (UTC)")
    try:
        return datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError as e:
        raise UsageError(f"invalid run time {text!r}: {e}") from e


@dataclass(frozen=True, order=True)
class RunKey:
    """The human key of a run: ``step/variant@YYYYMMDDHHMMSS``.

    Keys sort by step, variant, then time. ``RunKey.parse(str(key)) == key`` always holds.

    Example:
        >>> RunKey.parse("training/logreg@20190210094501").variant
        'logreg'
    """

    step: str
    variant: str
    time: str

    def __post_init__(self) -> None:
        check_name("step", self.step)
        check_name("variant", self.variant)
        parse_time(self.time)

    def __str__(self) -> str:
        return f"{self.step}/{self.variant}@{self.time}"

    @property
    def moment(self) -> datetime:
        """The key's time as an aware UTC datetime."""
        return parse_time(self.time)

    @classmethod
    def parse(cls, text: str) -> RunKey:
        """Parse a full run key; raise UsageError naming the expected form otherwise."""
        return parse_key(text)

    @classmethod
    def at(cls, step: str, variant: str, moment: datetime) -> RunKey:
        """The key of a run of ``step/variant`` started at ``moment``."""
        return cls(step, variant, format_time(moment))

    def next_second(self) -> RunKey:
        """The same key one second later: how a key collision is resolved."""
        return RunKey.at(self.step, self.variant, self.moment + timedelta(seconds=1))


def parse_key(text: str) -> RunKey:
    """Parse ``step/variant@YYYYMMDDHHMMSS``.

    Example:
        >>> parse_key("load/transactions@20190209000000").step
        'load'
    """
    ref = parse_reference(text)
    if ref.time is None or ref.variant is None:
        raise UsageError(f"invalid run key {text!r}: expected step/variant@YYYYMMDDHHMMSS")
    return RunKey(ref.step, ref.variant, ref.time)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Reference:
    """A parsed reference; exactly one of ``run_id``, ``time``, ``day``, ``latest`` is set.

    Example:
        >>> parse_reference("training@latest")
        Reference(step='training', variant=None, time=None, day=None, latest=True, run_id=None)
    """

    step: str | None = None
    variant: str | None = None
    time: str | None = None
    day: date | None = None
    latest: bool = False
    run_id: str | None = None

    def __str__(self) -> str:
        if self.run_id:
            return self.run_id
        head = (self.step or "") + (f"/{self.variant}" if self.variant else "")
        when = self.time or (self.day.isoformat() if self.day else "latest")
        return f"{head}@{when}"

    @property
    def key(self) -> RunKey | None:
        """The exact run key, when the reference is one."""
        if self.time and self.variant and self.step:
            return RunKey(self.step, self.variant, self.time)
        return None


def parse_reference(text: str) -> Reference:
    """Parse any reference form (see the module docstring).

    Raises:
        UsageError: the text is none of the forms; the message lists them.

    Example:
        >>> parse_reference("processing/plain@latest").latest
        True
    """
    if not isinstance(text, str) or not text.strip():
        raise UsageError(f"empty reference: {_FORMS}")
    text = text.strip()
    if tag.is_run_id(text):
        return Reference(run_id=text)
    m = _REF.match(text)
    if not m:
        raise UsageError(f"malformed reference {text!r}: {_FORMS}")
    step, variant, when = m["step"], m["variant"], m["when"]
    if when == "latest":
        return Reference(step=step, variant=variant, latest=True)
    if _DAY.match(when):
        try:
            return Reference(step=step, variant=variant, day=date.fromisoformat(when))
        except ValueError as e:
            raise UsageError(f"malformed reference {text!r}: {e}; {_FORMS}") from e
    if _TIME.match(when):
        if variant is None:
            raise UsageError(f"malformed reference {text!r}: a full key needs the variant")
        parse_time(when)
        return Reference(step=step, variant=variant, time=when)
    raise UsageError(f"malformed reference {text!r}: {_FORMS}")


def day_bounds_ms(day: date, zone: ZoneInfo) -> tuple[int, int]:
    """The [start, end) of a calendar day in ``zone``, as epoch milliseconds.

    Example:
        >>> day_bounds_ms(date(1970, 1, 2), ZoneInfo("UTC"))
        (86400000, 172800000)
    """
    start = datetime(day.year, day.month, day.day, tzinfo=zone)
    end = start + timedelta(days=1)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)
