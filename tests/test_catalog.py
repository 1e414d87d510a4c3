from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from uwav.catalog import CatalogError, check_catalog, effective_settings, load_catalog, parse_catalog
from uwav.cli import app
from uwav.recipes import RECIPE_SETTINGS

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


def test_paper_recipe_corrections() -> None:
    """Paper section 8: batch 64 and 80 epochs for both models; eq. 1-2: parallel HAN update."""
    catalog = parse_catalog(MINIMAL, Path("."))
    assert catalog.recipe == "paper"
    assert (catalog.stages.pretrain.batch_size, catalog.stages.pretrain.epochs) == (64, 80)
    assert catalog.stages.train.han.update == "parallel" and catalog.stages.train.han.projection == "linear"
    assert catalog.stages.train.decision == "at_least" and catalog.stages.calibrate.method == "f1"


def test_released_recipe_fills_settings_and_explicit_ones_win(tmp_path: Path) -> None:
    data = {**MINIMAL, "recipe": "released", "stages": {"train": {"epochs": 3, "han": {"heads": 8}}, "pretrain": {"betas": [0.8, 0.9]}}}
    catalog = load_catalog(write(tmp_path, data))
    train, pretrain = catalog.stages.train, catalog.stages.pretrain
    assert train.epochs == 3 and train.han.heads == 8  # explicit
    assert (train.han.layers, train.han.ffn, train.han.update, train.han.projection) == (5, 2048, "sequential", "mlp")
    assert (train.weight_decay, train.min_lr, train.lr_schedule, train.decision) == (1e-4, 5e-6, "per_epoch", "above")
    assert (train.reweight_form, train.mixup_lambda) == ("released", "per_batch")
    assert pretrain.betas == (0.8, 0.9)  # explicit
    assert (pretrain.architecture, pretrain.heads, pretrain.dropout, pretrain.grad_clip) == ("released", 16, 0.3, 2.0)
    assert (pretrain.weight_decay, pretrain.present_class_weight, pretrain.select) == (1e-3, 5.0, "best_val_av_f1")
    assert catalog.stages.calibrate.method == "released_f1"
    assert catalog.stages.pseudo_labels.soft_temperature == 2.0
    assert catalog.stages.segment.unav_segment_rule == "any_overlap"
    sources = {key: source for key, _, source in effective_settings(catalog)}
    assert sources["stages.train.epochs"] == "catalog" and sources["stages.train.han.heads"] == "catalog"
    assert sources["stages.train.han.layers"] == "recipe released"
    assert sources["stages.pretrain.betas"] == "catalog"
    assert sources["stages.train.seed"] == "default"
    # Every recipe key names a real setting.
    assert {f"stages.{key}" for key in RECIPE_SETTINGS["released"]} <= set(sources)


def test_cli_catalog_check_prints_effective_settings_and_sources(tmp_path: Path) -> None:
    data = {**MINIMAL, "recipe": "released", "stages": {"train": {"epochs": 3}}}
    result = CliRunner().invoke(app, ["catalog", "check", "--catalog", str(write(tmp_path, data))])
    assert result.exit_code == 1, result.output  # the annotations are missing; the settings are printed anyway
    assert "recipe=released" in result.output
    lines = {line.split()[0]: line.split()[1:] for line in result.output.splitlines() if line.strip().startswith("stages.")}
    assert lines["stages.train.epochs"] == ["3", "catalog"]
    assert lines["stages.train.han.update"] == ["sequential", "recipe", "released"]
    assert lines["stages.train.seed"] == ["0", "default"]


def test_unknown_recipe_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="recipe"):
        load_catalog(write(tmp_path, {**MINIMAL, "recipe": "mine"}))


