"""One row of a pairs file, in any shape a Lab 6 app writes, as a pair ``{"prompt", "chosen", "rejected"}``.

Shapes: ``prompt``/``chosen``/``rejected`` as text (TRL's standard format) or as lists of ``{"role", "content"}``
messages (TRL's conversational format, with or without a separate prompt), and Lab 6's full record: a prompt,
two responses and a preference saying which one won.
"""

from __future__ import annotations

import json
from typing import Any

FIELDS = ("prompt", "chosen", "rejected")  # the three texts of a pair, whatever shape its row had

RESPONSE_KEYS = (("response_a", "response_b"), ("response1", "response2"), ("response_1", "response_2"))
PREFERENCE_KEYS = ("preference", "preferred", "winner", "label", "choice")
TIE_WORDS = frozenset({"tie", "draw", "equal", "same", "both", "neither"})
ROW_KEYS = frozenset({"chosen", "rejected", *(key for keys in RESPONSE_KEYS for key in keys)})  # any one: a row
SHAPES_UNDERSTOOD = ('each row needs "prompt", "chosen" and "rejected" (text, or TRL conversational messages), '
                     'or "prompt", two responses (response_A/response_B, response_a/response_b or '
                     'response1/response2) and a "preference" (A, B or tie), in JSONL, JSON, or CSV/TSV with a '
                     'header line')


class RowProblem(ValueError):
    """What is wrong with one row. ``recognised`` is False when the row has none of the keys of a pairs row."""

    def __init__(self, message: str, recognised: bool = True):
        super().__init__(message)
        self.recognised = recognised


def normalise_key(key: Any) -> str:
    """``"Response A"``, ``"response-A"`` and ``"response_A"`` are one key: ``"response_a"``."""
    return str(key).strip().lower().replace(" ", "_").replace("-", "_")


def is_row(keys: Any) -> bool:
    """Whether these keys (of a row, or of a JSON object that might be one row) belong to a pairs row."""
    return any(normalise_key(key) in ROW_KEYS for key in keys)


def is_known_key(key: Any) -> bool:
    return normalise_key(key) in ROW_KEYS or normalise_key(key) in ("prompt", "tie", *PREFERENCE_KEYS)


def unknown_shape(keys: list[str]) -> str:
    shown = ", ".join(json.dumps(str(key)[:30], ensure_ascii=False) for key in keys[:8])
    more = f" and {len(keys) - 8} more" if len(keys) > 8 else ""
    return f"no row has the fields of a preference pair (found {shown or 'no fields'}{more}): {SHAPES_UNDERSTOOD}"


def type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", bool: "true/false", type(None): "null", str: "text",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _checked(key: str, text: str) -> str:
    if not text:
        raise RowProblem(f'field "{key}" is empty')
    if any("\ud800" <= char <= "\udfff" for char in text):
        raise RowProblem(f'field "{key}" contains an invalid character (a lone surrogate)')
    return text


def _message_text(key: str, messages: list, role: str) -> str:
    """The content of the ``role`` turns, joined by a blank line (a response may span several turns)."""
    contents = []
    for message in messages:
        if not (isinstance(message, dict) and isinstance(message.get("content"), str)):
            raise RowProblem(f'field "{key}" must be text or a list of {{"role", "content"}} messages')
        if message.get("role") == role:
            contents.append(message["content"].strip())
    if not contents:
        raise RowProblem(f'field "{key}" has no {role} message')
    return _checked(key, "\n\n".join(contents))


def _text(fields: dict[str, tuple[str, Any]], name: str, role: str, written: str = "") -> str:
    """The text of one field: stripped text, or the ``role`` turns of a message list."""
    if name not in fields:
        raise RowProblem(f'missing field "{written or name}"')
    key, value = fields[name]
    if isinstance(value, list):
        return _message_text(key, value, role)
    if not isinstance(value, str):
        raise RowProblem(f'field "{key}" must be text, got {type_name(value)}')
    return _checked(key, value.strip())


def _preference(fields: dict[str, tuple[str, Any]]) -> tuple[str, Any] | None:
    return next((fields[key] for key in PREFERENCE_KEYS if key in fields), None)


