"""Data flows one way: no normlens module imports a layer above its own, and none imports ``analyses``.

The layers, lowest first (a module may import its own layer and the layers below it):

0. foundation   normlens.io, hygiene, losses, sites, parameters, uncertainty, resources, kernels
                (kernels stand alone; the zoo's norm modules dispatch to them)
1. models/data  normlens (the package's re-exports of the zoo), models, data, train_state
2. operators    probes, curvature, landscape, and what runs models over data: train (it can
                attach probes during training), train_probes, sweep, models.ln_removal (it trains) and
                models.export (it writes what the removal made)
3. plots        normlens.plots (results -> figures)
4. report       normlens.report (saved results -> sections -> HTML)
5. drivers      normlens.study (studies found by entry point), normlens.cli
   on top       the ``analyses`` package (studies), which normlens never imports

Every import counts: module level, inside functions, under TYPE_CHECKING, and
``importlib.import_module`` with a literal (or f-string prefix) name. A new module under
normlens/ must be added to LAYERS.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "normlens"
LAYERS = {
    "normlens.io": 0, "normlens.hygiene": 0, "normlens.losses": 0, "normlens.sites": 0, "normlens.parameters": 0,
    "normlens.uncertainty": 0, "normlens.resources": 0, "normlens.kernels": 0,
    "normlens": 1, "normlens.models": 1, "normlens.data": 1, "normlens.train_state": 1,
    "normlens.probes": 2, "normlens.curvature": 2, "normlens.landscape": 2,
    "normlens.train": 2, "normlens.train_probes": 2, "normlens.sweep": 2, "normlens.models.ln_removal": 2,
    "normlens.models.export": 2,
    "normlens.plots": 3,
    "normlens.report": 4,
    "normlens.study": 5, "normlens.cli": 5,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    """The layer of ``module``: that of the longest entry of LAYERS that is it or a package above it
    (the root package ``normlens`` only for itself: a new top-level module must be placed)."""
    parts = module.split(".")
    for n in range(len(parts), 1, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return LAYERS[prefix]
    return LAYERS["normlens"] if module == "normlens" else None


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_names(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, module) for every import in the ``source`` of ``module``, relative ones resolved."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # "from normlens import sites" imports the module normlens.sites
                full = f"{base}.{alias.name}"
                found.append((node.lineno, full if is_module(full) else base))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append((node.lineno, arg.value))
            elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                found.append((node.lineno, str(arg.values[0].value).rstrip(".")))
    return found


def normlens_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_normlens_module_has_a_layer():
    missing = [module_name(p) for p in normlens_files() if layer_of(module_name(p)) is None]
    assert not missing, f"add these modules to LAYERS in {Path(__file__).name}: {missing}"


@pytest.mark.parametrize("path", normlens_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_upward_or_analyses(path):
    me = module_name(path)
    mine = layer_of(me)
    bad = []
    for line, name in imported_names(path.read_text(), me, path.name == "__init__.py"):
        if name == "analyses" or name.startswith("analyses."):
            bad.append(f"line {line}: imports {name} (normlens never imports analyses)")
        elif name == "normlens" or name.startswith("normlens."):
            theirs = layer_of(name)
            if theirs is not None and mine is not None and theirs > mine:
                bad.append(f"line {line}: {me} (layer {mine}) imports {name} (layer {theirs})")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_every_kind_of_import():
    """The walker resolves relative, from-package, function-local and import_module imports."""
    source = ("from . import sites\nfrom ..plots import probes\nimport analyses.zoo\n"
              "def f():\n    from normlens.report import render\n    importlib.import_module(f'normlens.cli.{x}')\n")
    names = [name for _, name in imported_names(source, "normlens.probes.example")]
    assert names == ["normlens.probes", "normlens.plots.probes", "analyses.zoo", "normlens.report.render",
                     "normlens.cli"]
