"""CIDEr-D against pycocoevalcap's own pipeline: PTBTokenizer (Java) on references and candidates, then Cider.

This is what COCOEvalCap.evaluate runs, called here through pycocoevalcap itself. It needs `java`:
`make test` installs Debian's default-jre-headless, and these tests fail (never skip) without it.
"""

from __future__ import annotations

import shutil

import pytest

from fastv.core.errors import FastVError
from fastv.eval import caption_tokens as T
from fastv.eval import metrics as M
from fastv.eval.report import markdown_table, summarize
from fastv.eval.settings import FULL

pytest.importorskip("pycocoevalcap")

# Captions with what tokenizers disagree on: decimals, times, hyphens, abbreviations, currency,
# brackets, quotes, clitics, case, repeated punctuation, an empty candidate.
REFERENCES = {
    "1": ["A man in a black-and-white shirt rides a bike at 10:30.", "A cyclist (in black and white) at 10:30 a.m."],
    "2": ["Mr. Smith's dog catches a frisbee.", "A dog jumps for a frisbee in the park!", "The dog isn't tired."],
    "3": ["A sign says $3.50 & 20% off #1 deals.", "Price tag: $3.50, 20% off."],
    "4": ["Two e-mail icons on a screen...", "A screen showing two e-mail icons; nothing else."],
    "5": ['A "STOP" sign -- red and white.', "A red stop sign next to a road."],
    "6": ["A cat sleeps on a sofa.", "A grey cat is sleeping on the couch.", "cat on a couch"],
    "7": ["Children play soccer on a field.", "Kids playing football outside."],
    "8": ["A plate of food with rice, beans and salad.", "A dinner plate holding rice and beans."],
}
PREDICTIONS = {
    "1": "A man in black-and-white rides a bike at 10:30.",
    "2": "Mr. Smith's dog catches a frisbee!",
    "3": "A sign: $3.50 & 20% off.",
    "4": "Two e-mail icons (on a screen).",
    "5": "A red STOP sign -- ``red''.",
    "6": "A cat is sleeping on a couch.",
    "7": "",
    "8": "A plate with rice and beans.",
}


def _require_java() -> None:
    if shutil.which("java") is None:
        pytest.fail(
            "CIDEr's reference pipeline needs `java` (pycocoevalcap's PTB tokenizer): "
            "apt-get install -y default-jre-headless (`make test` does)"
        )


def reference_cider(predictions, references):
    """pycocoevalcap: tokenise references and candidates with PTBTokenizer, then Cider().compute_score."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts = PTBTokenizer().tokenize({k: [{"caption": c} for c in references[k]] for k in predictions})
    res = PTBTokenizer().tokenize({k: [{"caption": predictions[k]}] for k in predictions})
    score, scores = Cider().compute_score(gts, res)
    return float(score), dict(zip(gts.keys(), (float(s) for s in scores), strict=True))


def test_cider_equals_pycocoevalcap_pipeline():
    _require_java()
    ref_score, ref_per = reference_cider(PREDICTIONS, REFERENCES)
    got = M.cider(PREDICTIONS, REFERENCES)
    assert got.tokenizer == T.PTB
    assert got.score == pytest.approx(ref_score, abs=1e-6)
    assert got.per_item == pytest.approx(ref_per, abs=1e-6)
    # sub-corpora too: IDF comes from the corpus, so every subset is a different computation
    for keys in (["1", "2", "3"], ["4", "5", "6", "7", "8"], ["2", "6"]):
        preds = {k: PREDICTIONS[k] for k in keys}
        ref_score, ref_per = reference_cider(preds, REFERENCES)
        got = M.cider(preds, {k: REFERENCES[k] for k in keys})
        assert got.score == pytest.approx(ref_score, abs=1e-6) and got.per_item == pytest.approx(ref_per, abs=1e-6)


def test_ptb_tokens_equal_pycocoevalcap():
    _require_java()
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    captions = [c for refs in REFERENCES.values() for c in refs] + list(PREDICTIONS.values())
    want = PTBTokenizer().tokenize({str(i): [{"caption": c}] for i, c in enumerate(captions)})
    assert T.ptb_tokenize(captions) == [want[str(i)][0] for i in range(len(captions))]
    # "(...)" stays as -lrb-/-rrb- (pycocoevalcap's punctuation list is upper case, the tokens are not)
    assert T.ptb_tokenize(["A man (in black-and-white) at 10:30, Mr. Smith's $3.5!"]) == [
        "a man -lrb- in black-and-white -rrb- at 10:30 mr. smith 's $ 3.5"
    ]
    assert T.ptb_tokenize(["one\rtwo", "three"]) == ["one two", "three"]  # a line break inside a caption stays in it


def test_fallback_tokenizer_is_close_and_labelled(monkeypatch):
    _require_java()
    plain = [c for refs in REFERENCES.values() for c in refs] + [p for p in PREDICTIONS.values() if "``" not in p]
    assert T.fallback_tokenize(plain) == T.ptb_tokenize(plain)
    ptb = M.cider(PREDICTIONS, REFERENCES)
    fallback = M.cider(PREDICTIONS, REFERENCES, tokenizer=T.FALLBACK)
    assert fallback.tokenizer == T.FALLBACK and fallback.score == pytest.approx(ptb.score, rel=0.05)
    monkeypatch.setattr(T, "java", lambda: None)  # a machine without Java: the fallback, and the summary says so
    assert M.cider(PREDICTIONS, REFERENCES).tokenizer == T.FALLBACK
    with pytest.raises(FastVError, match="default-jre-headless"):
        M.cider(PREDICTIONS, REFERENCES, tokenizer=T.PTB)


def _caption_records():
    return [
        {
            "setting": FULL,
            "params": {"method": FULL},
            "sample_id": k,
            "kind": "caption",
            "prediction": PREDICTIONS[k],
            "answers": REFERENCES[k],
            "scoring": "cider",
            "scores": {"exact": 0.0, "vqa": 0.0},
            "first_token": {"ids": [1]},
            "n_visual": 10,
            "n_kept": 10,
            "flops_prefill": 100,
            "flops_prefill_llm": 1,
            "flops_decode": 1,
            "seconds": 1.0,
        }
        for k in PREDICTIONS
    ]


def test_summary_names_the_tokenizer(monkeypatch):
    _require_java()
    row = summarize(_caption_records(), [FULL])[0]
    assert row["cider_tokenizer"] == T.PTB and row["cider"] == pytest.approx(
        reference_cider(PREDICTIONS, REFERENCES)[0]
    )
    assert "CIDEr: PTB tokenizer" in markdown_table([row])
    monkeypatch.setattr(T, "java", lambda: None)
    row = summarize(_caption_records(), [FULL])[0]
    assert row["cider_tokenizer"] == T.FALLBACK and "CIDEr: fallback tokenizer" in markdown_table([row])


def test_bad_input():
    with pytest.raises(FastVError, match="no reference|none for"):
        M.cider({"1": "a cat"}, {"1": []})
    with pytest.raises(FastVError, match="unknown caption tokenizer"):
        M.cider({"1": "a cat"}, {"1": ["a cat"]}, tokenizer="nltk")
