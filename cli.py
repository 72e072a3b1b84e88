"""The ``landmarks`` command line: thin typer wrappers around one function each."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from gldv2.download import DEFAULT_BASE_URL as GLDV2_BASE_URL
from index.choices import check_name
from retrieval.defaults import DEFAULT_GLOBAL, DEFAULT_LOCAL, DEFAULT_RECOGNITION_CONF
from retrieval.registry import check_cascade, local_conf_sets, local_registry

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Landmark recognition by retrieval: build a FAISS index of reference photos, query it, recognise "
    "landmarks with local-feature verification, and measure GAP on a holdout.",
)
logger = logging.getLogger("landmarks")


class CliError(Exception):
    """An error to show the user as one line (exit code 2)."""


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the record (test runners swap it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"  # tqdm reads it when a bar is created: -q hides progress bars too
    # faiss logs which SIMD build it loaded (and the ImportErrors of the others) at INFO: noise for users.
    logging.getLogger("faiss").setLevel(max(level, logging.WARNING))


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _guard(func, max_pixels: Optional[int] = None):
    """Run a command body and turn expected errors (bad input, missing files) into one clean line, exit 2.

    ``max_pixels``: the command's --max-pixels (None: the loader's budget)."""
    from index.manifest import IndexFormatError
    from retrieval.backbones import WeightsUnavailableError

    try:
        with _pixel_budget(max_pixels):
            return func()
    except (ValueError, OSError, IndexFormatError, WeightsUnavailableError, CliError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        # Work already written (index shards, evidence lines) is kept; the same command resumes from it.
        typer.secho("interrupted: finished work is kept; rerun the same command to resume", err=True, fg=typer.colors.YELLOW)
        raise typer.Exit(code=130) from None


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Warnings and errors only."),
) -> None:
    _setup_logging(verbose, quiet)


# ----------------------------------------------------------------------------- engines

_ENGINE = typer.Option("local", "--engine", help="local (this machine) or ray (Ray Data actors on a local Ray instance, or on the cluster of --ray-address; needs the [ray] extra).")
_RAY_ADDRESS = typer.Option(None, "--ray-address", help="--engine ray: join this Ray cluster ('auto', or ray://head:10001) instead of starting a local instance.")
_RAY_GPUS = typer.Option(0.0, "--num-gpus-per-worker", min=0.0, help="--engine ray: GPUs per actor (0: CPU actors).")
_RAY_WORKERS = typer.Option(None, "--ray-workers", min=1, help="--engine ray: actors in the pool (default: as many as the cluster's GPUs or CPUs allow).")


def _ray_options(engine: str, address, gpus: float, ray_workers):
    """Validate --engine (one line naming the [ray] extra when Ray is missing) and build the Ray options."""
    from engines import RayOptions, check_engine

    check_engine(engine)
    if engine != "ray":
        if address or gpus or ray_workers:
            raise CliError("--ray-address, --num-gpus-per-worker and --ray-workers need --engine ray")
        return None
    return RayOptions(address=address, num_gpus_per_worker=gpus, workers=ray_workers)


# ----------------------------------------------------------------------------- pixel budget

_MAX_PIXELS = typer.Option(None, "--max-pixels", min=1, envvar="LANDMARKS_MAX_PIXELS", help="Pixel budget of an image file: larger ones are refused from their header before decoding, reported and skipped (default 40,000,000).")


@contextlib.contextmanager
def _pixel_budget(max_pixels: Optional[int]):
    """Decode under ``max_pixels`` for the command's duration (through the environment variable the loader
    reads, so that decoding worker processes and Ray actors started by the command see it too)."""
    from retrieval.image_io import MAX_PIXELS_ENV

    before = os.environ.get(MAX_PIXELS_ENV)
    if max_pixels is not None:
        os.environ[MAX_PIXELS_ENV] = str(max_pixels)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(MAX_PIXELS_ENV, None)
        else:
            os.environ[MAX_PIXELS_ENV] = before


# ----------------------------------------------------------------------------- build-index


@app.command("build-index")
def build_index(
    index: Path = typer.Option(..., "--index", help="Index directory to create, resume or extend."),
    images: Path = typer.Option(..., "--images", help="Image folder: <id>.jpg, GLDv2 nested a/b/c/<id>.jpg, or <landmark>/<file> when no CSV is given."),
    train: Optional[Path] = typer.Option(None, "--train", help="Reference CSV with columns id,landmark_id (empty landmark_id = non-landmark). Omit to read a folder per landmark."),
    distractors: Optional[Path] = typer.Option(None, "--distractors", help="CSV of non-landmark image ids (column id) to index as distractors."),
    conf: Optional[str] = typer.Option(None, "--conf", help=f"Global configuration name (see `landmarks confs`; default: an existing index's, else {DEFAULT_GLOBAL})."),
    local_conf: Optional[str] = typer.Option(None, "--local-conf", help=f"Local features to store for verification (see `landmarks confs`): rootsift (no weights), aliked, xfeat, delf, or none (extracted on demand at query time; nothing stored). Several sets: rootsift+xfeat or rootsift+aliked (the first verifies first, the second what it leaves unresolved; also adds the second set to an existing rootsift index). Default: an existing index's, else {DEFAULT_LOCAL}."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Backbone weights: a checkpoint file, 'timm' (online), 'random', or 'auto' (default: an existing index's)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Override the configuration's input size (pixels)."),
    resize: Optional[str] = typer.Option(None, "--resize", help="Which side gets --image-size: longer or shorter (aspect ratio is kept)."),
    faiss_factory: Optional[str] = typer.Option(None, "--faiss", help="FAISS index_factory string, e.g. 'IVF4096,PQ64x4fs' (default: chosen from the collection size)."),
    nprobe: Optional[int] = typer.Option(None, "--nprobe", help="IVF lists visited per query."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Retrain the FAISS index from the stored descriptors (parameters chosen for today's size) even if it could be extended; with ASMK, retrain its codebook too."),
    asmk: bool = typer.Option(False, "--asmk", help="Add local-feature retrieval (ASMK: a codebook and an inverted file over the stored primary local features) as a second retrieval channel beside the global kNN; kept up to date by every later build. Off by default: it costs memory and build time and did not pay on devset-large."),
    asmk_words: Optional[int] = typer.Option(None, "--asmk-words", min=1, help="ASMK codebook size (default: chosen from the number of stored local descriptors, about 100 per word, at most 65536); changed on an existing index with --rebuild."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1, mps (default: best available)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Decoding worker processes (default: none on the CPU, where the model uses every core; cores-1, at most 4, with a GPU)."),
    max_pixels: Optional[int] = _MAX_PIXELS,
    engine: str = _ENGINE, ray_address: Optional[str] = _RAY_ADDRESS, gpus_per_worker: float = _RAY_GPUS,
    ray_workers: Optional[int] = _RAY_WORKERS,
    landmark_names: Optional[Path] = typer.Option(None, "--landmark-names", help="Landmark names to store with the index: GLDv2's *_label_to_category.csv (Wikimedia Commons category URLs) or a landmark_id,name CSV. Without a CSV of images, landmarks are named by their folders."),
) -> None:
    """Extract descriptors of reference images and build (or resume, or extend) the index."""

    def body():
        from engines import build_index
        from index.asmk_store import asmk_request
        from index.reader import IndexReader
        from retrieval import extract

        ray_options = _ray_options(engine, ray_address, gpus_per_worker, ray_workers)
        from retrieval.data import read_references

        references = read_references(train, images, distractors)
        names = None
        if landmark_names is not None or train is None:
            from index import names as names_mod  # read before the long build: a bad file fails at once

            names = (names_mod.read_names_csv(landmark_names) if landmark_names is not None
                     else names_mod.folder_names(references["landmark_id"].unique()))
        # options not given (None) are the existing index's own configuration, so extending needs none of them
        gconf, lconf, lsets = extract.confs_for_index(index, conf, local_conf, weights=weights, image_size=image_size,
                                                      resize=resize)
        stats = build_index(
            references, index, gconf, lconf, device=device, batch_size=batch_size, num_workers=workers,
            factory=faiss_factory, nprobe=nprobe, rebuild=rebuild, engine=engine, ray_options=ray_options,
            local_sets=lsets, asmk=asmk_request(asmk_words) if asmk or asmk_words is not None else None,
        )
        typer.echo(
            f"index {index}: {stats['n_total']} images ({stats['n_added']} added, {stats['already_stored']} already "
            f"stored, {stats['skipped']} skipped), FAISS {stats['faiss']['factory']}, {stats['seconds_total']:.1f} s"
        )
        if stats.get("rebuild_reason"):
            typer.echo(f"FAISS index (re)trained: {stats['rebuild_reason']}")
        if names:
            typer.echo(f"landmark names: {names_mod.store_names(index, names)} stored with the index")
        manifest = IndexReader.read_manifest(index)
        if lconf:
            per_image = manifest.get("local_bytes_per_image") or 0
            typer.echo(f"local features ({extract.conf_label(lconf)}): {manifest['counts'].get('local_features', 0)} keypoints, "
                       f"{per_image / 1024:.0f} KiB per image")
        if manifest.get("asmk"):
            a = manifest["asmk"]
            per_image = sum(p["entries"] for p in a["parts"]) / max(1, manifest["counts"]["images"])
            typer.echo(f"ASMK: {a['n_words']} visual words, {per_image:.0f} words per image "
                       f"({per_image * 20 / 1024:.1f} KiB per image in memory)")
        for name, s in (stats.get("local_sets") or {}).items():
            typer.echo(f"local set {name}: {s['rows_extracted']} images extracted ({s['failed']} unreadable), "
                       f"{(s.get('bytes_per_image') or 0) / 1024:.0f} KiB per image, {s['seconds']:.1f} s "
                       f"({s['seconds_per_image']:.2f} s per image, {s['extract_seconds_per_image']:.2f} s extracting)")
        if stats["skipped"]:
            typer.echo(f"skipped images and reasons: {index / 'skipped.csv'}")
            raise typer.Exit(code=1)

    _guard(body, max_pixels)


# ----------------------------------------------------------------------------- download


@app.command("train")
def train_cmd(
    out: Path = typer.Option(..., "--out", help="Run folder: model.pt (the checkpoint build-index --weights takes), train.json, state.pt while fine-tuning."),
    train: Optional[Path] = typer.Option(None, "--train", help="Labelled CSV (id,landmark_id); rows with an empty landmark_id are left out."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image folder of --train (or, without --train, one folder per landmark)."),
    index: Optional[Path] = typer.Option(None, "--index", help="Train on an index's own labelled rows instead of --train/--images."),
    route: str = typer.Option("auto", "--route", help="whiten (learned whitening on frozen descriptors: minutes on a CPU), finetune (backbone + neck with sub-center ArcFace: a GPU), or auto (finetune with a GPU or --engine ray, else whiten; says which)."),
    conf: Optional[str] = typer.Option(None, "--conf", help=f"Global configuration to start from (see `landmarks confs`; default {DEFAULT_GLOBAL})."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Starting backbone weights (default: the configuration's, e.g. the packaged ImageNet weights)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Override the configuration's input size (pixels)."),
    dim: Optional[int] = typer.Option(None, "--dim", min=1, help="Descriptor dimension of the trained model (default: the backbone's width, so an index's dimension is unchanged)."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random choice (split, sampling, augmentation)."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", min=0.0, max=0.9, help="Share of images held out for validation, as whole landmarks (with >= 2 images)."),
    views: Optional[int] = typer.Option(None, "--views", min=0, help="whiten: augmented views per image (matching pairs; default 4)."),
    shrinkage: Optional[str] = typer.Option(None, "--shrinkage", help="whiten: shrinkage of the matching-pair covariance towards the identity, a number in [0, 1] or auto (Ledoit-Wolf, from the pairs; default 0.6)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="finetune: epochs (default 10)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="finetune: peak learning rate of the backbone (the neck and head get 10x; default 1e-4)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Images per step (finetune: the global batch, split over workers; default 16)."),
    accum_steps: Optional[int] = typer.Option(None, "--accum-steps", min=1, help="finetune: gradient accumulation steps per optimiser step (default 1)."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", min=1, help="finetune: optimiser steps between checkpoints (state.pt; default 50)."),
    resume: bool = typer.Option(False, "--resume", help="finetune: continue from <out>/state.pt (after an interruption or kill -9) to the same result."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1, mps (default: best available)."),
    engine: str = typer.Option("local", "--engine", help="local, or ray: data-parallel fine-tuning on Ray Train workers (needs the [ray] extra)."),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", min=1, help="--engine ray: training workers (default 1)."),
    gpus_per_worker: Optional[float] = typer.Option(None, "--gpus-per-worker", min=0.0, help="--engine ray: GPUs per worker (0: CPU workers)."),
    ray_address: Optional[str] = _RAY_ADDRESS,
    max_pixels: Optional[int] = _MAX_PIXELS,
) -> None:
    """Fit the global descriptor to your labelled landmarks (recognition stays retrieval); writes <out>/model.pt
    for `build-index --weights`."""

    def body():
        from engines import RayOptions, check_engine
        from retrieval.training import run

        check_engine(engine)
        if engine != "ray" and (num_workers or gpus_per_worker or ray_address):
            raise CliError("--num-workers, --gpus-per-worker and --ray-address need --engine ray")
        ray_options = (RayOptions(address=ray_address, num_gpus_per_worker=gpus_per_worker or 0.0, workers=num_workers or 1)
                       if engine == "ray" else None)
        summary = run.main(
            out, train=train, images=images, index=index, route=route, global_conf=conf, weights=weights,
            image_size=image_size, device=device, seed=seed, val_fraction=val_fraction,
            batch_size=batch_size or 16,
            whiten={"views": views, "shrinkage": shrinkage, "dim": dim},
            finetune={"epochs": epochs, "lr": lr, "batch_size": batch_size, "accum_steps": accum_steps,
                      "checkpoint_every": checkpoint_every, "dim": dim},
            resume=resume, engine=engine, ray_options=ray_options,
            progress=os.environ.get("TQDM_DISABLE") != "1",
        )
        typer.echo(f"route {summary['route']} ({summary['route_reason']})")
        fig = summary["figures"]
        for name in ("val", "train"):
            before, after = fig.get(f"{name}_before"), fig.get(f"{name}_after")
            if before and after and after.get("queries"):
                typer.echo(f"{name} 1-NN (held-out landmarks)" if name == "val" else f"{name} 1-NN (leave one out)", nl=False)
                typer.echo(f": R@1 {before['r1']:.3f} -> {after['r1']:.3f}, GAP {before['gap']:.3f} -> {after['gap']:.3f} "
                           f"({after['queries']} queries)")
        typer.echo(f"{summary['model']}: {summary['images']} images of {summary['landmarks']} landmarks, "
                   f"{summary['seconds']:.0f} s; next: landmarks build-index ... --weights {summary['model']}")
        if summary["skipped"]:
            typer.echo(f"skipped images and reasons: {summary['skipped_csv']}")
            raise typer.Exit(code=1)

    _guard(body, max_pixels)


@app.command("download")
def download(
    dataset: str = typer.Argument(..., help="The dataset: gldv2 (Google Landmarks v2)."),
    split: str = typer.Option("train", "--split", help="train (500 shards, ~1 GB each), index (100) or test (20)."),
    out: Path = typer.Option(Path("gldv2"), "--out", help="Folder: metadata/*.csv and <split>/a/b/c/<id>.jpg (build-index --images OUT/<split>)."),
    shards: Optional[str] = typer.Option(None, "--shards", help="Shards to fetch, e.g. 0-9 or 0,5,10-12 (default: all of the split)."),
    metadata_only: bool = typer.Option(False, "--metadata-only", help="Only the split's metadata CSVs."),
    base_url: str = typer.Option(GLDV2_BASE_URL, "--base-url", help="The dataset's base address, a mirror's, or a local folder with the same layout."),
    jobs: int = typer.Option(4, "--jobs", min=1, help="Shards downloaded at once."),
    retries: int = typer.Option(2, "--retries", min=0, help="Times a dropped connection is continued (HTTP Range) before the shard is reported."),
) -> None:
    """Download GLDv2 (resumable, md5-checked, extracted as it is read; a rerun skips checked shards).
    Exit code 1 when some shard or file failed (each named in one line; finished shards are kept)."""

    def body():
        from gldv2 import download as dl

        check_name(dataset, ["gldv2"], "dataset")
        res = dl.main(split, out, shards=shards, metadata_only=metadata_only, base_url=base_url, jobs=jobs, retries=retries)
        for line in res.errors:
            typer.secho(f"error: {line}", err=True, fg=typer.colors.RED)
        typer.echo(f"{out}: {len(res.metadata)} metadata files; {split}: {len(res.done)} shards downloaded "
                   f"({res.images} images, {res.bytes / 2**20:.1f} MiB), {len(res.skipped)} already done, "
                   f"{len(res.errors)} failed")
        if res.errors:
            raise typer.Exit(code=1)

    _guard(body)


# ----------------------------------------------------------------------------- verify-data


@app.command("verify-data")
def verify_data(
    train: Path = typer.Option(..., "--train", help="CSV with an id column (GLDv2 train.csv, index.csv, test.csv, ...)."),
    images: Path = typer.Option(..., "--images", help="Image folder: <id>.jpg or GLDv2 nested a/b/c/<id>.jpg."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report CSV (kind,id,line,path,reason); default ./verify-<CSV name>.csv."),
    decode: bool = typer.Option(False, "--decode", help="Decode every image fully instead of checking headers and file ends (slower)."),
    threads: int = typer.Option(8, "--threads", min=1, help="Files checked at once."),
) -> None:
    """Report what a build would meet: ids with no image, images with no row, unreadable images, duplicate ids.
    Exit code 1 when any id would be skipped or refused (images with no row alone are no error)."""

    def body():
        from gldv2 import verify

        report = out if out is not None else Path(f"verify-{train.stem}.csv")
        result = verify.main(train, images, report, decode=decode, threads=threads)
        typer.echo(result.summary(train))
        if not result.ok:
            raise typer.Exit(code=1)

    _guard(body)


# ----------------------------------------------------------------------------- query

_RECURSIVE = typer.Option(False, "--recursive", help="Folder arguments: also the images in their subfolders.")


def _query_images(images: List[Path], recursive: bool) -> List[Path]:
    """Query image arguments with folders replaced by their image files (sorted; non-images skipped)."""
    from retrieval.data import expand_image_paths

    return expand_image_paths(images, recursive=recursive)


@app.command("query")
def query(
    images: Optional[List[Path]] = typer.Argument(None, help="Query image files or folders of them (or --queries/--images/--out for a submission)."),
    index: Path = typer.Option(..., "--index", help="Index directory built by build-index."),
    recursive: bool = _RECURSIVE,
    max_pixels: Optional[int] = _MAX_PIXELS,
    k: Optional[int] = typer.Option(None, "--k", "-k", help="Number of neighbours (default 10; 100 with --queries, the most a retrieval submission holds)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per query image (JSON lines)."),
    queries: Optional[Path] = typer.Option(None, "--queries", help="CSV with an id column: write Kaggle's retrieval submission for these queries (with --images and --out)."),
    images_dir: Optional[Path] = typer.Option(None, "--images", help="With --queries: folder of the query images (<id>.jpg or GLDv2 nested)."),
    out: Optional[Path] = typer.Option(None, "--out", help="With --queries: retrieval submission to write (id,images); resumable (OUT.partial.jsonl)."),
    qe: int = typer.Option(0, "--qe", min=0, help="With --queries: average query expansion over the top N neighbours (0: off)."),
    verify_top: int = typer.Option(0, "--verify-top", min=0, help="With --queries: re-rank the first N by local verification (RANSAC inliers; 0: off)."),
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """Find the most similar reference images (cosine similarity of global descriptors); with --queries, write
    Kaggle's retrieval submission (up to 100 index ids per query)."""

    def body():
        if queries is not None or images_dir is not None or out is not None:
            if images or as_json:
                raise CliError("give either image files or --queries/--images/--out, not both (--json is for image files)")
            if queries is None or images_dir is None or out is None:
                raise CliError("--queries, --images and --out go together")
            if k is not None and not 1 <= k <= 100:
                raise CliError(f"--k must be between 1 and 100 with --queries (a retrieval submission holds up to 100 ids), got {k}")
            from eval import retrieve

            stats = retrieve.main(index, queries, images_dir, out, k=k or 100, qe=qe, verify_top=verify_top, device=device)
            typer.echo(f"{out}: {stats['queries']} queries, up to {stats['k']} index images each, "
                       f"{stats['unreadable']} unreadable images")
            if stats["unreadable"]:
                raise typer.Exit(code=1)
            return
        if not images:
            raise CliError("give query image files, or --queries/--images/--out for a retrieval submission")
        if qe or verify_top:
            raise CliError("--qe and --verify-top apply to --queries (the retrieval submission)")
        from retrieval import neighbours

        if k is not None and k < 1:
            raise CliError(f"--k must be >= 1, got {k}")
        from index.names import load_names, with_names
        from index.reader import IndexReader

        with IndexReader.open(index) as db:  # one open index: the search and its landmark names
            names = load_names(db)
            results = neighbours.main(db, _query_images(images, recursive), k=k or 10, device=device)
        for res in results:
            if as_json:
                typer.echo(json.dumps(with_names(res, names) if names else res))
            elif "error" in res:
                typer.secho(f"{res['image']}: error: {res['error']}", err=True, fg=typer.colors.RED)
            else:
                typer.echo(f"{res['image']}")
                for n in res["neighbours"]:
                    typer.echo(f"  {n['rank']:>3}  {n['score']:.4f}  landmark {n['landmark_id'] or '-':>8}  {n['id']}  {n['path']}"
                               + _named(names, n["landmark_id"], "  "))
        if any("error" in r for r in results):
            raise typer.Exit(code=1)

    _guard(body, max_pixels)


