"""Derives our small cs/en model from py3langid's; run in a child process of its own.

    python -m maildesk.language_derive PACKED OUT cs,en

py3langid's model (68 MB unpacked) is a byte automaton over 104,583 states with a
feature number per state, and one weight per feature and language. What it
counts is simpler than the automaton: at each byte of the text, the longest
feature (a byte string of 2 to 6 bytes) that ends there, if any. So for two
languages all we need is each feature's bytes and its two weights, and the two
priors, which `language_model.TwoLanguages` looks up without the automaton.

The derivation reads the whole model (a peak of about 110 MB), so it runs in a
short-lived process: no worker ever holds it. It proves what it relies on before
writing anything: that the automaton is the trie of its states' strings with
Aho-Corasick moves (the state after each byte is the longest suffix of the text
that is a state's string), that each state's feature is the longest feature that
ends its string, and that a few texts get py3langid's own guess and confidence
to the last bit. Another layout or another way of counting fails here, and the
worker guesses no language instead of guessing differently.
"""

from __future__ import annotations

import lzma
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from maildesk.language_model import LONGEST, SLOT_BITS, TwoLanguages, code_tag, hashed

Array = np.ndarray[Any, Any]

# Texts the derived model must classify exactly as py3langid does.
SAMPLES = (
    "Dobrý den, tiskárna ve druhém patře od rána tiskne jen prázdné stránky.",
    "Dobry den, tiskarna ve druhem patre od rana tiskne jen prazdne stranky.",
    "Hello, the printer on the second floor prints only blank pages since this morning.",
    "Guten Tag, der Drucker im zweiten Stock druckt seit heute Morgen nur leere Seiten.",
    "DOBRÝ DEN, FAKTURA 2026/114 JE ŠPATNĚ, the total is wrong 😀",
    "<p>Ahoj &amp; hello</p>",
    "",
)


def derive(packed: Path, out: Path, languages: list[str]) -> None:
    """Write the small model for `languages` derived from py3langid's file `packed` to `out`."""
    with tempfile.TemporaryFile(dir=out.parent, suffix=".npz") as unpacked:
        with lzma.open(packed) as source:
            shutil.copyfileobj(source, unpacked, length=1 << 20)
        unpacked.seek(0)
        with np.load(unpacked, allow_pickle=False) as model:
            classes = model["classes"].tolist()
            # The languages in the model's order, as py3langid's set_languages keeps them.
            keep = sorted(classes.index(language) for language in languages)
            weights = np.ascontiguousarray(model["ptc"][:, keep])
            priors = np.ascontiguousarray(model["pc"][keep])
            moves = model["nextmove"].reshape(-1, 256)
            row = model["nextmove_row"].astype(np.intp)
            output = model["out_feat"].astype(np.intp)
    names = [classes[i] for i in keep]
    depth, code = _strings(moves, row)
    _check_moves(moves, row, depth, code)
    features = _features(output, depth, code, len(weights))
    small = _build(features, weights, priors, names)
    _check_against_py3langid(small, moves, row, output, weights, priors, names)
    with open(out, "wb") as file:
        small.save(file)


def _strings(moves: Array, row: Array) -> tuple[Array, Array]:
    """Each state's depth and string (as a code), breadth first from the start state.

    In a trie the one path of a state's depth that reaches it spells its string; a
    state reached twice on one level, or deeper than `LONGEST`, is another automaton."""
    states = len(row)
    depth = np.full(states, -1, np.intp)
    code = np.zeros(states, np.uint64)
    depth[0] = 0
    frontier = np.zeros(1, np.intp)
    level = 0
    while frontier.size:
        level += 1
        parents, letters, found = [], [], []
        for start in range(0, len(frontier), 4096):
            chunk = frontier[start : start + 4096]
            targets = moves[row[chunk]]
            parent, letter = np.nonzero(depth[targets] < 0)
            parents.append(chunk[parent])
            letters.append(letter)
            found.append(targets[parent, letter])
        new = np.concatenate(found).astype(np.intp)
        if not new.size:
            break
        if level > LONGEST or len(np.unique(new)) != len(new):
            raise ValueError("the automaton is not a trie of strings of up to 6 bytes")
        depth[new] = level
        body = (code[np.concatenate(parents)] & np.uint64((1 << 48) - 1)) << np.uint64(8)
        code[new] = body | np.concatenate(letters).astype(np.uint64) | code_tag(level)
        frontier = new
    if (depth < 0).any():
        raise ValueError("states the start state never reaches")
    return depth, code


def _suffix(code: Array, length: int) -> Array:
    """The codes of the last `length` bytes of strings (coded by `code`)."""
    return (code & np.uint64((1 << (8 * length)) - 1)) | code_tag(length)


