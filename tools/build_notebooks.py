"""Build lab7.ipynb (student) and instructor/lab7_solution.ipynb from notebook/lab7.py, and the README's Colab badge.

    python tools/build_notebooks.py          # write the files
    python tools/build_notebooks.py --check  # exit 1 if a committed file is out of date

Where the lab is hosted lives in one place, ``[tool.lab7]`` in pyproject.toml: the course ``repository`` and the
``subdirectory`` that holds this project. The Colab badge (README and notebook), the notebook's install cell and
``[project.urls] Repository`` are built from it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "notebook" / "lab7.py"
OUTPUTS = {"student": ROOT / "lab7.ipynb", "solution": ROOT / "instructor" / "lab7_solution.ipynb"}
README = ROOT / "README.md"
PYPROJECT = ROOT / "pyproject.toml"
BRANCH = "main"  # the branch Colab opens
BADGE = re.compile(r"<!-- colab-badge -->.*?<!-- /colab-badge -->", re.DOTALL)
PROJECT_URL = re.compile(r'^Repository = ".*"$', re.MULTILINE)
MAGIC = re.compile(r"^(\s*)# (%(?!%)\w.*)$")
HEADER = re.compile(r"^# %%(?: \[(?P<kind>markdown)\])?(?P<meta>.*)$")


def hosting() -> tuple[str, str]:
    """``(repository URL, subdirectory)`` from ``[tool.lab7]`` in pyproject.toml."""
    settings = tomllib.loads(PYPROJECT.read_text())["tool"]["lab7"]
    return settings["repository"].rstrip("/"), settings["subdirectory"].strip("/")


def install_requirement(repository: str, subdirectory: str) -> str:
    """What the notebook's ``%pip install`` asks for: the package from the course repository's folder."""
    return f"lab7_helpers @ git+{repository}.git#subdirectory={subdirectory}"


def colab_url(repository: str, subdirectory: str) -> str:
    owner_repo = repository.split("github.com/", 1)[1]
    return f"https://colab.research.google.com/github/{owner_repo}/blob/{BRANCH}/{subdirectory}/lab7.ipynb"


def parse_metadata(text: str) -> dict:
    """``tags=["a"] checkpoint="x"`` (jupytext's cell-header syntax: JSON values) -> dict."""
    return {key: json.loads(value) for key, value in re.findall(r'(\w+)=(\[[^\]]*\]|"[^"]*")', text)}


def split_cells(source: str) -> list[tuple[str, dict, list[str]]]:
    """(kind, metadata, lines) per cell; the file's leading comment block is not a cell."""
    cells: list[tuple[str, dict, list[str]]] = []
    for line in source.splitlines():
        match = HEADER.match(line)
        if match:
            cells.append((match["kind"] or "code", parse_metadata(match["meta"]), []))
        elif cells:
            cells[-1][2].append(line)
    return cells


def code_for(lines: list[str], variant: str) -> str:
    """Keep the lines of ``variant``; uncomment jupytext's commented magics (``# %pip``, ``# %matplotlib``)."""
    out, section = [], None
    for line in lines:
        marker = line.strip()
        if marker in ("# >>> solution", "# >>> student", "# <<<"):
            section = None if marker == "# <<<" else marker.split()[-1]
            continue
        if section == "student":
            if variant == "student":
                out.append(line.replace("#| ", "", 1))
            continue
        if section == "solution" and variant != "solution":
            continue
        out.append(MAGIC.sub(r"\1\2", line))
    return "\n".join(out).strip("\n")


def markdown_for(lines: list[str]) -> str:
    return "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines).strip("\n")


def build(variant: str, source: str | None = None) -> nbformat.NotebookNode:
    """The notebook of ``variant`` ("student" or "solution") as an nbformat node, without outputs."""
    source = source if source is not None else SOURCE.read_text()
    where = hosting()
    cells = []
    for index, (kind, meta, lines) in enumerate(split_cells(source)):
        text = markdown_for(lines) if kind == "markdown" else code_for(lines, variant)
        text = text.replace("{{INSTALL_REQUIREMENT}}", install_requirement(*where))
        text = text.replace("{{COLAB_URL}}", colab_url(*where))
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        cell = make(text, metadata=meta)
        cell["id"] = f"cell-{index:03d}"  # stable ids keep the committed files diff-able
        cells.append(cell)
    notebook = nbformat.v4.new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
        "accelerator": "GPU",
        "lab7": {"variant": variant},
    })
    nbformat.validate(notebook)
    return notebook


def rendered() -> dict[Path, str]:
    """Every generated file and its expected text."""
    repository, subdirectory = hosting()
    files = {path: nbformat.writes(build(variant)) + "\n" for variant, path in OUTPUTS.items()}
    badge = (f"<!-- colab-badge -->[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
             f"({colab_url(repository, subdirectory)})<!-- /colab-badge -->")
    files[README] = BADGE.sub(badge, README.read_text())
    files[PYPROJECT] = PROJECT_URL.sub(f'Repository = "{repository}/tree/{BRANCH}/{subdirectory}"',
                                       PYPROJECT.read_text())
    # the grader finds answers typed anywhere by the lab's own question and text cells
    from lab7_helpers.grading.submissions import QUESTIONS_FILE, questions_from_notebook

    student = json.loads(files[OUTPUTS["student"]])
    files[QUESTIONS_FILE] = json.dumps(questions_from_notebook(student), indent=1, ensure_ascii=False) + "\n"
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the committed files are up to date")
    args = parser.parse_args()
    stale = [path for path, text in rendered().items() if not path.is_file() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"out of date: {path.relative_to(ROOT)} (run: python tools/build_notebooks.py)")
        return 1 if stale else 0
    for path, text in rendered().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print("wrote " + ", ".join(str(p.relative_to(ROOT)) for p in rendered()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
