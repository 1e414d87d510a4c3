"""Stage-2 training speed at LLP scale: our in-memory loop against naive per-sample DataLoader loops.

Random features with LLP's shapes (10,000 training videos, 10 segments, VGGish 128-d, ResNet-152
in the official (80, 2048) per-video layout, R(2+1)D 512-d), random weak labels and pseudo-labels,
649 validation videos. Every loop trains the same HAN function with the same UWAV loss (soft
labels, re-weighting, mixup), optimizer, schedule and clipping:

- ours: `uwav.training.han_train.train_han` (features moved to the device once, ResNet frames
  averaged at load, batches by indexing a seeded permutation), once per `--runs` entry (a
  precision, `-compiled` for `compile: true`); `epoch_s` is the training pass of the last epoch
  of the first run (validation and checkpointing are reported separately; a compiled run's first
  epoch includes the compilation);
- naive, reference style (`naive_epoch_s`): what the reference training loops do. The features
  are per-video `.npy` files in the official layout (audio (10, 128), res152 (80, 2048),
  r2plus1d (10, 512)), a `torch.utils.data.Dataset` loads one video's three files per
  `__getitem__`, default collate, batch 64, `num_workers=0`, batches moved to the device each
  step, and the model applies `fc_v` to all 8 frames of a segment before averaging them (the
  reference's order: the same function, 8x the `fc_v` work), float32;
- naive, in memory (`naive_in_memory_epoch_s`): the same Dataset/collate loop over tensors already
  in memory (frames averaged), float32: the data-path cost alone.
Each naive loop is timed over `--naive-batches` batches after two warm-up batches and
extrapolated to an epoch, once before and once after our epochs (averaged), so a change of
machine load during the run affects every side.

Also measured: `math_epoch_s`, our model math alone at each precision (one pre-built batch on the
device, repeated for an epoch's number of steps), which bounds what any data path can reach.

    .venv/bin/python benchmarks/bench_train.py [--device cuda] [--videos 10000] [--runs fp32 bf16 bf16-compiled]

The last output line is a JSON object with `epoch_s`, `naive_epoch_s`, `speedup`, `peak_rss_gb`, `device`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from uwav.catalog import HanSettings, TrainSettings
from uwav.devices import autocast, resolve_device
from uwav.models.han import HAN
from uwav.training.data import HanFeatures, HanTrainData, LabelledSplit, average_frames
from uwav.training.han_train import class_balance_for, train_han
from uwav.training.loops import TrainingRun
from uwav.training.losses import UWAVLoss

N_CLASSES, FRAMES = 25, 8
AUDIO_DIM, VISUAL2D_DIM, VISUAL3D_DIM = 128, 2048, 512
CHUNK = 500  # videos generated at a time in the official (80, 2048) layout, so 6.5 GB never exist at once
OFFICIAL_FOLDERS = ("vggish", "res152", "r2plus1d_18")  # the official LLP feature folders, one .npy per video


def synthetic_split(n: int, t: int, seed: int, official_dir: Path | None = None) -> tuple[HanFeatures, np.ndarray]:
    """Random features and weak labels; ResNet-152 features go through the official layout and `average_frames`.

    With `official_dir`, every video is also written there as the official per-video files.
    """
    generator = torch.Generator().manual_seed(seed)
    audio = torch.randn(n, t, AUDIO_DIM, generator=generator)
    visual3d = torch.randn(n, t, VISUAL3D_DIM, generator=generator)
    visual2d = torch.empty(n, t, VISUAL2D_DIM)
    if official_dir is not None:
        for folder in OFFICIAL_FOLDERS:
            (official_dir / folder).mkdir(parents=True, exist_ok=True)
    for start in range(0, n, CHUNK):
        count = min(CHUNK, n - start)
        official = torch.randn(count, t * FRAMES, VISUAL2D_DIM, generator=generator)  # per video (80, 2048)
        visual2d[start : start + count] = average_frames(official.view(count, t, FRAMES, VISUAL2D_DIM))
        if official_dir is not None:
            for offset in range(count):
                video = start + offset
                for folder, array in zip(OFFICIAL_FOLDERS, (audio[video], official[offset], visual3d[video])):
                    np.save(official_dir / folder / f"{video:05d}.npy", array.numpy())
        del official
    labels = (torch.rand(n, N_CLASSES, generator=generator) < 0.06).numpy()
    labels[np.arange(n), torch.randint(0, N_CLASSES, (n,), generator=generator).numpy()] = True  # >= 1 class per video
    return HanFeatures.from_arrays(audio, visual2d, visual3d), labels


def build_data(n_videos: int, n_val: int, t: int, official_dir: Path | None) -> HanTrainData:
    train, video_labels = synthetic_split(n_videos, t, seed=0, official_dir=official_dir)
    rng = np.random.default_rng(1)
    soft = (rng.random((n_videos, t, 2, N_CLASSES), dtype=np.float32) * video_labels[:, None, None, :]).astype(np.float32)
    binary = (soft > 0.5).astype(np.float32)
    val, val_labels = synthetic_split(n_val, t, seed=2)
    gt_audio = val_labels[:, None, :] & (rng.random((n_val, t, N_CLASSES)) < 0.5)
    gt_visual = val_labels[:, None, :] & (rng.random((n_val, t, N_CLASSES)) < 0.5)
    return HanTrainData.from_arrays(train, video_labels, soft, binary, LabelledSplit.from_arrays(val, gt_audio, gt_visual))


class ReferenceOrderHAN(HAN):
    """The same function in the reference's order: `fc_v` on every frame, then the frame mean
    (AVVP-ECCV20 `net_audiovisual.py`: `fc_v` on the (B, 80, 2048) sequence, then `avg_pool2d` over 8)."""

    def project_visual2d(self, visual2d: Tensor) -> Tensor:
        return self.fc_v(visual2d).mean(dim=2)


class InMemoryPerVideo(Dataset):
    """One video per item from tensors already in memory, collated by the default collate function."""

    def __init__(self, tensors: dict[str, Tensor]) -> None:
        self.tensors = tensors
        self.n = next(iter(tensors.values())).shape[0]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {name: tensor[index] for name, tensor in self.tensors.items()}


class OfficialFilesPerVideo(Dataset):
    """The reference's dataset: one video's three official `.npy` files read per item; labels from memory."""

    def __init__(self, official_dir: Path, labels: dict[str, Tensor]) -> None:
        self.official_dir = official_dir
        self.labels = labels
        self.n = next(iter(labels.values())).shape[0]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        audio, frames, visual3d = (np.load(self.official_dir / folder / f"{index:05d}.npy") for folder in OFFICIAL_FOLDERS)
        segments = audio.shape[0]
        return {
            "audio": torch.from_numpy(audio),
            "visual2d": torch.from_numpy(frames).view(segments, FRAMES, VISUAL2D_DIM),
            "visual3d": torch.from_numpy(visual3d),
            **{name: tensor[index] for name, tensor in self.labels.items()},
        }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def training_step(
    model: HAN, data: HanTrainData, settings: TrainSettings, device: torch.device, steps_per_epoch: int
) -> Iterator[Callable[[dict[str, Tensor]], None]]:
    """One UWAV training step (forward, loss, AdamW with the schedule and clipping) on a batch already on the device.

    The naive loops pass float32, uncompiled settings."""
    torch.manual_seed(settings.seed)
    model = model.to(device).train()
    audio_weights, visual_weights = class_balance_for(data, settings)
    criterion = UWAVLoss.from_settings(settings, audio_weights, visual_weights).to(device)
    mixup = torch.Generator().manual_seed(2)
    with tempfile.TemporaryDirectory() as scratch:
        run = TrainingRun(
            model=model, identity={}, settings=settings, steps_per_epoch=steps_per_epoch, run_dir=Path(scratch),
            generators={}, resume=False, keep_epoch_checkpoints=1,
        )  # fmt: skip

        forward = torch.compile(model) if settings.compile else model  # as train_han does

        def step(batch: dict[str, Tensor]) -> None:
            with autocast(device, settings.precision):
                output = forward(batch["audio"], batch["visual2d"], batch["visual3d"])
                terms = criterion(output, batch["video_labels"], batch["soft_labels"], classify=model.classify, generator=mixup)
            run.train_step(terms.total)

        yield step


def timed_epoch_s(step: Callable[[dict[str, Tensor]], None], batches: Iterator[dict[str, Tensor]], device: torch.device, n_batches: int, steps: int) -> float:
    """Seconds per epoch extrapolated from `n_batches` steps over `batches` (moved to the device each step), after 2 warm-up steps."""
    for _ in range(2):
        step({k: v.to(device) for k, v in next(batches).items()})
    synchronize(device)
    started = time.perf_counter()
    for _ in range(n_batches):
        step({k: v.to(device) for k, v in next(batches).items()})
    synchronize(device)
    return (time.perf_counter() - started) / n_batches * steps


def repeated(batch: dict[str, Tensor]) -> Iterator[dict[str, Tensor]]:
    while True:
        yield batch


def naive_epoch_s(
    data: HanTrainData, settings: TrainSettings, device: torch.device, n_batches: int, official_dir: Path | None
) -> dict[str, float]:
    """Seconds per epoch of the naive loops (module docstring), float32: 'reference' (with `official_dir`) and 'in_memory'."""
    settings = settings.model_copy(update={"precision": "fp32", "compile": False})
    labels = {"video_labels": data.video_labels, "soft_labels": data.soft_labels}
    datasets: dict[str, tuple[Dataset, type[HAN]]] = {"in_memory": (InMemoryPerVideo({**data.train.tensors(), **labels}), HAN)}
    if official_dir is not None:
        datasets["reference"] = (OfficialFilesPerVideo(official_dir, labels), ReferenceOrderHAN)
    found = {}
    for name, (dataset, model_class) in datasets.items():
        loader = DataLoader(dataset, batch_size=settings.batch_size, shuffle=True, num_workers=0, generator=torch.Generator().manual_seed(0))
        model = model_class.from_settings(settings.han, data.n_classes, *data.train.widths)
        with training_step(model, data, settings, device, len(loader)) as step:
            found[name] = timed_epoch_s(step, iter(loader), device, n_batches, len(loader))
    return found


def math_epoch_s(data: HanTrainData, settings: TrainSettings, device: torch.device, n_batches: int, steps: int) -> float:
    """Our model math alone: one pre-built batch on the device, stepped `n_batches` times, extrapolated to `steps`."""
    tensors = {**data.train.tensors(), "video_labels": data.video_labels, "soft_labels": data.soft_labels}
    batch = {name: tensor[: settings.batch_size].to(device) for name, tensor in tensors.items()}
    model = HAN.from_settings(settings.han, data.n_classes, *data.train.widths)
    with training_step(model, data, settings, device, steps) as step:
        return timed_epoch_s(step, repeated(batch), device, n_batches, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--val-videos", type=int, default=649)
    parser.add_argument("--segments", type=int, default=10)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--epochs", type=int, default=2, help="epochs of our loop per precision; the last one is reported")
    runs = ["fp32", "bf16", "fp32-compiled", "bf16-compiled"]
    parser.add_argument("--runs", nargs="+", default=["fp32", "bf16"], choices=runs, help="our loop's runs: precision [-compiled]; the first gives epoch_s")
    parser.add_argument("--naive-batches", type=int, default=20, help="timed batches of each naive loop (extrapolated)")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference-style naive loop (and its 6.6 GB of files)")
    parser.add_argument("--official-dir", type=Path, default=None, help="where to write the official-layout files (default: a temporary folder)")
    parser.add_argument("--feature-dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    scratch = Path(tempfile.mkdtemp(prefix="bench_train_"))
    official_dir = None if args.no_reference else (args.official_dir or scratch / "official")
    try:
        started = time.perf_counter()
        data = build_data(args.videos, args.val_videos, args.segments, official_dir)
        build_s = time.perf_counter() - started
        files = f", official files in {official_dir}" if official_dir else ""
        print(f"data: {args.videos} videos x {args.segments} segments built in {build_s:.1f} s{files}; device {device}", flush=True)
        settings = TrainSettings(han=HanSettings(), epochs=args.epochs, warmup_epochs=1, device=device.type)
        steps = -(-args.videos // settings.batch_size)

        naive_runs = [naive_epoch_s(data, settings, device, args.naive_batches, official_dir)]
        print(f"naive (before): {json.dumps({k: round(v, 3) for k, v in naive_runs[0].items()})} s per epoch", flush=True)

        ours: dict[str, dict[str, float]] = {}
        for name in args.runs:
            precision, _, compiled = name.partition("-")
            run_settings = settings.model_copy(update={"precision": precision, "compile": bool(compiled)})
            math_s = math_epoch_s(data, run_settings, device, args.naive_batches, steps)
            epoch_ends: list[float] = []
            started = time.perf_counter()
            result = train_han(
                data, run_settings, scratch / f"run_{name}", progress=False, keep_epoch_checkpoints=1,
                feature_dtype=getattr(torch, args.feature_dtype), callback=lambda record: epoch_ends.append(time.perf_counter()),
            )  # fmt: skip
            first, last = result.history[0], result.history[-1]
            with_checkpoint_s = epoch_ends[-1] - (epoch_ends[-2] if len(epoch_ends) > 1 else started)
            ours[name] = {
                "epoch_s": last["train_s"], "first_epoch_s": first["train_s"], "math_epoch_s": math_s,
                "val_s": last["val_s"], "with_val_and_checkpoint_s": with_checkpoint_s,
            }  # fmt: skip
            print(
                f"ours ({name}): train pass {last['train_s']:.3f} s (first epoch {first['train_s']:.3f} s; model math alone "
                f"{math_s:.3f} s), validation {last['val_s']:.3f} s, with checkpoints {with_checkpoint_s:.3f} s", flush=True,
            )  # fmt: skip

        naive_runs.append(naive_epoch_s(data, settings, device, args.naive_batches, official_dir))
        print(f"naive (after): {json.dumps({k: round(v, 3) for k, v in naive_runs[1].items()})} s per epoch", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    naive = {name: (naive_runs[0][name] + naive_runs[1][name]) / 2 for name in naive_runs[0]}
    baseline = naive.get("reference", naive["in_memory"])
    first = ours[args.runs[0]]

    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux
    report = {
        "epoch_s": round(first["epoch_s"], 4),
        "naive_epoch_s": round(baseline, 4),
        "speedup": round(baseline / first["epoch_s"], 3),
        "run": args.runs[0],
        "naive_baseline": "reference" if "reference" in naive else "in_memory",
        "naive_in_memory_epoch_s": round(naive["in_memory"], 4),
        "speedup_vs_in_memory_naive": round(naive["in_memory"] / first["epoch_s"], 3),
        "ours": {name: {k: round(v, 4) for k, v in figures.items()} for name, figures in ours.items()},
        "speedup_by_run": {name: round(baseline / figures["epoch_s"], 3) for name, figures in ours.items()},
        "peak_rss_gb": round(peak_rss_gb, 3),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
        "videos": args.videos,
        "steps_per_epoch": steps,
        "feature_dtype": args.feature_dtype,
        "naive_before_after_s": [{k: round(v, 4) for k, v in run.items()} for run in naive_runs],
        "naive_extrapolated_from_batches": 2 * args.naive_batches,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
