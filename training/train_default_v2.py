"""Train the second default model: a LLaVA prompted the way LLaVA-1.5 is, on CPU or GPU, resumably.

    python training/train_default_v2.py                      # fresh run, checkpoints in training/checkpoints/default_v2
    python training/train_default_v2.py --resume             # continue exactly where the last checkpoint was
    python training/train_default_v2.py --device cuda        # same recipe on a GPU (bf16 autocast)

Precision: bf16 autocast where the hardware runs bf16 natively (a GPU; a CPU with AVX512-BF16 or AMX),
fp32 elsewhere. On a CPU without them (AVX2 only) a bf16 matmul is emulated and measured ~40x slower
than fp32 (a 512x512 product: 0.23 s against 0.006 s on the 2-core AMD EPYC), so a run there would
crawl at ~60 s per step; ``--bf16`` / ``--no-bf16`` override the choice.

Why a second recipe: FastV rests on the observation that LLaVA-1.5's last prompt token pays the image
a large share of its attention in layers 0-1 and little after that, while a few system-prompt tokens
absorb the rest. The first default model reads a few words after the image and nothing else, so it
shows the opposite. This recipe gives the model LLaVA-1.5's setting: the system prompt before the
image, ``USER: <image>\\n<instruction> ASSISTANT:``, instructions of realistic length (about 25 words,
`fastv.zoo.datasets.shapes` "long" style), scene-level questions beside the cell-level ones, and a
deeper Llama (10 layers by default, ~9 M parameters, < 40 MB).

Phase A pretrains the vision tower + projector with the first recipe's per-patch heads (the patch's
cell and the object under it), so an answer depends on a few visual tokens. Phase B trains the whole
LLaVA, tower frozen, on several question/answer turns packed after each image in exactly the chat
template's format (loss on the answers). A share of the turns use the terse "short" style
(``color b3``), which keeps the question's key word next to ``ASSISTANT:`` and so teaches where to
look before the long phrasing has to carry it across ~15 tokens (``--short-until`` makes that a
curriculum: only short turns before that step). ``--bare-until`` goes one step further, the curriculum
the design notes propose: before that step the terse question is answered right after its last word,
with no ``ASSISTANT:`` (the first default model's format, which learned to look a cell up quickly),
so the look-up exists before the template asks the model to carry the cell to the last token.

Two options attack the plateau the runs above hit (~60%: the scene-level questions learned, the cell
look-up not; README, "A second default model"). ``--grow-from`` starts from the first default model
(its tower, projector, text layers and word embeddings, placed among identity layers, so the grown
model computes what it computed). ``--aux-cell-layer N`` adds an auxiliary loss: after N text layers,
a linear probe must read the question's cell off the last prompt token's state, which rewards the
first hop of the look-up (gather the asked cell at the last token) before the second (find that
cell's visual tokens) works; the probe is not part of the shipped model. ``--aux-content-layer N``
asks for the object in that cell by layer N (the image read early, as FastV's K=2 presupposes), and
``--aux-scene-layer N`` for the scene's object counts at every answer position (every object read
early, whatever the question); ``--aux-query-layer N`` is the cell probe's counterpart for count,
exists and anyleft (the colour and shape they ask about). ``--kind-weights count=3,...`` draws the
many-object kinds, which lag the cell look-ups, more often. ``--hide-background S`` hides a random part
of the empty, unasked cells' visual tokens (attention mask, every layer) on a share S of the images, so
the amount of background stops telling the number of objects (`hidden_patches` says why that matters
to FastV).

Every step's data is a pure function of (seed, step), and checkpoints (every ``--ckpt-minutes``,
written atomically outside the repository) hold the model, the optimiser and the counters, so a
resumed run continues bit for bit as if it had never stopped. ``kill PID`` (SIGTERM) checkpoints at
the end of the current step and exits. ``--fit-minutes`` / ``--train-minutes`` fit a run to a short
GPU lease (``training/gpu_train_v2.sh``). The end writes ``OUT/final`` (a model
folder `fastv.load_default(path=...)` reads) and ``OUT/report.json`` (test exact match per kind);
installing it as the shipped default is a separate, deliberate step (``training/export_checkpoint.py``).

Cost measured on the 2-core CPU (1 thread, bf16 autocast; CPU seconds, the machine being shared):
phase B about 4.5 s per step of 16 images x 8 turns (~420 tokens), so the default 1500 steps are
about 1.9 CPU hours; phase A is skipped with ``--init-vision training/models/default_v1`` (the first
default model's tower, which its phase B kept frozen). On one GPU the same recipe runs at batch 32.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_setup import NUM_IMAGE_TOKENS, SYSTEM_PROMPT, build_model_v2, build_processor  # noqa: E402
from train_default import HEADS, lr_at, patch_labels, pixel_values, save_ckpt, scenes_for  # noqa: E402

from fastv.eval.default_model import exact_match  # noqa: E402
from fastv.zoo.datasets import shapes  # noqa: E402

DEFAULT_OUT = Path("training/checkpoints/default_v2")
MAX_WEIGHT_BYTES = 40 * 1024 * 1024
# Steps timed before --fit-minutes sets phase B's length: the first ones after the terse-only curriculum
# (--short-until), whose short turns run 2-3x faster than the long-style steps that make up the rest.
FIT_PROBE_STEPS = 30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoints, final model and report (not the repo)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]; bf16 autocast where it is native (see above)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text-layers", type=int, default=10)
    p.add_argument("--text-hidden", type=int, default=256)
    p.add_argument("--text-intermediate", type=int, default=768)
    p.add_argument(
        "--init-vision",
        type=Path,
        default=None,
        help="a default-model folder whose vision tower + projector to start from; skips phase A",
    )
    p.add_argument(
        "--grow-from",
        type=Path,
        default=None,
        help="a first-recipe default-model folder to grow from: its tower, projector, text layers and word "
        "embeddings (implies --init-vision from the same folder)",
    )
    p.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="an earlier run's OUT/last.pt: start from its trained model and probes, with a fresh optimiser and "
        "phase B schedule (fine-tune with a changed recipe); skips phase A",
    )
    p.add_argument(
        "--grown-layers-at",
        default="1,2,3,4,5,6",
        help="with --grow-from: where the source's text layers go; the other layers start as identities",
    )
    p.add_argument(
        "--aux-cell-layer",
        type=int,
        default=0,
        help="auxiliary loss: after this many text layers, the answer position must name the question's cell "
        "(a linear probe, dropped from the shipped model; 0: off)",
    )
    p.add_argument(
        "--aux-content-layer",
        type=int,
        default=0,
        help="auxiliary loss: after this many text layers, the answer position must name the object in the "
        "question's cell (colour and shape, or empty), so the image is read early (0: off)",
    )
    p.add_argument(
        "--aux-scene-layer",
        type=int,
        default=0,
        help="auxiliary loss: after this many text layers, every answer position must count the scene's objects "
        "per colour, shape, colour x shape and in total, so layers before it read every object (0: off)",
    )
    p.add_argument(
        "--aux-query-layer",
        type=int,
        default=0,
        help="auxiliary loss: after this many text layers, the answer position of a count / exists / anyleft "
        "question must name the colour and the shape it asks about (0: off)",
    )
    p.add_argument("--aux-weight", type=float, default=1.0)
    p.add_argument(
        "--kind-weights",
        default="",
        help="draw some question kinds more often, e.g. 'count=3,exists=2' (integers; unnamed kinds weigh 1)",
    )
    p.add_argument("--phase-a-steps", type=int, default=600)
    p.add_argument("--phase-a-batch", type=int, default=32)
    p.add_argument("--lr-a", type=float, default=2e-3)
    p.add_argument("--phase-b-steps", type=int, default=1500)
    p.add_argument("--phase-b-batch", type=int, default=16)
    p.add_argument("--qa-per-image", type=int, default=8, help="question/answer turns packed after each image")
    p.add_argument("--lr-b", type=float, default=1e-3)
    p.add_argument("--short-share", type=float, default=0.3, help="share of turns in the terse style")
    p.add_argument("--short-until", type=int, default=0, help="curriculum: only terse turns before this B step")
    p.add_argument(
        "--bare-until",
        type=int,
        default=0,
        help="curriculum: before this B step, terse turns answered right after their last word (no ASSISTANT:)",
    )
    p.add_argument(
        "--hide-background",
        type=float,
        default=0.0,
        help="share of training images whose empty, unasked cells lose a random part of their visual tokens "
        "(masked out of attention at every layer; 0: off)",
    )
    p.add_argument("--ckpt-minutes", type=float, default=3.0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--val-images", type=int, default=12)
    p.add_argument("--test-images", type=int, default=100)
    p.add_argument("--stop-after", type=int, default=0, help="checkpoint and exit after this many steps (0: run on)")
    p.add_argument(
        "--fit-minutes",
        type=float,
        default=0.0,
        help="fit phase B's length (and its cosine schedule) to this many wall minutes, timed on the first steps",
    )
    p.add_argument(
        "--train-minutes",
        type=float,
        default=0.0,
        help="wall-clock cap on this invocation's training: then checkpoint, evaluate and write final (0: none)",
    )
    # One thread: on a 2-core machine shared with other jobs, two OpenMP threads slowed steps 4-10x.
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=0, help="data worker processes (GPU runs: 4-8)")
    p.add_argument("--no-bf16", action="store_true", help="fp32 throughout, even where bf16 is native")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast even on a CPU that emulates it (slow)")
    return p.parse_args(argv)


# ---- data -------------------------------------------------------------------------------------
class Encoder:
    """Token ids of the chat template's pieces, so packed training turns match inference prompts exactly."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        self.bos, self.eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.image = tokenizer.convert_tokens_to_ids("<image>")
        self.system = self.ids(SYSTEM_PROMPT)
        self.user, self.assistant = self.ids("USER:"), self.ids("ASSISTANT:")
        self.image_start = 1 + len(self.system) + len(self.user)  # the first visual token's position

    def ids(self, text: str) -> list[int]:
        out = self.tok(text, add_special_tokens=False)["input_ids"]
        if self.tok.unk_token_id in out:
            raise ValueError(f"words outside the vocabulary in {text!r}")
        return out

    def conversation(self, qas: list[shapes.QA], bare: bool = False) -> tuple[list[int], list[int]]:
        """``<s>SYSTEM USER: <image>*144 q1 ASSISTANT: a1</s> USER: q2 ASSISTANT: a2</s>...``; labels on answers."""
        ids, labels, _, _ = self.conversation_with_cells(qas, bare)
        return ids, labels

    def conversation_with_cells(
        self, qas: list[shapes.QA], bare: bool = False
    ) -> tuple[list[int], list[int], list[int], list[int]]:
        """`conversation`, plus the auxiliary targets at each turn's last prompt token (the one that
        predicts the answer), -100 elsewhere: the index in `shapes.CELLS` of the cell its question names
        (``--aux-cell-layer``), and of the cell whose object answers it (``--aux-content-layer``; the
        named cell's neighbour for ``left`` / ``above``)."""
        ids = [self.bos, *self.system, *self.user, *[self.image] * NUM_IMAGE_TOKENS]
        labels = [-100] * len(ids)
        cells = [-100] * len(ids)
        answering = [-100] * len(ids)
        for i, qa in enumerate(qas):
            prompt = (self.user if i else []) + self.ids(qa.question) + ([] if bare else self.assistant)
            answer = self.ids(qa.answer) + [self.eos]
            ids += prompt + answer
            labels += [-100] * len(prompt) + answer
            for targets, cell in ((cells, shapes.named_cell(qa.question)), (answering, shapes.answer_cell(qa))):
                targets += [-100] * (len(prompt) - 1) + [shapes.CELLS.index(cell) if cell else -100]
                targets += [-100] * len(answer)
        return ids, labels, cells, answering


