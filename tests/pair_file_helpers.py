"""Small pairs files for the loader tests (tests/test_data.py, tests/test_pair_files.py)."""

import json

GOOD = {"prompt": "p", "chosen": "good", "rejected": "bad"}


def write(tmp_path, content, name="pairs.jsonl"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def jsonl(*rows):
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"
