"""Move fastv to its layered layout (issue 14) and rewrite every reference to the moved modules.

Run from a repository root: ``python tools/relayout.py`` (``--dry-run`` prints the plan only).

Why a codemod and not a hand-made commit: the move touches every file, and branches keep landing on
main while it is prepared. This script is the single source of the layout (the tables below); it can
be rerun on any later main, and rerunning it on its own output changes nothing. It

1. moves whole modules with ``git mv`` (``MOVES``);
2. splits modules by top-level name into several (``SPLITS``): each part gets the source's imports,
   imports of what it uses from its sibling parts, and its share of ``__all__``; a split that turns a
   module into a package writes a package ``__init__`` that re-exports the public names;
3. rewrites ``from fastv.x import ...``, ``import fastv.x``, ``from fastv import x`` and every dotted
   ``fastv.x`` / path ``src/fastv/x.py`` in src/, tests/, tests_serving/, training/, benchmarks/, tools/, docs/,
   README.md, pyproject.toml and the Makefile;
4. reports the top-level modules of ``src/fastv`` the tables do not place, so they can be added.

It does not edit code beyond imports and names: hand edits that go with the layout (breaking
cycles, new modules) are separate commits.
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

# ---------------------------------------------------------------------------------------- tables

# Whole modules (or packages/data folders): old dotted name -> new dotted name.
MOVES: dict[str, str] = {
    # core: the engine and what it needs; imports torch, transformers and itself only
    "fastv.errors": "fastv.core.errors",
    "fastv.engine": "fastv.core.engine",
    "fastv.selection": "fastv.core.selection",
    "fastv.masks": "fastv.core.masks",
    "fastv.stats": "fastv.core.stats",
    "fastv.positions": "fastv.core.positions",
    "fastv.layer_scoring": "fastv.core.layer_scoring",
    "fastv.layer_taps": "fastv.core.layer_taps",
    "fastv.vision_taps": "fastv.core.vision_taps",
    # core/hf: what fastv knows about transformers and the model families
    "fastv.compat": "fastv.core.hf.compat",
    "fastv.attention_tap": "fastv.core.hf.attention_tap",
    "fastv.families": "fastv.core.hf.families",
    # flops: the named-checkpoint catalogue
    "fastv.model_shapes": "fastv.flops.shapes",
    # analysis
    "fastv.analysis": "fastv.analysis.attention",
    "fastv.plots": "fastv.analysis.plots",
    "fastv.overlay": "fastv.analysis.overlay",
    # bench
    "fastv.benchmark": "fastv.bench.measure",
    # zoo: the shipped model, its data set, tokenizer, weights and examples
    "fastv.default_model": "fastv.zoo.default_model",
    "fastv.datasets": "fastv.zoo.datasets",
    "fastv.word_tokenizer": "fastv.zoo.word_tokenizer",
    "fastv.models": "fastv.zoo.models",
    "fastv.examples": "fastv.zoo.examples",
}

# Top-level names of src/fastv that stay where they are (the report leaves them out).
STAYS = {"__init__", "__main__", "core", "methods", "flops", "run", "generate", "loading", "analysis", "bench",
         "eval", "demo", "cli", "serving", "zoo"}  # fmt: skip

# Splits, applied after MOVES, on the moved names: module -> {part: [top-level names]}; the part "*"
# takes every name not listed. `package`: the module becomes a package whose __init__ re-exports the
# public names (None: the module stays and keeps the "*" names). `rewrite`: imports of a moved name
# are rewritten to its new home (False: importers keep the re-exporting package, e.g. fastv.methods).
SPLITS: dict[str, dict] = {
    "fastv.flops": {
        "package": True,
        "rewrite": True,
        "doc": {
            "fastv.flops": "FLOPs of a vision-language model's prefill: the language model, the vision tower, budgets.",
            "fastv.flops.llm": "The language model's FLOPs: the FastV paper's estimate, the schedule of a cut, a counter.",
            "fastv.flops.vision": "FLOPs of the vision tower and projector (CLIP-style and Qwen-style towers).",
            "fastv.flops.budget": "Whole-model estimates for a named checkpoint, and the budget that reaches a FLOPs target.",
        },
        "parts": {
            "fastv.core.cost": [
                "TextShape",
                "_shape",
                "prefill_flops",
                "PrefillFlops",
                "prefill_report",
                "decode_step_flops",
                "kv_cache_bytes",
                "_fmt",
                "format_flops",
            ],
            "fastv.flops.vision": [
                "VisionFlops",
                "_vit_layer",
                "_clip_vision",
                "_clip_tower",
                "_merged_grid",
                "_window_sizes",
                "_qwen_vision",
                "vision_flops",
            ],
            "fastv.flops.budget": ["FlopsReport", "estimate", "solve_budget"],
            "*": "fastv.flops.llm",
        },
    },  # fmt: skip
    "fastv.flops.shapes": {
        "package": False,
        "rewrite": True,
        "parts": {"fastv.core.cost": ["text_config_of"], "*": "fastv.flops.shapes"},
    },
    "fastv.methods.base": {
        "package": False,
        "rewrite": True,
        "parts": {
            "fastv.core.stages": ["Mode", "Rows", "ScoredAt", "Positions", "StageContext", "Stage"],
            "*": "fastv.methods.base",
        },
    },
    "fastv.loading": {
        "package": False,
        "rewrite": True,
        "parts": {"fastv.core.hf.chat": ["chat_text"], "*": "fastv.loading"},
    },
}

# Names imported from a module that only re-exported them: (module, name) -> the module to import from.
# The engine no longer re-exports FastV (core does not import methods).
REEXPORTS: dict[tuple[str, str], str] = {
    ("fastv.core.engine", "FastV"): "fastv.methods",
    ("fastv.engine", "FastV"): "fastv.methods",
}

# Docstrings of modules a split creates (a part that is not the "*" part of a split).
NEW_DOCS: dict[str, str] = {
    "fastv.core.cost": (
        "Exact FLOPs of the language model per layer: the arithmetic the engine's `PruneStats.flops` needs.\n\n"
        "Pure arithmetic on a text config (no weights, no named checkpoints: those are `fastv.flops.shapes`),\n"
        "in the convention of `torch.utils.flop_counter.FlopCounterMode` (2 FLOPs per multiply-accumulate,\n"
        "attention counted dense, element-wise ops ignored). `fastv.flops` builds the tools on it."
    ),
    "fastv.core.stages": (
        "What the engine runs: a `Stage` (where to cut, how many to keep, how to rank) and what it ranks by.\n\n"
        "The engine knows stages, not methods: `fastv.methods` turns a method's settings into stages."
    ),
    "fastv.core.hf.chat": "A prompt with its image/video placeholders, the way the model's processor wants it.",
}

# Where the README's first commands and package-data find the moved data folders.
PYPROJECT_PACKAGE_DATA = ('fastv = ["models/default/*", "examples/*"]',
                          'fastv = ["zoo/models/default/*", "zoo/examples/*"]')  # fmt: skip

TEXT_ROOTS = ["src", "tests", "tests_serving", "training", "benchmarks", "tools", "docs"]
TEXT_FILES = ["README.md", "pyproject.toml", "Makefile", ".ci/run"]
TEXT_SUFFIXES = {".py", ".md", ".toml", ".sh", ".txt", ".cfg", ".ini", ".yaml", ".yml", ""}
SRC = Path("src")

# ------------------------------------------------------------------------------------ file moves


def path_of(module: str) -> Path:
    """src/fastv/x/y for fastv.x.y (without suffix)."""
    return SRC.joinpath(*module.split("."))


def existing(module: str) -> Path | None:
    base = path_of(module)
    for cand in (base.with_suffix(".py"), base):
        if cand.exists():
            return cand
    return None


def git(*args: str) -> None:
    subprocess.run(["git", *args], check=True)


def ensure_package(folder: Path, dry: bool) -> None:
    """Every folder between src/fastv and `folder` is a package with an __init__.py."""
    for parent in [folder, *folder.parents]:
        if parent == SRC or parent == SRC.parent or SRC not in parent.parents:
            break
        init = parent / "__init__.py"
        if not init.exists() and not dry:
            parent.mkdir(parents=True, exist_ok=True)
            init.write_text(f'"""{doc_for(".".join(parent.relative_to(SRC).parts))}"""\n')
            git("add", str(init))


def doc_for(package: str) -> str:
    return {
        "fastv.core": "fastv's engine and what it needs: imports torch, transformers and itself only.",
        "fastv.core.hf": "What fastv knows about transformers: compatibility, attention taps, model families, chat.",
        "fastv.analysis": "Where attention goes inside a model, layer by layer, and pictures of it.",
        "fastv.bench": "Measured speed and memory of a model with and without a method.",
        "fastv.zoo": "fastv's own default model, the data set it was trained on, and its tokenizer.",
    }.get(package, f"{package}.")


def do_moves(dry: bool) -> list[str]:
    done = []
    for old, new in MOVES.items():
        src = existing(old)
        if src is None or existing(new) is not None and path_of(new).is_relative_to(path_of(old)):
            continue  # moved before (analysis.py -> analysis/attention.py leaves the folder analysis/)
        if existing(new) is not None:
            raise SystemExit(f"both {old} and {new} exist: merge them by hand, then rerun")
        dst = path_of(new).with_suffix(".py") if src.suffix == ".py" else path_of(new)
        if dst.exists():
            # Moving a module into a package named like it (analysis.py -> analysis/attention.py).
            if src.is_dir():
                raise SystemExit(f"cannot move {src} to {dst}: the target exists")
        done.append(f"git mv {src} {dst}")
        if dry:
            continue
        if src.suffix == ".py" and path_of(new).parent == path_of(old):
            # analysis.py -> analysis/attention.py: the folder and the file share a name
            tmp = src.with_name(f"_{src.stem}_moving.py")
            git("mv", str(src), str(tmp))
            dst.parent.mkdir(parents=True, exist_ok=True)
            git("mv", str(tmp), str(dst))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            git("mv", str(src), str(dst))
        ensure_package(dst.parent, dry)
    return done


# ---------------------------------------------------------------------------------------- splits


def _defined(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def _is_header(node: ast.stmt) -> bool:
    """Imports (and `if TYPE_CHECKING:` import blocks) travel with every part."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return True
    if isinstance(node, ast.If) and all(isinstance(b, (ast.Import, ast.ImportFrom)) for b in node.body):
        return True
    return False


