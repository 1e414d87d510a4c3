"""Published encoder weights downloaded on first use, against a loopback hub (`tests.hub_server`):
an `hf-hub:` open_clip model, a laion_clap checkpoint by name, RoBERTa's config for CLAP's text
branch, URL weights from a mirror with their hash checked, offline refusals, interrupted downloads,
and `uwav weights fetch` then a run that reads only the caches."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from tests.hub_server import LoopbackHub
from tests.test_encoders import _perturbed_state
from uwav.catalog import (
    CatalogError,
    EncoderConfig,
    EncodersConfig,
    load_catalog,
    parse_catalog,
)
from uwav.cli import app
from uwav.features import configs as model_configs
from uwav.features.clap_encoder import build_clap_encoder
from uwav.features.encoder_base import EncoderError
from uwav.features.encoders import (
    build_clip_encoder,
    build_encoders,
    build_vggish_encoder,
    create_clip_network,
)
from uwav.features.weights import HubFile, WeightsError

CPU = torch.device("cpu")
REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CLIP_REPO = "uwav-test/tiny-clip"
TINY_CLIP_PREPROCESS = {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.6, 0.7], "interpolation": "bilinear", "resize_mode": "squash"}
NAMED_CLAP = EncoderConfig(name="uwav-tiny-clap", pretrained="630k-audioset-best.pt")


def _torch_bytes(obj: object, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def _assert_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value.to(loaded[key].dtype), msg=key)


def serve_tiny_clip(hub: LoopbackHub, repo_id: str = TINY_CLIP_REPO, seed: int = 1, weights: str = "open_clip_model.safetensors") -> dict[str, torch.Tensor]:
    """An open_clip repository of the tiny CLIP config with QuickGELU and its own preprocessing."""
    from safetensors.torch import save

    model_cfg = {**model_configs.shipped_model_config("uwav-tiny-clip"), "quick_gelu": True}
    hub.add_repo_file(repo_id, "open_clip_config.json", json.dumps({"model_cfg": model_cfg, "preprocess_cfg": TINY_CLIP_PREPROCESS}).encode())
    state = _perturbed_state(create_clip_network("uwav-tiny-clip"), seed)
    hub.add_repo_file(repo_id, weights, save(state) if weights.endswith(".safetensors") else _torch_bytes(state))
    return state


def serve_clap_checkpoint(hub: LoopbackHub, seed: int = 3) -> tuple[dict[str, torch.Tensor], bytes]:
    """The tiny CLAP as laion_clap's releases are saved, under a released name: a training
    checkpoint with numpy scalars, `module.` keys and a key newer transformers dropped, pickled
    with protocol 4 (the fusion ones differ only in `fusion`, checked in test_encoders)."""
    network = build_clap_encoder(EncoderConfig(name="uwav-tiny-clap", random_init=True), CPU).model
    state = _perturbed_state(network, seed)
    wrapped = {f"module.{key}": value for key, value in state.items()}
    wrapped["module.text_branch.embeddings.position_ids"] = torch.arange(4)
    content = _torch_bytes({"epoch": 45, "best_metric": np.float64(0.7), "state_dict": wrapped}, pickle_protocol=4)
    hub.add_repo_file("lukewys/laion_clap", "630k-audioset-best.pt", content)
    return state, content


def _blob_id(content: bytes, *, lfs: bool) -> str:
    return (hashlib.sha256(content) if lfs else hashlib.sha1(b"blob %d\0" % len(content) + content)).hexdigest()[:16]


# ---------------------------------------------------------------- hub files


def test_an_hf_hub_clip_downloads_on_first_use_then_reads_only_the_cache(hub: LoopbackHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from open_clip.transformer import QuickGELU

    state = serve_tiny_clip(hub)
    config = EncoderConfig(name=f"hf-hub:{TINY_CLIP_REPO}")
    encoder = build_clip_encoder(config, CPU)
    _assert_state(encoder.model, state)
    # the repository's config decides the activation and the preprocessing
    assert isinstance(encoder.model.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert encoder.resize_mode == "squash" and encoder.interpolation == "bilinear"
    torch.testing.assert_close(encoder.mean.flatten(), torch.tensor(TINY_CLIP_PREPROCESS["mean"]))
    served = hub._repos[("model", TINY_CLIP_REPO)].files
    config_id = _blob_id(served["open_clip_config.json"], lfs=False)
    weights_id = _blob_id(served["open_clip_model.safetensors"], lfs=True)
    assert encoder.identity == (
        f"clip/hf-hub:{TINY_CLIP_REPO}/hub@{TINY_CLIP_REPO}/open_clip_config.json@{config_id}"
        f"+{TINY_CLIP_REPO}/open_clip_model.safetensors@{weights_id}"
    )
    base = f"/{TINY_CLIP_REPO}/resolve/main"
    assert hub.requested("GET") == [f"{base}/open_clip_config.json", f"{base}/open_clip_model.safetensors"]
    assert (tmp_path / "hf" / "hub" / "models--uwav-test--tiny-clip" / "blobs").is_dir()

    # cached: built again without a single request
    asked = len(hub.requests)
    frames = np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    again = build_clip_encoder(config, CPU)
    assert len(hub.requests) == asked and again.identity == encoder.identity
    np.testing.assert_array_equal(again.encode_images(frames), encoder.encode_images(frames))

    # a changed upstream file, once it reaches a cache, is another encoder
    changed = serve_tiny_clip(hub, seed=2)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-later"))
    later = build_clip_encoder(config, CPU)
    _assert_state(later.model, changed)
    assert later.identity != encoder.identity and later.identity.startswith(f"clip/hf-hub:{TINY_CLIP_REPO}/hub@")

    # a repository with the torch pickle only: the safetensors twin is asked for first, then that
    pickled = serve_tiny_clip(hub, "uwav-test/tiny-clip-bin", seed=3, weights="open_clip_pytorch_model.bin")
    _assert_state(build_clip_encoder(EncoderConfig(name="hf-hub:uwav-test/tiny-clip-bin"), CPU).model, pickled)
    assert hub.requested("HEAD")[-2:] == [
        "/uwav-test/tiny-clip-bin/resolve/main/open_clip_model.safetensors",
        "/uwav-test/tiny-clip-bin/resolve/main/open_clip_pytorch_model.bin",
    ]
    # a repository that is not an open_clip model's
    hub.add_repo_file("uwav-test/not-clip", "open_clip_config.json", b'{"architectures": ["BertModel"]}')
    with pytest.raises(EncoderError, match="open_clip_config.json has no `model_cfg`: not an open_clip model repository"):
        build_clip_encoder(EncoderConfig(name="hf-hub:uwav-test/not-clip", random_init=True), CPU)


def test_a_laion_clap_checkpoint_downloads_by_name(hub: LoopbackHub, tmp_path: Path) -> None:
    state, content = serve_clap_checkpoint(hub)
    encoder = build_clap_encoder(NAMED_CLAP, CPU)
    _assert_state(encoder.model, state)
    assert encoder.identity == (
        f"clap/uwav-tiny-clap/pretrained=630k-audioset-best.pt@lukewys/laion_clap/630k-audioset-best.pt@{_blob_id(content, lfs=True)}"
    )
    assert hub.requested("GET") == ["/lukewys/laion_clap/resolve/main/630k-audioset-best.pt"]
    # the same file named by a catalog is read weights-only, which cannot read it: only files uwav
    # fetched by name from their publisher's repository are unpickled in full
    local = tmp_path / "copy.pt"
    local.write_bytes(content)
    with pytest.raises(EncoderError, match=f"checkpoint file {local} cannot be read"):
        build_clap_encoder(EncoderConfig(name="uwav-tiny-clap", checkpoint=str(local)), CPU)


def _byte_level_vocab() -> dict[str, int]:
    """RoBERTa's special tokens and the 256 byte-level symbols (GPT-2's byte-to-unicode map)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in symbols:
            symbols[byte] = chr(256 + extra)
            extra += 1
    tokens = ["<s>", "<pad>", "</s>", "<unk>", *(symbols[byte] for byte in range(256)), "Ġt", "he", "<mask>"]
    return {token: index for index, token in enumerate(tokens)}