def hidden_patches(scene: shapes.Scene, qas: list[shapes.QA], share: float, seed: int) -> np.ndarray:
    """``--hide-background``: the visual tokens (row-major patch indices) one training image hides.

    Why: the model counted objects by proportion (how much of the image shows an object), which is
    exact when every image has 144 tokens, because empty cells are exactly the cells without an
    object. FastV keeps the tokens the last prompt token attends to, mostly the objects, so the
    proportion rises and the model overcounts (``total``: 100% -> 25% at R=50%, every miss one to
    three too many; random pruning keeps the proportion and the answers). Hiding a random part of the
    empty background on a share of images makes the amount of background vary independently of the
    objects, as it does between real photos, so counting must rest on the objects alone. Only
    patches of cells with no object that no turn names or is answered by are hidden, so every answer
    stays visible. A pure function of its arguments, so resumed runs stay bit for bit.
    """
    rng = random.Random(seed)
    if share <= 0 or rng.random() >= share:
        return np.zeros(0, dtype=np.int64)
    occupied = {o.cell for o in scene.objects}
    asked = {c for qa in qas for c in (shapes.named_cell(qa.question), shapes.answer_cell(qa)) if c}
    cells = shapes.patch_cells()
    free = [p for p in range(len(cells)) if shapes.CELLS[cells[p]] not in occupied | asked]
    fraction = rng.random()
    return np.array(sorted(p for p in free if rng.random() < fraction), dtype=np.int64)


