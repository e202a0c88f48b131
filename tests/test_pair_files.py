"""Every shape a Lab 6 app exports loads; every file that is not a pairs file gets one exact sentence."""

import csv
import io
import json
import random
import shutil
import warnings
import zipfile
from pathlib import Path

import pytest

from lab7_helpers import SAMPLE_DATA_DIR, PairFileError, PairFileWarning, load_pairs
from pair_file_helpers import GOOD, jsonl, write

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "examples"


def load_quietly(path, **kwargs):
    """The pairs, and the loader's warnings as text."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pairs = load_pairs(path, **kwargs)
    return pairs, [str(w.message) for w in caught if w.category is PairFileWarning]


def error_of(path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(PairFileError) as info:
            load_pairs(path, **kwargs)
    return info.value


# file -> (usable pairs, ties with identical responses, ties marked between different responses)
EXAMPLE_COUNTS = {
    "lab6_dpo_pairs.jsonl": (8, 0, 0),
    "lab6_array.json": (8, 0, 0),
    "lab6_export_object.json": (6, 0, 1),
    "lab6_full_records.jsonl": (6, 1, 1),
    "lab6_full_records.json": (7, 0, 1),
    "lab6_full_records.tsv": (7, 1, 0),
    "lab6_pairs.csv": (8, 0, 0),
    "trl_conversational.jsonl": (7, 0, 0),
    "trl_conversational_implicit.jsonl": (6, 0, 0),
}


def test_every_example_is_in_the_table_and_ships_with_the_package():
    assert sorted(p.name for p in EXAMPLES.iterdir()) == sorted(EXAMPLE_COUNTS)
    assert (SAMPLE_DATA_DIR / "examples").is_dir()


@pytest.mark.parametrize("name", EXAMPLE_COUNTS)
def test_each_example_loads_with_its_ties_counted_and_explained(name):
    expected_pairs, identical, marked = EXAMPLE_COUNTS[name]
    pairs, notes = load_quietly(EXAMPLES / name)
    assert len(pairs) == expected_pairs
    assert all(set(p) == {"prompt", "chosen", "rejected"} and all(p.values()) for p in pairs)
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    ties = [n for n in notes if "tie(s)" in n]
    if identical or marked:
        assert len(ties) == 1 and f"left out {identical + marked} tie(s)" in ties[0]
        assert ("zero gradient" in ties[0]) == bool(identical)
        assert ("arbitrary way" in ties[0]) == bool(marked)
    else:
        assert notes == []


@pytest.mark.parametrize("name", EXAMPLE_COUNTS)
def test_the_shape_comes_from_the_content_not_the_file_name(name, tmp_path):
    for suffix in (".jsonl", ".json", ".csv", ".txt"):
        renamed = shutil.copy(EXAMPLES / name, tmp_path / f"export{suffix}")
        assert load_quietly(renamed)[0] == load_quietly(EXAMPLES / name)[0]


def test_full_records_pick_the_preferred_response():
    record = json.loads((EXAMPLES / "lab6_full_records.jsonl").read_text().splitlines()[2])
    assert record["preference"] == "B"
    pairs, _ = load_quietly(EXAMPLES / "lab6_full_records.jsonl")
    assert {"prompt": record["prompt"], "chosen": record["response_B"], "rejected": record["response_A"]} in pairs


def test_csv_keeps_quoted_commas_quotes_and_line_breaks():
    pairs, _ = load_quietly(EXAMPLES / "lab6_pairs.csv")
    assert pairs[0]["chosen"].startswith("Dear Professor Lee,\n\nI took") and "\r" not in pairs[0]["chosen"]
    assert '"Based on the market range' in pairs[1]["chosen"]


def test_conversational_rows_keep_the_user_turns_as_prompt_and_the_assistant_turns_as_responses():
    pairs, _ = load_quietly(EXAMPLES / "trl_conversational.jsonl")
    assert pairs[0]["prompt"] == "Can you help me plan a week of cheap dinners?"  # not the system turn
    assert pairs[2]["prompt"] == "I want to start running.\n\nNot very. I get out of breath quickly."
    implicit, _ = load_quietly(EXAMPLES / "trl_conversational_implicit.jsonl")
    assert implicit[0] == {"prompt": "Which is healthier, brown or white rice?",
                           "chosen": implicit[0]["chosen"], "rejected": "White rice is poison."}


@pytest.mark.parametrize("keys", [("response_A", "response_B"), ("response_a", "response_b"),
                                  ("response1", "response2"), ("Response 1", "Response 2")])
@pytest.mark.parametrize("preference, winner", [("A", 0), ("B", 1), ("a", 0), ("b", 1), ("1", 0), ("2", 1),
                                                (1, 0), (2, 1), ("response_A", 0), ("Response B", 1),
                                                ("response2", 1)])
def test_full_record_keys_and_preference_values(tmp_path, keys, preference, winner):
    row = {"prompt": "p", keys[0]: "first", keys[1]: "second", "preference": preference}
    assert load_pairs(write(tmp_path, jsonl(row))) == [
        {"prompt": "p", "chosen": ["first", "second"][winner], "rejected": ["first", "second"][1 - winner]}]


def test_full_record_problems_name_the_field(tmp_path):
    rows = [{"prompt": "p", "response_A": "x", "response_B": "y", "preference": "A"},
            {"prompt": "p", "response_A": "x", "response_B": "y", "preference": "C"},
            {"prompt": "p", "response_A": "x", "response_B": "y"},
            {"prompt": "p", "response_A": "x", "preference": "A"},
            {"prompt": "p", "response1": "x", "response2": "y", "winner": ""},
            {"prompt": "p", "response_A": "x", "response_B": "y", "preference": 0}]
    problems = error_of(write(tmp_path, jsonl(*rows))).problems
    assert [p.split(": ", 1)[1] for p in problems] == [
        'field "preference" should be A, B or tie (response_A or response_B), got "C"',
        'missing field "preference" (A, B or tie)',
        'missing field "response_B"',
        'field "winner" is empty',
        'field "preference" should be A, B or tie (response_A or response_B), got 0']


def test_conversational_problems_name_the_field(tmp_path):
    user, assistant = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}
    rows = [{"prompt": [user], "chosen": [assistant], "rejected": [{"role": "assistant", "content": "bye"}]},
            {"prompt": [user], "chosen": [user], "rejected": [assistant]},
            {"prompt": [user], "chosen": ["hello"], "rejected": [assistant]},
            {"chosen": [assistant], "rejected": [{"role": "assistant", "content": "bye"}]}]
    problems = error_of(write(tmp_path, jsonl(*rows))).problems
    assert [p.split(": ", 1)[1] for p in problems] == [
        'field "chosen" has no assistant message',
        'field "chosen" must be text or a list of {"role", "content"} messages',
        'missing field "prompt" (and the "chosen" and "rejected" conversations share no opening turns to use as '
        'the prompt)']


def test_ties_in_every_shape_are_told_apart(tmp_path):
    rows = [GOOD, {"prompt": "p", "response_a": "x", "response_b": "y", "preference": "tie"},
            {"prompt": "p", "response_a": "same", "response_b": "same ", "preference": "A"},
            {"prompt": "p", "chosen": "x", "rejected": "y", "tie": True}]
    pairs, notes = load_quietly(write(tmp_path, jsonl(*rows)))
    assert pairs == [GOOD]
    assert notes == [f"{tmp_path / 'pairs.jsonl'}: left out 3 tie(s), which say nothing about which response is "
                     "better: 1 with two identical responses (DPO gets zero gradient from them) and 2 marked as a "
                     "tie between different responses (training on them would push the model one arbitrary way)."]


JSON_ARRAY_WITH_MISTAKES = """[
  {"prompt": "p1", "chosen": "c1", "rejected": "r1"},
  {"prompt": "p2", "chosen": "c2",
   "rejected": "r2" "oops": 1},
  {"prompt": "p3",
   "rejected": "r3"},
  {"prompt": "p4", "chosen": "c4", "rejected": "r4"}
  {"prompt": "p5", "chosen": "c5", "rejected": "r5"},
  "just text"
]
"""


def test_a_json_array_names_each_bad_element_by_line_and_number_and_keeps_the_rest(tmp_path):
    path = write(tmp_path, JSON_ARRAY_WITH_MISTAKES, "pairs.json")
    assert error_of(path).problems == [
        f"{path}:3 (element 2): not valid JSON (Expecting ',' delimiter at line 4, column 21)",
        f'{path}:5 (element 3): missing field "chosen"',
        f"{path}:7 (element 4): missing a comma after this element",
        f'{path}:9 (element 6): expected a JSON object with "prompt", "chosen" and "rejected", got text']
    pairs, notes = load_quietly(path, on_error="skip")
    assert [p["prompt"] for p in pairs] == ["p1", "p4", "p5"]
    assert notes == [f"{path}: skipped 4 bad line(s); first: {path}:3 (element 2): not valid JSON "
                     "(Expecting ',' delimiter at line 4, column 21)"]


def test_an_object_holding_one_list_names_the_list(tmp_path):
    content = json.dumps({"app": "x", "count": 2, "pairs": [GOOD, {"prompt": "q"}]}, indent=1)
    path = write(tmp_path, content, "export.json")
    problem, = error_of(path).problems
    assert problem == f'{path}:10 (element 2 of "pairs"): missing fields "chosen", "rejected" (found "prompt")'
    assert load_quietly(path, on_error="skip")[0] == [GOOD]


@pytest.mark.parametrize("document, sentence", [
    ({"train": [GOOD], "test": [GOOD]}, 'holds a JSON object with 2 lists ("train", "test"): keep only the list'),
    ({"app": "x", "version": 2}, 'no row has the fields of a preference pair (found "app", "version")'),
])
def test_a_json_object_without_exactly_one_list_is_one_sentence(tmp_path, document, sentence):
    path = write(tmp_path, json.dumps(document, indent=2), "export.json")
    error = error_of(path)
    assert str(error).startswith(f"{path}: {sentence}") and "\n" not in str(error)


@pytest.mark.parametrize("content", [
    jsonl({"question": "q", "good": "a", "bad": "b"}, {"question": "q2", "good": "a", "bad": "b", "label": "A"}),
    "question,good,bad\nq,a,b\nno commas here\n",
    json.dumps([{"question": "q", "good": "a", "bad": "b"}], indent=2),
])
def test_unknown_shape_is_one_sentence_naming_the_keys_and_the_shapes_understood(tmp_path, content):
    error = error_of(write(tmp_path, content))
    assert str(error) == (
        f'{tmp_path / "pairs.jsonl"}: no row has the fields of a preference pair (found "question", "good", '
        '"bad"): each row needs "prompt", "chosen" and "rejected" (text, or TRL conversational messages), or '
        '"prompt", two responses (response_A/response_B, response_a/response_b or response1/response2) and a '
        '"preference" (A, B or tie), in JSONL, JSON, or CSV/TSV with a header line')


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_delimited_text_is_sniffed_and_bad_rows_are_named_by_line(tmp_path, delimiter):
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, delimiter=delimiter)
    writer.writerows([["Prompt", "Chosen", "Rejected"], ["p, with a comma", "multi\nline", "bad"],
                      ["q", "", "bad"], ["r", "yes", "no"]])
    content = buffer.getvalue() + f"s{delimiter}a{delimiter}b{delimiter}extra\n"
    path = write(tmp_path, content, "pairs.csv")
    assert error_of(path).problems == [f'{path}:4: field "Chosen" is empty',
                                       f"{path}:6: has 4 field(s) but the header has 3; a text holding the "
                                       "delimiter must be in double quotes"]
    assert load_quietly(path, on_error="skip")[0] == [
        {"prompt": "p, with a comma", "chosen": "multi\nline", "rejected": "bad"},
        {"prompt": "r", "chosen": "yes", "rejected": "no"}]


def test_csv_with_an_unclosed_quote_names_the_line(tmp_path):
    path = write(tmp_path, 'prompt,chosen,rejected\np,yes,no\nq,"never closed,no\nr,yes,no\n', "pairs.csv")
    assert error_of(path).problems == [f'{path}:3: a quoted field opened on line 3 is never closed (a missing ")']


def test_long_error_lists_are_cut_after_ten(tmp_path):
    path = write(tmp_path, jsonl(GOOD, *[{"prompt": "p", "chosen": "c"}] * 25))
    error = error_of(path)
    assert len(error.problems) == 25
    assert str(error).count('missing field "rejected"') == 10 and "  ... and 15 more\n" in str(error)


def test_rows_nested_1000_deep_huge_numbers_and_lone_surrogates_are_named(tmp_path):
    deep = '{"prompt": "p", "chosen": ' + "[" * 1000 + "]" * 1000 + ', "rejected": "r"}'
    rows = [json.dumps(GOOD), deep, '{"prompt": "p", "chosen": ' + "9" * 5000 + ', "rejected": "r"}',
            '{"prompt": "p", "chosen": "ok", "rejected": "bad \\ud800 text"}']
    for content, name, where in [(jsonl(*rows), "pairs.jsonl", ["2", "3", "4"]),
                                 ("[\n" + ",\n".join(rows) + "\n]\n", "pairs.json",
                                  ["3 (element 2)", "4 (element 3)", "5 (element 4)"])]:
        path = write(tmp_path, content, name)
        assert error_of(path).problems == [
            f"{path}:{where[0]}: nested too deeply to read (a row is one flat object of texts)",
            f"{path}:{where[1]}: holds a number too long to read (more than 4300 digits)",
            f'{path}:{where[2]}: field "rejected" contains an invalid character (a lone surrogate)']
        assert load_quietly(path, on_error="skip")[0] == [GOOD]


def test_a_whole_json_document_nested_too_deep_is_named_not_a_traceback(tmp_path):
    path = write(tmp_path, "[" * 100_000 + "]" * 100_000, "deep.json")
    assert error_of(path).problems == [f"{path}:1 (element 1): nested too deeply to read (a row is one flat "
                                       "object of texts)"]


@pytest.mark.parametrize("encode, encoding", [
    (lambda text: text.encode("utf-16"), "UTF-16 (it starts with a UTF-16 byte-order mark)"),
    (lambda text: text.encode("utf-16-le"), "UTF-16LE (every other byte is zero)"),
    (lambda text: text.encode("utf-16-be"), "UTF-16BE (every other byte is zero)"),
    (lambda text: text.encode("utf-32"), "UTF-32 (it starts with a UTF-32 byte-order mark)"),
])
def test_utf16_and_utf32_files_say_so_and_how_to_convert(tmp_path, encode, encoding):
    path = write(tmp_path, encode(jsonl(GOOD, GOOD)), "my pairs.jsonl")
    command = encoding.split(" ")[0]
    assert str(error_of(path)) == (f"{path}: is saved as {encoding}, not UTF-8: save it as UTF-8, or convert it "
                                   f'with iconv -f {command} -t UTF-8 "my pairs.jsonl" > "my pairs_utf8.jsonl"')


def test_windows_1252_lines_are_named_with_how_to_convert(tmp_path):
    content = "prompt,chosen,rejected\nCafé?,Oui,Non\nq,yes,no\nNaïve?,Sí,No\n".encode("cp1252")
    path = write(tmp_path, content, "pairs.csv")
    error = error_of(path)
    assert error.problems == [f"{path}:2: not valid UTF-8 (byte 0xe9 at column 4)",
                              f"{path}:4: not valid UTF-8 (byte 0xef at column 3)"]
    assert str(error).endswith("The lines that are not UTF-8 look like Windows-1252 (Latin-1) text: save the "
                               'file as UTF-8 (Excel: CSV UTF-8), or convert it with iconv -f WINDOWS-1252 -t UTF-8 "pairs.csv" '
                               '> "pairs_utf8.csv"')
    assert load_quietly(path, on_error="skip")[0] == [{"prompt": "q", "chosen": "yes", "rejected": "no"}]


def test_binary_files_are_not_pairs_files(tmp_path):
    noise = write(tmp_path, random.Random(0).randbytes(20_000), "pairs.jsonl")
    assert str(error_of(noise)) == (f"{noise}: is not a pairs file: it holds binary data, not text (a pairs file "
                                    "is JSONL, JSON, CSV or TSV text)")
    no_zero_bytes = write(tmp_path, bytes(b for b in random.Random(1).randbytes(20_000) if b), "noise.csv")
    assert str(error_of(no_zero_bytes)).startswith(f"{no_zero_bytes}: is not a pairs file: most of it is not text")
    workbook = tmp_path / "pairs.xlsx"
    with zipfile.ZipFile(workbook, "w") as archive:
        archive.writestr("xl/workbook.xml", "<workbook/>")
    assert str(error_of(workbook)) == (f"{workbook}: is not a pairs file: it is a ZIP archive (an Excel .xlsx "
                                       "workbook is one); export the sheet as CSV UTF-8 instead")


def test_a_folder_is_not_a_file(tmp_path):
    write(tmp_path, jsonl(GOOD), "dpo_pairs.jsonl")
    with pytest.raises(IsADirectoryError) as info:
        load_pairs(tmp_path)
    assert str(info.value) == (f"{tmp_path} is a folder, not a file: give the path of the pairs file in it "
                               "(it holds dpo_pairs.jsonl)")


def test_pretty_printed_rows_one_after_another_all_load(tmp_path):
    rows = [GOOD, {"prompt": "q", "chosen": "yes"}, {"prompt": "r", "chosen": "yes", "rejected": "no"}]
    path = write(tmp_path, "".join(json.dumps(row, indent=2) + "\n" for row in rows), "pairs.json")
    assert error_of(path).problems == [f'{path}:6: missing field "rejected"']
    assert load_quietly(path, on_error="skip")[0] == [GOOD, {"prompt": "r", "chosen": "yes", "rejected": "no"}]


def test_python_dicts_instead_of_json_say_so(tmp_path):
    path = write(tmp_path, str(GOOD) + "\n" + json.dumps(GOOD) + "\n")
    assert error_of(path).problems == [f"{path}:1: not valid JSON (Expecting property name enclosed in double "
                                       "quotes at column 2); it looks like a Python dict: write rows with "
                                       "json.dumps(row), not str(row)"]
