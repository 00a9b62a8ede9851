"""Multiple-choice accuracy against an independent transcription of lmms-eval's MMBench parser.

`reference_letter` transcribes lmms-eval 0.7.3 (EvolvingLMMs-Lab/lmms-eval), tasks/mmbench/mmbench_evals.py
`MMBench_Evaluator.can_infer_option`, `can_infer_text`, `can_infer`, and the static evaluation's
fallback tasks/_task_utils/mcq_extract.py `extract_mcq_answer` (as `eval_sub_data(static_only=True)`
chains them), written from those files, not from fastv's code. fastv follows it except for one
documented rule: an answer that names two or more options is wrong; those rows are marked in the table.
"""

from __future__ import annotations

import random
import string

import pytest

from fastv.eval import metrics as M


def can_infer_option(answer: str, num_choice: int = 5):
    choices = string.ascii_uppercase[:num_choice]
    if "Failed to obtain answer via API" in answer:
        return False

    def count(splits, choices="ABCD", prefix="", suffix=""):
        return sum(1 for c in choices if prefix + c + suffix in splits)

    splits = [x.strip() for x in answer.split()]
    if count(splits, choices) == 1:
        for ch in choices:
            if "A" in splits and len(splits) > 3:
                break  # "A might be a quantifier"
            if ch in splits:
                return ch
    tups = [("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."), (":", ""), (":", ","),
            (":", "."), (":", ")"), (":", ").")]  # fmt: skip
    for prefix, suffix in tups:
        if count(splits, choices, prefix=prefix, suffix=suffix) == 1:
            for ch in choices:
                if prefix + ch + suffix in splits:
                    return ch
    return False


def can_infer_text(answer: str, choices: dict[str, str]):
    answer = answer.lower()
    choices = {k: str(v).lower() for k, v in choices.items()}
    cands = [k for k in choices if choices[k] in answer]
    return cands[0] if len(cands) == 1 else False


PHRASES = ["the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
           "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
           "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select",
           "i pick", "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选",
           "答えは"]  # fmt: skip
PRIORITY = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4, "right_paren": 3,
            "space": 2, "fallback": 0}  # fmt: skip


def extract_mcq_answer(response: str, choices: list[str]) -> str:
    if not response or not response.strip():
        return ""
    text = response.strip()
    for char in [",", ".", "!", "?", ";", ":", "'", '"']:
        text = text.strip(char)
    text = " " + text + " "
    candidates = []
    for fmt, name in (("({})", "parentheses"), ("{}.", "period"), ("{}:", "colon"), ("{})", "right_paren"),
                      ("{} ", "space")):  # fmt: skip
        for ch in choices:
            if fmt.format(ch) in text:
                candidates.append((ch, text.rfind(fmt.format(ch)), name))
    lower = text.lower()
    for phrase in PHRASES:
        idx = lower.find(phrase)
        if idx != -1:
            for ch in choices:
                pos = text.find(ch, idx + len(phrase))
                if pos != -1:
                    candidates.append((ch, pos, "phrase"))
    stripped = text.strip()
    for ch in choices:
        if stripped.startswith(ch) and (len(stripped) == 1 or not stripped[1].isalpha()):
            candidates.append((ch, 0, "start"))
    for ch in choices:
        if stripped.endswith(ch) and (len(stripped) == 1 or not stripped[-2].isalpha()):
            candidates.append((ch, len(text) - 1, "end"))
    if not candidates:
        for ch in choices:
            if ch in text:
                candidates.append((ch, text.rfind(ch), "fallback"))
    if not candidates:
        return ""
    candidates.sort(key=lambda x: (PRIORITY.get(x[2], 0), x[1]), reverse=True)
    return candidates[0][0]


def reference_letter(prediction: str, options: list[str]) -> str:
    """MMBench static evaluation of one record: can_infer, else extract_mcq_answer; "" when nothing is found.

    `build_choices` gives MMBench's A-D options; with five options all five go to `can_infer_text`."""
    prediction = prediction.strip()  # mmbench_process_results
    choices = {string.ascii_uppercase[i]: o for i, o in enumerate(options)}
    copt = can_infer_option(prediction)
    ret = copt if copt else can_infer_text(prediction, choices)
    return ret or extract_mcq_answer(prediction, choices=sorted(choices))


COLOURS = ["red", "blue", "green", "yellow"]
ANIMALS = ["a cat", "a dog", "a horse", "a bird", "a fish"]
NUMBERS = ["1", "2", "3", "4"]
MULTI = "names two options"  # fastv's documented rule: wrong, whatever the parser picks

