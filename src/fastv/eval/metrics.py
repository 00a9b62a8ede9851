"""Answer scoring: VQA soft accuracy, exact match, multiple-choice accuracy, CIDEr-D.

Each score follows a reference implementation, so numbers are comparable with published ones; where
fastv chooses otherwise the docstring names the choice (`fastv eval --vqa-compat official` undoes VQA's):

- VQA accuracy: the VQA challenge's `vqaEval.py` (answer normalisation in `fastv.eval.vqa_answers`,
  leave-one-out min(1, matches/3)). Default compat: both sides are always normalised, as lmms-eval's
  vqav2 task does, and a single reference answer is scored by normalised exact match. `official`
  compat is the script to the letter: when all references are identical it compares the raw
  prediction ("yes." scores 0 against ten "yes"), and one reference always scores 0 (no other
  annotator to agree with).
- Multiple choice: lmms-eval 0.7.3's MMBench parser (`MMBench_Evaluator.can_infer`, then
  `extract_mcq_answer` as its static evaluation does), except that an answer naming two or more
  options is wrong.
- CIDEr-D: pycocoevalcap's `Cider` on PTB-tokenised captions (`fastv.eval.caption_tokens`).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from fastv.core.errors import FastVError
from fastv.eval.caption_tokens import tokenize_captions
from fastv.eval.vqa_answers import clean_whitespace, normalize_vqa, process_digit_article, process_punctuation

# --------------------------------------------------------------------------- VQA

VQA_COMPAT = ("default", "official")


def _leave_one_out(prediction: str, references: Sequence[str]) -> float:
    """Mean over annotators of min(1, matches among the *other* annotators / 3)."""
    scores = [
        min(1.0, sum(1 for j, r in enumerate(references) if j != i and r == prediction) / 3)
        for i in range(len(references))
    ]
    return sum(scores) / len(scores)


def vqa_accuracy(prediction: str, answers: Sequence[str], compat: str = "default") -> float:
    """VQA soft accuracy: with 10 answers the official VQAv2 score (2 "yes" out of 10 gives 0.6).

    compat="default": prediction and references always normalised (as lmms-eval's vqav2 task), a single
    reference scored by normalised exact match. compat="official": `vqaEval.py` exactly, which
    normalises only when the references disagree and gives 0 with a single reference.
    """
    if not answers:
        raise FastVError("vqa_accuracy needs at least one reference answer")
    if compat == "official":
        pred, refs = clean_whitespace(prediction), [clean_whitespace(a) for a in answers]
        if len(set(refs)) > 1:
            pred = process_digit_article(process_punctuation(pred))
            refs = [process_digit_article(process_punctuation(r)) for r in refs]
        return _leave_one_out(pred, refs)
    if compat != "default":
        raise FastVError(f"unknown VQA compat {compat!r}: use {' or '.join(VQA_COMPAT)}")
    pred, refs = normalize_vqa(prediction), [normalize_vqa(a) for a in answers]
    if len(refs) == 1:
        return float(pred == refs[0])
    return _leave_one_out(pred, refs)


# --------------------------------------------------------------------------- exact match


def normalize_text(text: str) -> str:
    """Light normalisation for exact match: lowercase, collapse spaces, strip surrounding punctuation."""
    return " ".join(text.lower().split()).strip(string.punctuation + " ")


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the prediction equals any reference after `normalize_text`."""
    pred = normalize_text(prediction)
    return float(any(pred == normalize_text(a) for a in answers))


# --------------------------------------------------------------------------- multiple choice

LETTERS = string.ascii_uppercase
# MMBench's parser looks for the letters A-E whatever the number of options (a letter past the options
# then counts as wrong); with more options we look for all of theirs.
MMBENCH_LETTERS = 5
# The letter forms `can_infer_option` accepts, as (prefix, suffix), after a bare "B".
_LETTER_FORMS = (
    ("", "."),
    ("", ","),
    ("", ":"),
    ("", ")"),
    ("", ")."),
    ("(", ")"),
    ("(", ")."),
    (":", ""),
    (":", ","),
    (":", "."),
    (":", ")"),
    (":", ")."),
)
# extract_mcq_answer's phrases and formats; the higher the rank, the surer the reading.
_ANSWER_PHRASES = (
    "the answer is",
    "answer is",
    "the correct answer is",
    "correct answer is",
    "the best answer is",
    "best answer is",
    "the correct option is",
    "correct option is",
    "the best option is",
    "best option is",
    "the choice is",
    "choice is",
    "the correct choice is",
    "correct choice is",
    "i choose",
    "i select",
    "i pick",
    "my answer is",
    "my choice is",
    "옵션",
    "정답은",
    "답은",
    "답:",
    "答案是",
    "答案为",
    "选",
    "答えは",
)
_FORMATS = (("({})", 6), ("{}.", 5), ("{}:", 4), ("{})", 3), ("{} ", 2))  # (pattern, rank)
_PHRASE_RANK, _START_RANK, _END_RANK, _ANYWHERE_RANK = 7, 10, 9, 0
_LETTER_MARKS = "()[]*.,:;!?\"'"


def _option_letter(tokens: list[str], letters: str) -> str | None:
    """`can_infer_option`: a letter standing alone, or in exactly one of the accepted forms."""
    bare = [c for c in letters if c in tokens]
    # A lone "A" in a longer answer may be the article: MMBench then only trusts marked letters.
    if len(bare) == 1 and not ("A" in tokens and len(tokens) > 3):
        return bare[0]
    for prefix, suffix in _LETTER_FORMS:
        marked = [c for c in letters if prefix + c + suffix in tokens]
        if len(marked) == 1:
            return marked[0]
    return None


def _option_text(answer: str, choices: Sequence[str]) -> str | None:
    """`can_infer_text`: the one option whose text occurs in the answer (case-insensitive)."""
    hits = [LETTERS[i] for i, c in enumerate(choices) if str(c).lower() in answer.lower()]
    return hits[0] if len(hits) == 1 else None


def _extracted_letter(answer: str, letters: str) -> str | None:
    """`extract_mcq_answer`: every reading of a letter ranked by format, then the latest one wins."""
    if not answer.strip():
        return None
    text = answer.strip()
    for mark in ",.!?;:'\"":
        text = text.strip(mark)
    text = f" {text} "
    found: list[tuple[int, int, str]] = []  # (rank, position, letter); the first of equals wins
    for pattern, rank in _FORMATS:
        found += [(rank, text.rfind(pattern.format(c)), c) for c in letters if pattern.format(c) in text]
    lower = text.lower()
    for phrase in _ANSWER_PHRASES:
        at = lower.find(phrase)
        if at != -1:
            found += [
                (_PHRASE_RANK, text.find(c, at + len(phrase)), c) for c in letters if c in text[at + len(phrase) :]
            ]
    bare = text.strip()
    found += [(_START_RANK, 0, c) for c in letters if bare.startswith(c) and (len(bare) == 1 or not bare[1].isalpha())]
    found += [
        (_END_RANK, len(text) - 1, c)
        for c in letters
        if bare.endswith(c) and (len(bare) == 1 or not bare[-2].isalpha())
    ]
    if not found:
        found = [(_ANYWHERE_RANK, text.rfind(c), c) for c in letters if c in text]
    return max(found, key=lambda f: f[:2])[2] if found else None


def named_options(answer: str, n_choices: int) -> set[str]:
    """The option letters an answer names: tokens that are one letter once brackets, "*" and
    punctuation are stripped ("(B)", "B.", "**B**"); a bare "A" or "I" in an answer of more than
    three words reads as a word, as MMBench's parser reads "A"."""
    letters = LETTERS[:n_choices]
    tokens = answer.split()
    words = len(tokens) > 3
    return {
        t.strip(_LETTER_MARKS) for t in tokens if t.strip(_LETTER_MARKS) in letters and not (words and t in ("A", "I"))
    }


def parse_choice(prediction: str, choices: Sequence[str]) -> int | None:
    """The option a model's answer picks, by lmms-eval's MMBench parser; None (wrong) when it picks none.

    lmms-eval 0.7.3, tasks/mmbench: `MMBench_Evaluator.can_infer` (a lone or marked letter, else the
    one option whose text the answer contains), then `extract_mcq_answer` (ranked letter formats,
    "the answer is B"), as the static evaluation does; not its ScienceQA rule, which reads only a
    leading "B" or "B.". Kept for comparable numbers: letters are capitals only ("b" is no answer), and
    the last resort reads an option's capital letter anywhere ("Cyan" as C). One difference: an answer
    that names two or more options ("B or C", "(B), (C)") is wrong, where the parser picks one of them.
    """
    letters = LETTERS[: len(choices)]
    answer = prediction.strip()
    if len(named_options(answer, len(choices))) > 1:
        return None
    letter = (
        _option_letter([t.strip() for t in answer.split()], LETTERS[: max(len(choices), MMBENCH_LETTERS)])
        or _option_text(answer, choices)
        or _extracted_letter(answer, letters)
    )
    return letters.index(letter) if letter is not None and letter in letters else None


def choice_index(answer: str, choices: Sequence[str]) -> int | None:
    """The option a *reference* answer names: its letter ("B", "(b)", "B.", "B) blue") or its exact text.

    For datasets, not model output (see `parse_choice`); None when it names no option.
    """
    text = answer.strip()
    letters = LETTERS[: len(choices)]
    m = re.match(r"^\(?([A-Za-z])(?:\)|\.|:|,)?(?:\s+(.*))?$", text, flags=re.S)
    if m:
        letter, rest = m.group(1).upper(), (m.group(2) or "").strip()
        marked = text[:1] == "(" or text[1:2] in ").:,"
        # "B", "(b)", "B. blue": a letter; "A blue" only when the rest is that option's text.
        if letter in letters and (
            not rest or marked or normalize_text(rest) == normalize_text(choices[letters.index(letter)])
        ):
            if len(text) == 1 or marked or m.group(1).isupper():
                return letters.index(letter)
    norm = normalize_text(text)
    hits = [i for i, c in enumerate(choices) if normalize_text(c) == norm]
    return hits[0] if len(hits) == 1 else None


def choice_accuracy(prediction: str, choices: Sequence[str], answer: str) -> float:
    """1.0 when the model's answer (`parse_choice`) picks the reference's option (`choice_index`)."""
    gold = choice_index(answer, choices)
    if gold is None:
        raise FastVError(f"answer {answer!r} names none of the choices {list(choices)}")
    return float(parse_choice(prediction, choices) == gold)


# --------------------------------------------------------------------------- CIDEr


class CiderResult(NamedTuple):
    score: float  # corpus CIDEr-D
    per_item: dict[str, float]
    tokenizer: str  # "ptb" (pycocoevalcap's) or "fallback" (no Java)


def cider(
    predictions: Mapping[str, str], references: Mapping[str, Sequence[str]], tokenizer: str = "auto"
) -> CiderResult:
    """Corpus CIDEr-D as pycocoevalcap computes it (PTB tokenizer, then `Cider`), and per-item scores.

    CIDEr is a corpus metric: IDF comes from this corpus' references, so a sample's score depends on
    the others and is computed over a whole setting, never averaged from per-sample runs. Without Java
    (`tokenizer="auto"`) the fallback tokenizer stands in, and the result says so.
    """
    try:
        from pycocoevalcap.cider.cider import Cider
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError("CIDEr needs pycocoevalcap: pip install 'fastv-lvlm[eval]'") from err
    keys = sorted(predictions)
    missing = [k for k in keys if not references.get(k)]
    if missing:
        raise FastVError(f"CIDEr needs at least one reference caption per item; none for {missing[:5]}")
    texts = [predictions[k] for k in keys] + [r for k in keys for r in references[k]]
    tokens, name = tokenize_captions(texts, tokenizer)
    if not keys:
        return CiderResult(0.0, {}, name)
    res = {k: [tokens[i]] for i, k in enumerate(keys)}
    gts, at = {}, len(keys)
    for k in keys:
        gts[k] = tokens[at : at + len(references[k])]
        at += len(references[k])
    score, per = Cider().compute_score(gts, res)
    return CiderResult(float(score), {k: float(s) for k, s in zip(keys, per, strict=True)}, name)


# --------------------------------------------------------------------------- per sample


def sample_scores(
    prediction: str, answers: Sequence[str], choices: Sequence[str] | None = None, vqa_compat: str = "default"
) -> dict[str, float]:
    """Every per-sample metric that applies (CIDEr is corpus-level and computed in the summary)."""
    scores = {"exact": exact_match(prediction, answers), "vqa": vqa_accuracy(prediction, answers, vqa_compat)}
    if choices:
        scores["choice"] = choice_accuracy(prediction, choices, answers[0])
    return scores