def _used_names(nodes: list[ast.stmt]) -> set[str]:
    out: set[str] = set()
    for node in nodes:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name):
                out.add(sub.id)
            elif isinstance(sub, ast.Constant) and isinstance(sub.value, str) and sub.value.isidentifier():
                out.add(sub.value)  # string annotations under `from __future__ import annotations`
    return out


def parse_module(text: str) -> tuple[str, str, list[str] | None, list[tuple[list[str], str]]]:
    """(docstring source, import header source, __all__, [(names defined, source segment)])."""
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    body = tree.body
    doc = None
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        doc = body[0]
    doc_src = "".join(lines[doc.lineno - 1 : doc.end_lineno]) + "\n" if doc else ""
    header_nodes = [n for n in body if _is_header(n)]
    header = "".join(
        "".join(lines[n.lineno - 1 : n.end_lineno]) + "\n"
        for n in header_nodes
        if not (isinstance(n, ast.ImportFrom) and n.module == "__future__")
    )
    defs = [n for n in body if n is not doc and not _is_header(n)]
    prev_end = max([n.end_lineno for n in header_nodes] + [doc.end_lineno if doc else 0])
    all_names = None
    segments = []
    for node in defs:
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        seg = "".join(lines[prev_end : start - 1]) if prev_end < start - 1 else ""
        seg += "".join(lines[start - 1 : node.end_lineno])
        prev_end = node.end_lineno
        names = _defined(node)
        if names == ["__all__"]:
            all_names = [ast.literal_eval(e) for e in node.value.elts]
            continue
        segments.append((names, seg))
    return doc_src, header, all_names, segments


