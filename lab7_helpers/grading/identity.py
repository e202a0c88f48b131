"""Whose hand-in is whose. A row of grades.csv belongs to the file handed in, never to a name typed inside it.

- **Identity comes from the file's name**, which the instructor's download gives it: ``alice (1).ipynb``,
  ``Copy of alice.ipynb`` and ``alice_answers.json`` are alice's. A generic name (``lab7.ipynb``,
  ``lab7_answers.json``) takes the name of its folder (``alice/lab7.ipynb``), unless that folder holds several
  notebooks with generic names (a class folder of ``Copy of lab7 (3).ipynb`` files): there each keeps its own name.
  Files of one identity are one student's attempts.
- **A name typed inside** (``STUDENT_NAME``, an answers file's ``student``) is only a label. When it names another
  hand-in, or another hand-in types the same name, both rows say so: the grader never merges, replaces or
  re-files a row because of it. Names that differ only by look-alike letters (Cyrillic "а" for Latin "a", accents)
  are flagged the same way. The instructor resolves a conflict by renaming the files (or putting each student's
  files in a folder named after them) and grading again.

Every name is cleaned before it is compared or written (``clean_name``): Unicode NFKC, invisible characters
(controls, zero-width and bidirectional marks) removed, whitespace collapsed.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

INVISIBLE = ("Cc", "Cf", "Co", "Cn", "Cs")  # controls, format (zero-width, bidirectional), private, unassigned
# Lower-case Cyrillic and Greek letters drawn like Latin ones (after casefold; Unicode's confusables, abridged)
CONFUSABLES = str.maketrans("аЬеорсухіјѕԁԛԝɡαοριυνκτ", "abeopcyxijsdqwgaopiuvkt")
GENERIC_STEM = re.compile(r"(copy of )?(lab[ _-]?7|untitled\d*)([ _-]?(answers|solution|notebook))?", re.I)
MAX_NAME = 200


def clean_name(text: str) -> str:
    """``text`` as a name to show and compare: NFKC, invisible characters removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", str(text))
    kept = (" " if ch.isspace() else "" if unicodedata.category(ch) in INVISIBLE else ch for ch in text)
    return " ".join("".join(kept).split())[:MAX_NAME]


def name_key(text: str) -> str:
    """Two names are the same name when their keys are equal (``clean_name``, case-folded)."""
    return clean_name(text).casefold()


def look_alike_key(text: str) -> str:
    """What a name looks like: accents dropped, Cyrillic and Greek letters that look Latin read as Latin."""
    decomposed = unicodedata.normalize("NFKD", name_key(text).translate(CONFUSABLES))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def name_from_file(path: Path) -> str | None:
    """``alice (1).ipynb``, ``Copy of alice.ipynb``, ``alice_answers.json`` -> ``alice``; None for a generic name
    such as ``lab7.ipynb`` or ``Copy of lab7 (2).ipynb``, which says nothing of whose it is."""
    stem = re.sub(r"^copy of ", "", path.stem.strip(), flags=re.I)
    stem = re.sub(r"\s*\(\d+\)$", "", stem)
    stem = re.sub(r"[ _-]*(lab[ _-]?7)?[ _-]*answers$", "", stem, flags=re.I) or stem
    return None if GENERIC_STEM.fullmatch(stem) else clean_name(stem)


def identities(paths: list[Path]) -> list[str]:
    """Each file's identity: ``name_from_file``, else its folder's name, else (in a folder of several notebooks
    with generic names) its own name."""
    generic = [path.resolve().parent for path in paths if path.suffix == ".ipynb" and name_from_file(path) is None]
    return [name_from_file(path) or clean_name(path.stem if generic.count(path.resolve().parent) > 1
                                               else path.resolve().parent.name) for path in paths]


def conflicts(identities: list[str], labels: list[list[str]], files: list[str]) -> list[list[str]]:
    """For each hand-in (its identity, the names typed in its files, its graded file's name): the sentences that
    say which other hand-in its names collide with. An empty list: no conflict."""
    found: list[list[str]] = [[] for _ in identities]
    owner = {name_key(identity): i for i, identity in enumerate(identities)}
    typed: dict[str, list[int]] = {}
    for i, names in enumerate(labels):
        for label in dict.fromkeys(names):
            key = name_key(label)
            if key and key != name_key(identities[i]):
                typed.setdefault(key, []).append(i)
                j = owner.get(key)
                if j is not None:
                    found[i].append(f"the name typed in it, {clean_name(label)!r}, is that of another hand-in "
                                    f"({files[j]})")
                    found[j].append(f"{files[i]} (another hand-in) has this student's name typed in it")
    for hands in typed.values():
        for i in hands:
            others = [files[j] for j in dict.fromkeys(hands) if j != i]
            if others:
                found[i].append(f"the name typed in it is also typed in {', '.join(others)}")
    shapes: dict[str, set[str]] = {}
    for name in [*identities, *(label for names in labels for label in names)]:
        if name_key(name):
            shapes.setdefault(look_alike_key(name), set()).add(clean_name(name))
    for i, names in enumerate(labels):
        for name in dict.fromkeys([identities[i], *names]):
            twins = {n for n in shapes.get(look_alike_key(name), ()) if name_key(n) != name_key(name)}
            if twins:
                found[i].append(f"{clean_name(name)!r} looks like {', '.join(map(repr, sorted(twins)))} but its "
                                "letters differ (look-alike or accented letters)")
    return [list(dict.fromkeys(sentences)) for sentences in found]
