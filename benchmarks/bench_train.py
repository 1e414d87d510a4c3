"""Stage-2 training speed at LLP scale: our in-memory loop against a naive per-sample DataLoader loop.

Random features with LLP's shapes (10,000 training videos, 10 segments, VGGish 128-d, ResNet-152
in the official (80, 2048) per-video layout averaged to (10, 2048) at load, R(2+1)D 512-d), random
weak labels and pseudo-labels, 649 validation videos. Both loops train the same HAN with the same
UWAV loss (soft labels, re-weighting, mixup), optimizer, schedule and clipping:

- ours: `uwav.training.han_train.train_han` (features moved to the device once, batches by
  indexing a seeded permutation); `epoch_s` is the training pass of its last epoch (validation
  and checkpointing are reported separately);
- naive: a `torch.utils.data.Dataset` returning one video per `__getitem__`, default collate,
  batch 64, `num_workers=0`, batches moved to the device each step; timed over `--naive-batches`
  batches after two warm-up batches and extrapolated to an epoch. It is measured once before and
  once after our epoch and averaged, so a change of machine load during the run affects both sides.

Also measured: `math_epoch_s`, the model math alone (one pre-built batch on the device,
repeated for the same number of steps), which bounds what any data path can reach.

    .venv/bin/python benchmarks/bench_train.py [--device cuda] [--videos 10000]

The last output line is a JSON object with `epoch_s`, `naive_epoch_s`, `speedup`, `peak_rss_gb`, `device`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from uwav.catalog import HanSettings, TrainSettings
from uwav.models.han import HAN
from uwav.training.data import HanFeatures, HanTrainData, LabelledSplit, average_frames
from uwav.training.han_train import class_balance_for, han_model_config, train_han
from uwav.devices import resolve_device
from uwav.training.loops import TrainingRun
from uwav.training.losses import UWAVLoss

N_CLASSES, FRAMES = 25, 8
AUDIO_DIM, VISUAL2D_DIM, VISUAL3D_DIM = 128, 2048, 512
CHUNK = 500  # videos generated at a time in the official (80, 2048) layout, so 6.5 GB never exist at once


def synthetic_split(n: int, t: int, seed: int) -> tuple[HanFeatures, np.ndarray]:
    """Random features and weak labels; ResNet-152 features go through the official layout and `average_frames`."""
    generator = torch.Generator().manual_seed(seed)
    visual2d = torch.empty(n, t, VISUAL2D_DIM)
    for start in range(0, n, CHUNK):
        count = min(CHUNK, n - start)
        official = torch.randn(count, t * FRAMES, VISUAL2D_DIM, generator=generator)  # per video (80, 2048)
        visual2d[start : start + count] = average_frames(official.view(count, t, FRAMES, VISUAL2D_DIM))
        del official
    audio = torch.randn(n, t, AUDIO_DIM, generator=generator)
    visual3d = torch.randn(n, t, VISUAL3D_DIM, generator=generator)
    labels = (torch.rand(n, N_CLASSES, generator=generator) < 0.06).numpy()
    labels[np.arange(n), torch.randint(0, N_CLASSES, (n,), generator=generator).numpy()] = True  # >= 1 class per video
    return HanFeatures.from_arrays(audio, visual2d, visual3d), labels


def build_data(n_videos: int, n_val: int, t: int) -> HanTrainData:
    train, video_labels = synthetic_split(n_videos, t, seed=0)
    rng = np.random.default_rng(1)
    soft = (rng.random((n_videos, t, 2, N_CLASSES), dtype=np.float32) * video_labels[:, None, None, :]).astype(np.float32)
    binary = (soft > 0.5).astype(np.float32)
    val, val_labels = synthetic_split(n_val, t, seed=2)
    gt_audio = val_labels[:, :, None] & (rng.random((n_val, N_CLASSES, t)) < 0.5)
    gt_visual = val_labels[:, :, None] & (rng.random((n_val, N_CLASSES, t)) < 0.5)
    return HanTrainData.from_arrays(train, video_labels, soft, binary, LabelledSplit.from_arrays(val, gt_audio, gt_visual))


class PerVideoDataset(Dataset):
    """The naive path: one video per item, collated by the default collate function."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self.n = next(iter(tensors.values())).shape[0]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: tensor[index] for name, tensor in self.tensors.items()}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def naive_and_math_epoch_s(data: HanTrainData, settings: TrainSettings, device: torch.device, n_batches: int) -> tuple[float, float, int]:
    """(naive epoch seconds, model-math-only epoch seconds, batches per epoch), both extrapolated from `n_batches` steps."""
    torch.manual_seed(settings.seed)
    model = HAN(**han_model_config(settings, data.n_classes, data.train.widths)).to(device).train()
    audio_weights, visual_weights = class_balance_for(data, settings)
    criterion = UWAVLoss.from_settings(settings, audio_weights, visual_weights).to(device)
    tensors = {**data.train.tensors(), "video_labels": data.video_labels, "soft_labels": data.soft_labels}
    loader = DataLoader(
        PerVideoDataset(tensors), batch_size=settings.batch_size, shuffle=True, num_workers=0, generator=torch.Generator().manual_seed(0)
    )
    with tempfile.TemporaryDirectory() as scratch:
        run = TrainingRun(
            model=model, identity={}, settings=settings, steps_per_epoch=len(loader), run_dir=Path(scratch),
            generators={}, resume=False, keep_epoch_checkpoints=1,
        )  # fmt: skip
        mixup = torch.Generator().manual_seed(2)

        def step(batch: dict[str, torch.Tensor]) -> None:
            output = model(batch["audio"], batch["visual2d"], batch["visual3d"])
            terms = criterion(output, batch["video_labels"], batch["soft_labels"], classify=model.classify, generator=mixup)
            run.train_step(terms.total)

        batches = iter(loader)
        for _ in range(2):  # warm-up
            step({k: v.to(device) for k, v in next(batches).items()})
        synchronize(device)
        started = time.perf_counter()
        for _ in range(n_batches):
            step({k: v.to(device) for k, v in next(batches).items()})
        synchronize(device)
        naive = (time.perf_counter() - started) / n_batches * len(loader)

        fixed = {k: v.to(device) for k, v in next(batches).items()}
        synchronize(device)
        started = time.perf_counter()
        for _ in range(n_batches):
            step(fixed)
        synchronize(device)
        math_only = (time.perf_counter() - started) / n_batches * len(loader)
    return naive, math_only, len(loader)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--val-videos", type=int, default=649)
    parser.add_argument("--segments", type=int, default=10)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--epochs", type=int, default=2, help="epochs of our loop; the last one is reported")
    parser.add_argument("--naive-batches", type=int, default=20, help="timed batches of the naive loop (extrapolated)")
    parser.add_argument("--feature-dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    started = time.perf_counter()
    data = build_data(args.videos, args.val_videos, args.segments)
    build_s = time.perf_counter() - started
    settings = TrainSettings(han=HanSettings(), epochs=args.epochs, warmup_epochs=1, device=device.type)
    print(f"data: {args.videos} videos x {args.segments} segments built in {build_s:.1f} s; device {device}", flush=True)

    naive_before_s, math_before_s, steps = naive_and_math_epoch_s(data, settings, device, args.naive_batches)
    print(f"naive (before): {naive_before_s:.3f} s per epoch; model math alone {math_before_s:.3f} s", flush=True)

    epoch_ends: list[float] = []
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        result = train_han(
            data, settings, Path(run_dir), progress=False, keep_epoch_checkpoints=1,
            feature_dtype=getattr(torch, args.feature_dtype), callback=lambda record: epoch_ends.append(time.perf_counter()),
        )  # fmt: skip
    last = result.history[-1]
    epoch_total_s = epoch_ends[-1] - (epoch_ends[-2] if len(epoch_ends) > 1 else started)
    print(f"ours: train pass {last['train_s']:.3f} s, validation {last['val_s']:.3f} s, with checkpoints {epoch_total_s:.3f} s", flush=True)

    naive_after_s, math_after_s, _ = naive_and_math_epoch_s(data, settings, device, args.naive_batches)
    print(f"naive (after): {naive_after_s:.3f} s per epoch; model math alone {math_after_s:.3f} s", flush=True)
    naive_s, math_s = (naive_before_s + naive_after_s) / 2, (math_before_s + math_after_s) / 2
    print(f"naive: {naive_s:.3f} s per epoch (extrapolated from 2 x {args.naive_batches} of {steps} batches)", flush=True)

    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux
    report = {
        "epoch_s": round(last["train_s"], 4),
        "naive_epoch_s": round(naive_s, 4),
        "speedup": round(naive_s / last["train_s"], 3),
        "math_epoch_s": round(math_s, 4),
        "epoch_with_val_and_checkpoint_s": round(epoch_total_s, 4),
        "val_s": round(last["val_s"], 4),
        "peak_rss_gb": round(peak_rss_gb, 3),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
        "videos": args.videos,
        "steps_per_epoch": steps,
        "feature_dtype": args.feature_dtype,
        "naive_before_after_s": [round(naive_before_s, 4), round(naive_after_s, 4)],
        "naive_extrapolated_from_batches": 2 * args.naive_batches,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
