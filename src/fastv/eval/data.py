"""Evaluation samples from the built-in shapes benchmark or local files (JSONL, `save_to_disk`, parquet).

Every source becomes a list of `EvalSample`s with a stable `id`: results on disk are keyed by it,
which is what makes a run resumable and lets shards merge exactly once. Each sample also carries a
`fingerprint`, a hash of what defines it (question, answers, choices, metric, the images' bytes), so
a resumed run can tell when an id now names other content (a row inserted above rows keyed by row
number, an edited answer) and refuse instead of mixing answers. Rows are validated up front, every
image opened and verified, so a typo or a broken file in row 9,000 fails before hours of compute,
with the file and row named.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from fastv.core.errors import FastVError
from fastv.loading import check_image_file, frame_files, load_image, verify_image_bytes

ImageSource = str | Path | Image.Image | Callable[[], Image.Image]
METRICS = ("auto", "vqa", "exact", "choice", "cider")


@dataclass
class EvalSample:
    """One question about one or more images (or a video given as a folder of frames)."""

    id: str
    question: str
    answers: list[str]
    images: list[ImageSource] = field(default_factory=list)
    video: str | None = None
    choices: list[str] | None = None
    kind: str = ""  # a category for per-kind accuracy (question type, subset...)
    metric: str = "auto"  # how to score it; "auto" picks choice / vqa / exact from the fields
    fingerprint: str = ""  # hash of what defines the sample (see `fingerprint`); "" = not computed

    def load_images(self) -> list[Image.Image]:
        return [src() if callable(src) else load_image(src) for src in self.images]

    @property
    def prompt(self) -> str:
        """The question, with lettered options for multiple choice."""
        if not self.choices:
            return self.question
        options = "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(self.choices))
        return f"{self.question}\n{options}\nAnswer with the option's letter from the given choices directly."

    @property
    def scoring(self) -> str:
        if self.metric != "auto":
            return self.metric
        if self.choices:
            return "choice"
        return "vqa" if len(self.answers) > 1 else "exact"


# --------------------------------------------------------------------------- built-in benchmark


def shapes_samples(
    split: str = "test", n_images: int = 50, kinds: Sequence[str] | None = None, style: str = "short"
) -> list[EvalSample]:
    """fastv's synthetic shapes benchmark (one question per kind per scene), rendered on demand.

    ``kinds``: question kinds, or one group name (``cell``: the cell-level kinds, the default;
    ``scene``: the scene-level ones, whose answers depend on every object; ``all``). ``style``:
    ``short`` (``color b3``) or ``long`` (a sentence plus LLaVA-1.5's one-word instruction, the way the
    template-prompted default model is asked).
    """
    from fastv.zoo.datasets import shapes

    groups = shapes.KIND_GROUPS
    if kinds and len(kinds) == 1 and kinds[0] in groups:
        chosen = groups[kinds[0]]
    else:
        chosen = tuple(kinds) if kinds else shapes.KINDS
    unknown = set(chosen) - set(shapes.ALL_KINDS)
    if unknown:
        raise FastVError(
            f"unknown shapes kinds {sorted(unknown)}; choose from {', '.join(shapes.ALL_KINDS)} "
            f"or a group: {', '.join(groups)}"
        )
    if style not in shapes.STYLES:
        raise FastVError(f"unknown shapes question style {style!r}; choose from {', '.join(shapes.STYLES)}")
    suffix = "" if style == "short" else f"/{style}"  # short ids stay as they were
    out = []
    for s in shapes.eval_samples(split, n_images, chosen, style=style):
        out.append(
            EvalSample(
                id=f"shapes/{split}/{s.seed}/{s.kind}{suffix}",
                question=s.question,
                answers=[s.answer],
                images=[s.image],
                kind=s.kind,
                metric="exact",  # one deterministic answer per question, "describe" included
                # the scene is rendered from its seed, named in the id: no pixels to hash
                fingerprint=fingerprint(s.question, [s.answer], None, "exact", [f"shapes/{split}/{s.seed}"]),
            )
        )
    return out


def fingerprint(
    question: str, answers: Sequence[str], choices: Sequence[str] | None, metric: str, visuals: Sequence[str]
) -> str:
    """A content hash of one sample: `visuals` are digests of its images' (and frames') bytes."""
    payload = json.dumps([question, list(answers), list(choices or []), metric, list(visuals)], ensure_ascii=False)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()


def _parse_shapes_spec(spec: str) -> list[EvalSample]:
    """'shapes', 'shapes:validation', 'shapes:test:200', 'shapes:test:200:color,count', 'shapes:test:30:all:long'."""
    parts = spec.split(":")
    split = parts[1] if len(parts) > 1 and parts[1] else "test"
    try:
        n = int(parts[2]) if len(parts) > 2 and parts[2] else 50
    except ValueError as err:
        raise FastVError(
            f"--data {spec!r}: the image count must be an integer (shapes:SPLIT:N[:KINDS[:STYLE]])"
        ) from err
    if n < 1:
        raise FastVError(f"--data {spec!r}: the image count must be >= 1, e.g. shapes:test:50")
    if len(parts) > 5:
        raise FastVError(f"--data {spec!r}: expected shapes[:SPLIT[:N[:KINDS[:STYLE]]]], e.g. shapes:test:30:all:long")
    kinds = parts[3].split(",") if len(parts) > 3 and parts[3] else None
    style = parts[4] if len(parts) > 4 and parts[4] else "short"
    try:
        return shapes_samples(split, n, kinds, style)
    except ValueError as err:
        raise FastVError(f"--data {spec!r}: {err}") from err


# --------------------------------------------------------------------------- rows -> samples


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _answers(row: dict[str, Any], where: str) -> list[str]:
    raw = row.get("answers", row.get("answer"))
    out = []
    for a in _as_list(raw):
        if isinstance(a, dict):  # VQAv2 style: {"answer": "...", "answer_confidence": ...}
            a = a.get("answer")
        if not isinstance(a, (str, int, float)) or isinstance(a, bool):
            raise FastVError(f"{where}: answers must be strings (got {a!r})")
        out.append(str(a))
    if not out:
        raise FastVError(f"{where}: no answer: give 'answer' (a string) or 'answers' (a list of strings)")
    return out


def _image_source(value: Any, base: Path | None, where: str) -> tuple[ImageSource, str]:
    """The image of a row and the digest of its content, verified now (opened and decoded)."""
    try:
        if isinstance(value, Image.Image):
            return value, hashlib.sha1(value.tobytes()).hexdigest()
        if isinstance(value, dict):  # an HF Image feature stored in parquet/arrow: {"bytes": ..., "path": ...}
            if value.get("bytes"):
                data = value["bytes"]
                verify_image_bytes(data, f"{value.get('path') or 'embedded image'}")
                return (lambda: Image.open(io.BytesIO(data)).convert("RGB")), hashlib.sha1(data).hexdigest()
            value = value.get("path")
        if not isinstance(value, (str, Path)) or not str(value):
            raise FastVError(f"image must be a file path (got {type(value).__name__})")
        path = Path(value)
        if not path.is_absolute() and base is not None:
            path = base / path
        return path, check_image_file(path)
    except FastVError as err:
        raise FastVError(f"{where}: {err}") from err


def _video(value: Any, base: Path | None, where: str) -> tuple[str, list[str]]:
    """A row's video folder and the digests of its frames, every frame verified now."""
    if not isinstance(value, (str, Path)):
        raise FastVError(f"{where}: 'video' must be a folder of frame images (got {type(value).__name__})")
    path = Path(value)
    if not path.is_absolute() and base is not None:
        path = base / path
    try:
        return str(path), [check_image_file(f) for f in frame_files(path)]
    except FastVError as err:
        raise FastVError(f"{where}: {err}") from err


