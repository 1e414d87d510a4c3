"""The planner: a stage's code fingerprint covers the code that stage runs, and only that."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from uwav.catalog import load_catalog
from uwav.features import configs as model_configs
from uwav.stages import STAGES, compute_fingerprints, stage_code_files
from uwav.stages.planner import PACKAGE_ROOT

from tests.test_stages import small_catalog, write_catalog


def source_copy(target: Path) -> Path:
    shutil.copytree(PACKAGE_ROOT, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def stale_after(tmp_path: Path, edit: Callable[[Path], None], catalog_data: dict | None = None) -> list[str]:
    """The stages whose fingerprint changes when `edit` changes a copy of the package (its root)."""
    catalog = load_catalog(write_catalog(tmp_path, catalog_data or small_catalog()))
    before = compute_fingerprints(catalog, source_copy(tmp_path / "before"))
    edited = source_copy(tmp_path / "after")
    edit(edited)
    after = compute_fingerprints(catalog, edited)
    assert set(before) == set(after) == set(STAGES)
    return [stage for stage in STAGES if before[stage] != after[stage]]


def stale_after_editing(tmp_path: Path, module: str) -> list[str]:
    """The stages whose fingerprint changes when `module` (package-relative) gains a line."""

    def add_a_line(root: Path) -> None:
        with (root / module).open("a") as handle:
            handle.write("\n# an edit\n")

    return stale_after(tmp_path, add_a_line)


def test_editing_the_report_makes_only_evaluate_stale(tmp_path: Path) -> None:
    assert stale_after_editing(tmp_path, "evaluation/report.py") == ["evaluate"]


def test_editing_the_han_loss_leaves_stage_one_fresh(tmp_path: Path) -> None:
    assert stale_after_editing(tmp_path, "training/losses.py") == ["train", "evaluate"]


@pytest.mark.parametrize(
    ("module", "stale"),
    [
        ("stages/promotion.py", []),  # promotion and parsing run after the pipeline, not in a stage
        ("stages/parse.py", []),
        ("catalog.py", []),  # settings reach fingerprints as values
        ("models/plg.py", ["pretrain", "calibrate", "pseudo_labels", "train", "evaluate"]),
        ("features/encoders.py", ["features"]),
    ],
)
def test_other_edits_reach_exactly_the_stages_that_run_them(tmp_path: Path, module: str, stale: list[str]) -> None:
    assert stale_after_editing(tmp_path, module) == stale


@pytest.mark.parametrize(
    ("config", "stale"),
    [
        ("uwav-tiny-clip", ["features", "pretrain", "calibrate", "pseudo_labels", "train", "evaluate"]),
        ("uwav-tiny-vggish", ["features"]),  # not configured here: its features are not computed
    ],
)
def test_an_edited_model_config_restales_what_its_features_feed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: str, stale: list[str]
) -> None:
    """Stage 1 reads the pre-training videos' features, not the features stage's result (new
    target videos must not retrain it), so it names the configured encoders' configs itself: an
    edited tiny CLIP config under the same name is another network (found when the features were
    re-encoded and the generator trained on the old ones stayed fresh)."""
    tiny = {name: {"name": f"uwav-tiny-{name}", "random_init": True} for name in ("clip", "clap", "r2plus1d")}

    def edit_the_config(root: Path) -> None:
        path = root / "features" / "model_configs" / f"{config}.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "embed_dim": 32}))
        monkeypatch.setattr(model_configs, "MODEL_CONFIG_DIR", path.parent)

    assert stale_after(tmp_path, edit_the_config, {**small_catalog(), "encoders": tiny}) == stale


def test_lazy_imports_and_package_data_count() -> None:
    features = stage_code_files("features")
    # `features` imports the encoders inside functions; their configs are data the code reads.
    assert "features/encoders.py" in features
    assert "features/model_configs/uwav-tiny-clip.json" in features
    assert "training/losses.py" not in stage_code_files("pretrain")
    assert "evaluation/report.py" not in stage_code_files("train")
    for stage in STAGES:
        assert f"stages/{stage}.py" in stage_code_files(stage)
        assert "stages/planner.py" not in stage_code_files(stage)


def test_the_planner_imports_no_torch() -> None:
    code = (
        "import sys, uwav.stages.planner as planner;"
        "[planner.stage_code_files(s) for s in planner.STAGES];"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'open_clip', 'laion_clap')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
