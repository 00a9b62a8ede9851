"""fastv.eval metrics and data loading on hand-checked examples (no model needed)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from fastv.core.errors import FastVError
from fastv.eval import metrics as M
from fastv.eval.data import load_samples
from fastv.eval.report import pareto_front, summarize
from fastv.eval.settings import FULL, fastv_grid, parse_list

# --------------------------------------------------------------------------- VQA


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("Two dogs.", "2 dogs"),  # number words -> digits, final period dropped
        ("the Red ball", "red ball"),  # lowercase, articles dropped
        ("yes!", "yes"),
        ("dont", "don't"),  # apostrophe-less contractions restored
        ("1,000", "1000"),  # comma inside a number removed
        ("x-ray", "x ray"),  # hyphen becomes a space when no comma-number is present
        ("3.5", "3.5"),  # a decimal point survives
        ("red, blue", "red blue"),
        ("  two\tcats \n", "2 cats"),
    ],
)
def test_vqa_normalisation(raw, norm):
    assert M.normalize_vqa(raw) == norm


def test_vqa_soft_accuracy_leave_one_out():
    ten = lambda n: ["yes"] * n + ["no"] * (10 - n)  # noqa: E731
    # n matching annotators: the n matching ones see n-1 others, the rest see n; each capped at 3.
    assert M.vqa_accuracy("yes", ten(0)) == 0.0
    assert M.vqa_accuracy("yes", ten(1)) == pytest.approx(0.3)  # 9 x 1/3 / 10
    assert M.vqa_accuracy("yes", ten(2)) == pytest.approx(0.6)  # (2 x 1/3 + 8 x 2/3) / 10
    assert M.vqa_accuracy("yes", ten(3)) == pytest.approx(0.9)  # (3 x 2/3 + 7 x 1) / 10
    assert M.vqa_accuracy("Yes.", ten(4)) == 1.0
    assert M.vqa_accuracy("two", ["2"]) == 1.0  # a single reference: normalised exact match
    with pytest.raises(ValueError):
        M.vqa_accuracy("x", [])


def test_exact_match():
    assert M.exact_match("  Red. ", ["red"]) == 1.0
    assert M.exact_match("red circle", ["red"]) == 0.0
    assert M.exact_match("blue", ["red", "Blue"]) == 1.0


@pytest.mark.parametrize(
    ("answer", "index"),
    [
        ("B", 1),
        ("(b)", 1),
        ("b", 1),
        ("B. blue", 1),
        ("C) green", 2),
        ("Blue.", 1),
        ("green", 2),
        ("purple", None),
        ("A blue", None),
    ],
)
def test_choice_index_reads_reference_answers(answer, index):
    assert M.choice_index(answer, ["red", "blue", "green"]) == index


def test_choice_accuracy():
    choices = ["red", "blue", "green"]
    assert M.choice_accuracy("B", choices, "blue") == 1.0
    assert M.choice_accuracy("blue", choices, "B") == 1.0
    assert M.choice_accuracy("A", choices, "B") == 0.0
    assert M.choice_accuracy("no idea", choices, "B") == 0.0
    assert M.choice_accuracy("The answer is B", choices, "B") == 1.0  # lmms-eval's MMBench parser finds it
    assert M.choice_accuracy("(B) or (C)", choices, "B") == 0.0  # two options named: wrong
    with pytest.raises(ValueError, match="names none of the choices"):
        M.choice_accuracy("B", choices, "purple")


def test_vqa_compat_is_a_reporting_choice(tmp_path):
    """`--vqa-compat official` rescores stored records (no rerun) and is not part of the run's identity."""
    from fastv.eval.pipeline import EvalConfig
    from fastv.eval.report import rescore

    record = {"prediction": "yes.", "answers": ["yes"] * 10, "choices": None, "scores": {"vqa": 1.0}}
    assert rescore([record])[0]["scores"]["vqa"] == 1.0
    assert rescore([record], "official")[0]["scores"] == {"exact": 1.0, "vqa": 0.0}
    assert record["scores"] == {"vqa": 1.0}  # the input is left alone
    official = EvalConfig("m", "d", tmp_path, vqa_compat="official")
    assert official.manifest([]) == EvalConfig("m", "d", tmp_path).manifest([])
    with pytest.raises(FastVError, match="--vqa-compat 'lenient'"):
        EvalConfig("m", "d", tmp_path, vqa_compat="lenient")


