"""The tag vocabulary: one module names every tag, and the docs show the table it generates."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from relayml import tags

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "relayml"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
_TAG_LITERAL = re.compile(r"^relay\.[a-z_]+(\.|$)")


def test_the_architecture_page_shows_the_generated_tag_table() -> None:
    text = ARCHITECTURE.read_text()
    block = text.split("<!-- tags:begin -->\n", 1)[1].split("<!-- tags:end -->", 1)[0]
    assert block.strip() == tags.table(), (
        "regenerate it: python -c 'import relayml.tags as t; print(t.table())'"
    )


def test_every_tag_constant_has_a_meaning() -> None:
    documented = {name for name, _ in tags.MEANINGS}
    constants = {
        value
        for name, value in vars(tags).items()
        if name.isupper() and isinstance(value, str) and value.startswith(tags.PREFIX)
    }
    prefixes = {c for c in constants if c.endswith(".")}
    assert constants - prefixes - documented == set()


def test_no_module_spells_a_tag_name_outside_the_vocabulary() -> None:
    found = []
    for path in SRC.rglob("*.py"):
        if path.name == "tags.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and _TAG_LITERAL.match(node.value)
                and node.value != "relay.toml"
                and not node.value.startswith("relay.toml ")
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert found == [], "name tags through relayml.tags"


def test_run_ids_are_recognised() -> None:
    assert tags.is_run_id("0" * 32)
    assert not tags.is_run_id("0" * 31)
    assert not tags.is_run_id("A" * 32)
    assert not tags.is_run_id("training/logreg@latest")


def test_the_architecture_page_names_every_module_in_its_layer() -> None:
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from test_imports import layer

    text = ARCHITECTURE.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    missing = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "__init__.py":
            continue
        rel = path.relative_to(SRC)
        module = "relayml." + ".".join(rel.with_suffix("").parts)
        name = layer(module)[1]
        if not any(line.startswith(f"| {name} |") and path.name in line for line in rows):
            missing.append(f"{rel} ({name})")
    assert missing == [], "add a line to docs/ARCHITECTURE.md's module table"