def compose_module(doc_src: str, header: str, all_names: list[str] | None, segments: list[str]) -> str:
    out = doc_src + "from __future__ import annotations\n\n" + header
    if all_names:
        out += "\n__all__ = [" + ", ".join(f'"{n}"' for n in all_names) + "]\n"
    return out + "".join(segments)


def split_module(module: str, spec: dict, dry: bool) -> list[str]:
    """Split `module` by top-level names into the parts of `spec`; see SPLITS."""
    src = existing(module)
    if src is None:
        return []
    if src.is_dir():
        return []  # a package already: split before
    doc_src, header, all_names, segments = parse_module(src.read_text())
    rest = spec["parts"]["*"]
    home: dict[str, str] = {}
    for part, names in spec["parts"].items():
        if part != "*":
            for name in names:
                home[name] = part
    if not any(n in home for names, _ in segments for n in names) and not spec.get("package"):
        return []  # split before
    by_target: dict[str, list[tuple[list[str], str]]] = {}
    for names, seg in segments:
        target = next((home[n] for n in names if n in home), rest)
        for n in names:
            home.setdefault(n, target)
        by_target.setdefault(target, []).append((names, seg))
    targets = list(dict.fromkeys([*[p for p in spec["parts"] if p != "*"], rest]))
    uses: dict[str, set[str]] = {}
    report = []
    if dry:
        return [f"split {module}: {t} <- {len(by_target.get(t, []))} definitions" for t in targets]
    if spec.get("package"):
        # the module becomes a package: its file moves to the "*" part so that history follows it
        tmp = src.with_name(f"_{src.stem}_moving.py")
        git("mv", str(src), str(tmp))
        path_of(rest).parent.mkdir(parents=True, exist_ok=True)
        git("mv", str(tmp), str(path_of(rest).with_suffix(".py")))
    elif path_of(rest).with_suffix(".py") != src:
        git("mv", str(src), str(path_of(rest).with_suffix(".py")))
    for target in targets:
        mine = by_target.get(target, [])
        nodes_used = _used_names([ast.parse(textwrap.dedent(seg)) for _, seg in mine])
        defined_here = {n for names, _ in mine for n in names}
        need: dict[str, list[str]] = {}
        for name in sorted(nodes_used - defined_here):
            if name in home and home[name] != target:
                need.setdefault(home[name], []).append(name)
        uses[target] = set(need)
        imports = "".join(f"from {m} import {', '.join(ns)}\n" for m, ns in sorted(need.items()))
        public = [n for n in (all_names or []) if home.get(n) == target]
        dst = path_of(target).with_suffix(".py")
        doc_text = NEW_DOCS.get(target) or spec.get("doc", {}).get(target)
        my_doc = f'"""{doc_text}"""\n\n' if doc_text else (doc_src if target == rest else f'"""{target}."""\n\n')
        if dst.exists() and target != rest:
            # a part an earlier split created: add to it
            o_doc, o_header, o_all, o_segments = parse_module(dst.read_text())
            text = compose_module(o_doc, o_header + header + imports, (o_all or []) + public,
                                  [s for _, s in o_segments] + [s for _, s in mine])  # fmt: skip
        else:
            text = compose_module(my_doc, header + imports, public, [s for _, s in mine])
        report.append(f"split {module}: {target} <- {len(mine)} definitions")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(text)
        ensure_package(dst.parent, dry)
        git("add", str(dst))
    for a in targets:
        for b in uses[a]:
            if a in uses.get(b, set()):
                report.append(f"WARNING split {module}: {a} and {b} import each other; move names between them")
    if spec.get("package"):
        init = path_of(module) / "__init__.py"
        public = all_names or sorted(n for n in home if not n.startswith("_"))
        by_home: dict[str, list[str]] = {}
        for name in public:
            by_home.setdefault(home[name], []).append(name)
        body = doc_src + "".join(f"from {m} import {', '.join(sorted(ns))}\n" for m, ns in sorted(by_home.items()))
        body += "\n__all__ = [" + ", ".join(f'"{n}"' for n in public) + "]\n"
        init.write_text(body)
        git("add", str(init))
    return report