def kind_weights(spec: str) -> dict[str, int]:
    """``--kind-weights``: 'count=3,exists=2' -> {'count': 3, 'exists': 2}.

    Why: the kinds that need many objects at once (count, exists) lag the cell look-ups by 30-50 points
    at equal exposure; a turn's kind is drawn from a shuffled list holding each kind ``weight`` times,
    so with every weight 1 the data are exactly those of runs made before this option existed.
    """
    out: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        kind, _, value = item.partition("=")
        if kind not in shapes.ALL_KINDS or not value.isdigit() or int(value) < 1:
            raise SystemExit(f"--kind-weights: bad item {item!r}; expected KIND=N, N >= 1, KIND in {shapes.ALL_KINDS}")
        out[kind] = int(value)
    return out


@functools.cache
def _kind_pool(spec: str) -> tuple[str, ...]:
    """The list a turn's kind is drawn from: each kind ``weight`` times (parsed once per spec, not per turn)."""
    weights = kind_weights(spec)
    return tuple(k for k in shapes.ALL_KINDS for _ in range(weights.get(k, 1)))


def turns(scene: shapes.Scene, args: argparse.Namespace, step: int, j: int) -> list[shapes.QA]:
    """The question/answer turns about one training image: every kind, some terse, the rest long."""
    seed = (args.seed * 1_000_003 + step) * 4099 + j
    rng = random.Random(seed)
    short_share = 1.0 if step < max(args.short_until, args.bare_until) else args.short_share
    kinds = list(_kind_pool(args.kind_weights))
    rng.shuffle(kinds)
    return [
        shapes.ask(scene, kinds[i % len(kinds)], rng, "short" if rng.random() < short_share else "long")
        for i in range(args.qa_per_image)
    ]


CONTENT_CLASSES = 1 + len(shapes.COLORS) * len(shapes.SHAPES)  # empty, or one colour x shape
# The auxiliary probes: Trainer attributes, saved in checkpoints by name.
PROBES = ("cell_probe", "content_probe", "scene_probe", "query_probe")
MODEL_INPUTS = ("pixel_values", "input_ids", "attention_mask", "labels")  # the rest of a batch is for the probes


