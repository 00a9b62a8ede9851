"""Where a default-model candidate's cell look-up breaks: the two hops, per layer, on cell questions.

    python training/lookup_probe.py --model training/checkpoints/default_v2/final            # long style
    python training/lookup_probe.py --model training/models/default_v1 --style short      # the first model

A cell question ("What color is the object in cell b3? ...") is answered at the last prompt token,
which must (1) gather which cell was asked, many tokens back, and (2) find that cell among the
visual tokens. Exact match says only that the answer is wrong; this says which hop fails. Per layer,
averaged over validation questions (eager attention, head by head):
- ``to_cell_word``: the largest attention any head pays from the last token to the question's cell word;
- ``visual_share``: the head-averaged share of the last token's attention on the visual tokens;
- ``on_asked_cell``: the largest share, over heads, of a head's visual attention that falls on the
  patches of the cell whose object answers (chance: 9 of 144 = 0.06): the named cell, or for
  ``--kinds left,above`` its neighbour (``shapes.answer_cell``), which ``left of b3`` must read.
The first default model (terse prompts, the cell word is the last token) puts 0.83-0.96 of its
visual attention on the asked cell from layer 1 on; the template-prompted runs that plateau at ~60%
gather the cell (hop 1) but reach only ~0.6 there and answer from the scene's common colours.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from fastv.core.hf.chat import chat_text  # noqa: E402
from fastv.zoo.datasets import shapes  # noqa: E402

CELL_KINDS = ("color", "shape", "describe")
NEIGHBOUR_KINDS = ("left", "above")  # answered by the named cell's neighbour


def cell_patches(cell: str) -> torch.Tensor:
    """Indices, in the row-major patch grid, of the patches that cover ``cell``."""
    return torch.from_numpy((shapes.patch_cells() == shapes.CELLS.index(cell)).nonzero()[0])


def probe(model, processor, samples: list[shapes.Sample]) -> dict:
    """Per-layer means of the three measures over ``samples`` (cell-level questions), and first-word accuracy."""
    n_layers = model.config.text_config.num_hidden_layers
    sums = {name: [0.0] * n_layers for name in ("to_cell_word", "visual_share", "on_asked_cell")}
    right = 0
    for s in samples:
        text = chat_text(processor, s.question, n_images=1, video=False)
        inputs = processor(images=s.image(), text=text, return_tensors="pt")
        ids = inputs["input_ids"][0]
        tokens = processor.tokenizer.convert_ids_to_tokens(ids.tolist())
        cell = shapes.named_cell(s.question)
        cell_pos = max(i for i, t in enumerate(tokens) if t == cell)
        visual = (ids == model.config.image_token_id).nonzero()[:, 0]
        asked = visual[cell_patches(shapes.answer_cell(s))]
        with torch.no_grad():
            out = model(**inputs, output_attentions=True)
        right += processor.tokenizer.decode(out.logits[0, -1].argmax()) == s.answer.split()[0]
        for layer, att in enumerate(out.attentions):
            a = att[0, :, -1].float()  # heads x keys: the last token's attention
            on_visual = a[:, visual].sum(-1)
            sums["to_cell_word"][layer] += a[:, cell_pos].max().item()
            sums["visual_share"][layer] += on_visual.mean().item()
            sums["on_asked_cell"][layer] += (a[:, asked].sum(-1) / on_visual.clamp_min(1e-9)).max().item()
    n = len(samples)
    return {
        "questions": n,
        "first_word_accuracy": right / n,
        **{name: [round(v / n, 4) for v in values] for name, values in sums.items()},
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a model folder")
    p.add_argument("--style", choices=shapes.STYLES, default="long")
    p.add_argument("--images", type=int, default=12, help="validation scenes (one question per cell kind each)")
    p.add_argument("--kinds", default=",".join(CELL_KINDS), help="cell-level kinds to probe, e.g. left,above")
    p.add_argument("--out", type=Path, default=None, help="also write the result here (JSON)")
    args = p.parse_args(argv)
    kinds = tuple(args.kinds.split(","))
    if unknown := set(kinds) - set(CELL_KINDS + NEIGHBOUR_KINDS):
        raise SystemExit(f"--kinds {args.kinds}: {sorted(unknown)} name no cell; use {CELL_KINDS + NEIGHBOUR_KINDS}")
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    torch.set_num_threads(1)
    processor = AutoProcessor.from_pretrained(args.model, local_files_only=True)
    model = LlavaForConditionalGeneration.from_pretrained(args.model, attn_implementation="eager").eval()
    result = {"model": args.model, "style": args.style, "kinds": list(kinds)}
    result |= probe(model, processor, shapes.eval_samples("validation", args.images, kinds, style=args.style))
    print(f"{result['questions']} questions, first-word accuracy {result['first_word_accuracy']:.3f}")
    print("layer  to_cell_word  visual_share  on_asked_cell")
    for layer in range(len(result["visual_share"])):
        row = (result[k][layer] for k in ("to_cell_word", "visual_share", "on_asked_cell"))
        print(f"{layer:5d}  " + "  ".join(f"{v:12.3f}" for v in row))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