def _find(table: Array, codes: Array) -> Array:
    """Where each code is in the sorted `table`, or -1."""
    at = np.minimum(np.searchsorted(table, codes), len(table) - 1)
    return np.where(table[at] == codes, at, -1)


def _check_moves(moves: Array, row: Array, depth: Array, code: Array) -> None:
    """Every move is Aho-Corasick's: a state's own child, else the move of its
    longest proper suffix that is a state (the start state's: the start state). So
    the state after each byte is the longest suffix of the text that is a state."""
    order = np.argsort(code)
    table = code[order]
    fallback = np.zeros(len(row), np.intp)  # a one-byte state's: the start state
    for length in range(LONGEST - 1, 0, -1):
        shorter = (depth > length) & (fallback == 0)
        at = _find(table, _suffix(code[shorter], length))
        fallback[np.flatnonzero(shorter)[at >= 0]] = order[at[at >= 0]]
    for start in range(0, len(row), 4096):
        states = np.arange(start, min(start + 4096, len(row)))
        own, inherited = moves[row[states]], moves[row[fallback[states]]]
        inherited[states == 0] = 0
        state, letter = np.nonzero(own != inherited)
        # Where they differ it must be a child: one level deeper (its string, as proven).
        if (depth[own[state, letter]] != depth[states[state]] + 1).any():
            raise ValueError("the automaton's moves are not Aho-Corasick's")


def _features(output: Array, depth: Array, code: Array, count: int) -> Array:
    """Each feature's code: the string of the shallowest state that counts it; checks
    that every state counts the longest feature that ends its string."""
    counted = np.flatnonzero(output >= 0)
    shallowest = counted[np.lexsort((depth[counted], output[counted]))]
    first = np.ones(len(shallowest), bool)
    first[1:] = output[shallowest[1:]] != output[shallowest[:-1]]
    shallowest = shallowest[first]
    if not np.array_equal(output[shallowest], np.arange(count)):
        raise ValueError("features no state counts")
    features = code[shallowest]
    order = np.argsort(features)
    table = features[order]
    expected = np.full(len(output), -1, np.intp)
    for length in range(2, LONGEST + 1):  # longer ones last: the longest wins
        long_enough = np.flatnonzero(depth >= length)
        at = _find(table, _suffix(code[long_enough], length))
        expected[long_enough[at >= 0]] = order[at[at >= 0]]
    if not np.array_equal(expected, output):
        raise ValueError("a state counts another feature than the longest one it ends with")
    return features


def _build(features: Array, weights: Array, priors: Array, names: list[str]) -> TwoLanguages:
    """The lookup table: two slots a feature can be in (cuckoo hashing), filled by
    moving a feature to its other slot to make room. Features are numbered by their
    code, so that a longer feature has a larger number."""
    order = np.argsort(features)
    size = 1 << SLOT_BITS
    seeds = random.Random(0)  # the same table from the same model
    for _ in range(20):
        multipliers = np.array([seeds.getrandbits(64) | 1 for _ in range(2)], np.uint64)
        homes = np.stack([hashed(features[order], m) for m in multipliers], axis=1).tolist()
        numbers = [-1] * size
        if all(_insert(n, homes, numbers) for n in range(len(features))):
            taken = np.array(numbers, np.int32)
            keys = np.where(taken >= 0, features[order][taken], 0).astype(np.uint64)
            return TwoLanguages(
                keys, taken, np.ascontiguousarray(weights[order]), priors, names, multipliers
            )
    raise ValueError("no hash table found for the features")


def _insert(number: int, homes: list[list[int]], numbers: list[int]) -> bool:
    """Put feature `number` in its first slot; the one it displaces goes to its other
    slot, and so on. False: a cycle (another pair of hash functions is tried)."""
    slot = homes[number][0]
    for _ in range(500):
        numbers[slot], number = number, numbers[slot]
        if number < 0:
            return True
        first, second = homes[number]
        slot = second if slot == first else first
    return False


def _check_against_py3langid(
    small: TwoLanguages,
    moves: Array,
    row: Array,
    output: Array,
    weights: Array,
    priors: Array,
    names: list[str],
) -> None:
    from py3langid.langid import LanguageIdentifier

    reference = LanguageIdentifier(
        weights,
        priors,
        names,
        np.ascontiguousarray(moves).reshape(-1).data,
        output.tolist(),
        norm_probs=True,
        tk_row=row.tolist(),
    )
    for text in SAMPLES:
        if small.classify(text) != reference.classify(text):
            raise ValueError(f"another guess than py3langid's for {text!r}")


def main(argv: list[str]) -> int:
    """An error ends the process with its traceback: the caller reports the last line."""
    if len(argv) != 3:
        print(__doc__.splitlines()[2].strip(), file=sys.stderr)
        return 2
    packed, out, languages = argv
    derive(Path(packed), Path(out), languages.split(","))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
