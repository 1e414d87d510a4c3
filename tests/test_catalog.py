from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from uwav.catalog import CatalogError, check_catalog, load_catalog, parse_catalog
from uwav.cli import app

REPO_ROOT = Path(__file__).resolve().parents[1]

MINIMAL = {
    "datasets": {
        "target": {"kind": "llp", "annotations": "llp"},
        "pre": {"kind": "unav100", "annotations": "unav.json", "role": "pretrain"},
    },
    "target": "target",
    "pretrain": "pre",
}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "data_catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_repository_catalog_parses_with_paper_defaults() -> None:
    catalog = load_catalog(REPO_ROOT / "data_catalog.yaml")
    assert catalog.target == "llp" and catalog.pretrain == "unav100"
    train = catalog.stages.train
    assert (train.lr, train.min_lr, train.warmup_epochs, train.epochs, train.batch_size) == (1e-4, 5e-6, 10, 80, 64)
    assert (train.mixup_alpha, train.reweight_w, train.grad_clip) == (1.7, 0.5, 1.0)
    assert (train.han.ffn, train.han.heads, train.han.dropout, train.han.layers) == (1024, 8, 0.1, 1)
    assert catalog.stages.pretrain.layers == 5 and catalog.stages.pretrain.min_lr == 1e-5
    assert catalog.stages.features.prompts_visual == "A photo of {}"
    assert catalog.stages.features.prompts_audio == "This is the sound of {}"


def test_relative_paths_resolve_against_the_catalog_file_and_urls_are_kept(tmp_path: Path) -> None:
    data = {**MINIMAL, "stores": {"features": "memory://feats.zarr", "runs": "out/runs"}}
    catalog = load_catalog(write(tmp_path, data))
    assert catalog.resolve(catalog.dataset("target").annotations) == str(tmp_path / "llp")
    assert catalog.store("features") == "memory://feats.zarr"
    assert catalog.store("runs") == str(tmp_path / "out" / "runs")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"stages": {"train": {"learning_rate": 1}}}, "stages.train.learning_rate: unknown key"),
        ({"stages": {"train": {"epochs": "many"}}}, "stages.train.epochs"),
        ({"datasets": {"x": {"kind": "youtube", "annotations": "a"}}}, "datasets.x.kind"),
        ({"target": "nope"}, "names no entry of `datasets`"),
        ({"encoders": {"clip": {"name": "ViT-B-32"}}}, "exactly one of"),
        ({"datasets": {"c": {"kind": "custom", "annotations": "t.csv"}}}, "needs `classes`"),
        ({"colour": "blue"}, "colour: unknown key"),
    ],
)
def test_bad_catalogs_are_refused_naming_the_key(tmp_path: Path, change: dict, message: str) -> None:
    data = {**MINIMAL, **change}
    if "datasets" in change:
        data["datasets"] = {**MINIMAL["datasets"], **change["datasets"]}
    with pytest.raises(CatalogError) as error:
        load_catalog(write(tmp_path, data))
    assert message in str(error.value)
    assert str(tmp_path / "data_catalog.yaml") in str(error.value)


def test_unreadable_and_non_mapping_catalogs(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "absent.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(CatalogError, match="must be a mapping"):
        load_catalog(path)
    with pytest.raises(CatalogError, match="base_dir: unknown key"):
        parse_catalog({**MINIMAL, "base_dir": "/"}, tmp_path)


def test_check_reports_present_and_missing_locations(tmp_path: Path) -> None:
    (tmp_path / "llp").mkdir()
    catalog = load_catalog(write(tmp_path, MINIMAL))
    found = {key: exists for key, _, exists in check_catalog(catalog)}
    assert found["datasets.target.annotations"] is True
    assert found["datasets.pre.annotations"] is False


def test_cli_catalog_check(tmp_path: Path) -> None:
    (tmp_path / "llp").mkdir()
    result = CliRunner().invoke(app, ["catalog", "check", "--catalog", str(write(tmp_path, MINIMAL))])
    assert result.exit_code == 1, result.output  # the UnAV json is missing
    assert "datasets.pre.annotations" in result.output and "missing" in result.output
    assert "datasets.target.annotations" in result.output
    bad = write(tmp_path, {**MINIMAL, "oops": 1})
    result = CliRunner().invoke(app, ["catalog", "check", "--catalog", str(bad)])
    assert result.exit_code == 2
    assert "oops: unknown key" in result.output


@pytest.mark.parametrize(
    ("segment", "where"),
    [({"max_side": 96}, "stages.features.max_side"), ({"audio_rate": 16000}, "CLAP encoder's own sample rate")],
)
def test_settings_moved_out_of_the_segment_stage_say_where(tmp_path: Path, segment: dict, where: str) -> None:
    with pytest.raises(CatalogError, match="stages.segment") as raised:
        load_catalog(write(tmp_path, {**MINIMAL, "stages": {"segment": segment}}))
    assert where in str(raised.value)
    moved = load_catalog(write(tmp_path, {**MINIMAL, "stages": {"features": {"max_side": 96}}}))
    assert moved.stages.features.max_side == 96
