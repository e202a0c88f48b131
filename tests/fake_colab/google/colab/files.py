"""``google.colab.files``: upload and download, as the notebook uses them."""

import os
import shutil
from pathlib import Path


def upload() -> dict[str, bytes]:
    """``{file name: contents}`` of the file named by ``LAB7_FAKE_UPLOAD``, copied into the working folder."""
    source = os.environ.get("LAB7_FAKE_UPLOAD", "")
    if source == "fail":
        raise RuntimeError("TypeError: Cannot read properties of undefined (reading '_uploadFiles')")
    if not source:
        return {}
    target = Path.cwd() / Path(source).name
    shutil.copyfile(source, target)
    return {target.name: target.read_bytes()}


def download(filename: str) -> None:
    """Record the download; like Colab, fail on a file that does not exist."""
    path = Path(filename).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"Cannot find file: {filename}")
    with open(os.environ["LAB7_FAKE_DOWNLOADS"], "a", encoding="utf-8") as log:
        log.write(f"{path}\n")
