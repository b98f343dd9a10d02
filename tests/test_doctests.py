"""Every public name of ``relayml`` shows how it is used, in an example that runs.

The examples themselves run as doctests (``--doctest-modules`` on ``src/relayml``, with the
project fixture of the repository's ``conftest.py``); this test checks they exist: each name of
``relayml.__all__`` has a docstring with at least one ``>>>`` example that is not skipped.
"""

from __future__ import annotations

import doctest
import inspect

import pytest

import relayml

# Names whose examples are still to write (none left); a name listed here that has a runnable
# example fails the test below.
NOT_YET: set[str] = set()


def runnable_examples(obj: object) -> list[doctest.Example]:
    """The doctest examples in ``obj``'s own docstring that are not marked ``+SKIP``."""
    tests = doctest.DocTestFinder(recurse=False).find(obj, getattr(obj, "__name__", "obj"))
    return [ex for t in tests for ex in t.examples if not ex.options.get(doctest.SKIP, False)]


PUBLIC = [n for n in relayml.__all__ if not n.startswith("_")]


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_has_a_runnable_example(name: str) -> None:
    obj = getattr(relayml, name)
    assert inspect.isfunction(obj) or inspect.isclass(obj), f"relay.{name} is {type(obj)}"
    found = runnable_examples(obj)
    if name in NOT_YET:
        assert not found, f"relay.{name} has a runnable example now: drop it from NOT_YET"
        pytest.skip(f"relay.{name}: example still to write")
    assert found, f"relay.{name} has no runnable example (a >>> line without +SKIP)"


def test_the_allowlist_names_public_names() -> None:
    assert set(PUBLIC) >= NOT_YET
