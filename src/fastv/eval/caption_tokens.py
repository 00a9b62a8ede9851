"""Caption tokenisation for CIDEr: the PTB tokenizer pycocoevalcap uses when Java is present, else a fallback.

CIDEr counts n-grams, so the tokenizer is part of the metric: the COCO caption toolkit (pycocoevalcap)
runs Stanford CoreNLP's PTBTokenizer (Java) with `-preserveLines -lowerCase` and drops a fixed set of
punctuation tokens. We run the very jar pycocoevalcap ships, with the same options and the same
punctuation set, so scores equal its pipeline. Two differences, both on input the reference mangles:
all captions go through one Java process (its lines are independent), and every character Java
treats as a line break is turned into a space, not only "\\n" (the reference misaligns captions that
contain a "\\r").

Without Java the fallback below approximates PTB in Python (clitics split, numbers like 3.5 and
10:30 and hyphenated words kept, brackets as -lrb-/-rrb-); its scores are close, not equal, and the
summary says which tokenizer produced them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from fastv.core.errors import FastVError

PTB = "ptb"
FALLBACK = "fallback"
TOKENIZER_NOTES = {
    PTB: "PTB tokenizer (Stanford CoreNLP via Java, as pycocoevalcap)",
    FALLBACK: "fallback tokenizer (Java not found: an approximation of PTB; install a JRE, "
    "e.g. Debian's default-jre-headless, for scores comparable with pycocoevalcap)",
}

# pycocoevalcap's PUNCTUATIONS. Its bracket names are upper case while -lowerCase emits "-lrb-":
# brackets therefore stay in the reference's token stream, and in ours.
PTB_PUNCTUATION = frozenset(
    {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
)
PTB_CLASS = "edu.stanford.nlp.process.PTBTokenizer"
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\u2028\u2029]")


def ptb_jar() -> Path | None:
    """The Stanford CoreNLP jar pycocoevalcap ships, or None without pycocoevalcap."""
    try:
        import pycocoevalcap.tokenizer.ptbtokenizer as ptb
    except ImportError:
        return None
    jar = Path(ptb.__file__).parent / ptb.STANFORD_CORENLP_3_4_1_JAR
    return jar if jar.is_file() else None


def java() -> str | None:
    """The `java` executable on PATH, or None."""
    return shutil.which("java")


def available_tokenizer() -> str:
    """PTB where Java and pycocoevalcap's jar are present, else the fallback."""
    return PTB if java() is not None and ptb_jar() is not None else FALLBACK


def _drop_punctuation(line: str) -> str:
    return " ".join(w for w in line.rstrip().split(" ") if w not in PTB_PUNCTUATION)


def ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """Each text tokenised by PTBTokenizer, lowercased, pycocoevalcap's punctuation tokens removed."""
    exe, jar = java(), ptb_jar()
    if exe is None or jar is None:
        raise FastVError(
            "the PTB tokenizer needs `java` on PATH and pycocoevalcap: apt-get install default-jre-headless; "
            "pip install 'fastv-lvlm[eval]'"
        )
    if not texts:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "captions.txt"
        path.write_text("\n".join(_LINE_BREAKS.sub(" ", t) for t in texts), encoding="utf-8")
        cmd = [exe, "-cp", str(jar), PTB_CLASS, "-preserveLines", "-lowerCase", str(path)]
        proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        raise FastVError(f"the PTB tokenizer failed ({' '.join(cmd[:4])}): {proc.stderr.decode(errors='replace')}")
    lines = proc.stdout.decode("utf-8").split("\n")
    if len(lines) < len(texts) or any(line.strip() for line in lines[len(texts) :]):
        raise FastVError(f"the PTB tokenizer returned {len(lines)} lines for {len(texts)} captions")
    return [_drop_punctuation(line) for line in lines[: len(texts)]]


# ------------------------------------------------------------------------------------------ fallback

_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr vs etc inc co ltd jan feb mar apr jun jul aug sep sept oct nov dec".split()
)
_FALLBACK_TOKEN = re.compile(
    r"""
    -[lr][rsc]b-                                  # brackets, already renamed
    | \d+(?:[.,:/]\d+)*(?![^\W_])                 # 3.5  1,000  10:30  1/2
    | [^\W\d_]\.(?:[^\W\d_]\.)+                   # u.s.  a.m.
    | [^\W_]+(?=n't)                              # "do" of "don't"
    | n't | '(?:s|re|ve|ll|d|m)\b                 # clitics
    | [^\W_]+(?:[-_/][^\W_]+)*                    # words, 1st, black-and-white, e-mail, and/or
    | \.\.\.+ | --+ | ``|'' | [!?]{2,} | \S       # punctuation, one mark at a time
    """,
    re.VERBOSE,
)


def fallback_tokenize(texts: Sequence[str]) -> list[str]:
    """A Python approximation of pycocoevalcap's PTB pipeline, for machines without Java."""
    out = []
    for text in texts:
        text = re.sub(r"[()\[\]{}]", lambda m: f" {_BRACKETS[m.group()]} ", text.lower())
        tokens = _FALLBACK_TOKEN.findall(text)
        merged: list[str] = []
        for tok in tokens:  # "mr." keeps its period, as PTB does for known abbreviations
            if tok == "." and merged and merged[-1] in _ABBREVIATIONS:
                merged[-1] += "."
            else:
                merged.append(tok)
        out.append(" ".join(t for t in merged if t not in PTB_PUNCTUATION and t != '"'))
    return out


def tokenize_captions(texts: Sequence[str], tokenizer: str = "auto") -> tuple[list[str], str]:
    """Tokenised captions and the tokenizer that made them: `auto` (PTB when Java is present), `ptb`, `fallback`."""
    if tokenizer not in ("auto", PTB, FALLBACK):
        raise FastVError(f"unknown caption tokenizer {tokenizer!r}: use auto, {PTB} or {FALLBACK}")
    name = available_tokenizer() if tokenizer == "auto" else tokenizer
    return (ptb_tokenize(texts) if name == PTB else fallback_tokenize(texts)), name
