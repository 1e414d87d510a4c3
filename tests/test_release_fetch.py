"""`uwav release fetch` against a loopback hub (`tests.hub_server`): the UWAV and VALOR releases
unpacked into the layout the released-features import reads, resumed after an interruption,
archives checked (CRC, paths, content), a second call asking nothing of the hub."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.hub_server import LoopbackHub
from uwav.cli import app
from uwav.features.released import find_release
from uwav.hub import DownloadError
from uwav.releases import DOWNLOADS, MARKER, elsewhere, fetch_release

LLP_IDS = ("-0A9sun15YA", "-0Bkyt8iZ1I")
UNAV_IDS = ("-0DIFwkUpjQ",)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def _features(ids: tuple[str, ...], dim: int, classes: int, prefix: str = "") -> dict[str, bytes]:
    """UWAV's content of one archive: segment_feats/<id>.npy and event_feats/all_event_feats.npy."""
    rng = np.random.default_rng(dim + classes)
    members = {f"{prefix}segment_feats/{video}.npy": _npy(rng.standard_normal((10, dim)).astype(np.float32)) for video in ids}
    members[f"{prefix}event_feats/all_event_feats.npy"] = _npy(rng.standard_normal((classes, dim)).astype(np.float32))
    return members


def serve_uwav_release(hub: LoopbackHub) -> dict[str, bytes]:
    """The four archives, with and without a folder wrapping their content."""
    archives = {
        "LLP_CLIP.zip": _zip(_features(LLP_IDS, 768, 25, prefix="feats_CLIP/")),
        "LLP_CLAP.zip": _zip(_features(LLP_IDS, 512, 25)),
        "UnAV_CLIP.zip": _zip(_features(UNAV_IDS, 768, 100, prefix="UnAV_CLIP/")),
        "UnAV_CLAP.zip": _zip(_features(UNAV_IDS, 512, 100)),
    }
    for name, content in archives.items():
        hub.add_repo_file("NTUBarista/uwav_features", name, content, repo_type="dataset")
    return archives


