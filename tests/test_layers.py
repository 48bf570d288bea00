"""The layer rules of docs/design.md ("Layers: who may import whom"), enforced.

The table in the document is the source: this test parses it, walks every
import in ``hpbroker/`` with ``ast`` (imports inside functions count too),
and fails on an edge the table does not allow, on a cycle between units,
and on ``zmq`` where the table does not list it.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hpbroker"
DESIGN = ROOT / "docs" / "design.md"


def layer_table() -> dict[str, set[str]]:
    """unit -> the names in its "may import" column, from docs/design.md."""
    text = DESIGN.read_text()
    start = text.index("## Layers: who may import whom")
    end = text.index("\n## ", start + 1)
    table = {}
    for line in text[start:end].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        table[cells[0].strip("`")] = set(re.findall(r"`([^`]+)`", cells[2]))
    return table


def unit_of(module: str) -> str | None:
    """hpbroker.net.acceptor -> net; hpbroker.batch -> batch; other modules -> None."""
    parts = module.split(".")
    if parts[0] != "hpbroker" or len(parts) < 2:
        return None
    return parts[1]


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imported(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "hpbroker":  # from hpbroker import batch
                names.update(f"hpbroker.{a.name}" for a in node.names)
    return names


def unit_edges() -> dict[str, dict[str, list[str]]]:
    """unit -> {imported unit or "zmq": [the modules that import it]}."""
    edges: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(PACKAGE.rglob("*.py")):
        mod = module_name(path)
        src = unit_of(mod)
        for name in imported(ast.parse(path.read_text(), str(path))):
            if name == "zmq" or name.startswith("zmq."):
                edges[src]["zmq"].append(mod)
            elif (dst := unit_of(name)) is not None and dst != src:
                edges[src][dst].append(mod)
    return edges


def test_the_table_names_every_unit_of_the_package():
    units = {unit_of(module_name(p)) for p in PACKAGE.rglob("*.py")} - {None}
    assert units == set(layer_table()), "docs/design.md's layer table and hpbroker/ list different units"


def test_every_import_is_one_the_table_allows():
    table = layer_table()
    wrong = [f"{src} -> {dst} (in {', '.join(sorted(set(mods)))})"
             for src, dsts in unit_edges().items() for dst, mods in dsts.items()
             if dst not in table.get(src, set())]
    assert not wrong, "imports docs/design.md does not allow:\n" + "\n".join(wrong)


def test_the_units_import_each_other_without_cycles():
    graph = {src: {d for d in dsts if d != "zmq"} for src, dsts in unit_edges().items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(u: str, path: list[str]) -> None:
        state[u] = 1
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(v):] + [v]))
            if v not in state:
                visit(v, path + [v])
        state[u] = 2

    for u in sorted(graph):
        if u not in state:
            visit(u, [u])


@pytest.mark.parametrize("unit", ["batch", "ring", "io", "protocol", "ipc", "config"])
def test_the_sans_io_layers_do_not_import_zmq(unit):
    assert "zmq" not in unit_edges().get(unit, {}), f"{unit} imports zmq"
    assert "zmq" not in layer_table()[unit]


def test_importing_io_loads_neither_the_rings_nor_zmq():
    code = ("import sys, hpbroker.io, hpbroker.io.config; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'zmq' or m.startswith('hpbroker.ring')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_walker_sees_an_import_inside_a_function(tmp_path):
    """The rules are only as good as the walk: a lazy import counts."""
    tree = ast.parse("def f():\n    from hpbroker.net import acceptor\n    import zmq\n")
    assert imported(tree) == {"hpbroker.net", "zmq"}
