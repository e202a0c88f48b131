"""Split a pairs file's text into rows, each with the line it starts on: JSONL, a JSON document, or CSV/TSV.

The container is told from the content, not the file name: ``[`` or ``{`` opens JSON (one document, or one
object per line), anything else is delimited text with a header line. A row that cannot be read becomes a
``Record`` with a ``problem``; reading goes on after it wherever the file's structure allows.
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
_JSON_STRUCTURE = re.compile(r'["\\\[\]{}]')
_JSON_SCALAR = re.compile(r'"(?:[^"\\]|\\.)*"|[^,\]}\s]+')
_WHITESPACE = re.compile(r"\s*")


@dataclass(frozen=True)
class Record:
    line: int             # where the row starts
    lines: range          # every line it spans (to match lines holding bytes that are not UTF-8)
    value: Any = None     # the row as read: a dict, or whatever the file held there
    problem: str = ""     # why the row could not be read
    label: str = ""       # "element 3" for a row of a JSON list, so it can be found by count too


def parse_json(snippet: str, first_line: int | None = None) -> tuple[Any, str]:
    """Parse one JSON value; return ``(value, "")`` or ``(None, problem)``. Never raises for bad input."""
    try:
        return json.loads(snippet), ""
    except json.JSONDecodeError as err:
        line = "" if first_line is None else f"line {first_line + err.lineno - 1}, "
        python = "; it looks like a Python dict: write rows with json.dumps(row), not str(row)" \
            if snippet.lstrip().startswith("{'") else ""
        return None, f"not valid JSON ({err.msg} at {line}column {err.colno}){python}"
    except RecursionError:
        return None, "nested too deeply to read (a row is one flat object of texts)"
    except ValueError as err:  # Python refuses to read integers of more than 4300 digits
        if "digits" in str(err):
            return None, "holds a number too long to read (more than 4300 digits)"
        return None, f"not valid JSON ({err})"


class _Lines:
    """Line numbers of positions in a text."""

    def __init__(self, text: str):
        self.starts = [match.end() for match in re.finditer("\n", text)]

    def at(self, position: int) -> int:
        return bisect.bisect_right(self.starts, position) + 1

    @property
    def count(self) -> int:
        return len(self.starts) + 1


def _skip_space(text: str, position: int) -> int:
    return _WHITESPACE.match(text, position).end()


def _value_end(text: str, start: int) -> int:
    """Where the JSON value starting at ``start`` ends, found without parsing it (so depth does not matter).
    -1 when an object, list or text is never closed."""
    if text[start] not in "[{":
        scalar = _JSON_SCALAR.match(text, start)
        return scalar.end() if scalar else start + 1
    depth, in_text, skip_to = 0, False, 0
    for match in _JSON_STRUCTURE.finditer(text, start):
        position, char = match.start(), match.group()
        if position < skip_to:
            continue
        if in_text:
            if char == "\\":
                skip_to = position + 2
            in_text = char != '"'
        elif char == '"':
            in_text = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 0:
                return position + 1
    return -1


def _value_record(text: str, start: int, lines: _Lines, label: str = "") -> tuple[Record, int]:
    """The JSON value starting at ``start`` as a record, and where it ends (-1 if it is never closed)."""
    line, end = lines.at(start), _value_end(text, start)
    if end < 0:
        return Record(line, range(line, lines.count + 1), label=label,
                      problem="never closed (a missing } or ]), so the rest of the file is unread"), -1
    value, problem = parse_json(text[start:end], line)
    return Record(line, range(line, lines.at(end - 1) + 1), value, problem, label), end


def _list_records(text: str, start: int, lines: _Lines, of: str = "") -> tuple[list[Record], int]:
    """The elements of the JSON list opening at ``start``, each parsed on its own (a bad element does not hide
    the next one). Returns them and where the list ends (-1 if it is never closed)."""
    records: list[Record] = []
    position, count = _skip_space(text, start + 1), 0
    while position < len(text) and text[position] != "]":
        count += 1
        label = f"element {count}{of}"
        record, end = _value_record(text, position, lines, label)
        records.append(record)
        if end < 0:
            return records, -1
        position = _skip_space(text, end)
        if text.startswith(",", position):
            position = _skip_space(text, position + 1)
        elif position < len(text) and text[position] != "]":
            records.append(Record(lines.at(end - 1), range(0), label=label,
                                  problem="missing a comma after this element"))
    if position >= len(text):
        records.append(Record(lines.at(start), range(0), problem="the list opened here is never closed with ]"))
        return records, -1
    return records, position + 1


def _object_records(text: str, start: int, lines: _Lines) -> tuple[list[Record], int]:
    """One row, or rows written one after another as pretty-printed objects (``json.dump`` in a loop)."""
    records: list[Record] = []
    position = start
    while text.startswith("{", position):
        record, end = _value_record(text, position, lines)
        records.append(record)
        if end < 0:
            return records, -1
        position = _skip_space(text, end)
    return records, position


def _object_members(text: str, start: int, lines: _Lines) -> dict[str, int]:
    """The top-level keys of the JSON object opening at ``start``, each with where its value starts."""
    def syntax_error(what: str, position: int) -> WholeFileProblem:
        return WholeFileProblem(f"is not valid JSON: {what} at line {lines.at(position)}")

    members: dict[str, int] = {}
    position = _skip_space(text, start + 1)
    while not text.startswith("}", position):
        if not text.startswith('"', position):
            raise syntax_error("expected a key in double quotes", position)
        key_end = _value_end(text, position)
        key, _ = parse_json(text[position:key_end])
        colon = _skip_space(text, key_end)
        if not isinstance(key, str) or not text.startswith(":", colon):
            raise syntax_error("expected a key in double quotes and a colon", position)
        members[key] = value_start = _skip_space(text, colon + 1)
        end = _value_end(text, value_start) if value_start < len(text) else -1
        if end < 0:
            raise syntax_error(f'the value of "{key}" is never closed; it starts', value_start)
        position = _skip_space(text, end)
        if text.startswith(",", position):
            position = _skip_space(text, position + 1)
        elif not text.startswith("}", position):
            raise syntax_error("expected a comma or }", position)
    return members


def _json_document_records(text: str, start: int) -> list[Record]:
    """A JSON list of rows, one row, or an object holding exactly one list of rows."""
    lines = _Lines(text)
    if text[start] == "[":
        records, end = _list_records(text, start, lines)
    else:
        members = _object_members(text, start, lines)
        if is_row(members):
            records, end = _object_records(text, start, lines)
        else:
            lists = [key for key, value_start in members.items() if text.startswith("[", value_start)]
            if len(lists) != 1:
                if lists:
                    names = ", ".join(f'"{key}"' for key in lists)
                    raise WholeFileProblem(f"holds a JSON object with {len(lists)} lists ({names}): keep only "
                                           "the list of pairs in the file")
                raise WholeFileProblem(unknown_shape(list(members)))
            records, _ = _list_records(text, members[lists[0]], lines, f' of "{lists[0]}"')
            end = _value_end(text, start)
    if end >= 0 and text[end:].strip():
        extra = _skip_space(text, end)
        records.append(Record(lines.at(extra), range(0), problem="more text after the JSON document ends "
                                                                 "(two documents in one file?)"))
    return records


def _jsonl_records(text: str) -> list[Record]:
    records = []
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            value, problem = parse_json(line)
            records.append(Record(number, range(number, number + 1), value, problem))
    return records


def _header_fields(header: str, delimiter: str) -> list[str]:
    return next(csv.reader([header], delimiter=delimiter), [])


def _delimited_records(text: str, header: str) -> list[Record]:
    """CSV or TSV with a header line; the delimiter is the one that makes the header name the most known
    fields (then: the most fields). Quoted fields may hold delimiters and line breaks."""
    def score(delimiter: str) -> tuple[int, int]:
        fields = _header_fields(header, delimiter)
        return sum(map(is_known_key, fields)), len(fields)

    delimiter = max(DELIMITERS, key=score)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
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
    one_line = first_line == text.strip()
    # A JSON document opens with "[" or "{" alone, or a first line cut after a "[", "{" or ",".
    if one_line or (parse_json(first_line)[1] and first_line[-1] in "[{,"):
        return _json_document_records(text, start)
    return _jsonl_records(text)
