"""A chain request: ``STEP=VARIANT[@WHEN]`` items and ``STEP.NAME=value`` params as links.

Parsing checks the syntax only; :func:`validate` checks the names and the connections against
the project's pipeline. Nothing here reads runs.

Example:
    >>> from relayml.chain_links import parse_links
    >>> [str(x) for x in parse_links(["load=transactions@latest", "processing=plain"])]
    ['load=transactions@latest', 'processing=plain']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from relayml import tags as tag
from relayml.errors import UsageError
from relayml.keys import parse_reference
from relayml.pipeline import Pipeline

__all__ = ["Link", "parse_links", "validate"]


@dataclass(frozen=True)
class Link:
    """One step of a chain request.

    Attributes:
        step: the step's name.
        variant: the variant's name.
        params: parameter values given for the step (not yet coerced).
        ref: a reference pinning the step's run (load steps only), or None.
    """

    step: str
    variant: str
    params: dict[str, Any] = field(default_factory=dict)
    ref: str | None = None

    def __str__(self) -> str:
        if self.ref is None:
            return f"{self.step}={self.variant}"
        if tag.is_run_id(self.ref):
            return f"{self.step}={self.ref}"
        when = self.ref.split("@", 1)[1] if "@" in self.ref else self.ref
        return f"{self.step}={self.variant}@{when}"


def parse_links(
    links: Iterable[str | Mapping[str, str]], params: Mapping[str, Any] | None = None
) -> list[Link]:
    """Parse ``STEP=VARIANT[@WHEN]`` items and ``STEP.NAME=value`` params into links.

    ``WHEN`` is a day (``2019-02-09``, the newest FINISHED run made that day in the project's
    time zone), ``latest``, or a ``YYYYMMDDHHMMSS`` key time. ``VARIANT`` may also be a full
    key (``load/transactions@20190209000000``) or an MLflow run id.

    Raises:
        UsageError: a malformed item, a step named twice, params for a step not in the chain.

    Example:
        >>> [str(x) for x in parse_links(["load=transactions@latest", "processing=plain"])]
        ['load=transactions@latest', 'processing=plain']
        >>> parse_links(["training=logreg"], {"training.C": 10})[0].params
        {'C': 10}
    """
    items: list[tuple[str, str]] = []
    for item in links:
        if isinstance(item, Mapping):
            items.extend((str(k), str(v)) for k, v in item.items())
            continue
        step, sep, value = str(item).partition("=")
        if not sep or not step.strip() or not value.strip():
            raise UsageError(
                f"chain item {item!r}: expected STEP=VARIANT, STEP=VARIANT@YYYY-MM-DD or "
                "STEP=VARIANT@latest (e.g. load=transactions@latest processing=plain)"
            )
        items.append((step.strip(), value.strip()))
    out: dict[str, Link] = {}
    for step, value in items:
        if step in out:
            raise UsageError(f"step {step!r} is named twice in the chain; give each step once")
        out[step] = _link(step, value)
    for name, value in _split_params(params or {}).items():
        step, pname = name
        if step not in out:
            named = ", ".join(out) or "none"
            raise UsageError(
                f"parameter {step}.{pname} is for step {step!r}, which is not in the chain "
                f"(steps in the chain: {named})"
            )
        out[step].params[pname] = value
    if not out:
        raise UsageError("empty chain: give STEP=VARIANT items, e.g. load=transactions@latest")
    return list(out.values())


def _link(step: str, value: str) -> Link:
    if "@" not in value and "/" not in value and not tag.is_run_id(value):
        return Link(step, value)
    if tag.is_run_id(value):
        return Link(step, "", {}, value)
    if "/" in value:  # a full key or reference of the step
        ref = parse_reference(value)
        if ref.step != step:
            raise UsageError(f"{step}={value}: the reference names step {ref.step!r}, not {step!r}")
        if not ref.variant:
            raise UsageError(f"{step}={value}: expected {step}=VARIANT@WHEN")
        return Link(step, ref.variant, {}, value)
    variant, _, when = value.partition("@")
    ref = parse_reference(f"{step}/{variant}@{when}")
    return Link(step, variant, {}, str(ref))


def _split_params(params: Mapping[str, Any]) -> dict[tuple[str, str], Any]:
    out: dict[tuple[str, str], Any] = {}
    for name, value in params.items():
        if isinstance(value, Mapping):
            for k, v in value.items():
                out[(name, str(k))] = v
            continue
        step, dot, pname = name.partition(".")
        if not dot or not step or not pname:
            raise UsageError(f"parameter {name!r}: name the step, as in -P training.{name}=VALUE")
        out[(step, pname)] = value
    return out


def validate(pipeline: Pipeline, links: list[Link], forced: Iterable[str]) -> list[Link]:
    """Check names and connections; return the links in dependency order."""
    by_step = {}
    for link in links:
        step = pipeline.get(link.step)  # UnknownName with a suggestion
        if link.variant:
            step.get(link.variant)
        by_step[link.step] = link
    for link in links:
        for up in pipeline.get(link.step).upstream:
            if up not in by_step:
                variants = ", ".join(pipeline.get(up).variants) or "none"
                raise UsageError(
                    f"the chain does not connect: step {link.step!r} consumes {up!r}, which is "
                    f"not in the chain; add {up}=VARIANT (variants: {variants})"
                )
        if link.ref is not None and pipeline.get(link.step).upstream:
            raise UsageError(
                f"{link}: only load steps (steps without upstream) can be pinned with @; "
                f"write {link.step}={link.variant} and the newest coherent run is found"
            )
    order = [s for s in pipeline.order if s in by_step]
    consumed = {u for s in order for u in pipeline.get(s).upstream}
    finals = [s for s in order if s not in consumed]
    if len(finals) > 1:
        raise UsageError(
            f"the chain does not connect: {', '.join(finals)} are separate ends; a chain has "
            "one final step that every other step feeds"
        )
    for name in forced:
        if name not in by_step:
            steps = ", ".join(order)
            raise UsageError(f"--force {name}: step {name!r} is not in the chain ({steps})")
    return [by_step[s] for s in order]
