"""Results on disk: one append-only JSONL file per process, merged once at the end.

Each finished (setting, sample) pair is one line, flushed and fsync'ed before the next starts, so
an interrupted run loses at most the pair in flight. A torn last line (killed mid-write) is ignored
on restart. Merging deduplicates by key, so a pair counted by two shards or two runs appears once.

A record also carries its sample's content fingerprint: a resumed run whose data changed under the
same ids (a row inserted above rows keyed by row number) is refused, not silently mixed. One run at a
time writes a folder: the main process holds an advisory lock on `<out>/.lock` (released by the OS
even when the run is killed).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from fastv.core.errors import FastVError

Key = tuple[str, str]  # (setting name, sample id)
MANIFEST = "run.json"
PREDICTIONS = "predictions.jsonl"
LOCK = ".lock"


def key_of(record: dict[str, Any]) -> Key:
    return record["setting"], record["sample_id"]


class ResultStore:
    def __init__(self, out: str | Path, rank: int = 0) -> None:
        self.out = Path(out)
        self.shards = self.out / "shards"
        self.path = self.shards / f"rank{rank}.jsonl"

    # ---- one writer at a time ------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold `<out>/.lock` for a run; a second run on the same folder is refused at once."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks, run unguarded
            yield
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with (self.out / LOCK).open("a+") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:
                f.seek(0)
                holder = f.read().strip() or "?"
                raise FastVError(
                    f"{self.out} is in use by another fastv eval (pid {holder}): wait for it to finish, "
                    "or give another --out"
                ) from err
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def clear(self) -> None:
        """--fresh: remove every earlier result (the lock, held by this run, stays)."""
        if not self.out.is_dir():
            return
        for child in self.out.iterdir():
            if child.name == LOCK:
                continue
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()

    def has_manifest(self) -> bool:
        return (self.out / MANIFEST).exists()

    def remove_manifest(self) -> None:
        """Undo a manifest written by a run that was refused before it recorded anything."""
        (self.out / MANIFEST).unlink(missing_ok=True)

    # ---- writing ----------------------------------------------------------------------------
    def check_manifest(self, manifest: dict[str, Any], write: bool) -> None:
        """Refuse to resume into a folder made with another model, data or generation length.

        Settings may differ: a grid can grow between runs, and finished pairs are reused.
        """
        path = self.out / MANIFEST
        if path.exists():
            old = json.loads(path.read_text())
            fixed = ("model", "data", "split", "max_new_tokens", "dtype")
            diff = [k for k in fixed if old.get(k) != manifest.get(k)]
            if diff:
                details = ", ".join(f"{k}: {old.get(k)!r} -> {manifest.get(k)!r}" for k in diff)
                raise FastVError(
                    f"{self.out} holds a run with other {'/'.join(diff)} ({details}); "
                    "use another --out or --fresh to start over"
                )
        if write:
            self.out.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(manifest, indent=2) + "\n")

    def check_samples(self, samples: Sequence[Any]) -> None:
        """Refuse to resume when a sample id on disk now names other content (see the module docstring).

        Records written before fingerprints existed are compared on question, answers and choices.
        """
        current = {s.id: s for s in samples}
        changed: dict[str, str] = {}
        for r in self._read():
            sample = current.get(str(r["sample_id"]))
            if sample is None or r["sample_id"] in changed:
                continue
            if "sample_fp" in r:
                same = not sample.fingerprint or r["sample_fp"] == sample.fingerprint
            else:
                same = (r.get("question"), r.get("answers"), r.get("choices")) == (
                    sample.question,
                    sample.answers,
                    sample.choices,
                )
            if not same:
                changed[r["sample_id"]] = r.get("question", "")
        if changed:
            first = next(iter(changed))
            raise FastVError(
                f"{self.out} holds results for {len(changed)} sample id(s) whose content has changed since "
                f"(first: id {first!r}, was {changed[first]!r}): the data was edited or rows moved; give each row "
                "a unique 'id' (results are keyed by it), or use another --out or --fresh to start over"
            )

    def append(self, record: dict[str, Any]) -> None:
        self.shards.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as f:
            if f.tell() > 0:  # a run killed mid-write leaves a torn line: end it, or we would extend it
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
            f.write((json.dumps(record) + "\n").encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())

    # ---- reading ----------------------------------------------------------------------------
    def _read(self) -> Iterator[dict[str, Any]]:
        if not self.shards.is_dir():
            return
        for path in sorted(self.shards.glob("rank*.jsonl")):
            with path.open(encoding="utf-8") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # torn line from an interrupted write: that pair simply reruns
                    if isinstance(record, dict) and "setting" in record and "sample_id" in record:
                        yield record

    def done(self) -> set[Key]:
        """Pairs finished by any process of any earlier run (shards from other world sizes included)."""
        return {key_of(r) for r in self._read()}

    def records(self, settings: Iterable[str] | None = None, samples: Iterable[str] | None = None) -> list[dict]:
        """Each pair once (the first written), ordered by sample then setting when orders are given."""
        unique: dict[Key, dict] = {}
        for r in self._read():
            unique.setdefault(key_of(r), r)
        out = list(unique.values())
        if settings is not None and samples is not None:
            s_order = {name: i for i, name in enumerate(settings)}
            x_order = {sid: i for i, sid in enumerate(samples)}
            out = [r for r in out if r["setting"] in s_order and r["sample_id"] in x_order]
            out.sort(key=lambda r: (x_order[r["sample_id"]], s_order[r["setting"]]))
        return out

    def write_merged(self, records: list[dict]) -> Path:
        path = self.out / PREDICTIONS
        tmp = path.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        tmp.replace(path)
        return path
