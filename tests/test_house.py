"""The package reads at a glance: no import cycles between its modules (lazy imports included), no private name
taken from another subpackage, no function over 80 lines, one home for the normalisation constants. Static checks
on the source (ast), well under a second."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_masked_vl"
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text()) for name, path in MODULES.items()}


def _imported(module: str, tree: ast.Module) -> set[tuple[str, str]]:
    """(imported module, imported name) pairs of every `from X import name` of the package in `module` (at any
    depth: a lazy import inside a function counts); the module is the submodule when `name` is one."""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    pairs = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                pairs.add((full if full in MODULES else target, alias.name))
        elif isinstance(node, ast.Import):
            pairs.update((alias.name, "") for alias in node.names)
    return {(target, name) for target, name in pairs if target in MODULES and target != module}


IMPORTS = {module: _imported(module, tree) for module, tree in TREES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan) of the package's import graph."""
    graph = {module: {target for target, _ in pairs} for module, pairs in IMPORTS.items()}
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    return components


def test_no_import_cycles():
    assert _cycles() == []


def test_no_private_name_taken_from_another_subpackage():
    def subpackage(module: str) -> str:
        return module.split(".")[1] if "." in module else ""

    taken = [
        f"{module} takes {name} from {target}"
        for module, pairs in IMPORTS.items()
        for target, name in pairs
        if name.startswith("_") and not name.startswith("__") and subpackage(module) != subpackage(target)
    ]
    assert taken == []


def test_no_function_over_80_lines():
    long = [
        f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for module, tree in TREES.items()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


@pytest.mark.parametrize("name", ["IMAGENET_MEAN", "IMAGENET_STD", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD"])
def test_normalisation_constants_have_their_own_module(name):
    from hf_masked_vl import normalization, tokenization

    assert getattr(tokenization, name) is getattr(normalization, name)  # the old import path still works
    takers = sorted(module for module, pairs in IMPORTS.items() if ("hf_masked_vl.tokenization", name) in pairs)
    assert takers == [], f"{takers} import {name} from tokenization.py, not normalization.py"
