"""The layering of the tree (README, "Layout"), checked over every import of every module.

Top to bottom: ``scripts/``, ``bench/``, ``tools/`` -> ``deeplima/`` -> ``mass_det/`` | ``calc_seg/``
-> ``common/``; ``datasets/`` sits beside the models and imports ``common`` only. Function-local
imports count like module-level ones: a rule broken inside a function is broken all the same.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = (
    "common", "mass_det", "calc_seg", "datasets", "deeplima", "scripts", "bench", "tools", "tests"
)

# what each layer may import among the project's own packages (third-party imports are free, except
# the ones named in FORBIDDEN_THIRD_PARTY)
ALLOWED = {
    "common": {"common"},
    "datasets": {"common", "datasets"},
    "mass_det": {"common", "mass_det"},
    "calc_seg": {"common", "calc_seg"},
    "deeplima": {"common", "mass_det", "calc_seg", "deeplima"},
    "scripts": {"common", "mass_det", "calc_seg", "datasets", "deeplima", "scripts"},
    "bench": {"common", "mass_det", "calc_seg", "datasets", "deeplima", "bench"},
    "tools": {"common", "mass_det", "calc_seg", "datasets", "deeplima", "tools"},
}
FORBIDDEN_THIRD_PARTY = {"calc_seg": {"detectron2"}, "common": {"detectron2"}, "datasets": {"detectron2"}}
# common's command-line modules sit on top of its library: no library module imports them
COMMON_CLIS = {"common.evaluate"}


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES if pkg != "tests" for p in (REPO / pkg).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            # "from pkg import module" names a module too
            found += [(node.lineno, f"{name}.{a.name}") for a in node.names]
    return found


def _violations() -> list[str]:
    out = []
    for path in _sources():
        layer = path.relative_to(REPO).parts[0]
        allowed = ALLOWED[layer]
        mod = _module_name(path)
        for line, name in _imports(path):
            top = name.split(".")[0]
            where = f"{path.relative_to(REPO)}:{line}"
            if top in PACKAGES and top not in allowed:
                out.append(f"{where}: {layer} imports {name}")
            if top in FORBIDDEN_THIRD_PARTY.get(layer, ()):
                out.append(f"{where}: {layer} imports {name}")
            if layer == "common" and name in COMMON_CLIS and mod != name:
                out.append(f"{where}: common library module imports the command line {name}")
    return out


def test_every_import_follows_the_layers():
    assert _violations() == []


def test_no_sys_path_surgery():
    """Packages are installed (``pip install -e .``): no module edits ``sys.path`` to find them."""
    edit = re.compile(r"sys\.path\s*(\.(insert|append|extend|remove|pop)\b|\[[^\]]*\]\s*=|[+]?=)")
    bad = [str(p.relative_to(REPO)) for p in _sources() if edit.search(p.read_text(encoding="utf-8"))]
    assert bad == []


def test_the_checker_sees_a_broken_rule(tmp_path, monkeypatch):
    """The rule check fails on an upward import, a function-local one and a relative one."""
    fake = tmp_path / "repo"
    for pkg, text in {
        "common": "def f():\n    from deeplima import pipeline\n",
        "calc_seg": "from ..mass_det import config\nimport detectron2\n",
        "datasets": "import calc_seg.model\n",
    }.items():
        (fake / pkg).mkdir(parents=True)
        (fake / pkg / "__init__.py").write_text("")
        (fake / pkg / "bad.py").write_text(text)
    for pkg in ("mass_det", "deeplima", "scripts", "bench", "tools"):
        (fake / pkg).mkdir()
    monkeypatch.setitem(globals(), "REPO", fake)
    found = _violations()
    assert any("common/bad.py:2: common imports deeplima" in v for v in found)
    assert any("calc_seg/bad.py:1: calc_seg imports mass_det" in v for v in found)
    assert any("calc_seg imports detectron2" in v for v in found)
    assert any("datasets/bad.py:1: datasets imports calc_seg" in v for v in found)


@pytest.mark.parametrize(
    "modules, absent",
    [
        ("calc_seg, calc_seg.train_net, calc_seg.inference, calc_seg.engine.trainer, calc_seg.ablate",
         ("detectron2", "mass_det", "datasets", "deeplima")),
        ("mass_det, mass_det.train_net, mass_det.inference", ("calc_seg", "datasets", "deeplima")),
        ("common.preprocess, common.metrics, common.canonical, common.calcifications",
         ("detectron2", "mass_det", "calc_seg", "datasets", "deeplima")),
    ],
)
def test_importing_a_layer_loads_nothing_above_it(modules, absent):
    """At run time too: importing a model package loads neither the other model nor the converters."""
    code = (
        f"import sys, {modules}\n"
        f"print(','.join(m for m in {absent!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == ""
