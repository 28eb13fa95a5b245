"""LightGBM boosters compiled to machine code (lleaves, LLVM): `Booster.predict`'s numbers, several times faster.

A compiled forest adds the trees' outputs in double precision in LightGBM's order (one block of trees, not lleaves'
cache blocks, whose partial sums round differently), so its predictions are bitwise those of `Booster.predict`.
Compiling an 800-tree booster takes 10-30 s, so the machine code is cached on disk per model and host CPU
(`KAIROS_CACHE_DIR`, default ~/.cache/kairos): only the first load of a model version on a machine compiles.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

__all__ = ["PARALLEL_ROWS", "cache_dir", "compile_booster", "lgb_array", "predict"]

PARALLEL_ROWS = 10_000  # fewer rows run on one thread: starting threads would cost more than it saves
STALE_SECONDS = 3600  # a compile folder this old belongs to a process killed while compiling (a compile takes < 1 min)


def cache_dir() -> Path:
    """Where compiled forests are kept: `KAIROS_CACHE_DIR`/lleaves, default ~/.cache/kairos/lleaves."""
    return Path(os.environ.get("KAIROS_CACHE_DIR") or Path.home() / ".cache" / "kairos") / "lleaves"


def _host() -> str:
    """The CPU the machine code is generated for, and the compiler versions: part of the cache key."""
    import llvmlite.binding as llvm

    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:  # LLVM cannot always detect them; lleaves then compiles for none
        features = ""
    return f"{llvm.get_host_cpu_name()} {features} lleaves {version('lleaves')} llvmlite {version('llvmlite')}"


def compile_booster(booster: lgb.Booster, raw_score: bool = False):
    """The lleaves model of `booster` (its best iteration, as `Booster.predict` uses), from the cache if there;
    `raw_score`: predict the raw margin (`Booster.predict(raw_score=True)`) instead of the objective's output."""
    import lleaves

    text = booster.model_to_string()
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale(root)
    key = hashlib.sha256(f"{text}\n{_host()} raw_score={raw_score} one block".encode()).hexdigest()[:40]
    cached = root / f"{key}.o"
    with tempfile.TemporaryDirectory(dir=root, prefix=".compile-") as tmp:
        model_file = Path(tmp) / "model.txt"
        model_file.write_text(text)
        forest = lleaves.Model(model_file=str(model_file))
        target = cached if cached.exists() else Path(tmp) / "forest.o"
        forest.compile(cache=str(target), raw_score=raw_score, fblocksize=max(forest.num_trees(), 1))
        if target != cached:  # compiled beside the cache and renamed: a concurrent reader never sees half a file
            os.replace(target, cached)
    return forest


def _remove_stale(root: Path) -> None:
    """Remove the compile folders of processes killed while compiling (TemporaryDirectory cleans up all others)."""
    for folder in root.glob(".compile-*"):
        try:
            if time.time() - folder.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(folder, ignore_errors=True)
        except FileNotFoundError:  # removed by a concurrent process meanwhile
            continue


def lgb_array(columns: list[pd.Series | pd.Categorical | np.ndarray], block_rows: int = 8192) -> np.ndarray:
    """The float64 row-major array LightGBM predicts from, of the model's columns in order: a categorical as its
    category codes (NaN when missing or unseen), as `Booster.predict` converts a DataFrame with the training
    categories. Filled a block of rows at a time: a whole column at once would write one value per cache line."""
    cols = [np.where(c.codes < 0, np.nan, c.codes) if isinstance(c, pd.Categorical) else np.asarray(c, np.float64)
            for c in columns]
    n = len(cols[0]) if cols else 0
    out = np.empty((n, len(cols)), dtype=np.float64)
    for start in range(0, n, block_rows):
        for j, col in enumerate(cols):
            out[start:start + block_rows, j] = col[start:start + block_rows]
    return out


def predict(forest, data: np.ndarray) -> np.ndarray:
    """`Booster.predict(data)` by the compiled forest; `data` is a float64 model array (`lgb_array`)."""
    return forest.predict(data, n_jobs=1 if len(data) < PARALLEL_ROWS else os.cpu_count())
