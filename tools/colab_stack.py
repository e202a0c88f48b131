"""The notebook's install cell on Colab's own package versions, then the solution notebook on them.

    python tools/colab_stack.py          # about 5 minutes; CI runs it (.ci/run)

In a fresh virtual environment: Colab's pins (tools/colab_pins.txt) and this machine's CPU torch; then exactly the
requirement the built notebook's install cell writes, pointed at a local git repository laid out like the course
repository. Checks what pip resolved (TRL installed, datasets upgraded to a version TRL accepts, Colab's
transformers and accelerate left as they were) and executes the solution notebook on tiny-gpt2 in the simulated
Colab (tests/fake_colab), with a scripted blind judge. Exit 1, with the reason, when any of it fails.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PINS = Path(__file__).with_name("colab_pins.txt")
TORCH = "torch==2.13.0"  # this machine's CPU wheel: Colab's own torch (2.11, CUDA) stays out of CI


def pins() -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in PINS.read_text().splitlines()]
    return dict(line.split("==") for line in lines if line)


def make_course_repository(folder: Path) -> str:
    """A bare git repository holding this checkout (tracked and untracked-but-not-ignored files) in the course
    repository's subfolder, as GitHub serves it; returns its URL without ``.git``."""
    sys.path.insert(0, str(ROOT / "tools"))
    from build_notebooks import hosting

    course, subdirectory = folder / "course", hosting()[1]
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                             check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (course / subdirectory / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, course / subdirectory / name)
    git = ["git", "-c", "user.name=Lab 7 team", "-c", "user.email=lab7@example.org", "-c", "init.defaultBranch=main"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "course repository"]):
        subprocess.run([*git, *command], cwd=course, check=True)
    subprocess.run([*git, "clone", "-q", "--bare", str(course), str(folder / "intro_modern_rl.git")], check=True)
    return f"file://{folder}/intro_modern_rl"


def install_cell_arguments(repository: str) -> list[str]:
    """The built student notebook's ``%pip install`` arguments, the course repository's URL replaced."""
    notebook = json.loads((ROOT / "lab7.ipynb").read_text())
    line = next(l for c in notebook["cells"] for l in "".join(c["source"]).splitlines() if "%pip install" in l)
    arguments = shlex.split(line.split("%pip install", 1)[1])
    return [re.sub(r"git\+https://github\.com/[^#]+?\.git", f"git+{repository}.git", a) for a in arguments]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="lab7_colab_") as folder:
        folder = Path(folder)
        python = folder / "venv" / "bin" / "python"
        venv.create(folder / "venv", with_pip=True)
        pinned = pins()
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        run = lambda *args: subprocess.run([*args], check=True, cwd=folder)  # noqa: E731
        run(*pip, f"pip=={pinned.pop('pip')}")
        run(*pip, TORCH, *(f"{name}=={version}" for name, version in pinned.items()),
            "nbclient", "nbformat", "ipykernel", "matplotlib", "pandas", "tqdm")  # what Colab has beside them
        before = versions(python)
        arguments = install_cell_arguments(make_course_repository(folder))
        print("the install cell:", " ".join(["pip install", *arguments]), flush=True)
        run(*pip, *arguments)
        after = versions(python)
        print("resolved:", ", ".join(f"{k} {before.get(k, '-')} -> {v}" for k, v in after.items()), flush=True)
        problems = [f"{name} changed from Colab's {before[name]} to {after[name]}" for name in pinned
                    if name != "datasets" and before[name] != after[name]]
        if "trl" not in after:
            problems.append("TRL was not installed")
        env = {**os.environ, "LAB7_MODEL": "tiny-gpt2", "LAB7_FAST": "1", "LAB7_JUDGE": "longer",
               "HF_HUB_OFFLINE": "1", "MPLBACKEND": "agg", "PYTHONPATH": str(ROOT / "tests" / "fake_colab")}
        accepted = subprocess.run([str(python), "-c", "import trl, datasets; print('ok')"], capture_output=True,
                                  text=True, env=env)  # TRL refuses a datasets it does not accept on import
        if accepted.returncode:
            problems.append(f"TRL does not load beside datasets {after.get('datasets')}: {accepted.stderr[-300:]}")
        executed = subprocess.run([str(python), "-c", EXECUTE, str(ROOT), str(folder)], capture_output=True,
                                  text=True, env={**env, "LAB7_FAKE_UPLOAD": "", "OMP_NUM_THREADS": "1",
                                                  "LAB7_FAKE_DOWNLOADS": str(folder / "downloads.txt"),
                                                  "LAB7_FAKE_NOTEBOOK": str(folder / "browser_copy.ipynb")})
        print(executed.stdout.strip())
        if executed.returncode:
            problems.append(f"the solution notebook failed: {executed.stderr[-1500:]}")
    print("Colab stack: " + ("passed" if not problems else "FAILED: " + "; ".join(problems)))
    return 1 if problems else 0


def versions(python: Path) -> dict[str, str]:
    listed = json.loads(subprocess.run([str(python), "-m", "pip", "list", "--format", "json",
                                        "--disable-pip-version-check"], capture_output=True, text=True).stdout)
    wanted = {"trl", "datasets", "transformers", "accelerate", "torch", "lab7_helpers", "lab7-helpers"}
    return {p["name"].replace("-", "_"): p["version"] for p in listed if p["name"].lower() in wanted}


# Run in the Colab environment: the solution notebook, its install cell left out (it has run), in a fresh kernel.
EXECUTE = """
import json, sys
from pathlib import Path
import nbformat
from nbclient import NotebookClient
root, folder = Path(sys.argv[1]), Path(sys.argv[2])
notebook = nbformat.read(root / "instructor" / "lab7_solution.ipynb", as_version=4)
notebook.cells = [c for c in notebook.cells if "%pip install" not in c.source]
for cell in notebook.cells:  # as a student types their name before handing in
    cell.source = cell.source.replace('STUDENT_NAME = ""', 'STUDENT_NAME = "Colab Stack"', 1)
(folder / "browser_copy.ipynb").write_text(json.dumps(notebook))
notebook.cells.insert(0, nbformat.v4.new_code_cell("import google.colab  # as in Colab"))
NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
text = "\\n".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
print("solution notebook: every cell ran;", next(l for l in text.splitlines() if "judged blind" in l))
print("downloads:", (folder / "downloads.txt").read_text().split())
"""


if __name__ == "__main__":
    sys.exit(main())