def row_to_sample(row: dict[str, Any], index: int, where: str, base: Path | None = None) -> EvalSample:
    """Validate one row: image/images or video, question, answer/answers, optional choices/id/kind/metric."""
    if not isinstance(row, dict):
        raise FastVError(f"{where}: expected an object with image, question and answer(s), got {type(row).__name__}")
    question = row.get("question", row.get("prompt"))
    if not isinstance(question, str) or not question.strip():
        raise FastVError(f"{where}: missing or empty 'question'")
    sources = [_image_source(v, base, where) for v in _as_list(row.get("images", row.get("image")))]
    images = [src for src, _ in sources]
    video, frames = _video(row["video"], base, where) if row.get("video") else (None, [])
    if not images and video is None:
        raise FastVError(f"{where}: no 'image' (or 'images' / 'video'): FastV needs visual tokens")
    answers = _answers(row, where)
    choices = row.get("choices", row.get("options"))
    if choices is not None:
        if not isinstance(choices, (list, tuple)) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise FastVError(f"{where}: 'choices' must be a list of at least two strings")
        choices = list(choices)
        from fastv.eval.metrics import choice_index

        if choice_index(answers[0], choices) is None:
            raise FastVError(f"{where}: answer {answers[0]!r} is neither a choice letter nor one of {choices}")
    metric = row.get("metric", "auto")
    if metric not in METRICS:
        raise FastVError(f"{where}: metric {metric!r} is not one of {', '.join(METRICS)}")
    sample_id = row.get("id", row.get("question_id", index))
    return EvalSample(
        id=str(sample_id),
        question=question,
        answers=answers,
        images=images,
        video=video,
        choices=choices,
        kind=str(row.get("kind", row.get("question_type", row.get("category", ""))) or ""),
        metric=metric,
        fingerprint=fingerprint(question, answers, choices, metric, [d for _, d in sources] + frames),
    )


