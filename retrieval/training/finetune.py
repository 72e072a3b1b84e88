"""The fine-tune route of ``landmarks train``: backbone + GeM + a linear neck, trained with sub-center ArcFace.

The recipe of the Google Landmarks 2020/2021 winners (Henkel and Singer; Ha et al.), at the scale of one's own
collection: a timm backbone (its packaged ImageNet weights as the start), GeM, a linear neck to the index's
dimension, and a sub-center ArcFace classifier (``subcenters`` centres per landmark, so a landmark's outlier
photos need not sit near its main views) with dynamic margins: a landmark with few images gets a larger margin,
``m = a n^-1/4 + b`` rescaled to [``margin_min``, ``margin_max``]. The classifier is dropped after training:
recognition stays retrieval over the descriptor (the checkpoint holds backbone, GeM p and neck).

Class-aware sampling (an image is drawn with probability ∝ its landmark's size^-``sampling_power``) gives the
long tail of one-image landmarks its share. Augmentation for landmarks: random resized crop at mild scale,
colour jitter, horizontal flip, never vertical (:func:`~.data.augment`). AdamW, linear warm-up then cosine decay
(the learning rate is a function of the step), gradient accumulation, AMP (float16) and channels-last on a GPU.
BatchNorm statistics stay frozen (batches of a few images per device make poor statistics, and it keeps N
workers equal to one worker with the same global batch).

**Resume.** Every random choice is a function of (seed, epoch, position in the epoch): the sampled order, each
sample's augmentation. ``<out>/state.pt`` (model, head, optimiser, scaler, step), written atomically every
``checkpoint_every`` optimiser steps, is therefore all a resumed run needs to reach the same weights as an
uninterrupted one after ``kill -9`` (same seed and device; tests/test_train.py checks it bit for bit on a CPU).

**Workers.** Rank ``r`` of ``w`` takes positions ``r, r + w, ...`` of each global micro-batch and scales its
loss by ``w``: with gradients averaged over workers (DDP) a step equals one worker's step on the whole batch.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

STATE_NAME = "state.pt"
STATE_FORMAT = "landmarks-train-state/1"

DEFAULT_FINETUNE_CONF: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 16,  # images per micro-batch (global: split over workers)
    "accum_steps": 1,  # micro-batches per optimiser step
    "optimizer": "adamw",  # adamw, or sgd (momentum 0.9, nesterov)
    "lr": 1e-4,  # peak learning rate of the backbone; GeM, neck and head get head_lr_mult times it
    "head_lr_mult": 10.0,
    "weight_decay": 1e-4,
    "warmup_fraction": 0.1,  # share of the optimiser steps with a linear warm-up
    "train_size": None,  # square training crop in pixels; None: the configuration's image_size
    "dim": None,  # neck output (the index's dimension); None: the backbone's width
    "subcenters": 3,  # sub-centres per landmark (sub-center ArcFace, Deng et al. 2020)
    "scale": 30.0,  # ArcFace logit scale s
    "margin_min": 0.05,  # dynamic margins: the largest landmark's margin ...
    "margin_max": 0.5,  # ... and a one-image landmark's
    "sampling_power": 0.5,  # image weight = landmark size ** -power (0: uniform over images, 1: over landmarks)
    "crop_scale": [0.5, 1.0],  # random resized crop: share of the area kept
    "jitter": 0.25,  # colour jitter amplitude
    "checkpoint_every": 50,  # optimiser steps between state.pt writes
    "loader_workers": 0,  # decoding processes (0: in the training process)
    "val_max_db": 2000,  # validation: at most this many images searched
}


# ---------------------------------------------------------------- pure math


def dynamic_margins(counts: np.ndarray, m_min: float, m_max: float) -> np.ndarray:
    """Per-landmark ArcFace margins from landmark sizes: ``n^-1/4`` rescaled to [m_min, m_max] (GLR 2020)."""
    f = np.asarray(counts, np.float64) ** -0.25
    if f.max() - f.min() < 1e-12:
        return np.full(len(f), m_max, np.float32)
    return (m_min + (f - f.min()) / (f.max() - f.min()) * (m_max - m_min)).astype(np.float32)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def epoch_order(labels: np.ndarray, power: float, length: int, seed: int, epoch: int) -> np.ndarray:
    """``length`` image indices drawn (with replacement) with probability ∝ landmark size ** -power."""
    counts = np.bincount(labels)
    w = counts[labels].astype(np.float64) ** -power
    return np.random.default_rng([seed, epoch]).choice(len(labels), size=length, p=w / w.sum())


class SubCenterArcFace(nn.Module):
    """Sub-center ArcFace with per-class margins. forward(emb (B, D), labels (B,)) -> mean cross-entropy."""

    def __init__(self, dim: int, margins: np.ndarray, subcenters: int = 3, scale: float = 30.0):
        super().__init__()
        self.k, self.s = subcenters, scale
        self.weight = nn.Parameter(torch.empty(len(margins) * subcenters, dim))
        nn.init.normal_(self.weight, std=0.01)
        self.register_buffer("margins", torch.as_tensor(margins, dtype=torch.float32))

    def forward(self, emb: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        cos = F.linear(F.normalize(emb.float(), dim=-1), F.normalize(self.weight, dim=-1))
        cos = cos.view(len(emb), -1, self.k).amax(-1)  # the nearest sub-centre of each landmark
        m = self.margins[labels]
        cos_t = cos.gather(1, labels[:, None]).squeeze(1).clamp(-1 + 1e-7, 1 - 1e-7)
        phi = cos_t * torch.cos(m) - torch.sqrt(1 - cos_t ** 2) * torch.sin(m)  # cos(theta + m)
        phi = torch.where(cos_t > torch.cos(math.pi - m), phi, cos_t - torch.sin(math.pi - m) * m)
        logits = cos.scatter(1, labels[:, None], phi[:, None]) * self.s
        return F.cross_entropy(logits, labels, reduction=reduction)


def freeze_batchnorm(module: nn.Module) -> None:
    """BatchNorm layers in eval mode (running statistics kept; their affine weights still train)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