# (prediction, options, marker): marker MULTI flags fastv's one deviation from the reference.
CASES = [
    ("B", COLOURS, ""),
    ("(B)", COLOURS, ""),
    ("B.", COLOURS, ""),
    ("B)", COLOURS, ""),
    ("B:", COLOURS, ""),
    ("B,", COLOURS, ""),
    ("(B).", COLOURS, ""),
    (":B", COLOURS, ""),
    ("B. blue", COLOURS, ""),
    ("B) blue", COLOURS, ""),
    ("(B) blue", COLOURS, ""),
    ("B blue", COLOURS, ""),
    ("The answer is B", COLOURS, ""),
    ("The answer is B.", COLOURS, ""),
    ("The answer is (B).", COLOURS, ""),
    ("Answer: B", COLOURS, ""),
    ("Answer:B", COLOURS, ""),
    ("Option B", COLOURS, ""),
    ("**B**", COLOURS, ""),
    ("**B.** blue", COLOURS, ""),
    ("I choose C", COLOURS, ""),
    ("My answer is D.", COLOURS, ""),
    ("The correct option is A", COLOURS, ""),
    ("b", COLOURS, ""),
    ("(b)", COLOURS, ""),
    ("blue", COLOURS, ""),
    ("Blue.", COLOURS, ""),
    ("The ball is blue.", COLOURS, ""),
    ("It is green", COLOURS, ""),
    ("purple", COLOURS, ""),
    ("Cyan", COLOURS, ""),
    ("Dark", COLOURS, ""),
    ("reddish", COLOURS, ""),
    ("blue-green", COLOURS, ""),
    ("", COLOURS, ""),
    ("   ", COLOURS, ""),
    ("E", COLOURS, ""),
    ("(E)", COLOURS, ""),
    ("A", COLOURS, ""),
    ("A.", COLOURS, ""),
    ("A red one", COLOURS, ""),
    ("A ball that is red", COLOURS, ""),
    ("A ball, B", COLOURS, MULTI),  # three words: the lone "A" counts as a letter
    ("C. A red car is shown", COLOURS, ""),
    ("A. A red car", COLOURS, ""),
    ("Both A and B", COLOURS, ""),
    ("I think it's C", COLOURS, ""),
    ("The image shows a car. Answer: D", COLOURS, ""),
    ("D) yellow", COLOURS, ""),
    ("answer d", COLOURS, ""),
    ("Choice: (C)", COLOURS, ""),
    ("B\n", COLOURS, ""),
    ("\nC.", COLOURS, ""),
    ("答案是B", COLOURS, ""),
    ("The answer is: C", COLOURS, ""),
    ("Based on the image, B is correct.", COLOURS, ""),
    ("B, because the sky is blue.", COLOURS, ""),
    ("A dog", ANIMALS, ""),
    ("a dog", ANIMALS, ""),
    ("The animal is a horse.", ANIMALS, ""),
    ("It is a bird.", ANIMALS, ""),
    ("E", ANIMALS, ""),
    ("E. a fish", ANIMALS, ""),
    ("catfish", ANIMALS, ""),
    ("C", ANIMALS, ""),
    ("2", NUMBERS, ""),
    ("There are 3.", NUMBERS, ""),
    ("B. 2", NUMBERS, ""),
    ("12", NUMBERS, ""),
    ("A) 1", NUMBERS, ""),
    ("D 4", NUMBERS, ""),
    ("B", ["yes", "no"], ""),
    ("yes", ["yes", "no"], ""),
    ("No.", ["yes", "no"], ""),
    ("C", ["yes", "no"], ""),
    # two options named: the parser picks one, fastv counts the answer wrong
    ("(B) or (C)", COLOURS, MULTI),
    ("B, C", COLOURS, MULTI),
    ("B. C.", COLOURS, MULTI),
    ("B and C", COLOURS, MULTI),
    ("B or C", COLOURS, MULTI),
    ("A, B", COLOURS, MULTI),
    ("B/C", COLOURS, ""),  # one token "B/C": no letter stands alone
    ("The answer is B, not C", COLOURS, MULTI),
    ("(A) (B) (C) (D)", COLOURS, MULTI),
    ("**B** or **C**", COLOURS, MULTI),
    ("C. A dog", COLOURS, MULTI),
    ("A. B.", ANIMALS, MULTI),
    ("D and E", ANIMALS, MULTI),
]