def probe_loss(probe: torch.nn.Linear, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """An auxiliary loss: a linear probe reads a target off the answer positions' states ``h`` (one layer's).

    ``targets`` is (batch, seq) of class ids, or (batch, seq, groups) for a probe that reads several
    class targets at once (its outputs split evenly into the groups; the loss is their mean); -100
    marks the positions without a target.

    Why: the template-prompted model plateaus at ~60% on the 2-core CPU. A cell question is answered at
    the last prompt token, which must first gather which cell was asked (many tokens back, past the
    instruction and ``ASSISTANT:``), then find that cell among the visual tokens, and the first hop gets
    no gradient until the second works. ``--aux-cell-layer`` rewards the first hop (target: the cell).
    With it alone the look-up settles in the middle layers, so FastV's K=2 ranking (layer 1's attention)
    is not yet question-aware and loses to random pruning; ``--aux-content-layer`` (target: the object in
    that cell) asks for the image to be read by that layer, as LLaVA-1.5 does by layer 2 in the paper.
    The probes are not part of the saved model.
    """
    targets = targets.to(h.device)
    mask = targets >= 0 if targets.dim() == 2 else targets[..., 0] >= 0
    if not mask.any():
        return h.new_zeros(())
    logits, wanted = probe(h[mask]).float(), targets[mask]
    if wanted.dim() == 2:  # (positions, groups): logits (positions, classes, groups) for cross_entropy
        logits = logits.reshape(len(wanted), wanted.shape[1], -1).transpose(1, 2)
    return F.cross_entropy(logits, wanted)


def content_class(scene: shapes.Scene, cell_index: int) -> int:
    """--aux-content-layer's target: 0 for an empty cell, else 1 + colour x shape; -100 where no cell is asked."""
    if cell_index < 0:
        return -100
    obj = scene.at(shapes.CELLS[cell_index])
    if obj is None:
        return 0
    return 1 + list(shapes.COLORS).index(obj.color) * len(shapes.SHAPES) + shapes.SHAPES.index(obj.shape)


SCENE_COUNT_CLASSES = shapes.MAX_OBJECTS + 1  # 0..8 objects
SCENE_GROUPS = len(shapes.COLORS) + len(shapes.SHAPES) + len(shapes.COLORS) * len(shapes.SHAPES) + 1


def scene_counts(scene: shapes.Scene) -> list[int]:
    """--aux-scene-layer's targets: how many objects of each colour, each shape, each colour x shape, in all.

    Why: count, exists, total, common, colors and anyleft need many objects at once, and a probe on
    every answer position asks layers before it to gather all of them, whatever the question; at
    layer 2 that is the image-heavy early attention FastV ranks by (K=2).
    """
    objs = scene.objects
    return (
        [sum(o.color == c for o in objs) for c in shapes.COLORS]
        + [sum(o.shape == s for o in objs) for s in shapes.SHAPES]
        + [sum(o.color == c and o.shape == s for o in objs) for c in shapes.COLORS for s in shapes.SHAPES]
        + [len(objs)]
    )


def answer_positions(labels: list[int]) -> list[int]:
    """Each turn's last prompt token: the position whose next token is the first of an answer."""
    return [i for i in range(len(labels) - 1) if labels[i] == -100 and labels[i + 1] != -100]


class PhaseBBatches(torch.utils.data.Dataset):
    """Item i = the whole batch of B step ``first + i`` (a pure function of seed and step)."""

    def __init__(self, args: argparse.Namespace, processor, first: int) -> None:
        self.args, self.processor, self.first = args, processor, first
        self.encoder = Encoder(processor.tokenizer)

    def __len__(self) -> int:
        return self.args.phase_b_steps - self.first

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        step = self.first + i
        scenes = scenes_for(self.args.seed, "B", step, self.args.phase_b_batch)
        bare = step < self.args.bare_until
        asked = [turns(s, self.args, step, j) for j, s in enumerate(scenes)]
        seqs = [self.encoder.conversation_with_cells(qas, bare) for qas in asked]
        width = max(len(ids) for ids, *_ in seqs)
        pad = self.processor.tokenizer.pad_token_id
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, *_ in seqs])
        for j, (scene, qas) in enumerate(zip(scenes, asked, strict=True)):
            seed = ((self.args.seed * 1_000_003 + step) * 4099 + j) * 7 + 1  # not turns()'s stream
            hidden = hidden_patches(scene, qas, self.args.hide_background, seed)
            mask[j, self.encoder.image_start + torch.from_numpy(hidden)] = 0
        batch = {
            "step": torch.tensor(step),
            "pixel_values": pixel_values(self.processor, scenes),
            "input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, *_ in seqs]),
            "attention_mask": mask,
            "labels": torch.tensor([lab + [-100] * (width - len(lab)) for _, lab, *_ in seqs]),
        }
        # Only the switched-on probes' targets: the scene counts alone are ~30 ints per token.
        args, items = self.args, list(zip(scenes, asked, seqs, strict=True))
        if args.aux_cell_layer:
            batch["cell_labels"] = torch.tensor([c + [-100] * (width - len(c)) for _, _, c, _ in seqs])
        if args.aux_content_layer:
            batch["content_labels"] = torch.tensor(
                [[content_class(s, c) for c in at] + [-100] * (width - len(at)) for s, _, (*_, at) in items]
            )
        if args.aux_scene_layer:
            batch["scene_labels"] = torch.tensor([scene_targets(s, lab, width) for s, _, (_, lab, *_) in items])
        if args.aux_query_layer:
            batch["query_labels"] = torch.tensor([query_targets(qas, lab, width) for _, qas, (_, lab, *_) in items])
        return batch