def test_clap_roberta_text_branch_is_built_from_its_config_without_its_weights(
    hub: LoopbackHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """laion_clap would download RoBERTa's ~500 MB of weights; uwav fetches its config and
    tokenizer only and builds the branch from the config (the CLAP checkpoint holds its weights)."""
    from transformers import RobertaModel

    from uwav.features.clap_encoder import _clap_module

    folder = tmp_path / "model_configs"
    shutil.copytree(model_configs.MODEL_CONFIG_DIR, folder)
    roberta_clap = model_configs.shipped_model_config("uwav-tiny-clap")
    roberta_clap["text_cfg"]["model_type"] = "roberta"
    (folder / "uwav-test-clap-roberta.json").write_text(json.dumps(roberta_clap))
    monkeypatch.setattr(model_configs, "MODEL_CONFIG_DIR", folder)
    _clap_module().factory.add_model_config(folder)  # laion_clap's registry scanned ours once, at import
    vocab = _byte_level_vocab()
    roberta = {
        "architectures": ["RobertaForMaskedLM"], "model_type": "roberta", "hidden_size": 768, "num_hidden_layers": 1,
        "num_attention_heads": 12, "intermediate_size": 64, "vocab_size": len(vocab), "max_position_embeddings": 80,
        "type_vocab_size": 1, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "layer_norm_eps": 1e-5,
    }
    for name, content in (("config.json", json.dumps(roberta)), ("vocab.json", json.dumps(vocab)), ("merges.txt", "#version: 0.2\nĠ t\nh e\n")):
        hub.add_repo_file("FacebookAI/roberta-base", name, content.encode())

    encoder = build_clap_encoder(EncoderConfig(name="uwav-test-clap-roberta", random_init=True), CPU)
    assert sorted(hub.requested("GET")) == [f"/FacebookAI/roberta-base/resolve/main/{name}" for name in ("config.json", "merges.txt", "vocab.json")]
    assert isinstance(encoder.model.text_branch, RobertaModel) and encoder.model.text_branch.config.num_hidden_layers == 1
    assert _clap_module().model.RobertaModel is RobertaModel  # laion_clap's name is restored after the build
    # RoBERTa's tokenizer from the fetched files: byte-level symbols, the merges, the special tokens
    assert encoder.hf_tokenizer(" the")["input_ids"] == [vocab["<s>"], vocab["Ġt"], vocab["he"], vocab["</s>"]]
    texts = encoder.encode_text(["This is the sound of Dog", "This is the sound of Cat"])
    assert texts.shape == (2, 64) and np.isfinite(texts).all() and not np.allclose(texts[0], texts[1])
    # a checkpoint of this model (laion_clap's key layout, RoBERTa's keys included) loads into it
    state = _perturbed_state(encoder.model, 5)
    torch.save({"state_dict": state}, tmp_path / "clap.pt")
    _assert_state(build_clap_encoder(EncoderConfig(name="uwav-test-clap-roberta", checkpoint=str(tmp_path / "clap.pt")), CPU).model, state)


# ---------------------------------------------------------------- URL files, mirrors


def test_url_weights_come_from_the_mirror_and_a_wrong_hash_is_refused(hub: LoopbackHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add_file("r2plus1d_18-91a641e6.pth", b"not the weights")  # torchvision's KINETICS400_V1 file name
    encoders = EncodersConfig(r2plus1d=EncoderConfig(name="r2plus1d_18", pretrained="KINETICS400_V1"), weights_mirror=hub.files_url)
    with pytest.raises(WeightsError, match=r"cannot download .*/files/r2plus1d_18-91a641e6.pth into .*invalid hash value"):
        build_encoders(encoders, "cpu", features=["r2plus1d"])
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    assert hub.requested("GET") == ["/files/r2plus1d_18-91a641e6.pth"]
    assert not any(checkpoints.iterdir()), "a refused download leaves nothing in the cache"
    # UWAV_WEIGHTS_MIRROR wins over the catalog's mirror
    monkeypatch.setenv("UWAV_WEIGHTS_MIRROR", f"{hub.url}/elsewhere")
    with pytest.raises(WeightsError, match="HTTP Error 404"):
        build_encoders(encoders, "cpu", features=["r2plus1d"])
    assert hub.requested("GET")[-1] == "/elsewhere/r2plus1d_18-91a641e6.pth"


def _vggish_files(folder: Path) -> tuple[dict[str, bytes], dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """Tiny VGGish weights and PCA parameters named as torch hub names files (`name-<sha256 prefix>.pth`),
    the PCA as torchvggish's release holds it: numpy arrays pickled by numpy 1 (`numpy.core` names)."""
    network = build_vggish_encoder(EncoderConfig(name="uwav-tiny-vggish", random_init=True), CPU).model
    weights = _perturbed_state(network, 6)
    rng = np.random.default_rng(7)
    pca = {"pca_eigen_vectors": rng.standard_normal((16, 16)), "pca_means": rng.standard_normal(16)}
    pca_bytes = _torch_bytes(pca, _use_new_zipfile_serialization=False, pickle_protocol=2)
    pca_bytes = pca_bytes.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")  # protocol 2: text GLOBALs
    files = {}
    for stem, content in (("tiny-vggish", _torch_bytes(weights)), ("tiny-vggish-pca", pca_bytes)):
        files[f"{stem}-{hashlib.sha256(content).hexdigest()[:8]}.pth"] = content
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return files, weights, pca


def test_vggish_pretrained_tag_downloads_weights_and_pca_from_a_mirror(hub: LoopbackHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files, weights, pca = _vggish_files(tmp_path / "mirror")
    for name, content in files.items():
        hub.add_file(name, content)
    folder = tmp_path / "model_configs"
    shutil.copytree(model_configs.MODEL_CONFIG_DIR, folder)
    tiny = model_configs.shipped_model_config("uwav-tiny-vggish")
    weights_name, pca_name = files
    tiny["pretrained"] = {"test-v1": {"weights": f"https://upstream.invalid/{weights_name}", "pca": f"https://upstream.invalid/{pca_name}"}}
    (folder / "uwav-tiny-vggish.json").write_text(json.dumps(tiny))
    monkeypatch.setattr(model_configs, "MODEL_CONFIG_DIR", folder)
    config = EncodersConfig(vggish=EncoderConfig(name="uwav-tiny-vggish", pretrained="test-v1"), weights_mirror=hub.files_url)

    encoder = build_encoders(config, "cpu", features=["vggish"]).vggish
    assert encoder.postprocessed and encoder.identity == f"vggish/uwav-tiny-vggish/pretrained=test-v1@{weights_name}+{pca_name}"
    _assert_state(encoder.model, weights)
    torch.testing.assert_close(encoder.model.pproc.pca_means.flatten(), torch.from_numpy(pca["pca_means"]).float())
    assert sorted(hub.requested("GET")) == sorted(f"/files/{name}" for name in files)
    assert sorted(p.name for p in (tmp_path / "torch" / "hub" / "checkpoints").iterdir()) == sorted(files)
    # a mirror can be a folder (file:// URL); an unknown tag names the known ones
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-2"))
    from_folder = build_encoders(config.model_copy(update={"weights_mirror": (tmp_path / "mirror").as_uri()}), "cpu", features=["vggish"])
    assert from_folder.vggish.identity == encoder.identity
    with pytest.raises(EncoderError, match="pretrained tag 'audioset' is not supported \\(known: test-v1\\)"):
        build_vggish_encoder(EncoderConfig(name="uwav-tiny-vggish", pretrained="audioset"), CPU)


# ---------------------------------------------------------------- offline, interrupted


def test_offline_modes_refuse_a_missing_file_without_opening_a_connection(hub: LoopbackHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serve_tiny_clip(hub)
    clip = EncoderConfig(name=f"hf-hub:{TINY_CLIP_REPO}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as raised:
        build_clip_encoder(clip, CPU)
    cache = tmp_path / "hf" / "hub" / "models--uwav-test--tiny-clip"
    assert str(raised.value) == (
        f"CLIP 'hf-hub:{TINY_CLIP_REPO}': weights file hf://{TINY_CLIP_REPO}/open_clip_config.json is not in the cache "
        f"{cache} and HF_HUB_OFFLINE=1 forbids downloading it; run `uwav weights fetch -c CATALOG` on a machine "
        "with network and copy its cache here"
    )
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("UWAV_OFFLINE", "1")  # everything: the hub and URL files
    with pytest.raises(WeightsError, match="UWAV_OFFLINE=1 forbids"):
        build_clip_encoder(clip, CPU)
    with pytest.raises(WeightsError, match=re.escape(f"is not in the cache {tmp_path / 'torch' / 'hub' / 'checkpoints'} and UWAV_OFFLINE=1")):
        build_encoders(EncodersConfig(r2plus1d=EncoderConfig(name="r2plus1d_18", pretrained="KINETICS400_V1"), weights_mirror=hub.files_url), "cpu", features=["r2plus1d"])
    assert hub.requests == []


def test_an_interrupted_download_does_not_pass_as_complete(hub: LoopbackHub) -> None:
    state = serve_tiny_clip(hub)
    weights = f"/{TINY_CLIP_REPO}/resolve/main/open_clip_model.safetensors"
    hub.cut_after(weights, 100)  # 100 bytes, a dropped connection, then 503 to the retry
    clip = EncoderConfig(name=f"hf-hub:{TINY_CLIP_REPO}")
    with pytest.raises(WeightsError, match=f"cannot download hf://{TINY_CLIP_REPO}/.*503"):
        build_clip_encoder(clip, CPU)
    assert hub.requested("GET").count(weights) == 2  # huggingface_hub tried again after the cut
    assert HubFile(TINY_CLIP_REPO, ("open_clip_model.safetensors",)).cached() is None
    cache = HubFile(TINY_CLIP_REPO, ()).cache_folder()
    assert not list(cache.rglob("*.incomplete")) and len(list((cache / "blobs").iterdir())) == 1  # the config only
    hub.heal()
    _assert_state(build_clip_encoder(clip, CPU).model, state)


# ---------------------------------------------------------------- the commands


def _catalog(folder: Path, encoders: dict) -> Path:
    path = folder / "data_catalog.yaml"
    data = {
        "datasets": {"llp": {"kind": "llp", "annotations": "llp"}, "unav": {"kind": "unav100", "annotations": "unav.json", "role": "pretrain"}},
        "target": "llp",
        "pretrain": "unav",
        "encoders": encoders,
    }
    path.write_text(yaml.safe_dump(data))
    return path


def test_weights_fetch_fills_the_caches_and_a_run_then_reads_only_them(hub: LoopbackHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serve_tiny_clip(hub)
    serve_clap_checkpoint(hub)
    catalog = _catalog(tmp_path, {
        "clip": {"name": f"hf-hub:{TINY_CLIP_REPO}"},
        "clap": NAMED_CLAP.model_dump(exclude_defaults=True),
        "r2plus1d": {"name": "uwav-tiny-r2plus1d", "random_init": True},
    })
    # in a subprocess, where huggingface_hub reads HF_ENDPOINT and HF_HOME at import
    done = subprocess.run(
        [sys.executable, "-m", "uwav", "weights", "fetch", "-c", str(catalog)],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [line.split("  ") for line in done.stdout.splitlines()]
    assert [(key, source) for key, source, _, _ in lines] == [
        ("encoders.clip", f"hf://{TINY_CLIP_REPO}/open_clip_config.json"),
        ("encoders.clip", f"hf://{TINY_CLIP_REPO}/{{open_clip_model.safetensors,open_clip_pytorch_model.bin}}"),
        ("encoders.clap", "hf://lukewys/laion_clap/630k-audioset-best.pt"),
    ]
    for _, _, size, path in lines:
        assert re.fullmatch(r"\d+(\.\d)? (B|KB|MB)", size) and Path(path).is_file() and Path(path).is_relative_to(tmp_path / "hf")

    result = CliRunner().invoke(app, ["catalog", "check", "-c", str(catalog)])
    weight_rows = [line.split() for line in result.output.splitlines() if " weights " in line]
    assert [(row[0], row[1]) for row in weight_rows] == [("ok", "encoders.clip")] * 2 + [("ok", "encoders.clap")]

    asked = len(hub.requests)  # the run: encoders built from the caches alone
    encoders = build_encoders(load_catalog(catalog).encoders, "cpu", features=["clip", "clap", "r2plus1d"], base_dir=tmp_path)
    assert len(hub.requests) == asked
    assert encoders.clap.encode_audio(np.zeros((1, 48000), np.float32)).shape == (1, 64)

    # offline with an empty cache: catalog check says missing (exit 1), fetch is one line (exit 2)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("UWAV_OFFLINE", "1")
    result = CliRunner().invoke(app, ["catalog", "check", "-c", str(catalog)])
    assert result.exit_code == 1 and f"missing  encoders.clip weights hf://{TINY_CLIP_REPO}/open_clip_config.json" in result.output
    result = CliRunner().invoke(app, ["weights", "fetch", "-c", str(catalog)])
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"error: encoders.clip 'hf-hub:{TINY_CLIP_REPO}': weights file") and "UWAV_OFFLINE=1" in result.stderr
    assert len(hub.requests) == asked


# ---------------------------------------------------------------- the catalog


def test_catalog_encoder_sources_and_the_mirror_setting(tmp_path: Path) -> None:
    from uwav.stages.planner import stage_settings

    defaults = EncodersConfig()  # the releases' encoders
    assert (defaults.clip.name, defaults.clip.pretrained) == ("ViT-L-14", "openai")
    assert (defaults.clap.name, defaults.clap.pretrained, defaults.clap.fusion) == ("HTSAT-tiny", "630k-fusion-best.pt", True)
    assert (defaults.r2plus1d.name, defaults.r2plus1d.pretrained) == ("r2plus1d_18", "KINETICS400_V1")
    assert load_catalog(REPO_ROOT / "data_catalog.yaml").encoders == defaults

    base = {"datasets": {"t": {"kind": "llp", "annotations": "t"}, "p": {"kind": "unav100", "annotations": "p.json", "role": "pretrain"}}, "target": "t", "pretrain": "p"}
    hub_model = parse_catalog({**base, "encoders": {"clip": {"name": "hf-hub:org/clip"}}}, tmp_path).encoders.clip
    assert hub_model.hub_model and hub_model.downloads_weights
    for encoders, message in (
        ({"clip": {"name": "hf-hub:org/clip", "pretrained": "openai"}}, "an `hf-hub:` model brings its own weights"),
        ({"clip": {"name": "hf-hub:org/clip", "checkpoint": "a.pt", "random_init": True}}, "exactly one of"),
        ({"clap": {"name": "hf-hub:org/clap"}}, "open_clip's \\(CLIP only\\): encoders.clap"),
    ):
        with pytest.raises(CatalogError, match=message):
            parse_catalog({**base, "encoders": encoders}, tmp_path)
    # a mirror serves the same hash-checked files: it changes no fingerprint
    mirrored = parse_catalog({**base, "encoders": {"weights_mirror": "https://mirror.example/weights"}}, tmp_path)
    assert mirrored.encoders.weights_mirror == "https://mirror.example/weights"
    assert "weights_mirror" not in mirrored.encoders.model_dump()
    assert stage_settings(mirrored, "features") == stage_settings(parse_catalog(base, tmp_path), "features")