def test_the_uwav_release_unpacks_into_the_layout_the_import_reads(hub: LoopbackHub, tmp_path: Path) -> None:
    serve_uwav_release(hub)
    out = tmp_path / "release"
    result = CliRunner().invoke(app, ["release", "fetch", "uwav", "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("hf://datasets/NTUBarista/uwav_features/LLP_CLIP.zip  ") and "(fetched, 3 files)" in lines[0]
    assert lines[0].split("  ")[2] == f"-> {out / 'LLP' / 'feats_CLIP'}"
    assert "github.com/YapengTian/AVVP-ECCV20/tree/master/data" in result.output and f"-> {out}/LLP/feats/" in result.output
    assert "github.com/ttgeng233/UnAV" in result.output
    assert lines[-1] == f"catalog: stages.features: {{source: released, released_root: {out.resolve()}}}"

    for kind, ids in (("llp", LLP_IDS), ("unav100", UNAV_IDS)):
        layout = find_release(out, kind)
        for feature, dim in (("clip", 768), ("clap", 512)):
            assert all(np.load(layout.file_for(feature, video)).shape == (10, dim) for video in ids)
            assert layout.text_files[feature].is_file()
    assert not (out / DOWNLOADS).exists() and (out / MARKER).is_file()
    assert sorted(p.name for p in (out / "LLP").iterdir()) == ["feats_CLAP", "feats_CLIP"]

    # a second call finds everything there and asks nothing of the hub, even offline
    asked = len(hub.requests)
    again = fetch_release("uwav", out)
    assert [item.state for item in again] == ["already there"] * 4 and len(hub.requests) == asked


def test_an_interrupted_download_resumes_and_never_passes_as_complete(hub: LoopbackHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 1024)  # bytes reach the file before the cut
    archives = serve_uwav_release(hub)
    path = "/datasets/NTUBarista/uwav_features/resolve/main/LLP_CLAP.zip"
    hub.cut_after(path, 5000)
    out = tmp_path / "release"
    with pytest.raises(DownloadError, match=f"LLP_CLAP.zip: the download stopped at \\d+ of {len(archives['LLP_CLAP.zip'])} bytes.*run the command again"):
        fetch_release("uwav", out)
    partial = next((out / DOWNLOADS).glob("LLP_CLAP.zip.*.incomplete"))
    kept = partial.stat().st_size
    assert 0 < kept < len(archives["LLP_CLAP.zip"])
    assert (out / "LLP" / "feats_CLIP").is_dir() and not (out / "LLP" / "feats_CLAP").exists()
    hub.heal()
    fetch_release("uwav", out)
    ranges = [range_ for method, requested, range_ in hub.requests if method == "GET" and requested == path]
    assert ranges[-1] == f"bytes={kept}-", "the next call asks only for the rest"
    assert len(list((out / "LLP" / "feats_CLAP" / "segment_feats").iterdir())) == len(LLP_IDS)


def test_unsound_archives_are_refused_and_leave_nothing(hub: LoopbackHub, tmp_path: Path) -> None:
    archives = serve_uwav_release(hub)
    good = archives["LLP_CLIP.zip"]
    out = tmp_path / "release"
    # a member's bytes changed after zipping: its CRC fails while unpacking
    member = good.index(b"\x93NUMPY")  # the first .npy member's data
    corrupt = good[:member + 200] + bytes([good[member + 200] ^ 0xFF]) + good[member + 201 :]
    for content, message in (
        (corrupt, "not a sound zip archive: Bad CRC-32"),
        (_zip({"../escape.npy": b"x", "segment_feats/a.npy": b"x", "event_feats/all_event_feats.npy": b"x"}), "member '../escape.npy' would be written outside"),
        (_zip({"features/a.npy": b"x", "labels/a.npy": b"x"}), "its content has no segment_feats, event_feats \\(found: features, labels\\)"),
    ):
        hub.add_repo_file("NTUBarista/uwav_features", "LLP_CLIP.zip", content, repo_type="dataset")
        with pytest.raises(DownloadError, match=message):
            fetch_release("uwav", out)
        assert not any((out / "LLP").iterdir()), "no unpacked folder, no temporary left"
        assert not (tmp_path / "escape.npy").exists() and not (out / "escape.npy").exists()
        assert not (out / MARKER).exists()
    # a folder there that uwav did not unpack is never replaced
    (out / "LLP" / "feats_CLIP").mkdir(parents=True)
    with pytest.raises(DownloadError, match="feats_CLIP exists but was not fetched by `uwav release fetch`"):
        fetch_release("uwav", out)


def test_the_valor_release_and_its_trained_models(hub: LoopbackHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    for encoder, prefix, dim in (("CLIP", "CLIP/", 768), ("CLAP", "", 512)):  # VALOR's README: `unzip CLIP.zip` in data/
        members = {f"{prefix}features/{video}.npy": _npy(rng.standard_normal((10, dim)).astype(np.float32)) for video in LLP_IDS}
        members |= {f"{prefix}segment_pseudo_labels/{video}.npy": _npy(np.zeros((10, 25), np.float32)) for video in LLP_IDS}
        hub.add_repo_file("NTUBarista/valor_features", f"{encoder}.zip", _zip(members), repo_type="dataset")
    for model in ("model_VALOR", "model_VALOR+", "model_VALOR++"):
        hub.add_repo_file("NTUBarista/valor_trained_models", f"{model}/checkpoint_best.pt", model.encode())
    out = tmp_path / "data"
    monkeypatch.setenv("UWAV_OFFLINE", "1")
    with pytest.raises(DownloadError, match="CLIP.zip is not fetched yet and UWAV_OFFLINE=1 forbids downloading it"):
        fetch_release("valor", out)
    assert hub.requests == []
    monkeypatch.delenv("UWAV_OFFLINE")
    done = fetch_release("valor", out)
    assert [item.state for item in done] == ["fetched"] * 5
    assert (out / "CLIP" / "features" / f"{LLP_IDS[0]}.npy").is_file()
    assert (out / "CLAP" / "segment_pseudo_labels" / f"{LLP_IDS[0]}.npy").is_file()
    # VALOR ships no class text embeddings: UWAV's release, unpacked beside it, completes the layout
    serve_uwav_release(hub)
    fetch_release("uwav", out)
    assert find_release(out, "llp").text_files["clip"].is_file()
    assert [item.state for item in fetch_release("valor", out)] == ["already there"] * 5
    assert any("feats_{CLIP,CLAP}" in line and f"--out {out}" in line for line in elsewhere("valor", out))
    assert (out / "models" / "model_VALOR++" / "checkpoint_best.pt").read_bytes() == b"model_VALOR++"
    with pytest.raises(DownloadError, match="unknown release 'avvp' \\(known: uwav, valor\\)"):
        fetch_release("avvp", out)
