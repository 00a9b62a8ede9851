"""Answer scoring: VQA soft accuracy, exact match, multiple-choice accuracy, CIDEr.

Our own implementation of the VQA challenge's rules (answer normalisation + leave-one-out soft
score), so scores are comparable with published VQAv2 numbers; CIDEr comes from `pycocoevalcap`,
the COCO caption toolkit everyone reports, because re-implementing it invites silent drift.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence

# --------------------------------------------------------------------------- VQA normalisation

# Punctuation the VQA evaluation strips (periods are handled apart: "1.5" keeps its point).
_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_IN_NUMBER = re.compile(r"(?!<=\d)(\.)(?!\d)")
_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
# Annotators often drop apostrophes ("dont"): map the bare form back, as the VQA evaluation does.
_CONTRACTED = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't "
    "he'd he'd've he'll he's how'd how'll how's i'd i'd've i'll i'm i've isn't it'd it'd've it'll it's let's "
    "ma'am mightn't mightn't've might've mustn't must've needn't not've o'clock shan't she'd she'd've she'll "
    "she's should've shouldn't shouldn't've somebody'd somebody'll somebody's someone'd someone'll someone's "
    "something'd something'll something's that'd that's there'd there're there's they'd they'll they're "
    "they've wasn't we'd we'll we're we've weren't what'll what're what's what've when's where'd where's "
    "where've who'd who'll who're who's who've why'll why're why's won't would've wouldn't wouldn't've "
    "y'all you'd you'll you're you've"
).split()
_CONTRACTIONS = {
    c.replace("'", ""): c
    for c in _CONTRACTED
    if c.replace("'", "") not in {"id", "ill", "well", "were", "shell", "hell", "its", "wed", "lets"}
}


def _strip_punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        # "a, b" -> "a b"; "1,000" -> "1000"; "x-ray" -> "x ray"
        if (p + " " in out or " " + p in out) or _COMMA_IN_NUMBER.search(out) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_NOT_IN_NUMBER.sub("", out)


def _digits_and_articles(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_vqa(answer: str) -> str:
    """The VQA challenge's answer normalisation: lowercase, punctuation, number words, articles, contractions."""
    text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    return _digits_and_articles(_strip_punctuation(text)).strip()


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA soft accuracy: mean over annotators of min(1, matches among the *other* answers / 3).

    With 10 answers this is the official VQAv2 score (2 "yes" out of 10 gives 0.6, not 2/3). With a
    single reference there are no other annotators, so it reduces to normalised exact match.
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    pred = normalize_vqa(prediction)
    refs = [normalize_vqa(a) for a in answers]
    if len(refs) == 1:
        return float(pred == refs[0])
    scores = []
    for i in range(len(refs)):
        matches = sum(1 for j, r in enumerate(refs) if j != i and r == pred)
        scores.append(min(1.0, matches / 3))
    return sum(scores) / len(scores)


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


def choice_index(answer: str, choices: Sequence[str]) -> int | None:
    """Index of the option an answer names: by letter ("B", "(b)", "B.", "B) blue", "B blue") or by text.

    None when it names no option (counted wrong): models often answer with the option's text.
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
    """1.0 when the predicted option (letter or text) is the correct one; unparseable counts as wrong."""
    gold = choice_index(answer, choices)
    if gold is None:
        raise ValueError(f"answer {answer!r} names none of the choices {list(choices)}")
    return float(choice_index(prediction, choices) == gold)


# --------------------------------------------------------------------------- CIDEr


def _caption_tokens(text: str) -> str:
    """COCO-style tokenisation without Java: lowercase, punctuation removed, single spaces."""
    table = str.maketrans({c: " " for c in string.punctuation if c != "'"})
    return " ".join(text.lower().translate(table).replace("'", " '").split())


def cider(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> tuple[float, dict[str, float]]:
    """Corpus CIDEr-D (pycocoevalcap) and per-item scores; IDF comes from this corpus' references.

    CIDEr is a corpus metric: a sample's score depends on the other samples, so it is computed over
    a whole setting, never averaged from per-sample runs.
    """
    try:
        from pycocoevalcap.cider.cider import Cider
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError("CIDEr needs pycocoevalcap: pip install 'fastv-lvlm[eval]'") from err
    keys = sorted(predictions)
    if not keys:
        return 0.0, {}
    gts = {k: [_caption_tokens(r) for r in references[k]] for k in keys}
    res = {k: [_caption_tokens(predictions[k])] for k in keys}
    score, per = Cider().compute_score(gts, res)
    return float(score), {k: float(s) for k, s in zip(keys, per, strict=True)}


# --------------------------------------------------------------------------- per sample


def sample_scores(prediction: str, answers: Sequence[str], choices: Sequence[str] | None = None) -> dict[str, float]:
    """Every per-sample metric that applies (CIDEr is corpus-level and computed in the summary)."""
    scores = {"exact": exact_match(prediction, answers), "vqa": vqa_accuracy(prediction, answers)}
    if choices:
        scores["choice"] = choice_accuracy(prediction, choices, answers[0])
    return scores
