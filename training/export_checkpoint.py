"""Export a training checkpoint (`last.pt`) as a Hugging Face model folder, e.g. to finish a cut-off run.

    python training/export_checkpoint.py                                  # into the package folder
    python training/export_checkpoint.py --out /tmp/mid                   # anywhere else
    python training/export_checkpoint.py --ckpt training/checkpoints/default_v2/last.pt --out /tmp/v2_mid  # recipe v2
then `python training/evaluate_default.py --model <folder>` scores it (and `training/measure_default.py`
measures its attention). The recipe is read from the checkpoint: v2 checkpoints record the text model's shape.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_setup import build_model, build_model_v2, build_processor  # noqa: E402

from fastv.zoo.default_model import DEFAULT_MODEL_DIR  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", type=Path, default=ROOT / "training" / "checkpoints" / "last.pt")
    p.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR)
    args = p.parse_args()
    state = torch.load(args.ckpt, weights_only=False, map_location="cpu")
    saved = state.get("args", {})
    if "text_layers" in saved:  # recipe v2 (train_default_v2.py)
        processor = build_processor("v2")
        shape = (int(saved["text_layers"]), int(saved["text_hidden"]), int(saved["text_intermediate"]))
        model = build_model_v2(processor.tokenizer, *shape)
    else:
        processor = build_processor()
        model = build_model(processor.tokenizer)
    model.load_state_dict(state["model"])
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    print(f"exported phase A step {state['step_a']}, phase B step {state['step_b']} to {args.out}")


if __name__ == "__main__":
    main()