def name_homes() -> dict[str, dict[str, str]]:
    """For each split module whose importers are rewritten: top-level name -> its module now."""
    out: dict[str, dict[str, str]] = {}
    for module, spec in SPLITS.items():
        if not spec.get("rewrite"):
            continue
        homes: dict[str, str] = {}
        for part in [p for p in spec["parts"] if p != "*"] + [spec["parts"]["*"]]:
            f = existing(part)
            if f is None or f.is_dir():
                continue
            for node in ast.parse(f.read_text()).body:
                for name in _defined(node):
                    if name != "__all__":
                        homes.setdefault(name, part)
        out[module] = homes
    return out


# ------------------------------------------------------------------------------------- rewriting


def _known_modules() -> set[str]:
    """Every module and package under src/ now (to leave `fastv.analysis.attention` alone)."""
    out = set()
    for f in SRC.rglob("*.py"):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.add(".".join(parts))
    for d in SRC.rglob("*"):
        if d.is_dir():
            out.add(".".join(d.relative_to(SRC).parts))
    return out


FROM_IMPORT = re.compile(r"^(?P<indent>[ \t]*)from (?P<mod>fastv(?:\.\w+)*) import (?P<names>\([^)]*\)|[^\n#]*)",
                         re.MULTILINE)  # fmt: skip


