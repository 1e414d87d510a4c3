"""Training loops, schedule, checkpoints and in-memory batching (tiny dimensions, CPU)."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch._dynamo.utils import counters

from uwav.atomic import clean_interrupted
from uwav.catalog import HanSettings, PretrainSettings, TrainSettings
from uwav.evaluation import predict_nothing_scores
from uwav.models.plg import AudioVisualPLG
from uwav.training.checkpoints import (
    STATE_FILE,
    epoch_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    prune_epoch_checkpoints,
    save_checkpoint,
)
from uwav.training.data import HanFeatures, HanTrainData, InMemoryBatches, LabelledSplit, PretrainData
from uwav.training.han_train import (
    ABLATION_VARIANTS,
    ave_predictions,
    ave_settings,
    ave_targets,
    evaluate_han,
    format_ablation,
    load_han,
    predict_han,
    run_ablation,
    train_han,
)
from uwav.training.health import input_spread
from uwav.training.pretrain import plg_loss
from uwav.training.pretrain import trim_to_longest, load_plg, predict_plg, pretrain_plg
from uwav.training.schedule import WarmupCosine


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """These models are tiny: one intra-op thread is faster, and immune to OpenMP spin-waits on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Crash(RuntimeError):
    pass


def crash_after(epoch: int):
    def callback(record: dict) -> None:
        if record["epoch"] == epoch:
            raise Crash(f"simulated crash after epoch {epoch}")

    return callback


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"


# ---------------------------------------------------------------- synthetic data


def pretrain_data(seed: int = 0, n: int = 16, t: int = 6, c: int = 4, dim: int = 8) -> PretrainData:
    """Segment embeddings = labelled classes' text embeddings + noise; variable lengths."""
    rng = np.random.default_rng(seed)
    visual_text, audio_text = rng.normal(size=(c, dim)), rng.normal(size=(c, dim))
    labels = (rng.random((n, t, c)) < 0.3).astype(np.float32)
    lengths = rng.integers(2, t + 1, n)
    labels[np.arange(t)[None, :] >= lengths[:, None]] = 0
    visual = labels @ visual_text + 0.3 * rng.normal(size=(n, t, dim))
    audio = labels @ audio_text + 0.3 * rng.normal(size=(n, t, dim))
    return PretrainData.from_arrays(visual, audio, lengths, labels, visual_text, audio_text)