# ----------------------------------------------------------------------------- recognition

_NEIGHBOURS = typer.Option(None, "--k", help=f"Neighbours from the global search (default {DEFAULT_RECOGNITION_CONF['k']}).")
_CANDIDATES = typer.Option(None, "--candidates", help=f"Candidate landmarks verified per query (default {DEFAULT_RECOGNITION_CONF['num_candidates']}; per local features in `landmarks confs`).")
_REFS_PER_CANDIDATE = typer.Option(None, "--refs-per-candidate", help=f"Images verified per candidate (default {DEFAULT_RECOGNITION_CONF['refs_per_candidate']}; at most {DEFAULT_RECOGNITION_CONF['max_verifications']} pairs per query in all; per local features in `landmarks confs`).")
_INLIER_THRESHOLD = typer.Option(None, "--inlier-threshold", help="Inliers needed to accept a landmark (default: the index manifest's tuned value, else the value calibrated on real photos for its local features: "
                                 + ", ".join(f"{name} {e.decision['inlier_threshold']}" for name, e in local_registry.items() if "inlier_threshold" in e.decision) + ").")


def _check_cascade(value: Optional[str]) -> Optional[str]:
    """--cascade is checked when the options are parsed, before any model or index is opened."""
    if value is not None:
        try:
            check_cascade(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


_CASCADE = typer.Option(None, "--cascade", callback=_check_cascade,
                        help="The matcher cascade's second, learned matcher: auto (the set the index was built with, "
                        "e.g. --local-conf rootsift+aliked; default), none, or a local configuration name that needs "
                        "no fitted PCA (its reference features are then extracted on demand unless the index stores "
                        "them: slow).")


_CASCADE_PAIRS = typer.Option(None, "--cascade-pairs", min=0, help="Budget of the cascade's second matcher: candidates it "
                              "verifies (one image each) on a query the primary matcher left unresolved (default: per "
                              "second matcher, `landmarks confs`; ALIKED: 3; more reach deeper into the candidates, each pair at a fixed cost).")


def _overrides(k, candidates, refs, threshold, cascade=None, cascade_pairs=None) -> dict:
    return {"k": k, "num_candidates": candidates, "refs_per_candidate": refs, "inlier_threshold": threshold,
            "cascade": cascade, "cascade_pairs": cascade_pairs}


def _named(names: dict, landmark_id, sep: str = " ") -> str:
    """The name in parentheses after a landmark id in text output, when the index has one (names are cleaned
    of control characters when read: safe on a terminal)."""
    name = names.get(landmark_id) if landmark_id else None
    return f"{sep}({name})" if name else ""


@app.command("recognize")
def recognize(
    images: List[Path] = typer.Argument(..., help="Query image files or folders of them."),
    index: Path = typer.Option(..., "--index", help="Index directory."),
    recursive: bool = _RECURSIVE,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per image (JSON lines)."),
    k: Optional[int] = _NEIGHBOURS, candidates: Optional[int] = _CANDIDATES, refs: Optional[int] = _REFS_PER_CANDIDATE,
    threshold: Optional[int] = _INLIER_THRESHOLD, cascade: Optional[str] = _CASCADE,
    cascade_pairs: Optional[int] = _CASCADE_PAIRS,
    max_pixels: Optional[int] = _MAX_PIXELS,
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """Say which landmark each photo shows (with confidence), or "no landmark"."""

    def body():
        from retrieval.image_io import ImageError
        from retrieval.recognize import Recognizer

        from index.names import load_names, with_names

        paths = _query_images(images, recursive)
        rec = Recognizer.from_index(index, device=device, **_overrides(k, candidates, refs, threshold, cascade, cascade_pairs))
        names = load_names(rec.db)
        failed = 0
        for image in paths:
            try:
                pred = rec.recognize(image)
            except ImageError as exc:
                failed += 1
                if as_json:
                    typer.echo(json.dumps({"image": str(image), "error": str(exc)}))
                else:
                    typer.secho(f"{image}: error: {exc}", err=True, fg=typer.colors.RED)
                continue
            if as_json:
                answer = pred.to_json(str(image))
                typer.echo(json.dumps(with_names(answer, names) if names else answer))
            elif pred.landmark_id is None:
                typer.echo(f"{image}: no landmark ({rec.explain(pred, lambda lm: f'{lm}{_named(names, lm)}')})")
            else:
                typer.echo(f"{image}: landmark {pred.landmark_id}{_named(names, pred.landmark_id)}  "
                           f"confidence {pred.confidence:.3f}  ({rec.explain(pred)})")
        if failed:
            raise typer.Exit(code=1)

    _guard(body, max_pixels)


@app.command("predict")
def predict(
    index: Path = typer.Option(..., "--index", help="Index directory."),
    queries: Path = typer.Option(..., "--queries", help="CSV with an id column (the query images)."),
    images: Path = typer.Option(..., "--images", help="Folder of the query images (<id>.jpg or GLDv2 nested)."),
    out: Path = typer.Option(..., "--out", help="Submission CSV to write (id,landmarks)."),
    no_guesses: bool = typer.Option(False, "--no-guesses", help="Leave unverified queries empty instead of a low-confidence guess ranked below every verified answer."),
    k: Optional[int] = _NEIGHBOURS, candidates: Optional[int] = _CANDIDATES, refs: Optional[int] = _REFS_PER_CANDIDATE,
    threshold: Optional[int] = _INLIER_THRESHOLD, cascade: Optional[str] = _CASCADE,
    cascade_pairs: Optional[int] = _CASCADE_PAIRS,
    max_pixels: Optional[int] = _MAX_PIXELS,
    device: Optional[str] = typer.Option(None, "--device"),
    workers: Optional[int] = typer.Option(None, "--workers", min=0),
    engine: str = _ENGINE, ray_address: Optional[str] = _RAY_ADDRESS, gpus_per_worker: float = _RAY_GPUS,
    ray_workers: Optional[int] = _RAY_WORKERS,
) -> None:
    """Write a Kaggle recognition submission; resumes an interrupted run (evidence kept in OUT.evidence.jsonl)."""

    def body():
        from eval import predict as predict_mod

        ray_options = _ray_options(engine, ray_address, gpus_per_worker, ray_workers)
        stats = predict_mod.main(index, queries, images, out, device=device, keep_guesses=not no_guesses,
                                 overrides=_overrides(k, candidates, refs, threshold, cascade, cascade_pairs), num_workers=workers,
                                 engine=engine, ray_options=ray_options)
        typer.echo(f"{out}: {stats['queries']} queries, {stats['verified']} verified landmarks, "
                   f"{stats['guesses']} low-confidence guesses, {stats['unreadable']} unreadable images")
        if stats["unreadable"]:
            raise typer.Exit(code=1)

    _guard(body, max_pixels)


@app.command("show-matches")
def show_matches(
    image: Path = typer.Argument(..., help="Query image."),
    index: Path = typer.Option(..., "--index", help="Index directory."),
    out: Path = typer.Option(Path("matches.png"), "--out", help="PNG to write."),
    candidates: int = typer.Option(3, "--candidates", min=1, help="Candidates to draw."),
    max_pixels: Optional[int] = _MAX_PIXELS,
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """Draw the query beside its best candidates with the RANSAC inlier correspondences."""

    def body():
        from retrieval import visualize

        path, pred, explained = visualize.main(index, image, out, max_candidates=candidates, device=device)
        answer = f"landmark {pred.landmark_id}" if pred.landmark_id is not None else "no landmark"
        typer.echo(f"{image}: {answer} ({explained}); drawing written to {path}")

    _guard(body, max_pixels)


# ----------------------------------------------------------------------------- evaluation


@app.command("split")
def split(
    train: Path = typer.Option(..., "--train", help="Labelled CSV (id,landmark_id) to split."),
    out: Path = typer.Option(..., "--out", help="Folder for index.csv, holdout.csv and split.json."),
    query_fraction: float = typer.Option(0.1, "--query-fraction", help="Share of the images of multi-image landmarks held out as queries."),
    unseen_fraction: float = typer.Option(0.05, "--unseen-fraction", help="Share of landmarks removed from the index entirely (their queries' answer is 'no landmark')."),
    distractors: Optional[Path] = typer.Option(None, "--distractors", help="CSV of non-landmark image ids to draw distractor queries from."),
    distractor_rate: float = typer.Option(0.5, "--distractor-rate", help="Share of non-landmark queries among all queries."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Split a labelled collection into an index part and a holdout of queries."""

    def body():
        from eval import split as split_mod

        out_dir = split_mod.main(train, out, query_fraction, unseen_fraction, distractors, distractor_rate, seed)
        info = json.loads((Path(out_dir) / "split.json").read_text())
        counts = info.get("counts", {})
        typer.echo(f"{out_dir}: " + ", ".join(f"{k} {round(v, 3) if isinstance(v, float) else v}" for k, v in counts.items()))

    _guard(body)


def _print_report(report: dict) -> None:
    def line(name, r):
        lo, hi = r["gap_ci95"]
        fmt = lambda x: "n/a" if x is None else f"{x:.3f}"
        return (f"  {name:24s} GAP {fmt(r['gap'])} [{fmt(lo)}, {fmt(hi)}]  top-1 {fmt(r['top1_accuracy'])}  "
                f"non-landmark answered {fmt(r['nonlandmark_prediction_rate'])}  GAP(landmark queries) {fmt(r['gap_landmark_queries_only'])}")

    typer.echo(f"{report['n_queries']} queries ({report['n_landmark_queries']} landmark, {report['n_nonlandmark_queries']} non-landmark), "
               f"inlier threshold {report['thresholds']['inlier_threshold']}")
    typer.echo(line("full (submission)", report))
    typer.echo(line("full (strict)", report["strict"]))
    typer.echo(line("global kNN only", report["global_only"]))
    typer.echo(line("global 1-NN (first stage)", report["global_1nn"]))
    typer.echo(f"  full pipeline minus global 1-NN: GAP {report['gap_minus_global_1nn']:+.3f}")
    if report.get("in_sample"):
        typer.secho("  in-sample: the index's thresholds were tuned on these queries; quote tune-threshold's "
                    "cross-validated GAP instead", fg=typer.colors.YELLOW)
    lat = report.get("latency_ms") or {}
    if lat:
        typer.echo("  median ms per query: " + ", ".join(f"{k[:-3]} {v}" for k, v in lat.items()))


@app.command("evaluate")
def evaluate(
    index: Path = typer.Option(..., "--index", help="Index directory."),
    queries: Path = typer.Option(..., "--queries", help="Labelled queries: id,landmark_id (empty = no landmark) or Kaggle id,landmarks."),
    images: Path = typer.Option(..., "--images", help="Folder of the query images."),
    out: Path = typer.Option(..., "--out", help="Report folder (report.json, predictions.csv, evidence.jsonl, plots)."),
    k: Optional[int] = _NEIGHBOURS, candidates: Optional[int] = _CANDIDATES, refs: Optional[int] = _REFS_PER_CANDIDATE,
    threshold: Optional[int] = _INLIER_THRESHOLD, cascade: Optional[str] = _CASCADE,
    cascade_pairs: Optional[int] = _CASCADE_PAIRS,
    n_boot: int = typer.Option(1000, "--bootstrap", min=10, help="Bootstrap resamples for the GAP interval."),
    max_pixels: Optional[int] = _MAX_PIXELS,
    device: Optional[str] = typer.Option(None, "--device"),
    workers: Optional[int] = typer.Option(None, "--workers", min=0),
    engine: str = _ENGINE, ray_address: Optional[str] = _RAY_ADDRESS, gpus_per_worker: float = _RAY_GPUS,
    ray_workers: Optional[int] = _RAY_WORKERS,
    task: str = typer.Option("recognition", "--task", help="recognition (GAP) or retrieval (mAP@100 of the ranking `query --queries` writes)."),
    solution: Optional[Path] = typer.Option(None, "--solution", help="--task retrieval: relevant images from a retrieval_solution_v2.1.csv-style file (id,images[,Usage]) instead of the queries' landmark labels."),
    qe: int = typer.Option(0, "--qe", min=0, help="--task retrieval: average query expansion over the top N (0: off)."),
    verify_top: int = typer.Option(0, "--verify-top", min=0, help="--task retrieval: re-rank the first N by local verification (0: off)."),
) -> None:
    """GAP (with a bootstrap 95% interval) of global kNN alone and of the full pipeline on labelled queries;
    with --task retrieval, mAP@100 of the retrieval ranking."""

    def body():
        from eval import evaluate as evaluate_mod

        check_name(task, ("recognition", "retrieval"), "--task")
        if task == "retrieval":
            if engine != "local" or k is not None or candidates is not None or refs is not None:
                raise CliError("--engine, --k, --candidates and --refs-per-candidate apply to --task recognition")
            from eval import retrieve

            report = retrieve.evaluate(index, queries, images, out, solution_csv=solution, qe=qe, verify_top=verify_top,
                                       inlier_threshold=threshold, device=device, num_workers=workers)
            typer.echo(f"retrieval: mAP@100 {report['map_at_100']:.4f} over {report['n_queries_scored']} queries "
                       f"({report['n_queries_left_out']} without relevant index images left out); report: {out / 'report.json'}")
            if report["n_unreadable_queries"]:
                typer.secho(f"{report['n_unreadable_queries']} query images could not be read (AP 0)", err=True, fg=typer.colors.YELLOW)
                raise typer.Exit(code=1)
            return
        if solution is not None or qe or verify_top:
            raise CliError("--solution, --qe and --verify-top apply to --task retrieval")

        ray_options = _ray_options(engine, ray_address, gpus_per_worker, ray_workers)
        report = evaluate_mod.main(index, queries, images, out, device=device, n_boot=n_boot,
                                   overrides=_overrides(k, candidates, refs, threshold, cascade, cascade_pairs), num_workers=workers,
                                   engine=engine, ray_options=ray_options)
        _print_report(report)
        typer.echo(f"report: {out / 'report.json'}")
        if report["n_unreadable_queries"]:
            typer.secho(f"{report['n_unreadable_queries']} query images could not be read (counted as no answer)",
                        err=True, fg=typer.colors.YELLOW)
            raise typer.Exit(code=1)

    _guard(body, max_pixels)


@app.command("tune-threshold")
def tune_threshold(
    index: Path = typer.Option(..., "--index", help="Index directory (the chosen threshold is written into its manifest)."),
    queries: Path = typer.Option(..., "--queries", help="Labelled queries (as for evaluate)."),
    out: Path = typer.Option(..., "--out", help="Report folder; evidence.jsonl there from evaluate is reused."),
    images: Optional[Path] = typer.Option(None, "--images", help="Query images (only needed when no evidence is stored)."),
    evidence: Optional[Path] = typer.Option(None, "--evidence", help="Evidence file from evaluate (default OUT/evidence.jsonl)."),
    folds: int = typer.Option(5, "--folds", min=2, help="Cross-validation folds."),
    strict: bool = typer.Option(False, "--strict", help="Tune for strict answers (unverified = no landmark) instead of a submission with guesses."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Report only; do not write the manifest."),
    param: str = typer.Option("inlier_threshold", "--param", help="Decision parameter to tune: inlier_threshold, cascade_threshold (the cascade's second matcher), vote_weight (share of similarity vs inliers in a verified confidence) or min_margin (best candidate's score over the runner-up's)."),
    confidence: str = typer.Option("auto", "--confidence", help="auto: also fit a confidence model (logistic, monotone in the evidence) and store it when its cross-validated GAP (folds grouped by landmark) beats the confidence bands'; fitted: store it regardless; bands: use the bands (a stored model is removed)."),
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """Choose the inlier threshold (or --param) that maximises GAP, with a cross-validated estimate, and store it in the index."""

    def body():
        from eval import evaluate as evaluate_mod

        res = evaluate_mod.tune(index, queries, images, out, evidence_path=evidence, n_folds=folds,
                                mode="strict" if strict else "submission", write=not dry_run, device=device, param=param,
                                confidence=confidence)
        typer.echo(
            f"{param.replace('_', ' ')} {res['previous']} -> {res['chosen']:g}: in-sample GAP "
            f"{res['in_sample_gap']:.3f}, cross-validated GAP {res['cv_gap']:.3f} +- {res['cv_gap_std']:.3f} "
            f"({len(res['folds'])} folds grouped by landmark, {res['n_values']} values)"
        )
        tf = res["tuned_for"]
        typer.echo(f"decided as the evidence was made: --cascade {tf['cascade']} --cascade-pairs {tf['cascade_pairs']} "
                   "(recognize with the same for this value to hold)"
                   + (f"; values above {res['limit']:g} not scored (the first matcher resolved queries there)"
                      if res.get("limit") is not None else ""))
        fc = res.get("confidence")
        if fc:
            typer.echo(f"confidence: fitted model cross-validated GAP {fc['cv_gap_fitted']:.3f} vs bands {fc['cv_gap_bands']:.3f} "
                       f"({fc['n_folds']} folds): {'fitted model used' if fc['used'] else 'bands kept'}")
        typer.echo(("written to " + str(index / "manifest.json")) if res["written_to_manifest"] else "manifest unchanged (--dry-run)")
        typer.echo(f"plot: {res['plot']}")

    _guard(body)


# ----------------------------------------------------------------------------- compact


@app.command("compact")
def compact(
    index: Path = typer.Option(..., "--index", help="Index directory to compact (also upgrades an index of the old format)."),
    wait: float = typer.Option(0.0, "--wait", min=0, help="Seconds to wait for another writer (build-index, ...) to finish."),
) -> None:
    """Merge the index's segments into one file (crash-safe; queries keep working meanwhile)."""

    def body():
        from index.writer import IndexWriter

        with IndexWriter.open_for_write(index, lock_timeout=wait) as db:
            stats = db.compact()
        typer.echo(f"index {index}: {stats['segments_before']} segments -> {stats['segments_after']}, "
                   f"{stats['rows']} images, {stats['seconds']:.1f} s")

    _guard(body)


# ----------------------------------------------------------------------------- confs


@app.command("confs")
def confs() -> None:
    """List the named global and local configurations."""
    from retrieval.global_model import global_confs

    mark = lambda name, default: " (default)" if name == default else ""  # noqa: E731
    typer.echo("global configurations (--conf):")
    for name, c in global_confs.items():
        typer.echo(f"  {name + mark(name, DEFAULT_GLOBAL):26s} {json.dumps(c)}")
    typer.echo("local configurations (--local-conf; each verified with its matcher):")
    typer.echo(f"  {'none':26s} no stored local features (extracted on demand when verifying)")
    for name, entry in local_registry.items():
        typer.echo(f"  {name + mark(name, DEFAULT_LOCAL):26s} {json.dumps(entry.extractor, default=str)} "
                   f"matcher {entry.matcher}")
    typer.echo("several local sets (--local-conf A+B: A stored as above, B beside it; A verifies first):")
    for name, local_set in local_conf_sets.items():
        typer.echo(f"  {name + mark(name, DEFAULT_LOCAL):26s} {local_set.help}")
    typer.echo("recognition defaults (override with --k, --candidates, --refs-per-candidate, --inlier-threshold, "
               "--cascade, --cascade-pairs):")
    typer.echo(f"  {'all':26s} {json.dumps(DEFAULT_RECOGNITION_CONF)}")
    for name, entry in local_registry.items():
        if entry.decision:
            typer.echo(f"  {'with ' + name:26s} {json.dumps(entry.decision)}")
    for name, entry in local_registry.items():
        if entry.as_second:
            typer.echo(f"  {name + ' as second matcher':26s} {json.dumps(entry.as_second)}")


# ----------------------------------------------------------------------------- serve


@app.command("serve")
def serve(
    index: Path = typer.Option(..., "--index", help="Index directory built by build-index (opened read-only)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: this machine only; see the README before exposing it)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    workers: int = typer.Option(4, "--workers", min=1, help="Recognition threads (one process: the model and index are loaded once)."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", min=0.1, help="Largest request body (all images of a request)."),
    timeout: float = typer.Option(60.0, "--timeout", min=1, help="Seconds before a request is answered 504."),
    max_pixels: int = typer.Option(40_000_000, "--max-pixels", min=1, help="Pixel budget of an upload: larger images are answered 413 from their header, before decoding."),
    answer_cache_mb: float = typer.Option(64.0, "--answer-cache-mb", min=1, help="Memory for recent answers (their match pictures and /results), in MB."),
    operator_token: Optional[str] = typer.Option(None, "--operator-token", help="Bearer token for POST /reload (else $LANDMARKS_OPERATOR_TOKEN). Without one, /reload is refused unless --host is localhost."),
    k: Optional[int] = _NEIGHBOURS, candidates: Optional[int] = _CANDIDATES, refs: Optional[int] = _REFS_PER_CANDIDATE,
    threshold: Optional[int] = _INLIER_THRESHOLD, cascade: Optional[str] = _CASCADE,
    cascade_pairs: Optional[int] = _CASCADE_PAIRS,
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """HTTP service and web page: recognise uploaded photos with the index and models loaded once."""

    def body():
        from service.app import Limits, serve as serve_app

        limits = Limits(workers=workers, max_upload_mb=max_upload_mb, request_timeout_s=timeout, max_pixels=max_pixels,
                        answer_cache_mb=answer_cache_mb)
        serve_app(index, host=host, port=port, limits=limits, device=device,
                  overrides=_overrides(k, candidates, refs, threshold, cascade, cascade_pairs), operator_token=operator_token)

    _guard(body)


# ----------------------------------------------------------------------------- demo


@app.command("demo")
def demo(
    work_dir: Path = typer.Option(Path("landmarks-demo"), "--work-dir", help="Folder for the index, the report and (with --synthetic) the generated photos."),
    synthetic: bool = typer.Option(False, "--synthetic", help="Generate synthetic landmark photos instead of using the shipped real ones."),
    n_landmarks: int = typer.Option(24, "--landmarks", min=2, help="With --synthetic: landmarks to generate."),
    seed: int = typer.Option(0, "--seed", help="With --synthetic: generator seed."),
    conf: Optional[str] = typer.Option(None, "--conf", help=f"Global configuration (default: the demo index's, else {DEFAULT_GLOBAL})."),
    local_conf: Optional[str] = typer.Option(None, "--local-conf", help=f"Local features for verification (default: the demo index's, else {DEFAULT_LOCAL})."),
    device: Optional[str] = typer.Option(None, "--device"),
    serve_after: bool = typer.Option(False, "--serve", help="Then serve the demo index at http://127.0.0.1:PORT/ (an existing demo index is served at once)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port for --serve."),
) -> None:
    """Build an index of the shipped real photos (37 photos of 7 landmarks), recognise the queries, print GAP and
    the tuned threshold, draw a match picture. Offline; about a minute on 2 CPU cores."""

    def body():
        from eval import demo as demo_mod

        from index.reader import IndexReader

        index = work_dir / "index"
        if not (serve_after and IndexReader.exists(index)):
            summary = demo_mod.main(work_dir, synthetic=synthetic, n_landmarks=n_landmarks, seed=seed, conf=conf,
                                    local_conf=local_conf, device=device)
            typer.echo(demo_mod.format_summary(summary))
        if serve_after:
            from service.app import serve as serve_app

            typer.echo(f"serving the demo index at http://127.0.0.1:{port}/ (try a photo from "
                       f"{demo_mod.DEMO_PHOTOS / 'images' if not synthetic else work_dir / 'data' / 'images'}); Ctrl-C stops")
            serve_app(index, port=port, device=device)

    _guard(body)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