def _check_unique(samples: list[EvalSample], source: str) -> list[EvalSample]:
    seen: dict[str, int] = {}
    for i, s in enumerate(samples):
        if s.id in seen:
            raise FastVError(f"{source}: rows {seen[s.id]} and {i} share id {s.id!r}; ids must be unique")
        seen[s.id] = i
    return samples


# --------------------------------------------------------------------------- file formats


def load_jsonl(path: Path, limit: int | None = None) -> list[EvalSample]:
    """Rows of a JSONL file (the first `limit` only: rows past it are not read, nor their images opened)."""
    samples: list[EvalSample] = []
    with path.open("rb") as f:  # bytes: a decoding error is then named by its own line
        for line_no, raw in enumerate(f, start=1):
            if limit is not None and len(samples) >= limit:
                break
            where = f"{path}:{line_no}"
            try:
                line = raw.decode("utf-8-sig")  # -sig: a BOM some editors write is not JSON
            except UnicodeDecodeError as err:
                raise FastVError(f"{where}: not UTF-8 text ({err.reason}); save the file as UTF-8") from err
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise FastVError(f"{where}: not valid JSON ({err.msg})") from err
            samples.append(row_to_sample(row, len(samples), where, base=path.parent))
    if not samples:
        raise FastVError(f"{path}: no rows")
    return _check_unique(samples, str(path))


def _rows_to_samples(
    rows: Iterable[dict[str, Any]], source: str, base: Path | None, limit: int | None = None
) -> list[EvalSample]:
    rows = itertools.islice(rows, limit)
    samples = [row_to_sample(row, i, f"{source} row {i}", base) for i, row in enumerate(rows)]
    if not samples:
        raise FastVError(f"{source}: no rows")
    return _check_unique(samples, source)


def load_parquet(path: Path, limit: int | None = None) -> list[EvalSample]:
    import pyarrow.parquet as pq

    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    rows: list[dict[str, Any]] = []
    for f in files:
        rows.extend(pq.read_table(f).to_pylist())
    return _rows_to_samples(rows, str(path), path if path.is_dir() else path.parent, limit)


def load_hf_disk(path: Path, split: str | None, limit: int | None = None) -> list[EvalSample]:
    try:
        import datasets
    except ImportError as err:
        raise FastVError("datasets saved with save_to_disk need the `datasets` package: pip install datasets") from err
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds.keys())
        chosen = split or next((s for s in ("test", "validation", "val", "train") if s in ds), names[0])
        if chosen not in ds:
            raise FastVError(f"{path}: no split {chosen!r}; it has {', '.join(names)}")
        ds, source = ds[chosen], f"{path}[{chosen}]"
    else:
        source = str(path)
    return _rows_to_samples(iter(ds), source, path, limit)


def load_samples(spec: str, split: str | None = None, limit: int | None = None) -> list[EvalSample]:
    """Samples from `spec`: 'shapes[:SPLIT[:N[:KINDS]]]', a .jsonl file, a .parquet file or folder,
    or a folder written by `datasets.save_to_disk`. `limit` keeps the first N (handy for a smoke run).
    """
    if limit is not None and limit < 1:
        raise FastVError(f"--limit {limit}: give N >= 1 samples, or leave --limit out to evaluate them all")
    if spec == "shapes" or spec.startswith("shapes:"):
        samples = _parse_shapes_spec(spec)
    else:
        path = Path(spec)
        if not path.exists():
            raise FastVError(f"--data {spec!r}: no such file or folder (or use 'shapes' for the built-in benchmark)")
        if path.suffix in (".jsonl", ".json"):
            samples = load_jsonl(path, limit)
        elif path.suffix == ".parquet" or (path.is_dir() and any(path.glob("*.parquet"))):
            samples = load_parquet(path, limit)
        elif path.is_dir() and any(
            (path / f).exists() for f in ("dataset_dict.json", "state.json", "dataset_info.json")
        ):
            samples = load_hf_disk(path, split, limit)
        else:
            raise FastVError(
                f"--data {spec!r}: unknown format; give a .jsonl file, parquet, or a datasets save_to_disk folder"
            )
    return samples[:limit] if limit is not None else samples
