"""Benchmark data directories with seeded random subsets of some split files.

FewCLUE files are sorted by label, so "the first N" (data.max_train_examples) would keep a few
classes only; a seeded random sample keeps the label mix. Every other file is linked unchanged.
"""

from __future__ import annotations

import gzip
import random
from pathlib import Path


def subset_data(data_dir: str, out: Path, limits: dict[str, dict[str, int]]) -> str:
    """`limits`: folder under the data dir → {file name: at most this many rows}. Returns `out`, a data
    directory with those folders (files sampled or linked) and links to every other folder."""
    src_root, out = Path(data_dir), Path(out)
    for folder, files in limits.items():
        src, dst = src_root / folder, out / folder
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            target = dst / f.name
            if target.exists():
                continue
            limit = files.get(f.name)
            if not limit:
                target.symlink_to(f.resolve())
                continue
            with gzip.open(f, "rt", encoding="utf-8", newline="") as fh:
                rows = list(fh)  # lines end at \n only: str.splitlines would also cut at U+2028 inside a JSON string
            if len(rows) > limit:
                rows = [rows[i] for i in sorted(random.Random(0).sample(range(len(rows)), limit))]
            with gzip.open(target, "wt", encoding="utf-8") as fh:
                fh.writelines(rows)
    for top in src_root.iterdir():  # the rest of the data directory, folder by folder
        link_missing(top, out / top.name, {Path(f) for f in limits})
    return str(out)


def link_missing(src: Path, dst: Path, subsetted: set[Path], rel: Path = Path()) -> None:
    """Link `src` (a data folder or file) into `dst`, descending into folders that hold a subsetted path."""
    rel = rel / src.name
    if dst.exists() and not dst.is_dir():
        return
    if not any(s == rel or rel in s.parents for s in subsetted):
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src.resolve())
        return
    if src.is_dir():
        for child in src.iterdir():
            link_missing(child, dst / child.name, subsetted, rel)
