"""The package's structure (docs/structure.md): no import cycles inside offswitch/, the CLI
used by nothing, the test helpers used by no production module, every error class in
errors.py, every relative link of the docs pointing at a file that exists, and no module over
400 lines without its reason."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import offswitch
import offswitch.attacks
import offswitch.errors

PKG = Path(offswitch.__file__).parent


def _imports() -> dict[str, set[str]]:
    """module → the offswitch modules it imports (at top level or inside functions)."""
    mods = {}
    for f in PKG.rglob("*.py"):
        parts = f.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = f
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        pkg = m if f.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text("utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = (
                    pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)] if node.level else []
                )
                target = ".".join([*base, node.module] if node.module else base)
                for cand in (target, *(f"{target}.{a.name}" for a in node.names)):
                    if cand in mods and cand != m:
                        graph[m].add(cand)
            elif isinstance(node, ast.Import):
                graph[m] |= {a.name for a in node.names if a.name in mods and a.name != m}
    return graph


def test_no_import_cycles() -> None:
    graph = _imports()
    # a package's own __init__ importing its submodules is not a cycle partner: only
    # module-to-module edges count (``from . import __version__`` reads a finished package)
    edges = {m: {t for t in ts if not m.startswith(t + ".") and t != "offswitch"}
             for m, ts in graph.items()}  # fmt: skip
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, path: list[str]) -> bool:
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycle.extend([*path[path.index(t) :], t] if t in path else [m, t])
                return True
            if t not in state and visit(t, [*path, t]):
                return True
        state[m] = 2
        return False

    for m in sorted(edges):
        if m not in state and visit(m, [m]):
            break
    assert not cycle, " → ".join(cycle)


def test_only_main_imports_the_cli() -> None:
    """The command line is a leaf: nothing outside offswitch/cli/ imports it, but the
    ``python -m`` entry points."""
    users = sorted(
        m
        for m, ts in _imports().items()
        if any(t == "offswitch.cli" or t.startswith("offswitch.cli.") for t in ts)
        and not m.startswith("offswitch.cli.")
        and m != "offswitch.cli"
    )
    assert users in ([], ["offswitch.__main__"]), users


def test_no_production_module_imports_the_test_helpers() -> None:
    users = sorted(m for m, ts in _imports().items() if "offswitch.testing" in ts)
    assert users == [], users


def test_every_error_class_lives_in_errors_py() -> None:
    outside = []
    for f in PKG.rglob("*.py"):
        if f.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(f.read_text("utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Exception"))
                for b in node.bases
            ):
                outside.append(f"{f.relative_to(PKG)}:{node.name}")
    assert outside == [], outside
    for name, cls in inspect.getmembers(offswitch.errors, inspect.isclass):
        if cls.__module__ == "offswitch.errors":
            assert issubclass(cls, offswitch.OffswitchError), name


def test_every_relative_link_in_the_docs_resolves() -> None:
    """README, docs/, research/ and the golden files' README link files by relative path; a
    moved file must take its links along (fenced code and URLs are not links to check)."""
    root = PKG.parent
    pages = [root / "README.md", *root.glob("docs/*.md"), *root.glob("research/*.md"),
             *root.glob("tests/golden/*.md"), *root.glob("keys/*.md")]  # fmt: skip
    broken, checked = [], 0
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text("utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            checked += 1
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(root)} → {target}")
    assert len(pages) > 10 and checked > 30, (len(pages), checked)
    assert broken == [], broken


def test_every_module_has_its_line_in_docs_structure() -> None:
    """docs/structure.md's module table names every module (a package's modules may be named
    in its row, an attack by its registry's row)."""
    text = (PKG.parent / "docs" / "structure.md").read_text("utf-8")
    table = text.split("## Every module, one line", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("`")[1]: line for line in table.splitlines() if line.startswith("| `")}
    missing = []
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG).as_posix()
        top = rel.split("/")[0]
        if any(rel in name.split(", ") for name in rows):
            continue
        if "/" in rel and (
            f.stem in rows.get(f"{top}/", "") or (f.name == "__init__.py" and f"{top}/" in rows)
        ):  # its package's row
            continue
        if top == "attacks" and f.stem in offswitch.attacks.names():  # docs/attacks.md
            continue
        missing.append(rel)
    assert missing == [], missing


def test_a_module_over_400_lines_says_why_in_its_docstring() -> None:
    """docs/structure.md's rule: a long module carries a paragraph starting "One module
    although long:" that gives the reason."""
    unexplained = []
    for f in sorted(PKG.rglob("*.py")):
        text = f.read_text("utf-8")
        if text.count("\n") <= 400:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if not re.search(r"(?m)^One module although long: \S", doc):
            unexplained.append(f.relative_to(PKG).as_posix())
    assert unexplained == [], unexplained
