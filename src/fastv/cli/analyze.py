"""`fastv analyze`: where does the model's attention go, layer by layer, on your own image?

Only parses options and calls `fastv.analysis.attention` / `fastv.analysis.plots`; one prompt gives JSON + PNGs + a
table, a folder of images (or a JSONL of image/prompt pairs) gives the mean allocation per layer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from fastv.cli import app, make_console, validate, warn
from fastv.core.errors import FastVError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
console = make_console()


def _parse_layers(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise FastVError(f"--layers {text!r}: give comma-separated integers, e.g. 0,1,2,8,31") from err


def _table(result: Any, title: str, layers: list[int] | None = None) -> Table:
    from fastv.analysis.layout import GROUPS

    groups = result.groups_present()
    table = Table(title=title, title_justify="left")
    table.add_column("layer", justify="right")
    for g in groups:
        table.add_column(f"{g} %", justify="right")
    table.add_column("visual eff./token", justify="right")
    eff = result.efficiency
    for i, layer in enumerate(result.layers):
        if layers is not None and layer not in layers:
            continue
        row = [f"{100 * float(result.share[i, GROUPS.index(g)]):.1f}" for g in groups]
        table.add_row(str(layer), *row, f"{float(eff[i, GROUPS.index('visual')]):.2e}")
    return table


def _prompts_file(prompts: Path) -> list[tuple[str, list[Path], str]]:
    """Rows of a --prompts JSONL, each checked (JSON, a prompt, readable images) with its file:line named."""
    if not prompts.is_file():
        raise FastVError(f'--prompts {str(prompts)!r}: no such file; give a JSONL of {{"image": ..., "prompt": ...}}')
    out = []
    for n, line in enumerate(prompts.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{prompts}:{n}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise FastVError(f"{where}: not valid JSON ({err.msg})") from err
        if not isinstance(item, dict):
            raise FastVError(f'{where}: expected an object like {{"image": "a.png", "prompt": "..."}}')
        text = item.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise FastVError(f"{where}: missing or empty 'prompt' (a string)")
        paths = item.get("image") or item.get("images") or []
        paths = [paths] if isinstance(paths, str) else paths
        if not paths or not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise FastVError(f"{where}: 'image' must be a path (or 'images' a list of paths)")
        files = [prompts.parent / p for p in paths]
        for f in files:
            try:
                validate.images([f])
            except FastVError as err:
                raise FastVError(f"{where}: {err}") from err
        out.append((str(item.get("name", f"{n - 1:05d}")), files, text))
    if not out:
        raise FastVError(f"--prompts {str(prompts)!r} holds no rows")
    return out


def _samples(image: list[Path], prompt: str, prompts: Path | None) -> list[tuple[str, list[Path], str]]:
    """(name, images, prompt) per prompt to aggregate over, every image verified."""
    if prompts is not None:
        return _prompts_file(prompts)
    folder = image[0]
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FastVError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {str(folder)!r}")
    validate.images(files)
    return [(p.stem, [p], prompt) for p in files]


@app.command()
def analyze(
    model: str = typer.Option("default", "--model", "-m", help="'default', a save_pretrained folder, or a hub id."),
    image: list[Path] = typer.Option(
        [], "--image", "-i", help="Image file (repeat for several in one prompt), or one folder to aggregate over."
    ),
    prompt: str = typer.Option("Describe the image.", "--prompt", "-p", help="The user's text."),
    video: Path | None = typer.Option(None, "--video", help="A folder of frame images, used as one video."),
    prompts: Path | None = typer.Option(
        None, "--prompts", help='JSONL, one {"image": path, "prompt": text} per line: aggregate over them.'
    ),
    layers: str | None = typer.Option(None, "--layers", help="Layers to report, e.g. 0,1,2,8,31 (default: all)."),
    out: Path = typer.Option(Path("fastv-analysis"), "--out", "-o", help="Folder for the JSON and PNGs."),
    method: str = typer.Option(
        "fastv", "--method", help="Whose kept tokens to outline: any method (`fastv methods`) or a composition a+b."
    ),
    k: int = typer.Option(2, "--k", help="The method's layer K (methods that have one)."),
    ratio: float = typer.Option(0.5, "--ratio", "-r", help="Share of visual tokens the method drops."),
    keep: int | None = typer.Option(None, "--keep", help="Visual tokens the method keeps (instead of --ratio)."),
    scorer: str | None = typer.Option(None, "--scorer", help="FastV's scorer (last_token or random)."),
    query: str = typer.Option("last", "--query", help="Whose attention: last | instruction | output (mean)."),
    max_new_tokens: int = typer.Option(0, "--max-new-tokens", help="Generate this many tokens to analyse too."),
    matrix_layer: int | None = typer.Option(None, "--matrix-layer", help="Layer of the attention matrix (default K)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 | float16."),
    attn: str = typer.Option("sdpa", "--attn", help="Attention implementation to load the model with."),
) -> None:
    """Per layer, the share of attention each token group gets; heat maps over the image; JSON + PNGs."""
    from fastv.analysis import attention as analysis
    from fastv.analysis import plots
    from fastv.core.hf.families import resolve
    from fastv.loading import build_inputs, load_model, to_model
    from fastv.run import method_from_options, method_settings

    info = validate.model(model)
    validate.dtype(dtype)
    validate.attn(attn)
    validate.at_least("--max-new-tokens", max_new_tokens, 0)
    # The method refuses a bad K, R, budget or scorer now, before the model loads.
    pruner = method_from_options(method, k=k, ratio=None if keep is not None else ratio, keep=keep, scorer=scorer)
    if "k" in method_settings(method):
        validate.layer("--k", k, info)
    if matrix_layer is not None:
        validate.layer("--matrix-layer", matrix_layer, info)
    if query not in analysis.QUERIES:
        raise FastVError(f"--query {query!r}: choose {' | '.join(analysis.QUERIES)}")
    wanted = _parse_layers(layers)
    validate.new_file_folder("--out", out)
    aggregate_mode = prompts is not None or (len(image) == 1 and image[0].is_dir())
    if aggregate_mode:
        if video is not None:
            raise FastVError("--video is for one prompt: drop --prompts / the image folder, or --video")
        samples = _samples(image, prompt, prompts)
    else:
        if not image and video is None:
            raise FastVError("give --image FILE (or one folder of images, --prompts FILE.jsonl, or --video FRAMES_DIR)")
        validate.video_support(info, video is not None)
        validate.images(image)
        validate.video(video)
    net, processor = load_model(model, dtype=dtype, attn=attn)
    validate.loaded_video_support(net, video is not None)
    if wanted is not None:
        wanted = analysis.layer_indices(wanted, resolve(net).num_layers)
    out.mkdir(parents=True, exist_ok=True)
    # Every layer is cheap (a few query rows each): the charts show them all, --layers picks
    # the table rows and heat maps.
    options = dict(query=query, max_new_tokens=max_new_tokens, method=pruner)
    if aggregate_mode:
        _aggregate(net, processor, samples, options, out, wanted)
        return
    from fastv.generate import context_note
    from fastv.loading import load_frames, load_image

    inputs = to_model(build_inputs(processor, image, prompt, video), net)
    if note := context_note(net, inputs, max_new_tokens):
        warn(note)
    pictures: list[Any] = [load_image(p) for p in image]
    if video is not None:
        pictures.append(load_frames(video))
    result = analysis.analyze(
        net,
        inputs,
        matrix_layer=k if matrix_layer is None else matrix_layer,
        images=[pictures],
        processor=processor,
        **options,
    )
    paths = {"json": result.save_json(out / "analysis.json"), **plots.save_all(result, out, wanted)}
    console.print(_table(result, _title(result, model), wanted))
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    for name, path in paths.items():
        console.print(f"{name:>10}: {path}")


def _title(result: Any, model: str) -> str:
    kept = f"{result.method} keeps {len(result.kept)} visual tokens"
    return f"{model} ({result.family}), query={result.query}: attention share per group. {kept}"


def _aggregate(
    net: Any,
    processor: Any,
    samples: list[tuple[str, list[Path], str]],
    options: dict,
    out: Path,
    wanted: list[int] | None,
) -> None:
    from tqdm.auto import tqdm

    from fastv.analysis import attention as analysis
    from fastv.analysis import plots
    from fastv.analysis.result import aggregate
    from fastv.loading import build_inputs, to_model

    per_sample = out / "samples"
    per_sample.mkdir(exist_ok=True)
    results, names = [], []
    for name, paths, text in tqdm(samples, desc="fastv analyze", unit="prompt"):
        inputs = to_model(build_inputs(processor, paths, text), net)
        result = analysis.analyze(net, inputs, processor=processor, **options)
        result.save_json(per_sample / f"{name}.json")
        results.append(result.light())
        names.append(name)
    mean = aggregate(results, names)
    json_path = mean.save_json(out / "aggregate.json")
    png = plots.plot_allocation(mean, out / "allocation_mean.png")
    console.print(_table(mean, f"mean attention share per group over {mean.n} prompts (query={mean.query})", wanted))
    console.print(f"      json: {json_path}\nallocation: {png}\n   samples: {per_sample}/")