def at_answers(positions: list[int], width: int, per_turn: list[list[int]], groups: int) -> list[list[int]]:
    """(width, groups): each turn's targets at its answer position (`answer_positions`), -100 rows elsewhere."""
    rows = [[-100] * groups for _ in range(width)]
    for pos, targets in zip(positions, per_turn, strict=True):
        rows[pos] = targets
    return rows


def scene_targets(scene: shapes.Scene, labels: list[int], width: int) -> list[list[int]]:
    """(width, SCENE_GROUPS): `scene_counts` at each answer position, -100 rows elsewhere."""
    positions = answer_positions(labels)
    return at_answers(positions, width, [scene_counts(scene)] * len(positions), SCENE_GROUPS)


QUERY_KINDS = ("count", "exists", "anyleft")  # the questions that name a colour and/or a shape to look for
QUERY_CLASSES = 1 + len(shapes.COLORS)  # per group: 0 = none named, else 1 + the colour's (shape's) index


def query_class(qa: shapes.QA) -> list[int]:
    """--aux-query-layer's target for one turn: [colour named, shape named] (0: none), -100s for other kinds.

    Why: count, exists and anyleft stay near chance while the cell kinds reach 97-100%, and they fail
    the way the cell look-up did before the cell probe: the words to look for sit ~15 tokens before
    the answer position, which must gather them (hop 1) before it can find the matching objects.
    """
    if qa.kind not in QUERY_KINDS:
        return [-100, -100]
    words = shapes.words_of(qa.question)
    colors = [list(shapes.COLORS).index(w) + 1 for w in words if w in shapes.COLORS]
    kinds = [shapes.SHAPES.index(w.removesuffix("s")) + 1 for w in words if w.removesuffix("s") in shapes.SHAPES]
    return [colors[0] if colors else 0, kinds[0] if kinds else 0]


def query_targets(qas: list[shapes.QA], labels: list[int], width: int) -> list[list[int]]:
    """(width, 2): each turn's `query_class` at its answer position, -100 rows elsewhere."""
    return at_answers(answer_positions(labels), width, [query_class(qa) for qa in qas], 2)


class PhaseABatches(torch.utils.data.Dataset):
    def __init__(self, args: argparse.Namespace, processor, first: int) -> None:
        self.args, self.processor, self.first = args, processor, first

    def __len__(self) -> int:
        return self.args.phase_a_steps - self.first

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        step = self.first + i
        scenes = scenes_for(self.args.seed, "A", step, self.args.phase_a_batch)
        labels = [patch_labels(s) for s in scenes]
        out = {"step": torch.tensor(step), "pixel_values": pixel_values(self.processor, scenes)}
        for name in HEADS:
            out[name] = torch.from_numpy(np.stack([lab[name] for lab in labels]))
        return out


def batches(dataset: torch.utils.data.Dataset, workers: int):
    return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers)


# ---- training ---------------------------------------------------------------------------------
def native_bf16(device: torch.device) -> bool:
    """True where bf16 matmuls run in hardware: any CUDA device, or a CPU with AVX512-BF16 or AMX tiles."""
    if device.type == "cuda":
        return True
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so looked up defensively
    return device.type == "cpu" and any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def use_bf16(device: torch.device, force_on: bool = False, force_off: bool = False) -> bool:
    """bf16 autocast or fp32 for a run: native bf16 unless forced (``--bf16`` / ``--no-bf16``)."""
    if force_on and force_off:
        raise SystemExit("--bf16 and --no-bf16 contradict each other: pass one")
    return force_on or (not force_off and native_bf16(device))