def test_table_is_large_enough():
    assert len(CASES) >= 80


@pytest.mark.parametrize(("prediction", "options", "marker"), CASES)
def test_parse_choice_follows_mmbench(prediction, options, marker):
    got = M.parse_choice(prediction, options)
    if marker == MULTI:
        assert got is None
        return
    letter = reference_letter(prediction, options)
    expected = (
        string.ascii_uppercase.index(letter) if letter and letter in string.ascii_uppercase[: len(options)] else None
    )
    assert got == expected, (prediction, letter)


@pytest.mark.parametrize(("prediction", "options", "marker"), CASES)
def test_choice_accuracy_against_every_gold_letter(prediction, options, marker):
    letter = reference_letter(prediction, options)
    for i, gold in enumerate(string.ascii_uppercase[: len(options)]):
        want = 0.0 if marker == MULTI else float(letter == gold)
        assert M.choice_accuracy(prediction, options, gold) == want
        assert M.choice_accuracy(prediction, options, options[i]) == want  # gold given as the option's text


def test_hand_checked_examples():
    """Read off the parsers' rules by hand (issue 19, item 2), so the transcription is checked too."""
    for answer in ("The answer is B", "Answer: B", "Option B", "**B**"):
        assert reference_letter(answer, COLOURS) == "B" and M.choice_accuracy(answer, COLOURS, "B") == 1.0
    for answer in ("(B) or (C)", "B, C", "B. C."):
        assert M.choice_accuracy(answer, COLOURS, "B") == 0.0 and M.choice_accuracy(answer, COLOURS, "C") == 0.0
    assert reference_letter("B, C", COLOURS) == "C" and reference_letter("B. C.", COLOURS) == "B"


def _fuzz_answer(rng: random.Random, options: list[str]) -> str:
    letters = "ABCDEI"
    pieces = [
        *(rng.choice(letters) for _ in range(2)),
        f"({rng.choice(letters)})",
        f"{rng.choice(letters)}.",
        f"{rng.choice(letters)})",
        f"**{rng.choice(letters)}**",
        "the answer is",
        "Answer:",
        "a",
        "A",
        "is",
        "it",
        "Cat",
        *options,
    ]
    return " ".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))


def _names_two(answer: str, n: int) -> bool:
    """Test-side reading of fastv's rule, from its docstring: lone letters once marks are stripped."""
    tokens = answer.split()
    named = {
        t.strip("()[]*.,:;!?\"'")
        for t in tokens
        if t.strip("()[]*.,:;!?\"'") in string.ascii_uppercase[:n] and not (len(tokens) > 3 and t in ("A", "I"))
    }
    return len(named) > 1


def test_fuzz_against_mmbench():
    rng = random.Random(19)
    for _ in range(5_000):
        options = rng.choice([COLOURS, ANIMALS, NUMBERS])
        answer = _fuzz_answer(rng, options)
        got = M.parse_choice(answer, options)
        if _names_two(answer, len(options)):
            assert got is None, answer
            continue
        letter = reference_letter(answer, options)
        want = string.ascii_uppercase.index(letter) if letter and letter in "ABCDE"[: len(options)] else None
        assert got == want, (answer, letter)


def test_transcription_equals_installed_lmms_eval():
    """The transcription itself against lmms-eval's code where it is installed (CI installs 0.7.3).

    MMBench has at most four options (its `can_infer_text` asserts A-D), so five-option rows are left out.
    """
    mmbench = pytest.importorskip("lmms_eval.tasks.mmbench.mmbench_evals")
    from lmms_eval.tasks._task_utils.mcq_extract import extract_mcq_answer as lmms_extract

    evaluator = mmbench.MMBench_Evaluator()

    def lmms_letter(prediction: str, options: list[str]) -> str:
        prediction = prediction.strip()
        choices = {string.ascii_uppercase[i]: o for i, o in enumerate(options)}
        return evaluator.can_infer(prediction, dict(choices)) or lmms_extract(prediction, choices=sorted(choices))

    rng = random.Random(7)
    answers = [(p, o) for p, o, _ in CASES if len(o) <= 4]
    for _ in range(2_000):
        options = rng.choice([COLOURS, NUMBERS, ["yes", "no"]])
        answers.append((_fuzz_answer(rng, options), options))
    for prediction, options in answers:
        assert reference_letter(prediction, options) == lmms_letter(prediction, options), prediction