def htsat_maps_of(audio: np.ndarray, code: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 64, D) HTSAT-like maps of audio labels (N, T, C): 2 frequency bands x 32 time steps
    (token 32 f + t), time step t of both bands coding the classes of the segment it falls in."""
    n, t, _ = audio.shape
    steps = audio[:, (np.arange(32) * t) // 32].astype(np.float32) @ code  # (N, 32, D)
    return np.concatenate([steps, steps], axis=1) + 0.3 * rng.normal(size=(n, 64, code.shape[1]))


def han_split(
    rng: np.random.Generator, n: int, c: int, t: int, one_event: bool = False, audio_maps: bool = False, audio_rate: float = 0.6
) -> tuple[HanFeatures, np.ndarray, np.ndarray, np.ndarray]:
    """Features that encode the dense labels (so the problem is learnable); returns (features, video labels, audio, visual).

    `one_event`: AVE-style, one audio-visual event (a run of segments) per video, background elsewhere.
    `audio_maps`: the audio as one HTSAT-like map per video (`htsat_maps_of`), VALOR++'s input;
    `audio_rate`: the share of a video's segments where each of its classes sounds.
    """
    if one_event:
        onset = rng.integers(0, t - 1, n)
        offset = rng.integers(onset + 1, t + 1)
        span = (np.arange(t)[None, :] >= onset[:, None]) & (np.arange(t)[None, :] < offset[:, None])
        classes = np.eye(c, dtype=bool)[rng.integers(0, c, n)]
        audio = visual = span[:, :, None] & classes[:, None, :]
        video = classes
    else:
        video = rng.random((n, c)) < 0.4
        audio = video[:, None, :] & (rng.random((n, t, c)) < audio_rate)
        visual = video[:, None, :] & (rng.random((n, t, c)) < 0.6)
    codes = np.random.default_rng(123)  # the same class codes for every split
    audio_code, frame_code, motion_code = codes.normal(size=(c, 6)), codes.normal(size=(c, 3, 10)), codes.normal(size=(c, 4))
    if audio_maps:
        audio_features = htsat_maps_of(audio, audio_code, rng)
    else:
        audio_features = audio.astype(np.float32) @ audio_code + 0.3 * rng.normal(size=(n, t, 6))
    features = HanFeatures.from_arrays(
        audio_features,
        np.einsum("ntc,cfd->ntfd", visual.astype(np.float32), frame_code) + 0.3 * rng.normal(size=(n, t, 3, 10)),
        visual.astype(np.float32) @ motion_code + 0.3 * rng.normal(size=(n, t, 4)),
        audio_input="htsat_maps" if audio_maps else "segments",
    )
    return features, video, audio, visual


def han_data(
    seed: int = 0, n: int = 48, n_val: int = 16, c: int = 4, t: int = 5, one_event: bool = False,
    audio_maps: bool = False, audio_rate: float = 0.6,
) -> HanTrainData:
    rng = np.random.default_rng(seed)
    train, video, audio, visual = han_split(rng, n, c, t, one_event, audio_maps, audio_rate)
    dense = np.stack([audio, visual], axis=2).astype(np.float32)  # (N, T, 2, C)
    soft = np.where(dense > 0, 0.8, 0.1) * video[:, None, None, :]
    val, _, val_audio, val_visual = han_split(rng, n_val, c, t, one_event, audio_maps, audio_rate)
    return HanTrainData.from_arrays(
        train, video, soft, dense, LabelledSplit.from_arrays(val, val_audio, val_visual)
    )


TINY_HAN = HanSettings(d_model=16, ffn=32, heads=2, dropout=0.1)


def han_settings(**update: object) -> TrainSettings:
    base = TrainSettings(han=TINY_HAN, epochs=3, batch_size=16, warmup_epochs=1, lr=2e-3, min_lr=1e-4, device="cpu")
    return base.model_copy(update=update)


def pretrain_settings(**update: object) -> PretrainSettings:
    base = PretrainSettings(layers=1, heads=2, epochs=3, batch_size=8, warmup_epochs=1, lr=3e-3, min_lr=1e-4, device="cpu")
    return base.model_copy(update=update)


# ---------------------------------------------------------------- schedule


def test_schedule_warmup_then_cosine_to_min() -> None:
    schedule = WarmupCosine.for_epochs(peak_lr=1e-4, min_lr=1e-5, warmup_epochs=10, epochs=80, steps_per_epoch=3)
    assert schedule.warmup_steps == 30 and schedule.total_steps == 240
    assert schedule.lr_at(0) == pytest.approx(1e-4 / 30)
    assert schedule.lr_at(14) == pytest.approx(1e-4 * 15 / 30)
    assert schedule.lr_at(29) == pytest.approx(1e-4)  # end of warm-up: the peak
    assert schedule.lr_at(30) == pytest.approx(1e-4)  # cosine starts at the peak
    middle = 30 + (240 - 30 - 1) / 2
    assert schedule.lr_at(int(middle)) > (1e-4 + 1e-5) / 2 > schedule.lr_at(int(middle) + 1)
    assert schedule.lr_at(239) == pytest.approx(1e-5)  # the last step reaches min_lr
    rates = [schedule.lr_at(s) for s in range(240)]
    assert all(a < b for a, b in zip(rates[:29], rates[1:30]))
    assert all(a >= b for a, b in zip(rates[30:], rates[31:]))
    with pytest.raises(ValueError, match="outside"):
        schedule.lr_at(240)
    no_warmup = WarmupCosine.for_epochs(peak_lr=1e-3, min_lr=0.0, warmup_epochs=0, epochs=2, steps_per_epoch=2)
    assert [no_warmup.lr_at(s) for s in (0, 3)] == pytest.approx([1e-3, 0.0])


def test_per_epoch_schedule_is_the_released_formula() -> None:
    """The UWAV release's WarmUpCosineAnnealingLR (10 warm-up epochs, 80 epochs, 1e-4 -> 1e-5),
    written out: epoch e < 10 trains at e/10 * 1e-4, then 1e-5 + 0.45e-4 (1 + cos(pi (e - 10) / 70))."""
    schedule = WarmupCosine.for_epochs(
        peak_lr=1e-4, min_lr=1e-5, warmup_epochs=10, epochs=80, steps_per_epoch=3, granularity="per_epoch"
    )

    def released(epoch: int) -> float:
        if epoch < 10:
            return epoch / 10 * 1e-4
        return 1e-5 + 0.5 * (1e-4 - 1e-5) * (1 + math.cos((epoch - 10) / 70 * math.pi))

    for step in range(240):
        assert schedule.lr_at(step) == pytest.approx(released(step // 3 + 1), rel=1e-12)
    assert schedule.lr_at(0) == schedule.lr_at(2) == pytest.approx(1e-5)  # constant within an epoch
    assert schedule.lr_at(27) == pytest.approx(1e-4)  # epoch 10: the peak
    assert schedule.lr_at(239) == pytest.approx(1e-5)  # epoch 80: min_lr
    with pytest.raises(ValueError, match="granularity"):
        WarmupCosine.for_epochs(peak_lr=1e-4, min_lr=0, warmup_epochs=1, epochs=2, steps_per_epoch=1, granularity="x")  # type: ignore[arg-type]


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_and_weights_only(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    state = {"step": 7, "history": [{"loss": 0.5}], "rng": torch.get_rng_state(), "nested": {"t": torch.arange(4)}}
    path = save_checkpoint(tmp_path / "epoch_0001", model, {"epoch": 1}, state)
    loaded = load_checkpoint(path)
    assert_same_weights(loaded.weights, model.state_dict())
    assert loaded.meta == {"epoch": 1}
    assert loaded.state["step"] == 7 and loaded.state["history"] == [{"loss": 0.5}]
    assert torch.equal(loaded.state["rng"], state["rng"]) and torch.equal(loaded.state["nested"]["t"], torch.arange(4))
    with safe_open(path / "model.safetensors", framework="pt") as weights:  # weights are safetensors
        assert set(weights.keys()) == set(model.state_dict())

    # Anything that would need full unpickling is refused (weights_only=True).
    torch.save({"step": 1, "evil": Path("/x")}, path / STATE_FILE)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)


def test_checkpoint_replace_clean_and_prune(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    for epoch in (1, 2, 3):
        save_checkpoint(tmp_path / f"epoch_{epoch:04d}", model, {"epoch": epoch}, {"epoch": epoch})
    save_checkpoint(tmp_path / "best", model, {"epoch": 1})
    save_checkpoint(tmp_path / "best", model, {"epoch": 3})  # replaces
    assert load_checkpoint(tmp_path / "best", with_state=False).meta == {"epoch": 3}
    # A crash mid-write leaves a temp folder; a crash mid-replace leaves the old folder aside
    # (named as uwav.atomic.atomic_dir names them).
    (tmp_path / ".epoch_0004.99.0123abcd.tmp").mkdir()
    (tmp_path / "best").rename(tmp_path / ".best.99.0123abcd.old")
    clean_interrupted(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "epoch_0001", "epoch_0002", "epoch_0003"]
    assert latest_checkpoint(tmp_path) == tmp_path / "epoch_0003"
    prune_epoch_checkpoints(tmp_path, keep=2)
    assert [e for e, _ in epoch_checkpoints(tmp_path)] == [2, 3]


# ---------------------------------------------------------------- in-memory batching


def test_in_memory_batches_cover_every_video_once() -> None:
    values = torch.arange(10, dtype=torch.float32)[:, None].repeat(1, 3)
    batches = InMemoryBatches({"x": values, "id": torch.arange(10)}, batch_size=4, device="cpu", storage_dtype=torch.float16)
    assert len(batches) == 3
    epoch = list(batches.shuffled(torch.Generator().manual_seed(0)))
    assert [len(b["id"]) for b in epoch] == [4, 4, 2]
    ids = torch.cat([b["id"] for b in epoch])
    assert sorted(ids.tolist()) == list(range(10)) and ids.tolist() != list(range(10))
    assert all(b["x"].dtype == torch.float32 and torch.equal(b["x"][:, 0], b["id"].float()) for b in epoch)
    assert torch.equal(torch.cat([b["id"] for b in batches.in_order()]), torch.arange(10))


def test_frames_are_averaged_at_load() -> None:
    frames = torch.randn(2, 3, 8, 5)
    features = HanFeatures.from_arrays(torch.randn(2, 3, 4), frames, torch.randn(2, 3, 6), lengths=[3, 3])
    assert features.visual2d.shape == (2, 3, 5) and features.lengths is None
    assert torch.allclose(features.visual2d, frames.mean(2))
    with pytest.raises(ValueError, match="visual3d"):
        HanFeatures.from_arrays(torch.randn(2, 3, 4), frames, torch.randn(2, 4, 6))


def test_htsat_maps_are_one_array_per_video() -> None:
    """VALOR++'s audio: (N, 64, D) maps beside (N, T, D) visual streams; T, the lengths and the
    padding come from the visual streams, and a map has no padded rows."""
    maps, visual2d, visual3d = torch.randn(3, 64, 4), torch.randn(3, 10, 5), torch.randn(3, 10, 6)
    features = HanFeatures.from_arrays(maps, visual2d, visual3d, lengths=[10, 7, 10], audio_input="htsat_maps")
    assert (features.n_videos, features.n_segments, features.widths) == (3, 10, (4, 5, 6))
    assert features.padding_mask.sum() == 3 and features.audio_input == "htsat_maps"
    audio_rows, visual2d_rows, _ = features.real_rows()
    assert audio_rows.shape == (3 * 64, 4) and visual2d_rows.shape == (27, 5)
    with pytest.raises(ValueError, match=r"audio: expected \(N=3, 64, \.\.\.\), one HTSAT map per video, got \(3, 10, 4\)"):
        HanFeatures.from_arrays(torch.randn(3, 10, 4), visual2d, visual3d, audio_input="htsat_maps")
    with pytest.raises(ValueError, match=r"audio: expected \(N=3, 10, \.\.\.\), like visual2d, got \(3, 64, 4\)"):
        HanFeatures.from_arrays(maps, visual2d, visual3d)
    segments = HanFeatures.from_arrays(torch.randn(3, 10, 4), visual2d, visual3d)
    video_labels, labels = np.ones((3, 2)), np.zeros((3, 10, 2, 2))
    val = LabelledSplit.from_arrays(segments, np.zeros((3, 10, 2)), np.zeros((3, 10, 2)))
    with pytest.raises(ValueError, match="val: audio input 'segments' differs from train 'htsat_maps'"):
        HanTrainData.from_arrays(features, video_labels, labels, labels, val)


def time_shuffled(features: HanFeatures, seed: int) -> HanFeatures:
    """The same maps with each video's 32 time steps in a random order (the same in both bands):
    what sounds, but no longer when."""
    import dataclasses

    generator = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(32, generator=generator) for _ in range(features.n_videos)])
    tokens = torch.cat([order, order + 32], dim=1)[:, :, None].expand(-1, -1, features.audio.shape[2])
    return dataclasses.replace(features, audio=torch.gather(features.audio, 1, tokens))


def test_train_han_on_htsat_maps(tmp_path: Path) -> None:
    """VALOR++'s input through `train_han`, 10 segments per video: only the maps say when each
    audio event sounds, and the HAN learns it (segment-level audio F1 far above what the same
    training reaches on the same maps with their time steps shuffled); its checkpoint rebuilds a
    HAN that takes maps. Padded videos with standardised inputs train as well, with audio
    statistics over every map token."""
    import dataclasses

    data = han_data(audio_maps=True, t=10, audio_rate=0.5)
    assert data.train.audio.shape == (48, 64, 6) and data.train.n_segments == 10
    settings = han_settings(epochs=12)
    result = train_han(data, settings, tmp_path / "maps", progress=False)
    shuffled = dataclasses.replace(
        data, train=time_shuffled(data.train, 0), val=dataclasses.replace(data.val, features=time_shuffled(data.val.features, 1))
    )
    timeless = train_han(shuffled, settings, tmp_path / "shuffled", progress=False)
    learned, guessed = result.history[-1]["val_seg_a"], timeless.history[-1]["val_seg_a"]
    assert learned > guessed + 15, (learned, guessed)
    reloaded = load_han(result.best_checkpoint)
    assert reloaded.config["audio_input"] == "htsat_maps"
    assert evaluate_han(reloaded, data.val)["seg_type"] == pytest.approx(result.best_score, abs=1e-9)

    lengths = np.full(data.train.n_videos, data.train.n_segments)
    lengths[::3] = 3
    train = HanFeatures.from_arrays(
        data.train.audio, data.train.visual2d, data.train.visual3d, lengths=lengths, audio_input="htsat_maps"
    )
    padded = dataclasses.replace(data, train=train)
    standardized = han_settings(epochs=1, han=TINY_HAN.model_copy(update={"input_norm": "standardize", "inputs": "clap_maps"}))
    again = train_han(padded, standardized, tmp_path / "padded", progress=False)
    assert math.isfinite(again.history[0]["loss"])
    assert torch.allclose(again.model.audio_mean, data.train.audio.reshape(-1, 6).mean(0), atol=1e-6)


# ---------------------------------------------------------------- stage 1


def test_padded_segments_do_not_affect_the_stage1_loss() -> None:
    data = pretrain_data()
    torch.manual_seed(0)
    model = AudioVisualPLG(8, 8, layers=1, heads=2, dropout=0.0)
    batch = {"visual": data.visual[:6], "audio": data.audio[:6], "segment_labels": data.segment_labels[:6], "lengths": data.lengths[:6]}
    assert int(batch["lengths"].min()) < data.visual.shape[1]  # there is padding to test

    def loss_and_grads(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        visual, audio, labels, mask = trim_to_longest(batch)
        loss = plg_loss(*model(visual, audio, data.visual_text, data.audio_text, mask), labels, mask)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    reference_loss, reference_grads = loss_and_grads(batch)
    padded = torch.arange(data.visual.shape[1])[None, :] >= batch["lengths"][:, None]
    garbage = {key: value.clone() for key, value in batch.items()}
    for key in ("visual", "audio"):
        garbage[key][padded] = 1e3 * torch.randn_like(garbage[key][padded])
    garbage["segment_labels"][padded] = 1.0
    loss, grads = loss_and_grads(garbage)
    assert torch.allclose(loss, reference_loss, rtol=1e-6, atol=0)
    for got, expected in zip(grads, reference_grads):
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_pretrain_learns_and_predicts(tmp_path: Path, native_bf16: None) -> None:
    data = pretrain_data()
    result = pretrain_plg(data, pretrain_settings(epochs=6, dropout=0.0), tmp_path, progress=False)
    losses = [record["loss"] for record in result.history]
    assert len(losses) == 6 and losses[-1] < 0.7 * losses[0]
    assert result.checkpoint == tmp_path / "checkpoints" / "epoch_0006"
    assert [e for e, _ in epoch_checkpoints(tmp_path / "checkpoints")] == [2, 3, 4, 5, 6]  # newest 5 kept

    model = load_plg(result.checkpoint)
    logits = predict_plg(model, data.visual, data.audio, data.lengths, data.visual_text, data.audio_text, batch_size=5)
    visual_logits, audio_logits = logits.visual, logits.audio
    padded = (torch.arange(data.visual.shape[1])[None, :] >= data.lengths[:, None]).numpy()
    assert visual_logits.shape == audio_logits.shape == tuple(data.segment_labels.shape)
    assert np.isnan(visual_logits[padded]).all() and not np.isnan(audio_logits[~padded]).any()
    # The trained generator separates positive from negative segments.
    labels = data.segment_labels.numpy()[~padded] > 0
    product = 1 / (1 + np.exp(-visual_logits[~padded])) / (1 + np.exp(-audio_logits[~padded]))
    assert product[labels].mean() > product[~labels].mean() + 0.2
    # bf16 prediction: autocast is on (other numerics), the logits stay float32 and close.
    reduced = predict_plg(model, data.visual, data.audio, data.lengths, data.visual_text, data.audio_text, precision="bf16").visual
    assert reduced.dtype == np.float32 and not np.array_equal(reduced[~padded], visual_logits[~padded])
    assert np.abs(reduced[~padded] - visual_logits[~padded]).max() < 0.1 * np.abs(visual_logits[~padded]).max()


def test_pretrain_resume_is_bit_exact(tmp_path: Path) -> None:
    data, settings = pretrain_data(), pretrain_settings()
    uninterrupted = pretrain_plg(data, settings, tmp_path / "a", progress=False)
    with pytest.raises(Crash):
        pretrain_plg(data, settings, tmp_path / "b", progress=False, callback=crash_after(2))
    assert latest_checkpoint(tmp_path / "b" / "checkpoints").name == "epoch_0002"
    resumed = pretrain_plg(data, settings, tmp_path / "b", progress=False)
    assert_same_weights(resumed.model.state_dict(), uninterrupted.model.state_dict())
    assert resumed.history == uninterrupted.history
    with pytest.raises(ValueError, match="lr: checkpoint"):
        pretrain_plg(data, settings.model_copy(update={"lr": 1e-3}), tmp_path / "b", progress=False)


# ---------------------------------------------------------------- stage 2


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_han_resume_is_bit_exact(tmp_path: Path, native_bf16: None, precision: str) -> None:
    data, settings = han_data(), han_settings(precision=precision)  # soft labels, re-weighting, mixup and dropout all on
    uninterrupted = train_han(data, settings, tmp_path / "a", progress=False)
    with pytest.raises(Crash):
        train_han(data, settings, tmp_path / "b", progress=False, callback=crash_after(2))
    resumed = train_han(data, settings, tmp_path / "b", progress=False)
    assert_same_weights(resumed.model.state_dict(), uninterrupted.model.state_dict())
    last = load_checkpoint(uninterrupted.last_checkpoint).weights
    assert_same_weights(load_checkpoint(resumed.last_checkpoint).weights, last)
    strip = lambda history: [{k: v for k, v in r.items() if not k.endswith("_s")} for r in history]  # noqa: E731
    assert strip(resumed.history) == strip(uninterrupted.history)
    assert (resumed.best_epoch, resumed.best_score) == (uninterrupted.best_epoch, uninterrupted.best_score)
    # A finished run resumes to its result without training further.
    again = train_han(data, settings, tmp_path / "b", progress=False)
    assert_same_weights(again.model.state_dict(), resumed.model.state_dict())
    assert len(again.history) == settings.epochs and again.last_checkpoint == resumed.last_checkpoint


def test_bf16_precision_autocasts_training_and_prediction(tmp_path: Path, native_bf16: None) -> None:
    data = han_data()
    full = train_han(data, han_settings(epochs=1), tmp_path / "fp32", progress=False)
    reduced = train_han(data, han_settings(epochs=1, precision="bf16"), tmp_path / "bf16", progress=False)
    weights = full.model.state_dict()
    assert any(not torch.equal(value, weights[name]) for name, value in reduced.model.state_dict().items())
    assert all(value.dtype == torch.float32 for value in reduced.model.state_dict().values())  # master weights stay float32
    segment_fp32, _ = predict_han(reduced.model, data.val.features)
    segment_bf16, _ = predict_han(reduced.model, data.val.features, precision="bf16")
    assert segment_bf16.dtype == np.float32 and not np.array_equal(segment_bf16, segment_fp32)
    assert np.abs(segment_bf16 - segment_fp32).max() < 0.05
    with pytest.raises(ValueError, match="precision: checkpoint 'bf16', now 'fp32'"):
        train_han(data, han_settings(epochs=2), tmp_path / "bf16", progress=False)


def test_compiled_training_matches_eager(tmp_path: Path) -> None:
    data = han_data(n=32, n_val=8)  # two full batches: one compiled graph
    settings = han_settings(epochs=2, han=TINY_HAN.model_copy(update={"dropout": 0.0}))  # no dropout: same function, same draws
    eager = train_han(data, settings, tmp_path / "eager", progress=False)
    counters.clear()
    compiled = train_han(data, settings.model_copy(update={"compile": True}), tmp_path / "compiled", progress=False)
    assert counters["stats"]["unique_graphs"] >= 1, "the training forward was not compiled"
    # Compare the functions, not every weight: biases that a softmax cancels (fc_frame_att's, the
    # attention keys') get only rounding noise as gradient, which AdamW scales up to full steps.
    for trained, again in zip(predict_han(eager.model, data.val.features), predict_han(compiled.model, data.val.features)):
        np.testing.assert_allclose(again, trained, atol=1e-5)
    assert [r["loss"] for r in compiled.history] == pytest.approx([r["loss"] for r in eager.history], abs=1e-6)
    # Checkpoints hold the plain module's parameter names, so `load_han` reads a compiled run's model.
    assert load_checkpoint(compiled.last_checkpoint).weights.keys() == load_checkpoint(eager.last_checkpoint).weights.keys()
    assert_same_weights(load_han(compiled.best_checkpoint).state_dict(), compiled.model.state_dict())


def test_train_han_learns_and_keeps_the_best_checkpoint(tmp_path: Path) -> None:
    data = han_data()
    result = train_han(data, han_settings(epochs=8), tmp_path, progress=False, keep_epoch_checkpoints=None)
    history = result.history
    assert {"loss", "loss_video", "loss_segment", "loss_mixup", "lr", "train_s", "val_seg_type", "val_event_event"} <= history[0].keys()
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]
    scores = [record["val_seg_type"] for record in history]
    assert max(scores) > scores[0] + 10  # it learns the (separable) task
    assert result.best_epoch == 1 + int(np.argmax(scores)) and result.best_score == max(scores)
    # `best/` holds the weights of the best epoch, and evaluating them gives that epoch's scores.
    best = load_checkpoint(result.best_checkpoint, with_state=False)
    assert best.meta["epoch"] == result.best_epoch
    assert_same_weights(best.weights, load_checkpoint(tmp_path / "checkpoints" / f"epoch_{result.best_epoch:04d}").weights)
    again = evaluate_han(load_han(result.best_checkpoint), data.val)
    assert again["seg_type"] == pytest.approx(result.best_score, abs=1e-9)


def test_ablation_grid_has_every_row(tmp_path: Path) -> None:
    data = han_data(n=16, n_val=8)
    table = run_ablation(data, han_settings(epochs=1), tmp_path, progress=False)
    assert table["variant"].to_list() == [v.name for v in ABLATION_VARIANTS]
    assert table["split"].to_list() == ["val"] * len(ABLATION_VARIANTS)
    assert table["seg_type"].is_between(0, 100).all()
    text = format_ablation(table)
    assert all(v.name in text for v in ABLATION_VARIANTS) and "Type@AV" in text
    # The variants really train differently (the segment and mixup terms are switched).
    assert table["seg_type"].n_unique() > 1 or table["seg_a"].n_unique() > 1
    folders = sorted((tmp_path / "ablation").iterdir(), key=lambda p: p.stat().st_mtime)
    checkpoints = {
        v.name: load_checkpoint(latest_checkpoint(folder / "checkpoints"))
        for v, folder in zip(ABLATION_VARIANTS, folders, strict=True)
    }
    histories = {name: checkpoint.state["history"][0] for name, checkpoint in checkpoints.items()}
    assert histories["HAN (video loss only)"]["loss_segment"] == 0 and histories["HAN (video loss only)"]["loss_mixup"] == 0
    assert histories["soft + mixup"]["loss_mixup"] > 0 and histories["soft"]["loss_mixup"] == 0
    # Only the reference-HAN row trains with guided learning: three video-level BCE terms instead of one.
    guided = [name for name, c in checkpoints.items() if c.meta["identity"]["settings"]["guided_learning"]]
    assert guided == ["HAN (guided learning)"]
    assert histories["HAN (guided learning)"]["loss_video"] > 1.5 * histories["HAN (video loss only)"]["loss_video"]


# ---------------------------------------------------------------- AVE


def test_ave_decision_rule_and_targets() -> None:
    c = 3
    segment = np.zeros((1, 4, 2, c), np.float32)
    segment[0, 0, :, 1] = 0.9  # audio and visual on: class 1
    segment[0, 1, 0, 2], segment[0, 1, 1, 2] = 0.9, 0.4  # visual below 0.5: background
    segment[0, 2, :, 0] = 0.8  # class 0, but its video probability is low: background
    segment[0, 3, :, 1], segment[0, 3, :, 2] = 0.6, 0.7  # larger p_a * p_v wins: class 2
    video = np.array([[0.2, 0.9, 0.9]], np.float32)
    assert ave_predictions(segment, video).tolist() == [[1, c, c, 2]]
    gt_audio = np.zeros((1, 4, c), bool)
    gt_audio[0, :2, 1] = True
    gt_visual = gt_audio.copy()
    gt_audio[0, 3, 2] = True  # audio only: not an audio-visual event
    assert ave_targets(gt_audio, gt_visual).tolist() == [[1, 1, c, c]]
    gt_visual[0, :, 2] = gt_audio[0, :, 2] = True
    with pytest.raises(ValueError, match="video index 0"):
        ave_targets(gt_audio, gt_visual)


def test_train_han_ave_selects_by_accuracy(tmp_path: Path) -> None:
    data = han_data(n=32, n_val=8, one_event=True)
    settings = ave_settings(han_settings(epochs=2))
    assert (settings.batch_size, settings.mixup_targets) == (16, "ceil")
    result = train_han(data, settings, tmp_path, task="ave", progress=False)
    accuracies = [record["val_ave_accuracy"] for record in result.history]
    assert result.best_score == max(accuracies) and 0 <= result.best_score <= 100
    assert load_checkpoint(result.best_checkpoint, with_state=False).meta["identity"]["task"] == "ave"
    assert math.isfinite(result.history[-1]["loss_mixup"]) and result.history[-1]["loss_mixup"] > 0


def test_padded_videos_train_and_padding_never_counts(tmp_path: Path) -> None:
    data = han_data(n=16, n_val=8)
    rng = np.random.default_rng(5)

    def with_padding(features: HanFeatures, fill: str) -> HanFeatures:
        lengths = rng.integers(2, features.n_segments + 1, features.n_videos)
        lengths[0] = 2  # at least one padded video
        padded = np.arange(features.n_segments)[None, :] >= lengths[:, None]
        arrays = [x.clone() for x in (features.audio, features.visual2d, features.visual3d)]
        for array in arrays:
            array[torch.from_numpy(padded)] = 1e3 * torch.randn_like(array[torch.from_numpy(padded)]) if fill == "noise" else 0.0
        return HanFeatures.from_arrays(*arrays, lengths=lengths)

    train = with_padding(data.train, "noise")
    padded_data = HanTrainData.from_arrays(train, data.video_labels, data.soft_labels, data.binary_labels, data.val)
    result = train_han(padded_data, han_settings(epochs=1), tmp_path, progress=False)
    assert math.isfinite(result.history[0]["loss"])
    # The same validation videos with noise or zeros in their padded segments score the same.
    state = rng.bit_generator.state
    noisy = LabelledSplit.from_arrays(with_padding(data.val.features, "noise"), data.val.gt_audio, data.val.gt_visual)
    rng.bit_generator.state = state
    zeros = LabelledSplit.from_arrays(with_padding(data.val.features, "zeros"), data.val.gt_audio, data.val.gt_visual)
    assert torch.equal(noisy.features.lengths, zeros.features.lengths)
    assert evaluate_han(result.model, noisy) == evaluate_han(result.model, zeros)


def test_standardised_inputs_learn_what_nearly_constant_inputs_hide(tmp_path: Path) -> None:
    """The demo's failure in miniature: the class information rides on a large common vector (the
    segments vary by ~3 % of their length, as random-initialised CLAP features do). The plain HAN
    learns nothing from it; with `input_norm: standardize` it learns the task, and the statistics
    travel with the checkpoint."""
    import dataclasses

    data = han_data()

    def flatten(features: HanFeatures) -> HanFeatures:
        return dataclasses.replace(features, **{
            name: 30.0 + 0.03 * getattr(features, name) for name in ("audio", "visual2d", "visual3d")
        })  # fmt: skip

    flat = dataclasses.replace(data, train=flatten(data.train), val=dataclasses.replace(data.val, features=flatten(data.val.features)))
    spread = input_spread({"audio": flat.train.audio})["audio"]
    assert spread < 0.05
    floor = predict_nothing_scores(data.val.gt_audio, data.val.gt_visual)["seg_type"]
    plain = train_han(flat, han_settings(epochs=6), tmp_path / "plain", progress=False)
    settings = han_settings(epochs=6, han=TINY_HAN.model_copy(update={"input_norm": "standardize"}))
    standardized = train_han(flat, settings, tmp_path / "standardized", progress=False)
    assert plain.best_score < floor + 5, (plain.best_score, floor)
    assert standardized.best_score > floor + 20, (standardized.best_score, floor)
    assert torch.allclose(standardized.model.audio_mean, flat.train.audio.reshape(-1, 6).mean(0))
    reloaded = load_han(standardized.best_checkpoint)
    assert reloaded.config["input_norm"] == "standardize"
    assert evaluate_han(reloaded, flat.val)["seg_type"] == pytest.approx(standardized.best_score, abs=1e-9)
