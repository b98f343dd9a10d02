"""The lineage page's graph layout on its own: placement, edges, stable order, bad input."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayml.ui.layout import LNode, layout


def _graph(draw_columns: list[int], pairs: list[tuple[int, int]]) -> tuple[list[LNode], list]:
    nodes = [LNode(f"n{i}", c, f"key{i:03d}") for i, c in enumerate(draw_columns)]
    edges = [
        (f"n{a}", f"n{b}")
        for a, b in pairs
        if a < len(nodes) and b < len(nodes) and draw_columns[a] < draw_columns[b]
    ]
    return nodes, edges


graphs = st.lists(st.integers(0, 4), min_size=1, max_size=40).flatmap(
    lambda cols: st.tuples(
        st.just(cols),
        st.lists(st.tuples(st.integers(0, len(cols) - 1), st.integers(0, len(cols) - 1))),
    )
)


@settings(max_examples=60, deadline=None)
@given(graphs)
def test_no_two_nodes_overlap_and_every_edge_is_drawn(graph):
    nodes, edges = _graph(*graph)
    lay = layout(nodes, edges)
    boxes = list(lay.boxes.values())
    assert len(boxes) == len(nodes)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b)
        assert a.x >= 0 and a.x + a.w <= lay.width
        assert a.y >= 0 and a.y + a.h <= lay.height
    assert {(e.src, e.dst) for e in lay.edges} == set(edges)
    for e in lay.edges:  # the curve starts at its source's right side and ends at the target
        start, end = re.findall(r"-?\d+,-?\d+", e.path)[0], re.findall(r"-?\d+,-?\d+", e.path)[-1]
        src, dst = lay.boxes[e.src], lay.boxes[e.dst]
        assert start == f"{src.x + src.w:.0f},{src.y + src.h / 2:.0f}"
        assert end == f"{dst.x:.0f},{dst.y + dst.h / 2:.0f}"


@settings(max_examples=30, deadline=None)
@given(graphs, st.randoms(use_true_random=False))
def test_the_order_of_the_input_does_not_change_the_picture(graph, rnd):
    nodes, edges = _graph(*graph)
    first = layout(nodes, edges)
    shuffled_nodes, shuffled_edges = list(nodes), list(edges)
    rnd.shuffle(shuffled_nodes)
    rnd.shuffle(shuffled_edges)
    again = layout(shuffled_nodes, shuffled_edges)
    assert again.boxes == first.boxes
    assert again.edges == first.edges


def test_columns_go_left_to_right_and_children_sit_near_their_parent():
    nodes = [
        LNode("load-a", 0, "a"),
        LNode("load-b", 0, "b"),
        LNode("proc-b", 1, "a"),  # sorts first by key, but its parent is the second load
        LNode("proc-a", 1, "b"),
    ]
    lay = layout(nodes, [("load-a", "proc-a"), ("load-b", "proc-b")])
    assert lay.boxes["load-a"].x < lay.boxes["proc-a"].x
    assert lay.boxes["proc-a"].y < lay.boxes["proc-b"].y  # no crossing edges
    assert sorted(lay.column_x) == [0, 1]


def test_empty_columns_take_no_room():
    lay = layout([LNode("a", 0, "a"), LNode("b", 5, "b")], [("a", "b")])
    assert lay.column_x == {0: lay.boxes["a"].x, 5: lay.boxes["b"].x}
    assert lay.boxes["b"].x - lay.boxes["a"].x < 400


@pytest.mark.parametrize(
    ("nodes", "edges", "message"),
    [
        ([LNode("a", 0, "a"), LNode("a", 1, "b")], [], "duplicate node id 'a'"),
        ([LNode("a", 0, "a")], [("a", "ghost")], "'a' -> 'ghost' names a node"),
    ],
)
def test_bad_graphs_are_refused(nodes, edges, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        layout(nodes, edges)


def test_a_wide_column_of_many_nodes_stays_in_one_column():
    rng = random.Random(1)
    nodes = [LNode("root", 0, "root")] + [LNode(f"c{i}", 1, f"{rng.random()}") for i in range(300)]
    lay = layout(nodes, [("root", f"c{i}") for i in range(300)])
    assert len({b.x for n, b in lay.boxes.items() if n != "root"}) == 1
    assert len(lay.edges) == 300
