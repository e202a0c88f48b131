"""Read a preference file into pairs ``{"prompt", "chosen", "rejected"}``, naming every bad row.

Not part of the lab's teaching core: what a model learns from starts at ``data.py``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from ..data import FIELDS

def _sample_data_dir() -> Path:
    """The bundled data: inside the package when installed from a wheel (Colab), ``data/`` in a checkout."""
    installed = Path(__file__).resolve().parent.parent / "sample_data"
    return installed if installed.is_dir() else Path(__file__).resolve().parents[2] / "data"


SAMPLE_DATA_DIR = _sample_data_dir()
BUNDLED_PAIRS = SAMPLE_DATA_DIR / "dpo_pairs.jsonl"  # the team's sample preference set


class PairFileError(ValueError):
    """A preference file has bad lines. ``problems`` holds one ``"path:line: problem"`` string per bad line."""

    def __init__(self, path: str | Path, problems: list[str], hint: str = ""):
        self.path = str(path)
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        message = f"{self.path}: {len(problems)} problem(s) found:\n{lines}"
        if hint:
            message += f"\n{hint}"
        super().__init__(message)


class PairFileWarning(UserWarning):
    """Rows were left out of a preference file (ties, or bad lines with ``on_error="skip"``)."""


def _is_marked_tie(row: dict[str, Any]) -> bool:
    """Lab 6 files may record a tie explicitly: ``"tie": true`` or a label/preference/winner of ``"tie"``."""
    if row.get("tie") is True:
        return True
    return any(str(row.get(key, "")).strip().lower() == "tie" for key in ("label", "preference", "winner"))


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", bool: "true/false", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _check_row(row: Any) -> str | None:
    """Return what is wrong with one parsed JSON value, or None if it is a usable pair."""
    if not isinstance(row, dict):
        return f'expected a JSON object with "prompt", "chosen" and "rejected", got {_type_name(row)}'
    for field in FIELDS:
        if field not in row:
            return f'missing field "{field}"'
        if not isinstance(row[field], str):
            return f'field "{field}" must be text, got {_type_name(row[field])}'
        if not row[field].strip():
            return f'field "{field}" is empty'
    return None


def load_pairs(path: str | Path, on_error: str = "raise") -> list[dict[str, str]]:
    """Read preference pairs from a JSONL file (one JSON object per line).

    Each row needs non-empty text fields ``prompt``, ``chosen`` and ``rejected``; other keys are ignored and the
    three texts are stripped of surrounding whitespace. Blank lines, a UTF-8 byte-order mark and Windows (CRLF)
    line endings are fine.

    Ties (chosen == rejected after stripping, or a row marked as a tie) carry no preference, so they are left out
    with a ``PairFileWarning`` that counts them.

    Args:
        path: the JSONL file.
        on_error: ``"raise"`` (default) raises ``PairFileError`` listing **every** bad line as
            ``path:line: problem``; ``"skip"`` leaves bad lines out with one warning that counts them.

    Returns:
        The usable pairs, in file order.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f'on_error must be "raise" or "skip", got {on_error!r}')
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file. Check the path, or upload your pairs file first.")

    pairs, problems, ties = [], [], 0
    raw_lines = path.read_bytes().split(b"\n")
    for number, raw in enumerate(raw_lines, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            problems.append(f"{path}:{number}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at column "
                            f"{err.start + 1}); save the file as UTF-8")
            continue
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            problems.append(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno})")
            continue
        problem = _check_row(row)
        if problem:
            problems.append(f"{path}:{number}: {problem}")
            continue
        pair = {field: row[field].strip() for field in FIELDS}
        if pair["chosen"] == pair["rejected"] or _is_marked_tie(row):
            ties += 1
            continue
        pairs.append(pair)

    if problems and on_error == "raise":
        raise PairFileError(path, problems, 'Fix these lines, or pass on_error="skip" to leave them out.')
    if problems:
        warnings.warn(f"{path}: skipped {len(problems)} bad line(s); first: {problems[0]}", PairFileWarning,
                      stacklevel=2)
    if ties:
        warnings.warn(f"{path}: left out {ties} tie(s): a tie says nothing about which response is better.",
                      PairFileWarning, stacklevel=2)
    if not pairs:
        reason = f"all {ties} row(s) are ties" if ties else "the file has no rows"
        raise PairFileError(path, [f"{path}: no usable pairs ({reason})"])
    return pairs
