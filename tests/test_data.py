import json
import warnings
from pathlib import Path

import pytest

from lab7_helpers import PairFileError, PairFileWarning, load_pairs, split_pairs
from pair_file_helpers import GOOD, jsonl, write

DATA = Path(__file__).resolve().parents[1] / "data"


def test_loads_valid_rows_strips_text_and_ignores_extra_keys(tmp_path):
    path = write(tmp_path, jsonl({"prompt": " Hi ", "chosen": "Hello\n", "rejected": "Bye", "id": 7}, "", GOOD))
    assert load_pairs(path) == [{"prompt": "Hi", "chosen": "Hello", "rejected": "Bye"}, GOOD]


def test_utf8_bom_and_crlf_load(tmp_path):
    content = "\ufeff" + jsonl(GOOD, {"prompt": "Café ☕", "chosen": "oui", "rejected": "non"}).replace("\n", "\r\n")
    pairs = load_pairs(write(tmp_path, content))
    assert pairs == [GOOD, {"prompt": "Café ☕", "chosen": "oui", "rejected": "non"}]


BAD_FILE_ROWS = [
    GOOD,                                                     # 1 ok
    '{"prompt": "p", "chosen": "c", "rejected": ',            # 2 malformed JSON
    '["p", "c", "r"]',                                        # 3 not an object
    {"prompt": "p", "chosen": "c"},                           # 4 missing rejected
    {"prompt": "p", "chosen": "   ", "rejected": "r"},        # 5 empty chosen
    {"prompt": 3, "chosen": "c", "rejected": "r"},            # 6 non-string prompt
    {"prompt": "q", "chosen": "yes", "rejected": "no"},       # 7 ok
    "42",                                                     # 8 not an object
    {"prompt": "p", "chosen": "c", "rejected": None},         # 9 null field
]


def bad_file(tmp_path):
    content = jsonl(*BAD_FILE_ROWS).encode() + b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n'  # 10
    return write(tmp_path, content)


def test_every_bad_line_is_named_in_one_error(tmp_path):
    path = bad_file(tmp_path)
    with pytest.raises(PairFileError) as info:
        load_pairs(path)
    problems = info.value.problems
    assert [p.split(":")[1] for p in problems] == ["2", "3", "4", "5", "6", "8", "9", "10"]
    expected = {
        2: "not valid JSON", 3: "got a list", 4: 'missing field "rejected"', 5: 'field "chosen" is empty',
        6: 'field "prompt" must be text, got a number', 8: "got a number", 9: 'field "rejected" must be text, got null',
        10: "not valid UTF-8 (byte 0xe9",
    }
    for problem, (line, text) in zip(problems, expected.items()):
        assert problem.startswith(f"{path}:{line}: ") and text in problem, problem
    assert isinstance(info.value, ValueError)
    assert all(p in str(info.value) for p in problems)


def test_skip_keeps_every_valid_row_and_counts_the_rest(tmp_path):
    with pytest.warns(PairFileWarning, match="skipped 8 bad line"):
        pairs = load_pairs(bad_file(tmp_path), on_error="skip")
    assert pairs == [GOOD, {"prompt": "q", "chosen": "yes", "rejected": "no"}]


def test_ties_are_left_out_and_counted(tmp_path):
    rows = [GOOD, {"prompt": "p", "chosen": "same ", "rejected": " same"},
            {"prompt": "p", "chosen": "a", "rejected": "b", "label": "Tie"}, {"prompt": "p", "chosen": "a",
                                                                            "rejected": "b", "tie": True}]
    with pytest.warns(PairFileWarning, match="left out 3 tie"):
        assert load_pairs(write(tmp_path, jsonl(*rows))) == [GOOD]


def test_file_of_ties_only_is_an_error(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(PairFileError, match="all 2 row"):
            load_pairs(write(tmp_path, jsonl({"prompt": "p", "chosen": "x", "rejected": "x"}, {"prompt": "q",
                                              "chosen": "y", "rejected": "y"})))


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file_is_an_error(tmp_path, content):
    with pytest.raises(PairFileError, match="no usable pairs"):
        load_pairs(write(tmp_path, content))


def test_missing_file_and_bad_option(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_pairs(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="on_error"):
        load_pairs(write(tmp_path, jsonl(GOOD)), on_error="ignore")


def make_pairs(n, prompts=None):
    return [{"prompt": f"prompt {i if prompts is None else i % prompts}", "chosen": f"c{i}", "rejected": f"r{i}"}
            for i in range(n)]


def test_split_is_deterministic_disjoint_and_never_empty():
    pairs = make_pairs(50)
    train, test = split_pairs(pairs, 0.2, seed=0)
    assert (train, test) == split_pairs(pairs, 0.2, seed=0)
    assert split_pairs(pairs, 0.2, seed=1) != (train, test)
    assert len(test) == 10 and len(train) == 40
    assert sorted(map(str, train + test)) == sorted(map(str, pairs))
    for n in (2, 3):
        for fraction in (0.01, 0.5, 0.99):
            train, test = split_pairs(make_pairs(n), fraction)
            assert train and test and len(train) + len(test) == n


def test_split_keeps_pairs_of_one_prompt_together():
    train, test = split_pairs(make_pairs(40, prompts=8), 0.25, seed=3)
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in test}
    assert len(test) == 10


def test_split_rejects_too_little_data():
    with pytest.raises(ValueError, match="at least 2 pairs"):
        split_pairs(make_pairs(1))
    with pytest.raises(ValueError, match="identical"):
        split_pairs([GOOD, dict(GOOD)])


def test_bundled_sample_data():
    pairs = load_pairs(DATA / "dpo_pairs.jsonl")
    rows = [json.loads(line) for line in (DATA / "dpo_pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == len(rows) >= 120
    assert len({r["category"] for r in rows}) >= 8
    comparable = [p for p in pairs if 0.75 <= len(p["chosen"].split()) / len(p["rejected"].split()) <= 1.33]
    assert len(comparable) >= len(pairs) / 3
    assert len({p["prompt"] for p in pairs}) == len(pairs), "every prompt once, so held-out prompts are unseen"


def test_lab6_style_example_shows_the_loader_messages():
    path = DATA / "lab6_style_example.jsonl"
    with pytest.raises(PairFileError) as info:
        load_pairs(path)
    assert len(info.value.problems) >= 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert len(load_pairs(path, on_error="skip")) >= 3
    messages = [str(w.message) for w in caught if w.category is PairFileWarning]
    assert any("skipped 4 bad line" in m for m in messages) and any("left out 2 tie" in m for m in messages)