class Trainer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        kind_weights(args.kind_weights)  # a bad spec fails here, not at the first batch
        self.device = torch.device(args.device)
        self.bf16 = use_bf16(self.device, force_on=args.bf16, force_off=args.no_bf16)
        self.precision = "bf16 autocast" if self.bf16 else "fp32"  # printed now, recorded in the report
        print(f"precision: {self.precision} on {self.device}", flush=True)
        self.processor = build_processor("v2")
        self.model = build_model_v2(
            self.processor.tokenizer, args.text_layers, args.text_hidden, args.text_intermediate
        ).to(self.device)
        n_bytes = 4 * sum(p.numel() for p in self.model.parameters())
        if n_bytes > MAX_WEIGHT_BYTES:
            raise SystemExit(f"{n_bytes / 2**20:.1f} MiB of fp32 weights: over the 40 MB limit; shrink the text model")
        self.heads = torch.nn.Linear(args.text_hidden, sum(HEADS.values())).to(self.device)
        self.cell_probe = torch.nn.Linear(args.text_hidden, len(shapes.CELLS)).to(self.device)
        self.content_probe = torch.nn.Linear(args.text_hidden, CONTENT_CLASSES).to(self.device)
        self.scene_probe = torch.nn.Linear(args.text_hidden, SCENE_GROUPS * SCENE_COUNT_CLASSES).to(self.device)
        self.query_probe = torch.nn.Linear(args.text_hidden, 2 * QUERY_CLASSES).to(self.device)
        # The switched-on auxiliary probes: (hidden-state index, probe, batch key of its targets).
        self.probes = [
            (layer, probe, key)
            for layer, probe, key in (
                (args.aux_cell_layer, self.cell_probe, "cell_labels"),
                (args.aux_content_layer, self.content_probe, "content_labels"),
                (args.aux_scene_layer, self.scene_probe, "scene_labels"),
                (args.aux_query_layer, self.query_probe, "query_labels"),
            )
            if layer
        ]
        self.ckpt = args.out / "last.pt"
        self.state: dict = {"step_a": 0, "step_b": 0, "elapsed": 0.0, "cpu_seconds": 0.0, "val": []}
        self.opt_state: dict = {}
        self.steps_this_run = 0
        self.started = self.last_save = time.time()
        self.cut_short = False
        self.interrupted = False

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def load(self) -> None:
        saved = torch.load(self.ckpt, weights_only=False, map_location="cpu")
        self.load_weights(saved)
        self.opt_state = saved.pop("opt") or {}
        self.state.update(saved)
        print(
            f"resumed from {self.ckpt}: phase A step {self.state['step_a']}, phase B step {self.state['step_b']}, "
            f"{self.state['elapsed'] / 60:.1f} min of training so far",
            flush=True,
        )

    def load_weights(self, saved: dict) -> None:
        """Take the model, heads and probes out of a checkpoint dict (``--resume``, ``--init-from``)."""
        self.model.load_state_dict(saved.pop("model"))
        self.heads.load_state_dict(saved.pop("heads"))
        for name in PROBES:
            if name in saved:
                getattr(self, name).load_state_dict(saved.pop(name))

    def save(self) -> None:
        self.args.out.mkdir(parents=True, exist_ok=True)
        state = {
            **self.state,
            "model": self.model.state_dict(),
            "heads": self.heads.state_dict(),
            **{name: getattr(self, name).state_dict() for name in PROBES},
            "opt": self.opt_state,
        }
        save_ckpt(self.ckpt, state)
        self.last_save = time.time()

    def after_step(self, phase: str, opt: torch.optim.Optimizer, done: bool) -> bool:
        """Checkpoint when due; True when this invocation should stop (``--stop-after``, ``--train-minutes``)."""
        self.opt_state = {"phase": phase, "state": opt.state_dict()}
        self.steps_this_run += 1
        stop = (bool(self.args.stop_after) and self.steps_this_run >= self.args.stop_after) or self.interrupted
        if self.args.train_minutes and time.time() - self.started >= 60 * self.args.train_minutes and not done:
            self.cut_short = stop = True
            self.state["cut_short_at"] = {"step_a": self.state["step_a"], "step_b": self.state["step_b"]}
            print(f"--train-minutes {self.args.train_minutes} reached: stopping training here", flush=True)
        if done or stop or time.time() - self.last_save >= 60 * self.args.ckpt_minutes:
            self.save()
        return stop

    def log(self, phase: str, step: int, total: int, loss: float, t0: float, c0: float, extra: str = "") -> None:
        """One line: the step's wall and CPU seconds (on a shared machine CPU time is the cost to extrapolate)."""
        line = (
            f"[{time.strftime('%H:%M:%S')}] {phase} step {step}/{total} loss {loss:.4f} "
            f"{time.time() - t0:.2f} s/step wall, {time.process_time() - c0:.2f} s/step CPU; "
            f"{self.state['elapsed'] / 60:.1f} min wall, {self.state['cpu_seconds'] / 60:.1f} min CPU so far {extra}"
        )
        print(line.rstrip(), flush=True)

    def phase_a(self) -> bool:
        args, model = self.args, self.model
        params = [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters()]
        params += list(self.heads.parameters())
        opt = torch.optim.AdamW(params, lr=args.lr_a, weight_decay=0.01)
        if self.opt_state.get("phase") == "A":
            opt.load_state_dict(self.opt_state["state"])
        model.train()
        for batch in batches(PhaseABatches(args, self.processor, self.state["step_a"]), args.workers):
            t0, c0 = time.time(), time.process_time()
            step = int(batch["step"])
            for g in opt.param_groups:
                g["lr"] = lr_at(step, args.phase_a_steps, args.lr_a)
            with self.autocast():
                feats = model.model.get_image_features(
                    pixel_values=batch["pixel_values"].to(self.device),
                    vision_feature_layer=-1,
                    vision_feature_select_strategy="default",
                ).pooler_output
                logits = self.heads(torch.stack(list(feats))).float()
            loss, start = 0.0, 0
            for name, n in HEADS.items():
                loss = loss + F.cross_entropy(
                    logits[..., start : start + n].reshape(-1, n), batch[name].to(self.device).reshape(-1)
                )
                start += n
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            self.state["step_a"] = step + 1
            self.state["elapsed"] += time.time() - t0
            self.state["cpu_seconds"] += time.process_time() - c0
            if (step + 1) % args.log_every == 0:
                self.log("A", step + 1, args.phase_a_steps, loss.item(), t0, c0)
            if self.after_step("A", opt, step + 1 == args.phase_a_steps):
                return True
        return False

    def phase_b(self) -> bool:
        args, model = self.args, self.model
        model.model.vision_tower.requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        for _, probe, _ in self.probes:
            params += list(probe.parameters())
        opt = torch.optim.AdamW(params, lr=args.lr_b, weight_decay=0.01, betas=(0.9, 0.98))
        if self.opt_state.get("phase") == "B":
            saved = self.opt_state["state"]
            if len(saved["param_groups"][0]["params"]) == len(params):
                opt.load_state_dict(saved)
            else:  # an auxiliary probe was switched on or off at this resume: its moments start fresh
                print("optimiser state not restored: the trained parameters changed (auxiliary probes)", flush=True)
        val = shapes.eval_samples("validation", args.val_images, shapes.ALL_KINDS, style="long")
        probe_from = max(self.state["step_b"], args.short_until)
        t_probe = time.time() if probe_from == self.state["step_b"] else None
        for batch in batches(PhaseBBatches(args, self.processor, self.state["step_b"]), args.workers):
            t0, c0 = time.time(), time.process_time()
            model.train()
            step = int(batch["step"])
            total = self.state.get("fitted_total_b") or args.phase_b_steps
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, args.lr_b, warmup=100)
            inputs = {k: batch[k].to(self.device) for k in MODEL_INPUTS}
            with self.autocast():
                out = model(**inputs, output_hidden_states=bool(self.probes))
                loss = out.loss
                for layer, probe, key in self.probes:
                    loss = loss + args.aux_weight * probe_loss(probe, out.hidden_states[layer], batch[key])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            self.state["step_b"] = step + 1
            self.state["elapsed"] += time.time() - t0
            self.state["cpu_seconds"] += time.process_time() - c0
            ema = self.state.get("loss_b")
            self.state["loss_b"] = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
            if (step + 1) % args.log_every == 0:
                lr = f"lr {opt.param_groups[0]['lr']:.1e}"
                self.log("B", step + 1, total, self.state["loss_b"], t0, c0, lr)
            if args.val_every and (step + 1) % args.val_every == 0:
                self.validate(val, step + 1)
            if args.fit_minutes and "fitted_total_b" not in self.state:
                if step + 1 == probe_from:
                    t_probe = time.time()
                elif step + 1 == probe_from + FIT_PROBE_STEPS:
                    self.fit_schedule(step + 1, (time.time() - t_probe) / FIT_PROBE_STEPS)
            done = step + 1 >= (self.state.get("fitted_total_b") or args.phase_b_steps)
            if self.after_step("B", opt, done):
                return True
            if done:
                return False
        return False

    def fit_schedule(self, step: int, seconds_per_step: float) -> None:
        """Shorten phase B so it ends within ``--fit-minutes`` of this invocation's start, at the measured speed.

        Decided once, timed on the first long-style steps (at most a few dozen steps after the 100-step
        warm-up, where the cosine has barely moved whatever the total), and kept in the checkpoint, so
        a resumed run follows the same schedule.
        """
        left = 60 * self.args.fit_minutes - (time.time() - self.started)
        fitted = min(self.args.phase_b_steps, step + max(1, int(0.9 * left / seconds_per_step)))
        self.state["fitted_total_b"] = fitted
        print(
            f"{seconds_per_step:.3f} s/step: phase B fitted to {fitted} steps (--fit-minutes {self.args.fit_minutes})"
        )

    def validate(self, samples: list[shapes.Sample], step: int) -> None:
        t1 = time.time()
        self.model.eval()
        res = exact_match(self.model, self.processor, samples)
        self.state["val"].append({"step": step, **res})
        kinds = " ".join(f"{k}={v:.2f}" for k, v in res["per_kind"].items())
        print(f"[val B step {step}] overall {res['overall']:.3f} {kinds} ({time.time() - t1:.0f} s)", flush=True)

    def init_from(self, path: Path) -> None:
        """Start from an earlier run's checkpoint: its model, heads and probes, not its optimiser or steps.

        Why: a change to the recipe (a probe's target, the kind weights) can be tried as a short
        fine-tune of a trained model, on its own warm-up and cosine, instead of a two-hour run.
        """
        if not path.is_file():
            raise SystemExit(f"--init-from {path}: no such checkpoint (an earlier run's OUT/last.pt)")
        saved = torch.load(path, weights_only=False, map_location="cpu")
        self.load_weights(saved)
        self.state["step_a"] = self.args.phase_a_steps
        keys = ("step_b", "elapsed", "cpu_seconds", "commands")
        self.state["init_from"] = {"path": str(path), **{k: saved.get(k) for k in keys}}
        print(f"model and probes from {path} (its phase B step {saved.get('step_b')}); phase A skipped", flush=True)

    def init_vision(self, path: Path, loaded=None) -> None:
        """Copy a trained tower + projector (the first default model's: same shapes, frozen in its phase B).

        ``loaded``: the model at ``path`` when the caller has it already (`grow_text`), so it is read once.
        """
        from transformers import LlavaForConditionalGeneration

        model = loaded or LlavaForConditionalGeneration.from_pretrained(path, local_files_only=True)
        source = model.state_dict()
        prefixes = ("model.vision_tower.", "model.multi_modal_projector.")
        own = self.model.state_dict()
        picked = {k: v for k, v in source.items() if k.startswith(prefixes)}
        wanted = {k for k in own if k.startswith(prefixes)}
        if not picked or set(picked) != wanted or any(own[k].shape != v.shape for k, v in picked.items()):
            raise SystemExit(f"{path}: its vision tower/projector do not match this model's (text hidden size?)")
        self.model.load_state_dict(picked, strict=False)
        self.state["step_a"] = self.args.phase_a_steps
        self.state["vision_from"] = str(path)
        print(f"vision tower + projector from {path}; phase A skipped", flush=True)

    def grow_text(self, path: Path, placement: list[int]) -> None:
        """Start the text model from a smaller trained one (the first default model), function-preserving.

        Why: on the 2-core CPU the template-prompted model learns the scene-level questions but not to
        look one cell up (README, "A second default model"), while the first model, trained on terse
        prompts, does look cells up. Its layers go to ``placement``; every other layer starts with
        zero output projections (attention ``o_proj``, MLP ``down_proj``), so it adds nothing to the
        residual stream and the grown model computes what the source computed until training moves it.
        Word embeddings are copied by word (the two tokenizers number words differently); words the
        source never saw (the system prompt, the template, the long phrasings) keep their fresh init.
        """
        from transformers import AutoTokenizer, LlavaForConditionalGeneration

        source = LlavaForConditionalGeneration.from_pretrained(path, local_files_only=True)
        src_text = source.model.language_model
        own_text = self.model.model.language_model
        n_src, n_own = len(src_text.layers), len(own_text.layers)
        if len(placement) != n_src or len(set(placement)) != n_src or not all(0 <= i < n_own for i in placement):
            raise SystemExit(f"--grown-layers-at {placement}: need {n_src} distinct layer indices in 0..{n_own - 1}")
        with torch.no_grad():
            for i, layer in enumerate(own_text.layers):
                if i in placement:
                    layer.load_state_dict(src_text.layers[placement.index(i)].state_dict())
                else:
                    layer.self_attn.o_proj.weight.zero_()
                    layer.mlp.down_proj.weight.zero_()
            own_text.norm.load_state_dict(src_text.norm.state_dict())
            src_vocab = AutoTokenizer.from_pretrained(path, local_files_only=True).get_vocab()
            own_vocab = self.processor.tokenizer.get_vocab()
            src_emb, own_emb = src_text.embed_tokens.weight, own_text.embed_tokens.weight
            shared = [w for w in own_vocab if w in src_vocab]
            for w in shared:
                own_emb[own_vocab[w]] = src_emb[src_vocab[w]]
        self.init_vision(path, loaded=source)
        self.state["text_from"] = {"path": str(path), "layers_at": placement, "words_copied": len(shared)}
        print(f"text model grown from {path}: its {n_src} layers at {placement}, {len(shared)} words", flush=True)

    def run(self) -> bool:
        """Train until done or stopped; True when the model is ready to finish (both phases done, or time up)."""
        if self.args.resume and self.ckpt.exists():
            self.load()
        elif self.args.init_from is not None:
            self.init_from(self.args.init_from)
        elif self.args.grow_from is not None:
            self.grow_text(self.args.grow_from, [int(i) for i in self.args.grown_layers_at.split(",")])
        elif self.args.init_vision is not None:
            self.init_vision(self.args.init_vision)
        self.state.setdefault("commands", []).append("python " + " ".join(sys.argv))
        self.state["args"] = {k: str(v) for k, v in vars(self.args).items()}
        if self.state["step_a"] < self.args.phase_a_steps and self.phase_a():
            return self.cut_short
        if self.state["step_b"] < (self.state.get("fitted_total_b") or self.args.phase_b_steps) and self.phase_b():
            return self.cut_short
        return True

    def finish(self) -> dict:
        """Write OUT/final (a model folder) and OUT/report.json (test exact match, long and short style)."""
        args, model = self.args, self.model
        final = args.out / "final"
        model.eval()
        model.to("cpu").save_pretrained(final)
        self.processor.save_pretrained(final)
        model.to(self.device)
        report = {
            "recipe": "training/train_default_v2.py",
            "model": f"LLaVA: CLIP tower 3x128, MLP projector, Llama {args.text_layers}x{args.text_hidden}",
            "parameters": sum(p.numel() for p in model.parameters()),
            "weights_bytes": (final / "model.safetensors").stat().st_size,
            "train_seconds": round(self.state["elapsed"], 1),
            "train_cpu_seconds": round(self.state["cpu_seconds"], 1),
            "vision_from": self.state.get("vision_from"),
            "text_from": self.state.get("text_from"),
            "init_from": self.state.get("init_from"),  # its training time is not in train_seconds above
            "device": str(self.device),
            "precision": self.precision,
            "commands": self.state["commands"],
            "args": self.state["args"],
            "phase_b_steps_done": self.state["step_b"],
            "phase_b_fitted_total": self.state.get("fitted_total_b"),
            "cut_short_at": self.state.get("cut_short_at"),
            "phase_b_final_loss_ema": self.state.get("loss_b"),
            "validation": self.state["val"],
            "test": {},
        }
        for style in shapes.STYLES:
            samples = shapes.eval_samples("test", args.test_images, shapes.ALL_KINDS, style=style)
            t1 = time.time()
            res = exact_match(model, self.processor, samples, progress=True)
            report["test"][style] = {"images": args.test_images, **res, "eval_seconds": round(time.time() - t1, 1)}
            print(f"test ({style}) exact match {res['overall']:.4f}", res["per_kind"], flush=True)
        (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        return report


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    trainer = Trainer(args)

    def interrupt(signum, frame) -> None:  # `kill PID`: checkpoint at the end of the current step, then exit
        trainer.interrupted = True

    signal.signal(signal.SIGTERM, interrupt)
    if trainer.run():
        trainer.finish()
    else:
        print(
            f"stopped at phase A step {trainer.state['step_a']}, phase B step {trainer.state['step_b']}; "
            f"continue with --resume",
            flush=True,
        )


if __name__ == "__main__":
    main()