def _is_marked_tie(fields: dict[str, tuple[str, Any]]) -> bool:
    """Lab 6 files record a tie as ``"tie": true`` or a preference (label, winner...) of ``"tie"``."""
    preference = _preference(fields)
    return fields.get("tie", ("", None))[1] is True or (
        preference is not None and isinstance(preference[1], str) and normalise_key(preference[1]) in TIE_WORDS)


def _implicit_prompt_pair(fields: dict[str, tuple[str, Any]]) -> dict[str, str]:
    """TRL's conversational rows without a prompt: the turns both conversations share are the prompt."""
    (chosen_key, chosen), (rejected_key, rejected) = fields["chosen"], fields["rejected"]
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    shared = min(shared, len(chosen) - 1, len(rejected) - 1)  # identical conversations: the last turn is the answer
    if shared <= 0:
        raise RowProblem('missing field "prompt" (and the "chosen" and "rejected" conversations share no '
                         'opening turns to use as the prompt)')
    return {"prompt": _message_text(chosen_key, chosen[:shared], "user"),
            "chosen": _message_text(chosen_key, chosen[shared:], "assistant"),
            "rejected": _message_text(rejected_key, rejected[shared:], "assistant")}


def _sibling(written: str) -> str:
    """The other response's key, spelled like the one present: response_A -> response_B, response1 -> response2."""
    swap = {"a": "b", "b": "a", "A": "B", "B": "A", "1": "2", "2": "1"}
    return written[:-1] + swap.get(written[-1], written[-1])


def _choice(value: Any) -> int | None:
    """0 for the first response (A, a, 1, response_A...), 1 for the second, None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    word = normalise_key(value).removeprefix("response").lstrip("_")
    return {"a": 0, "1": 0, "b": 1, "2": 1}.get(word)


def _full_record_pair(fields: dict[str, tuple[str, Any]], names: tuple[str, str], tie: bool) -> dict[str, str]:
    """Lab 6's full record: a prompt, two responses and which one the student preferred."""
    present = [fields[name][0] if name in fields else "" for name in names]  # at least one is there
    written = [spelled or _sibling(other) for spelled, other in zip(present, reversed(present))]
    prompt = _text(fields, "prompt", "user")
    responses = [_text(fields, name, "assistant", spelled) for name, spelled in zip(names, written)]
    if tie:
        return {"prompt": prompt, "chosen": responses[0], "rejected": responses[1]}
    preference = _preference(fields)
    if preference is None:
        raise RowProblem('missing field "preference" (A, B or tie)')
    key, value = preference
    if isinstance(value, str) and not value.strip():
        raise RowProblem(f'field "{key}" is empty')
    choice = _choice(value)
    if choice is None:
        shown = json.dumps(value, ensure_ascii=False)[:40]
        raise RowProblem(f'field "{key}" should be A, B or tie ({written[0]} or {written[1]}), got {shown}')
    return {"prompt": prompt, "chosen": responses[choice], "rejected": responses[1 - choice]}


def read_row(row: Any) -> tuple[dict[str, str], bool]:
    """Return the row as a pair, and whether it is marked as a tie. Raise ``RowProblem`` saying what is wrong.

    Other keys (ids, timestamps, reasons, generation settings) are ignored.
    """
    if not isinstance(row, dict):
        raise RowProblem(f'expected a JSON object with "prompt", "chosen" and "rejected", got {type_name(row)}')
    fields: dict[str, tuple[str, Any]] = {}
    for key, value in row.items():
        fields.setdefault(normalise_key(key), (str(key), value))
    tie = _is_marked_tie(fields)
    if "chosen" in fields or "rejected" in fields:
        if "prompt" not in fields and all(isinstance(fields.get(f, ("", None))[1], list) for f in FIELDS[1:]):
            return _implicit_prompt_pair(fields), tie
        return {name: _text(fields, name, "user" if name == "prompt" else "assistant") for name in FIELDS}, tie
    for names in RESPONSE_KEYS:
        if any(name in fields for name in names):
            return _full_record_pair(fields, names, tie), tie
    missing = [f'"{name}"' for name in FIELDS if name not in fields]
    found = f" (found {', '.join(json.dumps(key, ensure_ascii=False) for key, _ in fields.values())})"
    plural = "s" if len(missing) > 1 else ""
    raise RowProblem(f"missing field{plural} {', '.join(missing)}{found if fields else ''}", recognised=False)