# ---------------------------------------------------------------- data


class TrainSamples(torch.utils.data.Dataset):
    """Sample at a global position of an epoch: decoded, augmented, squared, normalised; None when unreadable."""

    def __init__(self, paths: Sequence[str], labels: np.ndarray, conf: Mapping[str, Any], global_conf: Mapping[str, Any],
                 mean: Sequence[float], std: Sequence[float], seed: int):
        self.paths, self.labels, self.conf, self.gconf, self.seed = list(paths), labels, conf, global_conf, seed
        self.size = int(conf["train_size"] or global_conf["image_size"])
        self.mean = np.asarray(mean, np.float32) * 255.0
        self.std = np.asarray(std, np.float32) * 255.0
        self.order: np.ndarray = np.zeros(0, int)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, pos: int):
        import cv2

        from retrieval.extract import decode_item

        from .data import augment

        i = int(self.order[pos])
        item = decode_item(self.paths[i], int(self.gconf["image_size"]), self.gconf["resize"], None)
        if item.error:
            return (i, item.error)
        rng = np.random.default_rng([self.seed, self.epoch, pos])
        im = augment(item.global_image, rng, tuple(self.conf["crop_scale"]), float(self.conf["jitter"]))
        im = cv2.resize(im, (self.size, self.size), interpolation=cv2.INTER_AREA).astype(np.float32)
        x = torch.from_numpy(((im - self.mean) / self.std).transpose(2, 0, 1).copy())
        return x, int(self.labels[i])


def _collate(batch):
    good = [b for b in batch if isinstance(b[0], torch.Tensor)]
    bad = [b for b in batch if not isinstance(b[0], torch.Tensor)]
    if not good:
        return None, None, bad
    return torch.stack([b[0] for b in good]), torch.tensor([b[1] for b in good]), bad


# ---------------------------------------------------------------- the loop


