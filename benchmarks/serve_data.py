"""The generated index and query photos that the service benchmarks (bench_serve.py, bench_soak.py) run on."""
from __future__ import annotations

from pathlib import Path


def generated_index(work: Path, n_landmarks: int) -> tuple[Path, list[Path]]:
    """A RootSIFT + lite0-gem index of a seeded synthetic data set under ``work`` (reused when already built)
    and the paths of its holdout photos."""
    import pandas as pd

    from retrieval import extract
    from retrieval.data import read_reference_csv
    from retrieval.global_model import resolve_global_conf
    from synthetic import generate_demo_dataset

    data = generate_demo_dataset(work / "data", n_landmarks=n_landmarks, seed=7)
    index = work / "index"
    if not (index / "manifest.json").exists():
        extract.main(read_reference_csv(data.train_csv, data.images_dir), index, resolve_global_conf("lite0-gem"),
                     "rootsift", progress=False)
    holdout = pd.read_csv(data.holdout_csv, dtype=str, keep_default_na=False)
    return index, [data.images_dir / f"{i}.jpg" for i in holdout["id"]]
