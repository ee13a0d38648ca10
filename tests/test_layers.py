"""The import layers of hil/, read from the source with ``ast`` (module-level and function-level
imports alike, since a lazy import is still a dependency), checked as rules.

From the bottom up:

* bottom: the error tree, loggers, the register map, the OS/kernel error diagnosis, the
  buffered asyncio streams and the op vocabulary (:data:`BOTTOM`), which import nothing else
  of hil;
* the simulator (``hil.sim``), which knows the chip and nothing of backends;
* backends (``hil.backends``) and the agent (``hil.agent``), which run programs but know
  nothing of the driver layer's DMA rules (``hil.dma``, ``hil.regs``, ``hil.rules``,
  ``hil.buffers``);
* the driver layer, then scripts, runner, doctor, benches and the command line on top.

Package-level cycles (``hil.X`` as one node) that are still there are listed in
:data:`ALLOWED_CYCLES` with the reason; any other cycle fails, and so does any module-level cycle.
``python tests/test_layers.py [ROOT]`` prints the strongly connected components.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: bottom layer: these import only each other (and the root package's ``__version__``)
BOTTOM = {"hil", "hil.errors", "hil.log", "hil.records", "hil.ports", "hil.oserrors", "hil.ops", "hil.streams"}
#: the driver layer: DMA rules and register dumps over a backend
DRIVER = {"hil.dma", "hil.regs", "hil.rules", "hil.buffers"}
#: above every backend and the agent
UPPER = {"hil.runner", "hil.script", "hil.journal", "hil.diff", "hil.workers", "hil.doctor", "hil.bench", "hil.cli"}

#: package-level strongly connected components that may remain, each with its reason. A cycle
#: found must lie inside one of these; shrink an entry when its reason is gone.
ALLOWED_CYCLES: dict[frozenset[str], str] = {}


# --- the import graph ---------------------------------------------------------------------------


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module under ``root/hil`` by dotted name (a package by its ``__init__``)."""
    found = {}
    for path in sorted((root / "hil").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the hil modules it imports anywhere in its source (``from P import m`` counts
    as importing module ``P.m`` when that is a module, else ``P``)."""
    mods = modules(root)

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(parent + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for target in targets:
                if target == "hil" or target.startswith("hil."):
                    resolved = resolve(target)
                    if resolved and resolved != name:
                        graph[name].add(resolved)
    return graph


def package_of(module: str) -> str:
    """``hil.backends.qemu.process`` -> ``hil.backends``; ``hil.dma`` -> ``hil.dma``."""
    return ".".join(module.split(".")[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        edges = packages.setdefault(package_of(module), set())
        edges.update(package_of(t) for t in targets if package_of(t) != package_of(module))
    return packages


def sccs(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one member (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


GRAPH = import_graph()


def imports_of(prefixes: Iterable[str]) -> dict[str, set[str]]:
    """The import edges of every module that is, or is inside, one of ``prefixes``."""
    prefixes = tuple(prefixes)
    return {m: t for m, t in GRAPH.items() if any(m == p or m.startswith(p + ".") for p in prefixes)}


def inside(module: str, packages: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def violations(sources: Iterable[str], *, allowed: Iterable[str] = (), forbidden: Iterable[str] = ()) -> list[str]:
    """``a -> b`` for each import from ``sources`` that is not ``allowed`` (when given) or is ``forbidden``."""
    allowed, forbidden = tuple(allowed), tuple(forbidden)
    bad = []
    for module, targets in sorted(imports_of(sources).items()):
        for target in sorted(targets):
            if (allowed and not inside(target, allowed)) or inside(target, forbidden):
                bad.append(f"{module} -> {target}")
    return bad


# --- the rules ----------------------------------------------------------------------------------


def test_the_graph_sees_function_level_imports():
    """The doctor opens devport only inside its checks: that import must be in the graph, or the
    rules below would pass by not looking."""
    assert "hil.backends.devport" in GRAPH["hil.doctor"]
    assert "hil.agent.client" in GRAPH["hil.doctor.agent"]


def test_bottom_layer_imports_only_the_bottom_layer():
    assert violations(BOTTOM, allowed=BOTTOM) == []


def test_the_simulator_knows_only_the_chip_its_errors_and_logging():
    """... and the package's dataclass decorator (hil.records), which is plain Python."""
    assert violations(["hil.sim"], allowed=["hil.sim", "hil.ports", "hil.errors", "hil.log", "hil.records"]) == []


def test_the_agent_imports_no_driver_layer_or_runner():
    """The agent serves programs and the host's client sends them; DMA rules, register dumps
    and the runner are above both (the link bench lives in hil.bench, the agent doctor in
    hil.doctor.agent)."""
    assert violations(["hil.agent"], forbidden=[*DRIVER, *UPPER]) == []


def test_the_agent_side_does_not_import_the_host_client():
    """The agent's server, protocol and links are what runs on the target: the host's client
    (hil.agent.client) builds on them, never the other way round."""
    assert violations(["hil.agent.server", "hil.agent.protocol", "hil.agent.links"],
                      forbidden=["hil.agent.client"]) == []


def test_backends_import_no_driver_layer():
    """DMA rules live in the driver layer (hil.dma, hil.rules): a backend runs what it is given."""
    assert violations(["hil.backends"], forbidden=[*DRIVER, *UPPER]) == []


def test_the_driver_layer_is_below_scripts_doctor_and_command_line():
    assert violations(DRIVER, forbidden=[*UPPER, "hil.agent"]) == []


def test_only_the_command_line_imports_the_command_line():
    bad = [f"{m} -> {t}" for m, targets in sorted(GRAPH.items()) if not inside(m, ["hil.cli", "hil.__main__"])
           for t in sorted(targets) if inside(t, ["hil.cli"])]
    assert bad == []


def test_no_module_level_cycle():
    assert sccs(GRAPH) == []


def test_package_cycles_are_only_the_listed_ones():
    unexplained = [sorted(c) for c in sccs(package_graph(GRAPH))
                   if not any(c <= allowed for allowed in ALLOWED_CYCLES)]
    assert unexplained == [], "a new package cycle; break it or list it in ALLOWED_CYCLES with the reason"


def test_the_qemu_profile_is_classes_not_branches():
    """The simulator's QEMU profile lives in QemuI8257 and QemuMachine (tests/test_sim_profile_classes.py):
    no ``self.qemu`` flag anywhere, and no comparison with a profile name in the simulator or its backend."""
    branches = []
    for module, path in sorted(modules().items()):
        in_sim = inside(module, ["hil.sim", "hil.backends.sim"])
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "qemu" and isinstance(node.value, ast.Name) \
                    and node.value.id == "self":
                branches.append(f"{module}:{node.lineno} self.qemu")
            if in_sim and isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                names = [n.value for n in sides if isinstance(n, ast.Constant) and n.value in ("qemu", "intel")]
                profile = [n for n in sides if isinstance(n, ast.Attribute) and n.attr == "profile"]
                if names or profile:
                    branches.append(f"{module}:{node.lineno} compares a profile")
    assert branches == []


@pytest.mark.parametrize("cycle", [
    {"hil.backends.devport": {"hil.doctor"}, "hil.doctor": {"hil.backends.devport"}},
    {"hil.a": {"hil.b"}, "hil.b": {"hil.c"}, "hil.c": {"hil.a"}, "hil.d": {"hil.a"}},
])
def test_the_cycle_finder_finds_a_cycle(cycle: dict[str, set[str]]):
    """The checks above can fail: devport <-> doctor as it was before hil.oserrors, and a ring."""
    found = sccs(cycle)
    assert len(found) == 1 and found[0] == frozenset(k for k in cycle if k != "hil.d")


if __name__ == "__main__":  # print the strongly connected components of a tree
    graph = import_graph(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT)
    print("module-level SCCs:", [sorted(c) for c in sccs(graph)] or "none")
    print("package-level SCCs:", [sorted(c) for c in sccs(package_graph(graph))] or "none")