def build_net(base_conf: Mapping[str, Any], dim: int | None):
    """(GlobalDescriptorNet with a linear neck, its (mean, std)) from the base configuration's backbone."""
    import timm

    from retrieval.backbones import create_backbone
    from retrieval.global_model import GlobalDescriptorNet

    backbone = create_backbone(base_conf["model"], weights=base_conf["weights"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = GlobalDescriptorNet(backbone, float(base_conf["gem_p"]), int(dim or backbone.num_features))
    data_conf = timm.data.resolve_model_data_config(backbone)
    return net, (base_conf["mean"] or data_conf["mean"], base_conf["std"] or data_conf["std"])


def train_loop(job: Mapping[str, Any], rank: int = 0, world: int = 1, device: torch.device | None = None,
               report: Callable[[dict], None] | None = None) -> dict[str, Any] | None:
    """Train from ``job`` (paths, labels, conf, base_conf, seed, out, resume, val, key) as rank ``rank`` of ``world``.

    With ``world`` > 1 the gradients are averaged over the torch.distributed group (Ray Train sets it up) before
    each optimiser step. ``report``: called with each epoch's log record. Rank 0 writes ``state.pt`` and returns
    the trained network and history; other ranks return None.
    """
    from tqdm import tqdm

    from index.manifest import atomic_output

    from .data import leave_one_out_figures

    conf, seed, out = job["conf"], int(job["seed"]), Path(job["out"])
    device = device or torch.device("cpu")
    labels = np.asarray(job["labels"], int)
    n_classes = int(labels.max()) + 1
    net, (mean, std) = build_net(job["base_conf"], conf["dim"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = SubCenterArcFace(net.dim, dynamic_margins(np.bincount(labels, minlength=n_classes), conf["margin_min"],
                                                        conf["margin_max"]), int(conf["subcenters"]), float(conf["scale"]))
    model = nn.ModuleDict({"net": net, "head": head}).to(device)
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    new = [p for n, p in model.named_parameters() if not n.startswith("net.backbone.")]
    groups = [{"params": list(net.backbone.parameters()), "lr_mult": 1.0},
              {"params": new, "lr_mult": float(conf["head_lr_mult"])}]
    if conf["optimizer"] == "sgd":
        opt = torch.optim.SGD(groups, lr=float(conf["lr"]), momentum=0.9, nesterov=True,
                              weight_decay=float(conf["weight_decay"]))
    elif conf["optimizer"] == "adamw":
        opt = torch.optim.AdamW(groups, lr=float(conf["lr"]), weight_decay=float(conf["weight_decay"]))
    else:
        raise ValueError(f"optimizer must be adamw or sgd, got {conf['optimizer']!r}")
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    batch, accum = int(conf["batch_size"]), int(conf["accum_steps"])
    steps_per_epoch = max(1, len(labels) // (batch * accum))
    total = steps_per_epoch * int(conf["epochs"])
    warmup = max(1, round(float(conf["warmup_fraction"]) * total))
    step, history = 0, []
    state_path = out / STATE_NAME
    if job["resume"] and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("format") != STATE_FORMAT or state.get("job_key") != job["key"]:
            raise ValueError(f"{state_path} was written by another training run (other data, configuration or seed): "
                             "rerun without --resume, or use another --out")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        step, history = int(state["step"]), list(state["history"])
        logger.info("resumed from %s at step %d of %d", state_path, step, total)
    elif job["resume"]:
        logger.info("--resume: no %s yet, starting from the beginning", state_path)
    samples = TrainSamples(job["paths"], labels, conf, job["base_conf"], mean, std, seed)
    val_x = job.get("val")

    def save_state() -> None:
        if rank != 0:
            return
        with atomic_output(state_path) as tmp:
            torch.save({"format": STATE_FORMAT, "job_key": job["key"], "step": step, "history": history,
                        "model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict()}, tmp)

    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=rank != 0 or not job.get("progress", True))
    skipped: dict[int, str] = {}
    while step < total:
        epoch, first = divmod(step, steps_per_epoch)
        samples.epoch = epoch
        samples.order = epoch_order(labels, float(conf["sampling_power"]), steps_per_epoch * batch * accum, seed, epoch)
        mine = [[p for p in range(b * batch, (b + 1) * batch) if (p - b * batch) % world == rank]
                for b in range(first * accum, steps_per_epoch * accum)]
        loader = torch.utils.data.DataLoader(samples, batch_sampler=mine, collate_fn=_collate,
                                             num_workers=int(conf["loader_workers"]))
        model.train()
        freeze_batchnorm(model)
        losses, t0, seen = [], time.perf_counter(), 0
        for micro, (x, y, bad) in enumerate(loader):
            for i, reason in bad:
                if i not in skipped:
                    skipped[i] = reason
                    logger.warning("skipped %s: %s", job["paths"][i], reason)
            if x is not None:
                x, y = x.to(device), y.to(device)
                if cuda:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
                    emb = net(x)
                    loss = head(emb, y, reduction="sum") * world / batch / accum
                scaler.scale(loss).backward()
                losses.append(loss.item() * accum * batch / max(1, len(y) * world))  # this rank's mean per image
                seen += len(y)
            if (micro + 1) % accum:
                continue
            if world > 1:
                _allreduce_grads(model, world)
            for g in opt.param_groups:
                g["lr"] = float(conf["lr"]) * g["lr_mult"] * lr_factor(step, total, warmup)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            if step % int(conf["checkpoint_every"]) == 0 or step == total:
                save_state()
            if step % steps_per_epoch == 0:
                break
        record = {"epoch": epoch + 1, "step": step, "loss": round(float(np.mean(losses)) if losses else float("nan"), 4),
                  "images_per_s": round(seen * world / max(1e-9, time.perf_counter() - t0), 1),
                  "seconds": round(time.perf_counter() - t0, 1)}
        if rank == 0 and val_x is not None and step % steps_per_epoch == 0:
            x_db = describe_images(net, val_x["images"], mean, std, device)
            record["val"] = leave_one_out_figures(x_db, val_x["labels"], val_x["query_mask"])
        if step % steps_per_epoch == 0:
            history.append(record)
            logger.info("epoch %d/%d: loss %.4f, %s, %.1f images/s, %.1f s", epoch + 1, int(conf["epochs"]), record["loss"],
                        f"val 1-NN R@1 {record['val']['r1']:.3f} GAP {record['val']['gap']:.3f}" if "val" in record
                        else "no validation", record["images_per_s"], record["seconds"])
            if report:
                report(record)
            if rank == 0 and step < total:
                save_state()
    bar.close()
    if rank != 0:
        return None
    return {"net": net, "history": history, "skipped": skipped, "mean": mean, "std": std}


def _allreduce_grads(model: nn.Module, world: int) -> None:
    """Average gradients over workers (torch.distributed; used when the model is not DDP-wrapped)."""
    import torch.distributed as dist

    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


@torch.inference_mode()
def describe_images(net, images: Sequence[np.ndarray], mean, std, device) -> np.ndarray:
    """Descriptors of decoded images (aspect kept, one at a time), the network in eval mode."""
    was = net.training
    net.eval()
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255.0
    out = []
    for im in images:
        x = torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].float().to(device)
        out.append(net((x - m) / s).float().cpu().numpy())
    net.train(was)
    return np.concatenate(out) if out else np.zeros((0, net.dim), np.float32)


def job_key(paths: Sequence[str], labels: Sequence[int], conf: Mapping[str, Any], base_conf: Mapping[str, Any],
            seed: int) -> str:
    """What a state.pt must have been written by to be resumed: data, labels, configuration and seed."""
    import hashlib
    import json

    h = hashlib.sha256(json.dumps([list(map(str, paths)), list(map(int, labels)), dict(conf), dict(base_conf), seed],
                                  sort_keys=True, default=str).encode())
    return h.hexdigest()


def train_finetune(rows, base_conf: Mapping[str, Any], conf: Mapping[str, Any], out: Path, device: str | None = None,
                   seed: int = 0, val_fraction: float = 0.2, resume: bool = False, engine: str = "local",
                   ray_options: Any = None, progress: bool = True) -> dict[str, Any]:
    """Fine-tune on labelled ``rows`` (id, landmark_id, path); the pieces of the checkpoint and the figures.

    Unreadable images are found from their headers first (:func:`retrieval.image_io.probe_image`), reported and
    left out; one that fails later while decoding is reported and skipped. Landmarks of a split held out by
    landmark (``val_fraction``) are not trained on: each epoch logs their 1-NN retrieval among all images.
    """
    from retrieval.backbones import select_device
    from retrieval.image_io import ImageError, probe_image

    from .data import decode_rows, split_by_landmark

    if base_conf.get("checkpoint") or base_conf.get("proj_dim"):
        raise ValueError("--route finetune starts from a backbone without a neck (proj_dim None, no trained checkpoint)")
    skipped, keep = [], []
    for i, (image_id, path) in enumerate(zip(rows["id"], rows["path"])):
        try:
            probe_image(path)
            keep.append(i)
        except ImageError as exc:
            logger.warning("skipped %s (%s): %s", image_id, path, exc)
            skipped.append((str(image_id), str(path), str(exc)))
    rows = rows.iloc[keep].reset_index(drop=True)
    if rows.empty:
        raise ValueError("no training image could be read (see the warnings above)")
    val = split_by_landmark(rows["landmark_id"].to_numpy(object), val_fraction, seed)
    train_rows = rows[~val].reset_index(drop=True)
    classes = sorted(train_rows["landmark_id"].unique())
    labels = train_rows["landmark_id"].map({c: k for k, c in enumerate(classes)}).to_numpy(int)
    val_job = None
    if val.any():
        # validation: every held-out image against them and up to val_max_db training images, clean, as in inference
        rng = np.random.default_rng(seed)
        n_db = min(int(conf["val_max_db"]) - int(val.sum()), len(train_rows))
        db = rows[~val].iloc[np.sort(rng.choice(len(train_rows), max(0, n_db), replace=False))]
        vrows = rows[val]
        decoded = decode_rows(__import__("pandas").concat([vrows, db], ignore_index=True), base_conf, False)
        skipped += decoded.skipped
        lab = decoded.rows["landmark_id"].to_numpy(object)
        val_job = {"images": decoded.images, "labels": lab,
                   "query_mask": decoded.rows["id"].isin(set(vrows["id"])).to_numpy()}
    paths = train_rows["path"].astype(str).tolist()
    job = {"paths": paths, "labels": labels, "conf": dict(conf), "base_conf": dict(base_conf), "seed": seed,
           "out": str(out), "resume": resume, "val": val_job, "progress": progress,
           "key": job_key(paths, labels, conf, base_conf, seed)}
    logger.info("fine-tune: %d images of %d landmarks (%d held out for validation, %d landmarks)", len(paths),
                len(classes), int(val.sum()), len(set(rows["landmark_id"][val])))
    if engine == "ray":
        from .ray_train import train_on_ray

        result = train_on_ray(job, ray_options)
    else:
        dev = select_device(device)
        result = train_loop(job, device=dev)
    net = result["net"]
    for i, reason in result["skipped"].items():
        skipped.append((str(train_rows["id"][i]), paths[i], reason))
    bad_ids = {s[0] for s in skipped}
    head = {"pool.p": net.pool.p.detach().cpu(), "proj.weight": net.proj.weight.detach().cpu(),
            "proj.bias": net.proj.bias.detach().cpu()}
    history = result["history"]
    figures = {"epochs": history, "images": len(paths), "landmarks": len(classes)}
    if history and "val" in history[-1]:
        figures["val_after"] = history[-1]["val"]
    if val_job is not None:
        # before: the frozen backbone + GeM (no neck), on the same validation images
        base_net, (mean, std) = build_net(base_conf, None)
        base_net.proj = None
        base_net.dim = base_net.backbone.num_features
        x0 = describe_images(base_net, val_job["images"], mean, std, torch.device("cpu"))
        from .data import leave_one_out_figures

        figures["val_before"] = leave_one_out_figures(x0, val_job["labels"], val_job["query_mask"])
    return {
        "backbone": net.backbone.state_dict(), "head": head, "neck": {"kind": "linear", "input_norm": False},
        "global_conf": {**base_conf, "proj_dim": int(net.dim)}, "figures": figures, "skipped": skipped,
        "rows": train_rows[~train_rows["id"].isin(bad_ids)],
    }
