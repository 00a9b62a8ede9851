"""Evaluate a trained default model on the shapes test split and record it in the training report.

    python training/evaluate_default.py                       # the model shipped in the package
    python training/evaluate_default.py --model training/checkpoints/final
    python training/evaluate_default.py --model training/checkpoints/default_v2/final --kinds all --style long \
        --report training/checkpoints/default_v2/report.json          # the second recipe's model, every kind

Exact match of greedy `generate` answers through the processor and chat template (the user's path),
overall and per question kind, next to the majority-answer baseline of each kind (what a model that
ignores the image would score).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from fastv.eval.default_model import exact_match  # noqa: E402
from fastv.zoo.datasets import shapes  # noqa: E402
from fastv.zoo.default_model import DEFAULT_MODEL_DIR, load_default  # noqa: E402

REPORT = ROOT / "training" / "default_model_report.json"


def majority_baseline(samples: list[shapes.Sample]) -> dict[str, float]:
    answers: dict[str, Counter] = defaultdict(Counter)
    for s in samples:
        answers[s.kind][s.answer] += 1
    return {k: c.most_common(1)[0][1] / sum(c.values()) for k, c in sorted(answers.items())}


KIND_SETS = shapes.KIND_GROUPS


def evaluate(model_dir: Path, images: int, threads: int, kinds: str = "cell", style: str = "short") -> dict:
    torch.set_num_threads(threads)
    model, processor = load_default(path=model_dir)
    samples = shapes.eval_samples("test", images, KIND_SETS[kinds], style=style)
    t0 = time.time()
    res = exact_match(model, processor, samples, progress=True)
    return {
        "split": "test",
        "images": images,
        "kinds": list(KIND_SETS[kinds]),
        "style": style,
        "decoding": "greedy generate via chat template",
        **res,
        "majority_baseline_per_kind": majority_baseline(samples),
        "eval_seconds": round(time.time() - t0, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--kinds", choices=tuple(KIND_SETS), default="cell", help="cell-level, scene-level or all kinds")
    p.add_argument("--style", choices=shapes.STYLES, default="short", help="terse prompts or LLaVA-style instructions")
    p.add_argument("--report", type=Path, default=REPORT, help="JSON report to record the result in")
    p.add_argument("--no-write", action="store_true", help="print only; leave the report alone")
    args = p.parse_args()
    test = evaluate(args.model, args.images, args.threads, args.kinds, args.style)
    print(json.dumps(test, indent=2))
    if not args.no_write:
        report = json.loads(args.report.read_text()) if args.report.exists() else {}
        key = "test" if (args.kinds, args.style) == ("cell", "short") else f"test_{args.kinds}_{args.style}"
        report[key] = test
        args.report.write_text(json.dumps(report, indent=2) + "\n")
        print(f"updated {args.report} [{key}]")


if __name__ == "__main__":
    main()