def test_cli_refuses_an_unknown_vqa_compat(tmp_path):
    from typer.testing import CliRunner

    from fastv.cli import _register, app

    _register()
    res = CliRunner().invoke(app, ["eval", "--vqa-compat", "lenient", "--out", str(tmp_path)])
    assert (
        res.exit_code == 2
        and "--vqa-compat" in res.output
        and "'lenient' is not one of" in " ".join(res.output.replace("│", " ").split())
    )
    assert not tmp_path.joinpath("summary.json").exists()


def test_cider_hand_checked():
    pytest.importorskip("pycocoevalcap")
    refs = {"1": ["a small red circle here"], "2": ["one big blue square there"]}
    # Identical captions, disjoint vocabularies: every n-gram has idf log 2, the tf-idf vectors are
    # equal (cosine 1 for n = 1..4), no length penalty: CIDEr-D = 10 x mean(1, 1, 1, 1) = 10.
    for tokenizer in ("auto", "fallback"):
        score, per, _ = M.cider({"1": "a small red circle here", "2": "one big blue square there"}, refs, tokenizer)
        assert score == pytest.approx(10.0)
        assert per == pytest.approx({"1": 10.0, "2": 10.0})
        # Sharing no n-gram with the reference scores 0; tokenisation ignores case and punctuation.
        score, per, _ = M.cider({"1": "A small red circle, here!", "2": "nothing at all matches"}, refs, tokenizer)
        assert per == pytest.approx({"1": 10.0, "2": 0.0})
        assert score == pytest.approx(5.0)


# --------------------------------------------------------------------------- data


def _image(path):
    Image.new("RGB", (8, 8), (255, 0, 0)).save(path)
    return path.name


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_rows(tmp_path):
    img = _image(tmp_path / "a.png")
    path = _jsonl(
        tmp_path / "d.jsonl",
        [
            {"id": "q1", "image": img, "question": "colour?", "answer": "red"},
            {"image": [img, img], "question": "same?", "answers": [{"answer": "yes"}, {"answer": "no"}]},
            {"image": img, "question": "which", "choices": ["red", "blue"], "answer": "A", "kind": "mc"},
            {"image": img, "question": "describe", "answers": ["a red square"], "metric": "cider"},
        ],
    )
    s = load_samples(str(path))
    assert [x.id for x in s] == ["q1", "1", "2", "3"]
    assert [x.scoring for x in s] == ["exact", "vqa", "choice", "cider"]
    assert s[1].answers == ["yes", "no"] and len(s[1].load_images()) == 2
    assert "A. red\nB. blue" in s[2].prompt and s[2].kind == "mc"
    assert load_samples(str(path), limit=2)[-1].id == "1"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("{not json", "not valid JSON"),
        ({"image": "a.png", "answer": "x"}, "missing or empty 'question'"),
        ({"image": "a.png", "question": "q"}, "no answer"),
        ({"question": "q", "answer": "x"}, "no 'image'"),
        ({"image": "missing.png", "question": "q", "answer": "x"}, "missing.png' does not exist"),
        ({"image": "a.png", "question": "q", "answer": "C", "choices": ["x", "y"]}, "neither a choice letter"),
        ({"image": "a.png", "question": "q", "answer": "x", "metric": "bleu"}, "metric 'bleu'"),
    ],
)
def test_malformed_rows_name_the_row(tmp_path, row, message):
    _image(tmp_path / "a.png")
    good = {"image": "a.png", "question": "q", "answer": "x"}
    path = _jsonl(tmp_path / "d.jsonl", [good, good, row])
    with pytest.raises(FastVError, match=message) as err:
        load_samples(str(path))
    assert f"{path}:3" in str(err.value)


def test_duplicate_ids_and_unknown_sources(tmp_path):
    _image(tmp_path / "a.png")
    row = {"id": 7, "image": "a.png", "question": "q", "answer": "x"}
    with pytest.raises(FastVError, match="share id '7'"):
        load_samples(str(_jsonl(tmp_path / "d.jsonl", [row, row])))
    with pytest.raises(FastVError, match="no such file"):
        load_samples(str(tmp_path / "nope.jsonl"))
    with pytest.raises(FastVError, match="unknown shapes kinds"):
        load_samples("shapes:test:1:colour")


def test_shapes_builtin():
    s = load_samples("shapes:validation:2:color,count")
    assert len(s) == 4 and {x.kind for x in s} == {"color", "count"}
    assert s[0].id.startswith("shapes/validation/") and s[0].load_images()[0].size == (96, 96)


