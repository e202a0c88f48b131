"""A pairs file's bytes as text, or one sentence on why it is not a UTF-8 text file (and how to convert it)."""

from __future__ import annotations

import re
from pathlib import Path

SNIFF_BYTES = 65536  # enough to tell text from binary before reading the whole file

# Checked in this order: the UTF-32 LE mark starts with the UTF-16 LE one.
_BYTE_ORDER_MARKS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
                     (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))
_KNOWN_BINARY = {  # how binary files a student might pick by mistake start
    b"PK\x03\x04": "a ZIP archive (an Excel .xlsx workbook is one); export the sheet as CSV UTF-8 instead",
    b"PAR1": "a Parquet file; convert it with pandas: "
             "pd.read_parquet(path).to_json(\"pairs.jsonl\", orient=\"records\", lines=True)",
    b"\x1f\x8b": "a gzip archive; unpack it first (gunzip)",
}
_UNDECODED_BYTE = re.compile("[\udc80-\udcff]")  # how errors="surrogateescape" writes a byte that is not UTF-8
_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f]")


class WholeFileProblem(ValueError):
    """The file as a whole cannot be read as pairs; the message says why, without the path."""


def _convert_command(path: Path, encoding: str) -> str:
    return f'iconv -f {encoding} -t UTF-8 "{path.name}" > "{path.stem}_utf8{path.suffix}"'


def _not_utf8(path: Path, encoding: str, evidence: str) -> WholeFileProblem:
    return WholeFileProblem(f"is saved as {encoding} ({evidence}), not UTF-8: save it as UTF-8, "
                            f"or convert it with {_convert_command(path, encoding)}")


def _utf16_without_mark(head: bytes) -> str:
    """ASCII text in UTF-16 has a zero byte in every other position: odd ones for little-endian."""
    even, odd = head[0::2], head[1::2]
    if odd.count(0) > 0.4 * len(odd) and even.count(0) < 0.05 * len(even):
        return "UTF-16LE"
    if even.count(0) > 0.4 * len(even) and odd.count(0) < 0.05 * len(odd):
        return "UTF-16BE"
    return ""


def read_text(path: Path) -> tuple[str, dict[int, str], str]:
    """Return the text (without a UTF-8 byte-order mark), the lines holding bytes that are not UTF-8 as
    ``{line: problem}``, and a hint on converting the file ("" when every line is UTF-8).

    Raises ``WholeFileProblem`` for UTF-16/UTF-32 files and for binary files.
    """
    with path.open("rb") as file:
        head = file.read(SNIFF_BYTES)
        for mark, encoding in _BYTE_ORDER_MARKS:
            if head.startswith(mark):
                raise _not_utf8(path, encoding, f"it starts with a {encoding} byte-order mark")
        for magic, what in _KNOWN_BINARY.items():
            if head.startswith(magic):
                raise WholeFileProblem(f"is not a pairs file: it is {what}")
        if b"\x00" in head:
            encoding = _utf16_without_mark(head)
            if encoding:
                raise _not_utf8(path, encoding, "every other byte is zero")
            raise WholeFileProblem("is not a pairs file: it holds binary data, not text "
                                   "(a pairs file is JSONL, JSON, CSV or TSV text)")
        data = head + file.read()

    text = data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    sample = text[:SNIFF_BYTES]
    if len(_UNDECODED_BYTE.findall(sample)) + len(_CONTROL.findall(sample)) > 0.2 * len(sample):
        raise WholeFileProblem("is not a pairs file: most of it is not text "
                               "(a pairs file is JSONL, JSON, CSV or TSV text)")

    undecodable = {}
    if _UNDECODED_BYTE.search(text):
        for number, line in enumerate(text.split("\n"), start=1):
            found = _UNDECODED_BYTE.search(line)
            if found:
                byte = ord(found.group()) - 0xDC00
                undecodable[number] = f"not valid UTF-8 (byte 0x{byte:02x} at column {found.start() + 1})"
    if not undecodable:
        return text, undecodable, ""
    try:
        data.decode("cp1252")
    except UnicodeDecodeError:
        return text, undecodable, "The file is not UTF-8 text: open it in an editor and save it as UTF-8."
    return text, undecodable, ("The lines that are not UTF-8 look like Windows-1252 (Latin-1) text: save the file as "
                               "UTF-8 "
                               f"(Excel: CSV UTF-8), or convert it with {_convert_command(path, 'WINDOWS-1252')}")