def _split_names(raw: str) -> list[str]:
    raw = raw.strip()
    if raw.startswith("("):
        raw = raw[1:-1]
    raw = re.sub(r"#[^\n]*", "", raw)
    return [n.strip() for n in raw.replace("\n", " ").split(",") if n.strip()]


def rewrite_text(
    text: str, homes: dict[str, dict[str, str]], known: set[str], is_python: bool, self_mod: str = ""
) -> str:
    moves = sorted(MOVES.items(), key=lambda kv: -len(kv[0]))

    def move_module(mod: str) -> str:
        if mod in known and mod not in MOVES:
            return mod
        for old, new in moves:
            if mod == old or mod.startswith(old + "."):
                tail = mod[len(old) :]
                # fastv.analysis -> fastv.analysis.attention: fastv.analysis.plots is already new
                if new.startswith(old + ".") and tail and (old + tail) in known:
                    return mod
                return new + tail
        return mod

    def from_import(m: re.Match) -> str:
        indent, mod, raw = m["indent"], m["mod"], m["names"]
        names = _split_names(raw)
        trailer = ""
        if not raw.strip().startswith("("):
            trailer = raw[len(raw.rstrip()) :]
        if mod == "fastv":
            # `from fastv import compat, flops as F`: modules among the names move
            groups: dict[str, list[str]] = {}
            for n in names:
                base = n.split(" as ")[0].strip()
                full = f"fastv.{base}"
                new = move_module(full) if full in MOVES else full
                if new == full:
                    groups.setdefault("fastv", []).append(n)
                else:
                    parent, leaf = new.rsplit(".", 1)
                    alias = n.split(" as ")[1].strip() if " as " in n else None
                    item = leaf if alias is None and leaf == base else f"{leaf} as {alias or base}"
                    groups.setdefault(parent, []).append(item)
            if list(groups) == ["fastv"]:
                return m.group(0)
            return _emit(indent, groups, trailer)
        new_mod = move_module(mod)
        if new_mod != mod and all(f"{mod}.{n.split(' as ')[0].strip()}" in known for n in names):
            return m.group(0)  # submodules of the package that took the old module's name
        if any((new_mod, n.split(" as ")[0].strip()) in REEXPORTS for n in names):
            groups = {}
            for n in names:
                groups.setdefault(REEXPORTS.get((new_mod, n.split(" as ")[0].strip()), new_mod), []).append(n)
            return _emit(indent, groups, trailer)
        if new_mod in homes:
            groups = {}
            for n in names:
                base = n.split(" as ")[0].strip()
                groups.setdefault(homes[new_mod].get(base, new_mod), []).append(n)
            if list(groups) == [mod]:
                return m.group(0)
            return _emit(indent, groups, trailer)
        if new_mod == mod:
            return m.group(0)
        return m.group(0).replace(f"from {mod} import", f"from {new_mod} import", 1)

    def _emit(indent: str, groups: dict[str, list[str]], trailer: str) -> str:
        out = []
        for mod, ns in groups.items():
            if mod == self_mod:
                continue  # a name split out of the module this file now is
            line = f"{indent}from {mod} import {', '.join(ns)}"
            if len(line) > 120:
                line = f"{indent}from {mod} import (\n" + "".join(f"{indent}    {n},\n" for n in ns) + f"{indent})"
            out.append(line)
        return "\n".join(out) + trailer

    text = FROM_IMPORT.sub(from_import, text)  # code blocks in the docs too

    # dotted names everywhere: fastv.old(.name) -> fastv.new(.name); paths src/fastv/old.py likewise
    def dotted(m: re.Match) -> str:
        mod = m.group(1)
        parts = mod.split(".")
        # longest prefix that is a module we know of (old or new)
        for i in range(len(parts), 1, -1):
            head = ".".join(parts[:i])
            if head in MOVES or head in known or head in homes:
                new = move_module(head)
                rest = parts[i:]
                if rest and new in homes and rest[0] in homes[new] and not SPLITS.get(new, {}).get("package"):
                    new = homes[new][rest[0]]
                return ".".join([new, *rest])
        return mod

    # not in a from-import (done above: `from fastv.analysis import plots` is already the new name)
    text = re.sub(r"(?<![\w./-])(fastv(?:\.\w+)+)(?![\w.]| import)", dotted, text)

    text = re.sub(r"(?<![\w])((?:src/)?)fastv/([\w/]+?)(\.py\b|/(?=\w))", _path_fix(), text)
    return text