def test_a_catalog_without_a_pretraining_set_is_valid(tmp_path: Path) -> None:
    """Stage 1 is not needed to evaluate or parse with a released model, or to train from released
    pseudo-labels (VALOR's release has no UnAV-100): `pretrain` is optional."""
    data = {"datasets": {"target": MINIMAL["datasets"]["target"]}, "target": "target"}
    catalog = load_catalog(write(tmp_path, data))
    assert catalog.pretrain is None
    result = CliRunner().invoke(app, ["catalog", "check", "--catalog", str(write(tmp_path, data))])
    assert "pretrain=None" in result.output and "Traceback" not in result.output


def test_a_missing_key_is_named_with_its_fix_and_nothing_else(tmp_path: Path) -> None:
    """It used to print `pretrain: Field required (got {...})` with the whole parsed catalog."""
    data = {"datasets": MINIMAL["datasets"], "pretrain": "pre"}
    with pytest.raises(CatalogError) as raised:
        load_catalog(write(tmp_path, data))
    lines = str(raised.value).splitlines()
    assert lines[1:] == ["  target: required key missing: add `target: <name>` naming the entry of `datasets` to train and evaluate on"]
    with pytest.raises(CatalogError) as raised:
        load_catalog(write(tmp_path, {**MINIMAL, "datasets": {**MINIMAL["datasets"], "x": {"annotations": "a"}}}))
    assert "datasets.x.kind: required key missing: add `kind:` (one of llp, unav100, ave, custom, synthetic)" in str(raised.value)
    # A check of the whole catalog names its fault without repeating the catalog either.
    with pytest.raises(CatalogError) as raised:
        load_catalog(write(tmp_path, {**MINIMAL, "target": "nope"}))
    assert "names no entry of `datasets`" in str(raised.value) and "'kind'" not in str(raised.value)
    assert "Value error" not in str(raised.value)


def test_released_pseudo_labels_need_their_folder(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"stages.pseudo_labels: source: released needs `released_root`"):
        load_catalog(write(tmp_path, {**MINIMAL, "stages": {"pseudo_labels": {"source": "released"}}}))
    data = {**MINIMAL, "stages": {"pseudo_labels": {"source": "released", "released_root": "valor/data"}}}
    catalog = load_catalog(write(tmp_path, data))
    assert catalog.locations()["stages.pseudo_labels.released_root"] == str(tmp_path / "valor" / "data")


def test_valor_recipe_is_valors_han_training_and_explicit_settings_win(tmp_path: Path) -> None:
    """`scripts/train_valor.sh` and `main_avvp.py` (VALOR+ / VALOR++ change width, depth and lr in the catalog)."""
    data = {**MINIMAL, "recipe": "valor", "stages": {"train": {"lr": 3e-4, "min_lr": 3e-6, "han": {"d_model": 256, "layers": 4}}}}
    catalog = load_catalog(write(tmp_path, data))
    train = catalog.stages.train
    assert (train.lr, train.min_lr, train.han.d_model, train.han.layers) == (3e-4, 3e-6, 256, 4)  # VALOR+, explicit
    assert (train.han.inputs, train.han.update, train.han.projection, train.han.heads, train.han.ffn) == (
        "official", "sequential", "linear", 8, 1024
    )  # fmt: skip
    assert (train.epochs, train.batch_size, train.warmup_epochs, train.lr_schedule) == (60, 64, 10, "per_epoch")
    assert (train.betas, train.weight_decay, train.grad_clip, train.decision) == ((0.5, 0.999), 1e-3, 1.0, "at_least")
    assert (train.labels, train.reweight, train.mixup, train.guided_learning) == ("binary", False, False, False)
    default = load_catalog(write(tmp_path, {**MINIMAL, "recipe": "valor"})).stages.train
    assert (default.lr, default.min_lr, default.han.d_model, default.han.layers) == (1e-4, 1e-6, 512, 1)  # VALOR
    sources = {key: source for key, _, source in effective_settings(catalog)}
    assert sources["stages.train.lr"] == "catalog" and sources["stages.train.labels"] == "recipe valor"
    assert {f"stages.{key}" for key in RECIPE_SETTINGS["valor"]} <= set(sources)
