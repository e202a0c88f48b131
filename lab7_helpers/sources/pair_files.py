"""Read a preference file into pairs ``{"prompt", "chosen", "rejected"}``, naming every bad row.

Reads every shape a Lab 6 app exports (see ``pair_shapes``), in JSONL, JSON or CSV/TSV (see ``record_readers``).
Not part of the lab's teaching core: what a model learns from starts at ``data.py``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from .file_text import WholeFileProblem, read_text
from .pair_shapes import RowProblem, read_row, unknown_shape
from .record_readers import read_records

MAX_LISTED = 10  # problems spelled out in an error; the rest are counted


def _sample_data_dir() -> Path:
    """The bundled data: inside the package when installed from a wheel (Colab), ``data/`` in a checkout."""
    installed = Path(__file__).resolve().parent.parent / "sample_data"
    return installed if installed.is_dir() else Path(__file__).resolve().parents[2] / "data"


SAMPLE_DATA_DIR = _sample_data_dir()
BUNDLED_PAIRS = SAMPLE_DATA_DIR / "dpo_pairs.jsonl"  # the team's sample preference set
PAIR_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")


class PairFileError(ValueError):
    """A preference file cannot be used as it is. ``problems`` holds every ``"path:line: problem"`` (or one
    ``"path: problem"`` about the whole file); the message lists the first ``MAX_LISTED``."""

    def __init__(self, path: str | Path, problems: list[str], hint: str = ""):
        self.path = str(path)
        self.problems = problems
        if len(problems) == 1 and problems[0].startswith(f"{self.path}: "):  # one sentence on the whole file
            message = problems[0]
        else:
            listed = [f"  {p}" for p in problems[:MAX_LISTED]]
            if len(problems) > MAX_LISTED:
                listed.append(f"  ... and {len(problems) - MAX_LISTED} more")
            message = f"{self.path}: {len(problems)} problem(s) found:\n" + "\n".join(listed)
        if hint:
            message += f"\n{hint}"
        super().__init__(message)


class PairFileWarning(UserWarning):
    """Rows were left out of a preference file: ``ties``, or ``bad_lines`` with ``on_error="skip"`` (counts)."""

    def __init__(self, message: str, ties: int = 0, bad_lines: int = 0):
        super().__init__(message)
        self.ties, self.bad_lines = ties, bad_lines


def _check_path(path: Path) -> None:
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PAIR_FILE_SUFFIXES)
        holds = f" (it holds {', '.join(inside[:5])}{', ...' if len(inside) > 5 else ''})" if inside else ""
        raise IsADirectoryError(f"{path} is a folder, not a file: give the path of the pairs file in it{holds}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file. Check the path, or upload your pairs file first.")


def _where(path: Path, line: int, label: str) -> str:
    """``pairs.jsonl:12: ``, or ``pairs.json:14 (element 3): `` for a row of a JSON list."""
    return f"{path}:{line}" + (f" ({label})" if label else "") + ": "


def _ties_note(path: Path, identical: int, marked: int) -> str:
    reasons = []
    if identical:
        reasons.append(f"{identical} with two identical responses (DPO gets zero gradient from them)")
    if marked:
        reasons.append(f"{marked} marked as a tie between different responses (training on them would push the "
                       "model one arbitrary way)")
    return f"{path}: left out {identical + marked} tie(s), which say nothing about which response is better: " + \
        " and ".join(reasons) + "."


def load_pairs(path: str | Path, on_error: str = "raise",
               skip_hint: str = 'pass on_error="skip"') -> list[dict[str, str]]:
    """Read preference pairs from a Lab 6 export: JSONL, a JSON list (or an object holding one list), or CSV/TSV
    with a header line; the shape is told from the content, not the file name.

    A row is ``prompt``/``chosen``/``rejected`` as text or as TRL conversational messages (the prompt is the user
    turns, each response the assistant turns; without a prompt, the turns both conversations share), or a full
    record with a prompt, two responses (``response_A``/``response_B``, ``response_a``/``response_b`` or
    ``response1``/``response2``) and a ``preference`` (A, B, 1, 2, response_A... or tie). Other keys are ignored;
    texts are stripped of surrounding whitespace. A UTF-8 byte-order mark and Windows (CRLF) line endings are fine.

    Ties (chosen == rejected after stripping, or a row marked as a tie) carry no preference, so they are left out
    with a ``PairFileWarning`` that counts them.

    Args:
        path: the pairs file.
        on_error: ``"raise"`` (default) raises ``PairFileError`` naming **every** bad row as ``path:line: problem``
            (a JSON list's rows also by element number); ``"skip"`` leaves bad rows out with one warning that
            counts them.
        skip_hint: how the caller's user asks for ``"skip"``, in the error's last sentence (``lab7 run``: its
            ``--skip-bad-lines``).

    Returns:
        The usable pairs, in file order.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f'on_error must be "raise" or "skip", got {on_error!r}')
    path = Path(path)
    _check_path(path)
    try:
        text, undecodable, encoding_hint = read_text(path)
        records = read_records(text)
    except WholeFileProblem as problem:
        raise PairFileError(path, [f"{path}: {problem}"]) from None

    pairs, problems, identical, marked = [], [], 0, 0
    recognised, first_keys = False, None
    reported_lines: set[int] = set()
    for record in records:
        bad_line = next((line for line in record.lines if line in undecodable), None)
        if bad_line is not None:
            reported_lines.update(line for line in record.lines if line in undecodable)
            problems.append((bad_line, _where(path, bad_line, record.label) + undecodable[bad_line]))
            continue
        if record.problem:
            problems.append((record.line, _where(path, record.line, record.label) + record.problem))
            continue
        try:
            pair, marked_tie = read_row(record.value)
        except RowProblem as problem:
            recognised = recognised or problem.recognised
            if first_keys is None and isinstance(record.value, dict):
                first_keys = list(record.value)
            problems.append((record.line, _where(path, record.line, record.label) + str(problem)))
            continue
        recognised = True
        if pair["chosen"] == pair["rejected"]:
            identical += 1
        elif marked_tie:
            marked += 1
        else:
            pairs.append(pair)
    problems += [(line, f"{path}:{line}: {problem}") for line, problem in undecodable.items()
                 if line not in reported_lines]
    problems = [problem for _, problem in sorted(problems, key=lambda item: item[0])]

    if not recognised and first_keys is not None:
        raise PairFileError(path, [f"{path}: {unknown_shape(first_keys)}"])
    if problems and on_error == "raise":
        hint = f"Fix these lines, or {skip_hint} to leave them out."
        raise PairFileError(path, problems, f"{hint} {encoding_hint}" if encoding_hint else hint)
    if problems:
        warnings.warn(PairFileWarning(f"{path}: skipped {len(problems)} bad line(s); first: {problems[0]}",
                                      bad_lines=len(problems)), stacklevel=2)
    if identical or marked:
        warnings.warn(PairFileWarning(_ties_note(path, identical, marked), ties=identical + marked), stacklevel=2)
    if not pairs:
        ties = identical + marked
        if not ties and not problems:
            reason = "the file has no rows"
        else:
            reason = f"all {ties} row(s) are ties" if not problems else "every row is a tie or has a problem"
        raise PairFileError(path, [f"{path}: no usable pairs ({reason})"])
    return pairs