def _path_fix():
    def inner(m: re.Match) -> str:
        pre, rel, suffix = m.group(1), m.group(2), m.group(3)
        mod = "fastv." + rel.replace("/", ".")
        if suffix != ".py" and f"{mod}" not in MOVES:
            # a folder prefix (src/fastv/examples/...): map when the folder moved
            return m.group(0)
        for old, new in MOVES.items():
            if mod == old:
                return pre + new.replace(".", "/") + suffix
        return m.group(0)

    return inner


def _ignored(paths: list[Path]) -> set[Path]:
    """Paths git ignores (build outputs such as *.egg-info): generated, never rewritten."""
    if not paths:
        return set()
    out = subprocess.run(
        ["git", "check-ignore", "--stdin"], input="\n".join(map(str, paths)), capture_output=True, text=True
    )
    return {Path(line) for line in out.stdout.splitlines()}


def text_files() -> list[Path]:
    files = [Path(f) for f in TEXT_FILES if Path(f).is_file()]
    candidates = [f for root in TEXT_ROOTS for f in Path(root).rglob("*") if f.is_file()]
    ignored = _ignored(candidates)
    for f in candidates:
        if f not in ignored and f.suffix in TEXT_SUFFIXES and "__pycache__" not in f.parts and f != Path(__file__):
            if f.name == "relayout.py":
                continue
            try:
                f.read_text()
            except UnicodeDecodeError:
                continue
            files.append(f)
    return files


def module_of(f: Path) -> str:
    if f.suffix != ".py" or SRC not in f.parents:
        return ""
    parts = list(f.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def rewrite_all(dry: bool) -> list[Path]:
    homes = name_homes()
    known = _known_modules()
    changed = []
    for f in text_files():
        text = f.read_text()
        new = rewrite_text(text, homes, known, f.suffix == ".py", module_of(f))
        if f.name == "pyproject.toml":
            new = new.replace(*PYPROJECT_PACKAGE_DATA)
        if new != text:
            changed.append(f)
            if not dry:
                f.write_text(new)
    return changed


def tidy(files: list[Path]) -> None:
    """Sort the rewritten imports (ruff's isort rules, as the project's lint config has them)."""
    py = [str(f) for f in files if f.suffix == ".py"]
    if not py:
        return
    ruff = [sys.executable, "-m", "ruff"] if _has_ruff_module() else [shutil.which("ruff") or "ruff"]
    subprocess.run([*ruff, "check", "--quiet", "--fix", "--select", "I,F401", *py], check=False)
    subprocess.run([*ruff, "format", "--quiet", *py], check=False)


def _has_ruff_module() -> bool:
    return subprocess.run([sys.executable, "-m", "ruff", "--version"], capture_output=True).returncode == 0


def unmapped() -> list[str]:
    top = SRC / "fastv"
    out = []
    for p in sorted(top.iterdir()):
        name = p.stem if p.suffix == ".py" else p.name
        if p.name.startswith((".", "_")) and name not in ("__init__", "__main__") or name == "__pycache__":
            continue
        if name in STAYS or f"fastv.{name}" in MOVES:
            continue
        out.append(str(p))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="print the moves and changed files, touch nothing")
    args = ap.parse_args()
    if not (SRC / "fastv" / "__init__.py").is_file():
        print("run from the repository root (src/fastv/__init__.py not found)", file=sys.stderr)
        return 2
    for line in do_moves(args.dry_run):
        print(line)
    for module, spec in SPLITS.items():
        for line in split_module(module, spec, args.dry_run):
            print(line)
    changed = rewrite_all(args.dry_run)
    for f in changed:
        print(f"rewrote {f}")
    if not args.dry_run:
        touched = changed + [f for f in SRC.rglob("*.py") if f not in changed and _new_since_head(f)]
        tidy(touched)
        git("add", "-A", "src", "tests", "tests_serving", "training", "benchmarks", "docs", "tools")
        for f in TEXT_FILES:
            if Path(f).is_file():
                git("add", f)
    left = unmapped()
    if left:
        print("\nNOT PLACED (add them to MOVES or STAYS in tools/relayout.py):")
        for p in left:
            print(f"  {p}")
    return 0


def _new_since_head(f: Path) -> bool:
    r = subprocess.run(["git", "diff", "--cached", "--quiet", "HEAD", "--", str(f)], capture_output=True)
    return r.returncode != 0


if __name__ == "__main__":
    sys.exit(main())
