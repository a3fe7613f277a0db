"""The package layout of README.md: imports between the parts of alps_hf run one way, with no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import alps_hf

# README "Package layout", top to bottom: a part may import only the parts before it (and itself).
ORDER = ["core", "errors", "config_utils", "images", "metrics", "sam", "geo", "hub", "labeled", "labeling",
         "training", "cli"]
ROOT = Path(alps_hf.__file__).parent


def part_of(module: str) -> str | None:
    """The layout part of a dotted alps_hf module name (None for the package root itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "alps_hf" else None


def imports_of(path: Path) -> set[str]:
    """Every alps_hf module a file imports, at module level or inside functions (lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("alps_hf"):
            assert node.level == 0, f"{path}: relative import"
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("alps_hf"))
    return found


def test_every_module_belongs_to_a_part_of_the_layout():
    parts = {p.stem for p in ROOT.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()} - {"__init__"}
    assert parts <= set(ORDER), f"not in the README layout: {sorted(parts - set(ORDER))}"


def test_imports_run_one_way():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        here = part_of(".".join(rel.parts))
        if here is None:
            continue
        for module in imports_of(path):
            there = part_of(module)
            if there is not None and ORDER.index(there) > ORDER.index(here):
                wrong.append(f"{rel} ({here}) imports {module} ({there})")
    assert not wrong, "imports against the layout order:\n" + "\n".join(wrong)


def test_no_import_cycle_between_modules():
    """No module reaches itself through imports, lazy ones included (geotiff <-> rasters was one)."""
    graph = {}
    for path in sorted(ROOT.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {m for m in imports_of(path) if m != "alps_hf"}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
