"""The VQA challenge's answer normalisation, rule for rule, so VQA accuracy matches published numbers.

The rules and tables follow `vqaEval.py` of the VQA challenge (GT-Vision-Lab/VQA,
PythonEvaluationTools/vqaEvaluation/vqaEval.py, last changed in a013f00 "Fixed processing answers
bug"); lmms-eval's `EvalAIAnswerProcessor` carries the same tables. Its quirks are kept on purpose,
because a "cleaner" rule changes scores:

- punctuation is decided on the *original* string (is the mark next to a space? is there a comma
  between digits anywhere?) but removed from the partly cleaned one, so "(red),white,blue" becomes
  "red white blue" (reading the cleaned string, "red ,white" would lose its comma: "red whiteblue");
- the period rule removes every "." not followed by a digit, at most 32 of them (the reference passes
  `re.UNICODE`, which is 32, where `re.sub` takes its `count`);
- contractions are looked up after lowercasing, so the table's capitalised keys ("Im", "Ive") never
  match, and its odd entries ("somebody'd" -> "somebodyd") apply as written.
"""

from __future__ import annotations

import re

# Marks replaced by a space, or removed when next to a space or when the text has a digit,digit comma.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
PERIOD_NOT_BEFORE_DIGIT = re.compile(r"(?!<=\d)(\.)(?!\d)")  # the reference's "(?!<=" is a lookahead: always true
PERIODS_REMOVED = 32  # re.UNICODE, passed as `count` by the reference
NUMBER_WORDS = {
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
ARTICLES = frozenset({"a", "an", "the"})

# The reference's 120 contractions, grouped by the form they map to: "form: key key ...".
_CONTRACTION_GROUPS = """
ain't: aint | aren't: arent | can't: cant | could've: couldve | couldn't: couldnt
couldn't've: couldn'tve couldnt've | didn't: didnt | doesn't: doesnt | don't: dont | hadn't: hadnt
hadn't've: hadnt've hadn'tve | hasn't: hasnt | haven't: havent | he'd: hed | he'd've: hed've he'dve
he's: hes | how'd: howd | how'll: howll | how's: hows | I'd've: Id've I'dve | I'm: Im | I've: Ive
isn't: isnt | it'd: itd | it'd've: itd've it'dve | it'll: itll | let's: let's | ma'am: maam
mightn't: mightnt | mightn't've: mightnt've mightn'tve | might've: mightve | mustn't: mustnt
must've: mustve | needn't: neednt | not've: notve | o'clock: oclock | oughtn't: oughtnt
'ow's'at: ow's'at 'ows'at 'ow'sat | shan't: shant | she'd've: shed've she'dve | she's: she's
should've: shouldve | shouldn't: shouldnt | shouldn't've: shouldnt've shouldn'tve
somebodyd: somebody'd | somebody'd've: somebodyd've somebody'dve | somebody'll: somebodyll
somebody's: somebodys | someone'd: someoned | someone'd've: someoned've someone'dve
someone'll: someonell | someone's: someones | something'd: somethingd
something'd've: somethingd've something'dve | something'll: somethingll | that's: thats
there'd: thered | there'd've: thered've there'dve | there're: therere | there's: theres | they'd: theyd
they'd've: theyd've they'dve | they'll: theyll | they're: theyre | they've: theyve | 'twas: twas
wasn't: wasnt | we'd've: wed've we'dve | we've: weve | weren't: werent | what'll: whatll
what're: whatre | what's: whats | what've: whatve | when's: whens | where'd: whered | where's: wheres
where've: whereve | who'd: whod | who'd've: whod've who'dve | who'll: wholl | who's: whos
who've: whove | why'll: whyll | why're: whyre | why's: whys | won't: wont | would've: wouldve
wouldn't: wouldnt | wouldn't've: wouldnt've wouldn'tve | y'all: yall | y'all'll: yall'll y'allll
y'all'd've: yall'd've y'alld've y'all'dve | you'd: youd | you'd've: youd've you'dve | you'll: youll
you're: youre | you've: youve
"""


def _contractions() -> dict[str, str]:
    table = {}
    for group in _CONTRACTION_GROUPS.replace("\n", " | ").split("|"):
        if group.strip():
            form, keys = group.split(": ")
            table.update({key: form.strip() for key in keys.split()})
    return table


CONTRACTIONS = _contractions()


def process_punctuation(text: str) -> str:
    """The reference's `processPunctuation`: each mark's fate is decided on `text`, not the output."""
    out = text
    strip_all = COMMA_BETWEEN_DIGITS.search(text) is not None
    for p in PUNCTUATION:
        if strip_all or p + " " in text or " " + p in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=PERIODS_REMOVED)


def process_digit_article(text: str) -> str:
    """The reference's `processDigitArticle`: lowercase, number words to digits, no articles, contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def clean_whitespace(text: str) -> str:
    """What the reference does to every answer first: newlines and tabs to spaces, ends stripped."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_vqa(answer: str) -> str:
    """A VQA answer as the reference compares it (when the references disagree): whitespace, punctuation,
    then lowercase, number words, articles and contractions."""
    return process_digit_article(process_punctuation(clean_whitespace(answer)))
