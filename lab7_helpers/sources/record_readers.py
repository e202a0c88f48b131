"""Split a pairs file's text into rows, each with the line it starts on: JSONL, a JSON document, or CSV/TSV.

The container is told from the content, not the file name: ``[`` or ``{`` opens JSON (one document, or one
object per line), anything else is delimited text with a header line. A row that cannot be read becomes a
``Record`` with a ``problem``, and reading goes on: in a JSON document, at the next line that opens an object.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import re
from dataclasses import dataclass
from typing import Any

from .file_text import WholeFileProblem
from .pair_shapes import is_known_key, is_row, unknown_shape

DELIMITERS = ("\t", ",", ";", "|")
_NEXT_OBJECT = re.compile(r"^[ \t]*\{", re.M)  # where reading resumes after a JSON value it could not read


@dataclass(frozen=True)
class Record:
    line: int             # where the row starts
    lines: range          # every line it spans (to match lines holding bytes that are not UTF-8)
    value: Any = None     # the row as read: a dict, or whatever the file held there
    problem: str = ""     # why the row could not be read
    label: str = ""       # "element 3" for a row of a JSON list, so it can be found by count too


def json_problem(err: Exception, snippet: str) -> str:
    """Why a JSON value could not be read, in one phrase."""
    if isinstance(err, RecursionError):
        return "nested too deeply to read (a row is one flat object of texts)"
    if not isinstance(err, json.JSONDecodeError):  # Python refuses to read integers of more than 4300 digits
        return "holds a number too long to read (more than 4300 digits)" if "digits" in str(err) else \
            f"not valid JSON ({err})"
    python = "; it looks like a Python dict: write rows with json.dumps(row), not str(row)" \
        if snippet.lstrip().startswith("{'") else ""
    where = f"line {err.lineno}, column {err.colno}" if "\n" in err.doc else f"column {err.colno}"
    return f"not valid JSON ({err.msg} at {where}){python}"


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def _json_values(text: str, position: int, in_list: bool, of: str = "") -> list[Record]:
    """The JSON values from ``position``: the elements of the list opening there (``in_list``; labelled
    "element N" + ``of``), or objects one after another. A value that cannot be read is a ``Record`` with a
    problem, and reading resumes at the next line that opens an object."""
    starts = [m.end() for m in re.finditer("\n", text)]
    line_at = lambda position: bisect.bisect_right(starts, position) + 1  # noqa: E731
    decoder, records, count = json.JSONDecoder(), [], 0
    position = _skip_space(text, position + in_list)
    while position < len(text) and not (in_list and text[position] == "]"):
        count += 1
        label, line = f"element {count}{of}" if in_list else "", line_at(position)
        try:
            value, end = decoder.raw_decode(text, position)
        except (ValueError, RecursionError) as err:
            records.append(Record(line, range(line, line + 1), problem=json_problem(err, text[position:]),
                                  label=label))
            resume = _NEXT_OBJECT.search(text, getattr(err, "pos", position) + 1)
            if resume is None:
                return records
            position = _skip_space(text, resume.start())
            continue
        records.append(Record(line, range(line, line_at(end - 1) + 1), value, label=label))
        position = _skip_space(text, end)
        if in_list and text.startswith(",", position):
            position = _skip_space(text, position + 1)
        elif in_list and position < len(text) and text[position] != "]":
            records.append(Record(line_at(end - 1), range(0), label=label,
                                  problem="missing a comma after this element"))
        elif not in_list and position < len(text) and text[position] != "{":
            records.append(Record(line_at(position), range(0), problem="more text after the JSON document ends "
                                                                       "(two documents in one file?)"))
            return records
    if in_list and position >= len(text):
        records.append(Record(line_at(position - 1), range(0), problem="the list is never closed with ]"))
    return records


def _json_document_records(text: str, start: int) -> list[Record]:
    """A JSON list of rows, a row (or rows one after another), or an object holding exactly one list of rows."""
    if text[start] == "[":
        return _json_values(text, start, in_list=True)
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        document = None  # rows one after another, or a broken one: read value by value
    if not isinstance(document, dict) or is_row(document):
        return _json_values(text, start, in_list=False)
    lists = [key for key, value in document.items() if isinstance(value, list)]
    if len(lists) != 1:
        if lists:
            names = ", ".join(f'"{key}"' for key in lists)
            raise WholeFileProblem(f"holds a JSON object with {len(lists)} lists ({names}): keep only the list "
                                   "of pairs in the file")
        raise WholeFileProblem(unknown_shape(list(document)))
    key = lists[0]
    opening = next(m for m in re.finditer(r'"((?:[^"\\]|\\.)*)"\s*:\s*\[', text) if json.loads(f'"{m[1]}"') == key)
    return _json_values(text, opening.end() - 1, in_list=True, of=f' of "{key}"')


def _jsonl_records(text: str) -> list[Record]:
    records = []
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                records.append(Record(number, range(number, number + 1), json.loads(line)))
            except (ValueError, RecursionError) as err:
                records.append(Record(number, range(number, number + 1), problem=json_problem(err, line)))
    return records


def _delimited_records(text: str, header: str) -> list[Record]:
    """CSV or TSV with a header line; the delimiter is the one that makes the header name the most known
    fields (then: the most fields). Quoted fields may hold delimiters and line breaks."""
    def score(delimiter: str) -> tuple[int, int]:
        fields = next(csv.reader([header], delimiter=delimiter), [])
        return sum(map(is_known_key, fields)), len(fields)

    reader = csv.reader(io.StringIO(text, newline=""), delimiter=max(DELIMITERS, key=score), strict=True)
    records: list[Record] = []
    names: list[str] | None = None
    previous_end = 0
    while True:
        first = previous_end + 1
        try:
            fields = next(reader)
        except StopIteration:
            return records
        except csv.Error as err:
            previous_end = reader.line_num
            problem = (f"a quoted field opened on line {first} is never closed (a missing \")"
                       if "end of data" in str(err) else f"not valid CSV ({err})")
            records.append(Record(first, range(first, previous_end + 1), problem=problem))
            continue
        previous_end = reader.line_num
        if not any(field.strip() for field in fields):
            continue
        lines = range(first, previous_end + 1)
        if names is None:
            names = [name.strip() for name in fields]
            if not any(map(is_known_key, names)):
                raise WholeFileProblem(unknown_shape(names))
        elif len(fields) != len(names):
            quote = "; a text holding the delimiter must be in double quotes" if len(fields) > len(names) else ""
            records.append(Record(first, lines, problem=f"has {len(fields)} field(s) but the header has "
                                                        f"{len(names)}{quote}"))
        else:
            records.append(Record(first, lines, dict(zip(names, fields))))


def read_records(text: str) -> list[Record]:
    """Every row of the file, in file order."""
    first_line = next((line.strip() for line in text.split("\n") if line.strip()), "")
    if not first_line:
        return []
    start = _skip_space(text, 0)
    if text[start] not in "[{":
        return _delimited_records(text, first_line)
    if first_line == text.strip():  # a document on one line
        return _json_document_records(text, start)
    try:
        json.loads(first_line)  # JSONL: each line a value of its own
        return _jsonl_records(text)
    except (ValueError, RecursionError):  # a document opens with a line cut after "[", "{" or ","
        return _json_document_records(text, start) if first_line[-1] in "[{," else _jsonl_records(text)
