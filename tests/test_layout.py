"""The package's shape, from its source: imports point one way (no circle; the engine below the core, the grader
beside the main job) and the engine has one door."""

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lab7_helpers"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The lab7_helpers modules ``path`` imports, at the top or inside a function (``from . import x`` counts x
    when x is a module)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name in MODULES}


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: imports_of(path) - {name} for name, path in MODULES.items()}


def test_no_module_of_the_package_imports_itself_back_through_others():
    def circle_from(start: str) -> list[str]:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for nxt in GRAPH[node]:
                if nxt == start:
                    return path + [start]
                if nxt not in seen and not start.startswith(nxt + "."):  # a package's own __init__ is no circle
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return []

    circles = [circle for name in GRAPH if (circle := circle_from(name))]
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_the_engine_imports_no_loop_and_is_entered_by_one_door():
    loops = {"lab7_helpers.training", "lab7_helpers.scoring", "lab7_helpers.evaluation", "lab7_helpers.generation"}
    for name, imported in GRAPH.items():
        if name.startswith("lab7_helpers.engine"):
            assert not imported & loops, (name, imported & loops)
        else:
            inner = {m for m in imported if m.startswith("lab7_helpers.engine.")}
            assert not inner, f"{name} reaches into {inner}: use lab7_helpers.engine"


def test_the_grader_imports_nothing_of_the_main_job():
    for name, imported in GRAPH.items():
        if name.startswith("lab7_helpers.grading"):
            assert not {m for m in imported if m.startswith("lab7_helpers.app")}, name


# Modules Python 3.13 removed (PEP 594, and lib2to3): Colab runs 3.13, this machine and CI 3.11.
REMOVED_IN_3_13 = {"aifc", "audioop", "cgi", "cgitb", "chunk", "crypt", "imghdr", "mailcap", "msilib", "nis",
                   "nntplib", "ossaudiodev", "pipes", "sndhdr", "spwd", "sunau", "telnetlib", "uu", "xdrlib",
                   "lib2to3"}


def test_nothing_imports_a_module_python_3_13_removed():
    for path in [*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "tools").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not {n.split(".")[0] for n in names} & REMOVED_IN_3_13, (path, names)


def test_the_readme_gives_the_teaching_core_its_true_size():
    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme.split("The **teaching core**", 1)[1].split("Beside it", 1)[0]
    modules = re.findall(r"^\| `(\w+\.py)` \|", section, re.M)
    stated = int(re.search(r"\(([\d,]+) lines", section)[1].replace(",", ""))
    assert len(modules) == 9 and all((PACKAGE / m).exists() for m in modules), modules
    assert stated == sum(len((PACKAGE / m).read_text().splitlines()) for m in modules)