def test_shapes_builtin_groups_and_styles():
    """Scene-level kinds and the long style (how the template-prompted default model is asked)."""
    from fastv.zoo.datasets import shapes

    every = load_samples("shapes:test:2:all:long")
    assert [x.kind for x in every[: len(shapes.ALL_KINDS)]] == list(shapes.ALL_KINDS)
    assert len(every) == 2 * len(shapes.ALL_KINDS)
    assert all(x.id.endswith("/long") and x.question.endswith("single word or phrase.") for x in every)
    scene = load_samples("shapes:test:2:scene")
    assert {x.kind for x in scene} == set(shapes.SCENE_KINDS) and " " not in scene[0].id
    # the same scene and kind asked in two styles: same answer, different question and id
    short = {x.id: x for x in load_samples("shapes:test:2:color")}
    for x in load_samples("shapes:test:2:color:long"):
        twin = short[x.id.removesuffix("/long")]
        assert twin.answers == x.answers and twin.question != x.question
    with pytest.raises(FastVError, match="style 'loud'"):
        load_samples("shapes:test:1:color:loud")
    with pytest.raises(FastVError, match="shapes:test:30:all:long"):
        load_samples("shapes:test:1:color:long:extra")


def test_parquet_and_save_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    img = Image.new("RGB", (8, 8), (0, 0, 255))
    rows = {"question": ["q0", "q1"], "answer": ["blue", "red"], "image": [img, img]}
    ds = datasets.Dataset.from_dict(
        rows,
        features=datasets.Features(
            {"question": datasets.Value("string"), "answer": datasets.Value("string"), "image": datasets.Image()}
        ),
    )
    ds.to_parquet(str(tmp_path / "d.parquet"))
    datasets.DatasetDict({"validation": ds}).save_to_disk(str(tmp_path / "disk"))
    for spec in (tmp_path / "d.parquet", tmp_path / "disk"):
        s = load_samples(str(spec))
        assert [x.question for x in s] == ["q0", "q1"]
        assert s[0].load_images()[0].getpixel((0, 0)) == (0, 0, 255)
    bad = datasets.Dataset.from_dict({"question": ["q"], "answer": ["a"]})
    bad.to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(FastVError, match=r"bad.parquet row 0: no 'image'"):
        load_samples(str(tmp_path / "bad.parquet"))


# --------------------------------------------------------------------------- settings / report


def test_grid_and_lists():
    grid = fastv_grid([1, 2], [0.5, 0.9], ["last_token", "random"])
    assert grid[0].name == FULL and len(grid) == 9
    assert grid[1].params == {"method": "fastv", "k": 1, "ratio": 0.5, "scorer": "last_token", "mode": "drop"}
    assert grid[1].make().k == 1 and grid[0].make() is None
    with pytest.raises(FastVError):
        fastv_grid([0], [0.5])  # k=0 has no layer to score at
    with pytest.raises(FastVError, match="--k"):
        parse_list("1,x", int, "k")


def test_pareto_front():
    pts = [(10, 0.8), (5, 0.7), (6, 0.6), (3, 0.2), (10, 0.5)]
    assert pareto_front(pts) == [3, 1, 0]


def test_summary_agreement_and_cider():
    pytest.importorskip("pycocoevalcap")

    def rec(setting, sid, pred, scoring="exact", first=1, answers=("a b c d",)):
        return {
            "setting": setting,
            "params": {"method": setting},
            "sample_id": sid,
            "kind": "k",
            "prediction": pred,
            "answers": list(answers),
            "scoring": scoring,
            "scores": {"exact": float(pred == "a b c d"), "vqa": 0.0},
            "first_token": {"ids": [first]},
            "n_visual": 10,
            "n_kept": 10 if setting == FULL else 5,
            "flops_prefill": 100 if setting == FULL else 60,
            "flops_prefill_llm": 1,
            "flops_decode": 1,
            "seconds": 1.0,
        }

    records = [rec(FULL, "1", "a b c d"), rec(FULL, "2", "x"), rec("p", "1", "a b c d"), rec("p", "2", "y", first=2)]
    rows = summarize(records, [FULL, "p"])
    assert rows[0]["accuracy"] == 0.5 and rows[1]["accuracy"] == 0.5
    assert rows[1]["agree_answer"] == 0.5 and rows[1]["agree_first_token"] == 0.5
    assert rows[1]["flops_vs_full"] == pytest.approx(0.6) and rows[1]["visual_kept"] == 0.5
    caps = [
        rec(FULL, "1", "a small red circle here", "cider", answers=["a small red circle here"]),
        rec(FULL, "2", "zzz", "cider", answers=["one big blue square there"]),
    ]
    row = summarize(caps, [FULL])[0]
    assert row["accuracy"] is None and row["cider"] == pytest.approx(5.0)
