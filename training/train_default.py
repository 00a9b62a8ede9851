"""Train fastv's default model (a small LLaVA on the shapes world) on a CPU, in one command.

    python training/train_default.py            # fresh run (seeded)
    python training/train_default.py --resume   # continue from training/checkpoints/last.pt

Phase A pretrains the vision tower + projector with per-patch linear heads (the patch's cell and
what object lies under it), so each visual token says *where* it is and only *what is under it*:
answers then depend on a few tokens, which is what makes visual-token pruning measurable.
Phase B trains LLaVA end to end with the tower frozen, on several question/answer pairs packed
after each image (loss on the answers only), in exactly the chat-template format users send.
At the end the model is evaluated on the test split with greedy `generate` and installed into
``training/models/default_v1/`` (the first default model, shipped until the second recipe's model,
`train_default_v2.py`, replaced it; the second grows from it); ``training/default_model_report.json``
records the results.

Measured: about 85 minutes on a 2-core CPU shared with other jobs (1 thread; 98.5% test exact match).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_setup import NUM_IMAGE_TOKENS, build_model, build_processor  # noqa: E402

from fastv.eval.default_model import exact_match  # noqa: E402
from fastv.zoo.datasets import shapes  # noqa: E402

COLOR_IDS = {c: i + 1 for i, c in enumerate(shapes.COLORS)}
SHAPE_IDS = {s: i + 1 for i, s in enumerate(shapes.SHAPES)}
SIZE_IDS = {s: i + 1 for i, s in enumerate(shapes.SIZES)}
GRID_PATCHES = shapes.IMAGE_SIZE // shapes.PATCH_SIZE
FIRST_MODEL_DIR = ROOT / "training" / "models" / "default_v1"  # where this recipe installs its model
# Per-patch heads of phase A: name -> number of classes.
HEADS = {"cell": len(shapes.CELLS), "color": 6, "shape": 5, "size": 3, "ccolor": 6, "cshape": 5}
PHASE_A_OFFSET = 500_000_000  # phase A draws train scenes from a different index range than phase B


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "training" / "checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--phase-a-steps", type=int, default=800)
    p.add_argument("--phase-a-batch", type=int, default=32)
    p.add_argument("--phase-b-steps", type=int, default=3000)
    p.add_argument("--phase-b-batch", type=int, default=16)
    p.add_argument("--qa-per-image", type=int, default=14)
    p.add_argument("--lr-a", type=float, default=2e-3)
    p.add_argument("--lr-b", type=float, default=1e-3)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--val-every", type=int, default=300)
    p.add_argument("--val-images", type=int, default=30)
    p.add_argument("--test-images", type=int, default=300)
    # One thread: on a 2-core machine shared with other jobs, two OpenMP threads slowed steps 4-10x.
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-bf16", action="store_true")
    p.add_argument("--no-install", action="store_true", help="do not copy the model into training/models/default_v1")
    return p.parse_args()


def lr_at(step: int, total: int, peak: float, warmup: int = 50) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def pixel_values(processor, scenes: list[shapes.Scene]) -> torch.Tensor:
    images = [shapes.render(s) for s in scenes]
    return processor.image_processor(images, return_tensors="pt")["pixel_values"]


def patch_labels(scene: shapes.Scene) -> dict[str, np.ndarray]:
    """Per-patch targets: cell, look of the object under the patch, look of an object centred in it."""
    n = GRID_PATCHES * GRID_PATCHES
    out = {"cell": shapes.patch_cells()}
    under = shapes.patch_objects(scene)
    objs = (None, *scene.objects)
    out["color"] = np.array([COLOR_IDS[objs[i].color] if i else 0 for i in under])
    out["shape"] = np.array([SHAPE_IDS[objs[i].shape] if i else 0 for i in under])
    out["size"] = np.array([SIZE_IDS[objs[i].size] if i else 0 for i in under])
    out["ccolor"], out["cshape"] = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for o in scene.objects:
        p = (o.cy // shapes.PATCH_SIZE) * GRID_PATCHES + o.cx // shapes.PATCH_SIZE
        out["ccolor"][p], out["cshape"][p] = COLOR_IDS[o.color], SHAPE_IDS[o.shape]
    return out


def scenes_for(seed: int, phase: str, step: int, batch: int) -> list[shapes.Scene]:
    """The training scenes of one step: a pure function of (seed, phase, step), so resuming is exact."""
    base = (PHASE_A_OFFSET if phase == "A" else 0) + seed * 10_000_000 + step * batch
    return [shapes.make_scene(shapes.split_seed("train", base + i)) for i in range(batch)]


def packed_batch(tokenizer, scenes: list[shapes.Scene], qa_per_image: int, seed: int, step: int):
    """Token ids and labels of `<s><image>*144 q1 a1</s> q2 a2</s> ...`, loss on answers + </s> only.

    This is what the chat template renders for a multi-turn conversation about one image, so the
    model sees in training exactly the prompt format that users (and the evaluation) send.
    """
    vocab = tokenizer.get_vocab()
    bos, eos, img = tokenizer.bos_token_id, tokenizer.eos_token_id, vocab["<image>"]
    seqs, labels = [], []
    for j, scene in enumerate(scenes):
        ids = [bos] + [img] * NUM_IMAGE_TOKENS
        lab = [-100] * len(ids)
        for qa in shapes.questions(scene, qa_per_image, seed=(seed * 1_000_003 + step) * 4099 + j):
            q = [vocab[w] for w in qa.question.split()]
            a = [vocab[w] for w in qa.answer.split()] + [eos]
            ids += q + a
            lab += [-100] * len(q) + a
        seqs.append(ids)
        labels.append(lab)
    width = max(map(len, seqs))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    attn = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    lab = torch.tensor([x + [-100] * (width - len(x)) for x in labels])
    return input_ids, attn, lab


def save_ckpt(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def run_phase_a(args, model, processor, heads, state, ckpt, autocast) -> None:
    params = list(model.model.vision_tower.parameters()) + list(model.model.multi_modal_projector.parameters())
    params += list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr_a, weight_decay=0.01)
    if state.get("opt_a"):
        opt.load_state_dict(state["opt_a"])
    bar = tqdm(
        range(state["step_a"], args.phase_a_steps),
        desc="phase A (tower)",
        initial=state["step_a"],
        total=args.phase_a_steps,
    )
    for step in bar:
        t0 = time.time()
        scenes = scenes_for(args.seed, "A", step, args.phase_a_batch)
        pv = pixel_values(processor, scenes)
        labels = [patch_labels(s) for s in scenes]
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.phase_a_steps, args.lr_a)
        with autocast():
            feats = model.model.get_image_features(
                pixel_values=pv, vision_feature_layer=-1, vision_feature_select_strategy="default"
            ).pooler_output
            feats = torch.stack(list(feats))
            logits = heads(feats).float()
        loss, accs, start = 0.0, {}, 0
        for name, n in HEADS.items():
            y = torch.from_numpy(np.stack([lab[name] for lab in labels]))
            lg = logits[..., start : start + n]
            start += n
            loss = loss + F.cross_entropy(lg.reshape(-1, n), y.reshape(-1))
            fg = y > 0 if name != "cell" else torch.ones_like(y, dtype=torch.bool)
            accs[name] = (lg.argmax(-1)[fg] == y[fg]).float().mean().item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        state["step_a"] = step + 1
        state["elapsed"] += time.time() - t0
        bar.set_postfix(loss=f"{loss.item():.3f}", **{k: f"{v:.2f}" for k, v in accs.items()})
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.phase_a_steps:
            state["opt_a"] = opt.state_dict()
            state["phase_a_last"] = {"loss": loss.item(), **accs}
            save_ckpt(ckpt, {**state, "model": model.state_dict(), "heads": heads.state_dict()})
    state["opt_a"] = None


def run_phase_b(args, model, processor, state, ckpt, autocast, val_samples) -> None:
    model.model.vision_tower.requires_grad_(False)
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr_b, weight_decay=0.01, betas=(0.9, 0.98))
    if state.get("opt_b"):
        opt.load_state_dict(state["opt_b"])
    tok = processor.tokenizer
    bar = tqdm(
        range(state["step_b"], args.phase_b_steps),
        desc="phase B (LLaVA)",
        initial=state["step_b"],
        total=args.phase_b_steps,
    )
    ema = None
    for step in bar:
        t0 = time.time()
        model.train()
        scenes = scenes_for(args.seed, "B", step, args.phase_b_batch)
        pv = pixel_values(processor, scenes)
        ids, attn, labels = packed_batch(tok, scenes, args.qa_per_image, args.seed, step)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.phase_b_steps, args.lr_b, warmup=100)
        with autocast():
            out = model(input_ids=ids, attention_mask=attn, pixel_values=pv, labels=labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        state["step_b"] = step + 1
        state["elapsed"] += time.time() - t0
        ema = out.loss.item() if ema is None else 0.95 * ema + 0.05 * out.loss.item()
        bar.set_postfix(loss=f"{ema:.3f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
        if (step + 1) % args.val_every == 0:
            t1 = time.time()
            model.eval()
            res = exact_match(model, processor, val_samples)
            state["elapsed"] += time.time() - t1
            state.setdefault("val", []).append({"step": step + 1, **res})
            tqdm.write(
                f"[val step {step + 1}] overall {res['overall']:.3f} "
                + " ".join(f"{k}={v:.2f}" for k, v in res["per_kind"].items())
            )
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.phase_b_steps:
            state["opt_b"] = opt.state_dict()
            state["loss_b"] = ema
            save_ckpt(ckpt, {**state, "model": model.state_dict()})
    state["opt_b"] = None


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.out / "last.pt"

    processor = build_processor()
    model = build_model(processor.tokenizer)
    heads = torch.nn.Linear(model.config.text_config.hidden_size, sum(HEADS.values()))
    state = {"step_a": 0, "step_b": 0, "elapsed": 0.0, "args": vars(args) | {"out": str(args.out)}}
    if args.resume and ckpt.exists():
        saved = torch.load(ckpt, weights_only=False)
        model.load_state_dict(saved.pop("model"))
        if "heads" in saved:
            heads.load_state_dict(saved.pop("heads"))
        state.update(saved)
        print(
            f"resumed: phase A step {state['step_a']}, phase B step {state['step_b']}, "
            f"{state['elapsed'] / 60:.1f} min so far"
        )
    commands = state.setdefault("commands", [])
    commands.append("python " + " ".join(sys.argv))

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=not args.no_bf16)

    val_samples = shapes.eval_samples("validation", args.val_images)
    model.train()
    if state["step_a"] < args.phase_a_steps:
        run_phase_a(args, model, processor, heads, state, ckpt, autocast)
    if state["step_b"] < args.phase_b_steps:
        run_phase_b(args, model, processor, state, ckpt, autocast, val_samples)

    final = args.out / "final"
    model.eval()
    model.save_pretrained(final)
    processor.save_pretrained(final)
    t1 = time.time()
    test = exact_match(model, processor, shapes.eval_samples("test", args.test_images), progress=True)
    eval_s = time.time() - t1
    print(f"test exact match: {test['overall']:.4f}", test["per_kind"])
    n_params = sum(p.numel() for p in model.parameters())
    report = {
        "model": "LlavaForConditionalGeneration (CLIP tower 3x128, 2-layer MLP projector, Llama 6x256)",
        "visual_tokens": NUM_IMAGE_TOKENS,
        "image_size": shapes.IMAGE_SIZE,
        "parameters": n_params,
        "weights_bytes": (final / "model.safetensors").stat().st_size,
        "commands": commands,
        "train_seconds": round(state["elapsed"], 1),
        "eval_seconds": round(eval_s, 1),
        "phase_a": {
            "steps": args.phase_a_steps,
            "batch": args.phase_a_batch,
            "last": state.get("phase_a_last"),
        },
        "phase_b": {
            "steps": args.phase_b_steps,
            "batch": args.phase_b_batch,
            "qa_per_image": args.qa_per_image,
            "final_loss_ema": state.get("loss_b"),
        },
        "validation": state.get("val", []),
        "test": {
            "split": "test",
            "images": args.test_images,
            "decoding": "greedy generate via chat template",
            **test,
        },
        "torch": torch.__version__,
        "cpu_threads": args.threads,
        "finished_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    (ROOT / "training" / "default_model_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if not args.no_install:
        FIRST_MODEL_DIR.mkdir(parents=True, exist_ok=True)
        for f in final.iterdir():
            shutil.copy2(f, FIRST_MODEL_DIR / f.name)
        print(f"installed into {FIRST_MODEL_DIR}")


if __name__ == "__main__":
    main()
