"""Typed view of `data_catalog.yaml`: datasets, stores, encoders, per-stage settings.

Every path lives in the catalog (Kedro-style): relative paths resolve against the catalog file's
folder; fsspec URLs (`memory://`, `s3://`, ...) are kept as they are. Unknown keys and wrong types
are refused with a message naming the key. Stage settings default to the paper's
hyper-parameters (docs/METHOD.md); project decisions are marked as such.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from uwav.contracts import Decision
from uwav.errors import UwavError
from uwav.recipes import RECIPE_SETTINGS, Recipe, apply_recipe, leaf_keys

DatasetKind = Literal["llp", "unav100", "ave", "custom", "synthetic"]
Device = Literal["auto", "cpu", "cuda"]
# Compute precision of encoders and of the training and prediction forward passes. "bf16"
# autocasts matrix products to bfloat16 (weights, optimizer state and losses stay float32): about
# 1.8x faster on GPUs and on CPUs with AVX512-BF16 or AMX; on CPUs without native bfloat16 it runs
# fp32 (`uwav.devices.effective_precision`); numerics differ from the reference's float32, so
# "fp32" is the default.
Precision = Literal["fp32", "bf16"]
# How a target dataset is trained and scored: "llp" (the LLP protocol) or "ave" (AVE's recipe and
# segment accuracy besides). A synthetic target set's events are laid out like the task's data.
Task = Literal["llp", "ave"]
# What the encoders compute from media: the paper's features (CLIP on each segment's centre frame,
# prompts "A photo of <name>" / "This is the sound of <name>") or VALOR's scripts' (README
# "Encoders and features": 8-fps frame sampling, squash resize, L2-normalised CLIP, VALOR's captions).
Extraction = Literal["paper", "valor"]
# AdamW's (beta1, beta2).
Betas = tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]]
# "per_step": warm-up and cosine move every optimisation step (uwav's choice, smoother);
# "per_epoch": the release's per-epoch formula (`uwav.training.schedule`).
LrSchedule = Literal["per_step", "per_epoch"]
PositiveInt = Annotated[int, Field(gt=0)]
UnitFloat = Annotated[float, Field(ge=0.0, le=1.0)]


class CatalogError(UwavError, ValueError):
    """A catalog that cannot be used; the message names the file and the key at fault."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def is_url(location: str) -> bool:
    """True for fsspec URLs (`memory://x`, `s3://bucket/x`), which are not resolved as local paths."""
    return "://" in location


# ---------------------------------------------------------------- datasets


class SyntheticSpec(_Strict):
    """How `uwav synth` generates a synthetic dataset (deterministic by seed)."""

    mode: Literal["media", "features"] = "media"
    seed: int = 0
    n_pretrain: PositiveInt = 24
    n_train: PositiveInt = 40
    n_val: PositiveInt = 12
    n_test: PositiveInt = 12
    target_layout: Task = "llp"


class DatasetConfig(_Strict):
    """One named dataset.

    `annotations` is the folder with the CSVs (llp), the JSON file (unav100), the folder with
    Annotations.txt + splits.csv (ave), the manifest table (custom), or the generated folder
    (synthetic). `classes` overrides the reader's class list (required for custom datasets).
    """

    kind: DatasetKind
    annotations: str
    media_root: str | None = None
    dense: str | None = None
    classes: list[str] | None = None
    role: Literal["target", "pretrain"] = "target"
    synthetic: SyntheticSpec | None = None

    @property
    def task(self) -> Task:
        """"ave" for AVE and AVE-like synthetic data, "llp" otherwise."""
        if self.kind == "ave" or (self.synthetic is not None and self.synthetic.target_layout == "ave"):
            return "ave"
        return "llp"

    @model_validator(mode="after")
    def _kind_specific(self) -> DatasetConfig:
        if self.kind == "custom" and not self.classes:
            raise ValueError("a custom dataset needs `classes`")
        if self.kind == "synthetic" and self.synthetic is None:
            raise ValueError("a synthetic dataset needs a `synthetic` block")
        if self.kind != "synthetic" and self.synthetic is not None:
            raise ValueError("`synthetic` is only valid with kind: synthetic")
        if self.dense is not None and self.kind != "custom":
            raise ValueError("`dense` is only valid with kind: custom")
        return self


# ---------------------------------------------------------------- stores and encoders


class StoresConfig(_Strict):
    features: str = "store/features.zarr"
    pseudo_labels: str = "store/pseudo_labels"
    runs: str = "runs"


# open_clip's prefix of a model named by its Hugging Face repository (`hf-hub:ORG/REPO`), which
# holds the model's config and its weights.
HF_HUB_MODEL_PREFIX = "hf-hub:"


class EncoderConfig(_Strict):
    """An encoder: a named model config plus where its weights come from.

    Exactly one of `pretrained`, `checkpoint` (a local file) or `random_init: true` (tiny offline
    configurations for tests and the demo). `pretrained` names published weights, downloaded on
    first use into the standard caches (`uwav.features.weights`): an open_clip tag (`openai`), a
    laion_clap checkpoint (`630k-fusion-best.pt`, `630k-audioset-fusion-best.pt`, `630k-best.pt`,
    `630k-audioset-best.pt`), a torchvision weights tag (`KINETICS400_V1`, `IMAGENET1K_V1`) or
    VGGish's (`torchvggish-v0.1`). A CLIP named `hf-hub:ORG/REPO` brings its weights from that
    repository, as in open_clip: it takes no `pretrained`, and `checkpoint` or `random_init`
    replace its weights. `fusion` (CLAP only): build laion_clap's feature-fusion model
    (`enable_fusion`), which the fusion checkpoints (VALOR's and UWAV's `630k-fusion-best.pt`) need.
    """

    name: str
    pretrained: str | None = None
    checkpoint: str | None = None
    random_init: bool = False
    precision: Precision = "fp32"
    fusion: bool = False

    @property
    def hub_model(self) -> bool:
        """Named by its Hugging Face repository (`hf-hub:ORG/REPO`)."""
        return self.name.startswith(HF_HUB_MODEL_PREFIX)

    @property
    def downloads_weights(self) -> bool:
        """Whether the weights are published ones (a `pretrained` tag or an `hf-hub:` model's own)."""
        return self.checkpoint is None and not self.random_init

    @model_validator(mode="after")
    def _one_weight_source(self) -> EncoderConfig:
        sources = sum([self.pretrained is not None, self.checkpoint is not None, self.random_init])
        if self.hub_model and self.pretrained is not None:
            raise ValueError(
                f"encoder {self.name!r}: an `hf-hub:` model brings its own weights; remove `pretrained` "
                "(`checkpoint` or `random_init: true` replace them)"
            )
        if sources > 1 or (sources == 0 and not self.hub_model):
            raise ValueError(
                f"encoder {self.name!r}: give exactly one of `pretrained`, `checkpoint`, `random_init: true`"
            )
        return self


# The `EncodersConfig` fields that are encoders (the others are settings of all of them).
ENCODER_FIELDS: tuple[str, ...] = ("clip", "clap", "r2plus1d", "vggish", "resnet152")


class EncodersConfig(_Strict):
    """The segment encoders. `vggish` and `resnet152` (the AVVP release's audio and 2-D features,
    for `stages.train.han.inputs: official`) are built only where a stage computes their features.
    The defaults are the releases' encoders (CLIP ViT-L/14 `openai`, CLAP HTSAT-tiny
    `630k-fusion-best.pt` with fusion, R(2+1)D-18 `KINETICS400_V1`).

    `weights_mirror`: a URL (`https://...`, `file:///...`) serving the URL-downloaded weights
    (torchvision's, VGGish's) under their upstream file names, used instead of their upstream;
    the environment's `UWAV_WEIGHTS_MIRROR` wins. Hub files follow `HF_ENDPOINT`. Each file's hash
    is checked whatever serves it, so the mirror is not part of any fingerprint (excluded from dumps).
    """

    clip: EncoderConfig = EncoderConfig(name="ViT-L-14", pretrained="openai")
    clap: EncoderConfig = EncoderConfig(name="HTSAT-tiny", pretrained="630k-fusion-best.pt", fusion=True)
    r2plus1d: EncoderConfig = EncoderConfig(name="r2plus1d_18", pretrained="KINETICS400_V1")
    vggish: EncoderConfig = EncoderConfig(name="vggish", checkpoint="checkpoints/vggish.pth")
    resnet152: EncoderConfig = EncoderConfig(name="resnet152", checkpoint="checkpoints/resnet152.pth")
    weights_mirror: str | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _clap_and_clip_options(self) -> EncodersConfig:
        fused = [key for key in ENCODER_FIELDS if key != "clap" and getattr(self, key).fusion]
        if fused:
            raise ValueError(f"`fusion` is a CLAP option; remove it from encoders.{', encoders.'.join(fused)}")
        hub_models = [key for key in ENCODER_FIELDS if key != "clip" and getattr(self, key).hub_model]
        if hub_models:
            raise ValueError(
                f"`{HF_HUB_MODEL_PREFIX}` models are open_clip's (CLIP only): encoders.{', encoders.'.join(hub_models)}"
            )
        return self


# ---------------------------------------------------------------- stage settings


# Keys that left `stages.segment` for the stage that uses them (a catalog naming one is told where).
MOVED_SEGMENT_KEYS = {
    "max_side": "stages.features.max_side (the features stage decodes the frames)",
    "audio_rate": "nowhere: audio is decoded at the CLAP encoder's own sample rate; delete the key",
}


class SegmentSettings(_Strict):
    """Reading, validating and probing the datasets' media.

    `unav_segment_rule`: when a UnAV-100 event (in seconds) labels a 1-s segment: `half_covered`
    (METHOD decision: the class's events cover at least half of it) or `any_overlap` (the UWAV
    release: every segment the event overlaps at all, [floor(start), ceil(end))).
    """

    workers: PositiveInt = 2
    unav_segment_rule: Literal["half_covered", "any_overlap"] = "half_covered"

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        moved = [f"stages.segment.{key} moved to {MOVED_SEGMENT_KEYS[key]}" for key in MOVED_SEGMENT_KEYS if isinstance(data, dict) and key in data]
        if moved:
            raise ValueError("; ".join(moved))
        return data


class FeaturesSettings(_Strict):
    """Which features feed the models and how they are computed.

    `source`: `encode` runs the encoders on decoded media, `official` imports the LLP
    release's pre-extracted features (and encodes CLIP / CLAP from media), `released` imports
    everything from the public feature releases under `released_root` (UWAV / VALOR layout,
    `uwav.features.released`; no media needed), `synthetic` takes the synthetic feature-mode arrays.
    `extraction` (what the encoders compute from media, for `encode`, `official` and `uwav parse`):
    the paper's features or VALOR's (`Extraction`); with `valor` the class prompts are VALOR's
    captions, so `prompts_visual` / `prompts_audio` are refused.
    """

    source: Literal["encode", "official", "released", "synthetic"] = "encode"
    extraction: Extraction = "paper"
    official_root: str | None = None
    released_root: str | None = None
    # Store the AVVP release's 8 ResNet-152 frames per segment besides their mean (the HAN reads
    # the mean only; the frames are 3.9 GB for LLP in float16 and most of the import's time).
    resnet_frames: bool = False
    dtype: Literal["float16", "float32"] = "float16"
    batch_size: PositiveInt = 64
    workers: PositiveInt = 2
    device: Device = "auto"
    max_side: PositiveInt | None = 336  # caps decoded centre frames' longer side (CLIP resizes to 224 later); saves memory
    prompts_visual: str = "A photo of {}"
    prompts_audio: str = "This is the sound of {}"

    @model_validator(mode="after")
    def _valor_prompts_are_valors(self) -> FeaturesSettings:
        templates = sorted({"prompts_visual", "prompts_audio"} & self.model_fields_set)
        if self.extraction == "valor" and templates:
            raise ValueError(
                f"extraction: valor uses VALOR's class captions; remove {' and '.join(templates)} "
                "(templates of the paper's extraction)"
            )
        return self


class PretrainSettings(_Strict):
    """Stage 1, the temporal pseudo-label generator (METHOD.md "Stage 1").

    Decision: transformer width = encoder dimension, 8 heads, FFN 4x width. Batch 64 and 80 epochs
    (paper section 8: "for both models").
    - `architecture`: `encoder_width` (METHOD: blocks of the encoder's width, logits = E g_t) or
      `released` (the UWAV release: MLP to `hidden_dim`, blocks, MLP back, fixed logit scales).
    - `present_class_weight`: loss weight of the classes present anywhere in the video (release: 5).
    - `select`: keep the `last` epoch, or the epoch with the best UnAV-validation segment-level
      audio-visual F1 (`best_val_av_f1`, the release; prediction p^v p^a >= 0.5).
    - `checkpoint`: a released generator's state dict (`torch.save(model.state_dict())` of the
      UWAV release's TemporalTransformer) registered instead of training one.
    """

    architecture: Literal["encoder_width", "released"] = "encoder_width"
    hidden_dim: PositiveInt = 1024  # width of the `released` architecture
    layers: PositiveInt = 5
    heads: PositiveInt = 8
    ffn_multiplier: PositiveInt = 4
    dropout: UnitFloat = 0.1
    epochs: PositiveInt = 80
    batch_size: PositiveInt = 64
    lr: float = 1e-4
    min_lr: float = 1e-5
    warmup_epochs: int = Field(10, ge=0)
    lr_schedule: LrSchedule = "per_step"
    betas: Betas = (0.9, 0.999)
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    present_class_weight: float = Field(1.0, gt=0)
    select: Literal["last", "best_val_av_f1"] = "last"
    checkpoint: str | None = None
    seed: int = 0
    device: Device = "auto"
    precision: Precision = "fp32"


class CalibrateSettings(_Strict):
    """Class-wise thresholds (METHOD.md decision): maximise segment F1 on a dense-labelled split.

    Where the target dataset has no dense labels, `quantile` fallback: per class and modality, the
    `quantile` of the logits over segments of videos whose weak label contains the class.
    """

    method: Literal["f1", "released_f1", "quantile"] = "f1"
    split: Literal["train", "val"] = "val"
    quantile: UnitFloat = 0.5


class PseudoLabelSettings(_Strict):
    """Where the target's segment pseudo-labels come from.

    - `source`: `generate` (the pre-trained generator's logits and the calibrated thresholds,
      eq. 10 and 12) or `released` (VALOR's released binary segment pseudo-labels,
      `uwav.labels.released`: soft = binary; the pretrain and calibrate stages are not needed).
    - `released_root`: the folder holding VALOR's `CLAP/segment_pseudo_labels/` (audio) and
      `CLIP/segment_pseudo_labels/` (visual), VALOR's `data/`. Needed by `source: released`; with
      `source: generate` the quality report scores those labels beside the generated ones.
    - `soft_temperature`: soft labels are sigmoid((z - theta) / soft_temperature) * y (eq. 12: 1;
      the release: 2).
    """

    source: Literal["generate", "released"] = "generate"
    released_root: str | None = None
    batch_size: PositiveInt = 256
    device: Device = "auto"
    soft_temperature: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _released_needs_a_root(self) -> PseudoLabelSettings:
        if self.source == "released" and self.released_root is None:
            raise ValueError(
                "source: released needs `released_root`, the folder holding VALOR's CLIP/segment_pseudo_labels "
                "and CLAP/segment_pseudo_labels"
            )
        return self


class HanSettings(_Strict):
    """The HAN inference model (METHOD.md "Inference model").

    `update`: `parallel` (eq. 1-2, AVVP-ECCV20) or `sequential` (VALOR, the UWAV release: the
    visual stream attends to the updated audio). `projection`: `linear` (fc_a, fc_v, fc_st,
    fc_fusion) or `mlp` (the UWAV release: 2-layer MLP fc_a, one fc_fusion over 2-D mean + 3-D).
    `input_norm` (uwav's addition, default off as in the paper): `standardize` feeds the HAN its
    inputs standardised per dimension with the training split's statistics (kept with the
    weights); for features that vary little around a large common vector, such as those of
    random-initialised encoders (`uwav.models.han`).
    """

    # The store features the HAN reads (`uwav.contracts.HAN_INPUT_FEATURES`): `clap_maps` is
    # VALOR++'s, CLAP's per-video HTSAT token map as audio (resampled to segments by the HAN).
    inputs: Literal["official", "clip_clap", "clap_maps"] = "clip_clap"
    update: Literal["parallel", "sequential"] = "parallel"
    projection: Literal["linear", "mlp"] = "linear"
    input_norm: Literal["none", "standardize"] = "none"
    d_model: PositiveInt = 512
    ffn: PositiveInt = 1024
    heads: PositiveInt = 8
    layers: PositiveInt = 1
    dropout: UnitFloat = 0.1


class TrainSettings(_Strict):
    """Stage 2: HAN on the pseudo-labels with the UWAV losses (METHOD.md "Stage 2")."""

    han: HanSettings = HanSettings()
    epochs: PositiveInt = 80
    batch_size: PositiveInt = 64
    lr: float = 1e-4
    min_lr: float = 5e-6
    warmup_epochs: int = Field(10, ge=0)
    lr_schedule: LrSchedule = "per_step"
    betas: Betas = (0.9, 0.999)
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    labels: Literal["soft", "binary"] = "soft"
    reweight: bool = True
    reweight_w: float = 0.5
    reweight_mask: Literal["video_label", "binary_pseudo_label"] = "video_label"
    # `paper`: eq. 18-19 (means over videos, segments, classes); `released`: C times those weights.
    reweight_form: Literal["paper", "released"] = "paper"
    mixup: bool = True
    mixup_alpha: float = Field(1.7, gt=0)
    mixup_targets: Literal["soft", "ceil"] = "soft"  # `ceil` is the AVE variant
    # `per_pair`: one pairing of all segments shared by both modalities, a lambda per pair;
    # `per_batch` (the release): per modality its own pairing and one lambda for the whole batch.
    mixup_lambda: Literal["per_pair", "per_batch"] = "per_pair"
    # Test-time rule, in validation and evaluation alike: p >= 0.5 and P >= 0.5 (`at_least`, the
    # protocol's) or p > 0.5 and P > 0.5 (`above`, the release's).
    decision: Decision = "at_least"
    # Project option, outside METHOD.md: the reference HAN's "individual guided learning" as the
    # video-level loss (BCE of each modality's temporally pooled probability against the video
    # label, visual smoothed to 0.9 y + 0.05, added to BCE(P, y)); how the paper's HAN row was trained.
    guided_learning: bool = False
    seed: int = 0
    device: Device = "auto"
    precision: Precision = "fp32"
    # torch.compile the HAN's training forward: fewer, fused kernels (on a GPU the step is
    # launch-bound). Costs a compilation at start; dropout masks then come from inductor's
    # generator, so a compiled run does not repeat an eager run's masks.
    compile: bool = False


class EvaluateSettings(_Strict):
    threshold: UnitFloat = 0.5
    split: Literal["val", "test"] = "test"


class StagesConfig(_Strict):
    segment: SegmentSettings = SegmentSettings()
    features: FeaturesSettings = FeaturesSettings()
    pretrain: PretrainSettings = PretrainSettings()
    calibrate: CalibrateSettings = CalibrateSettings()
    pseudo_labels: PseudoLabelSettings = PseudoLabelSettings()
    train: TrainSettings = TrainSettings()
    evaluate: EvaluateSettings = EvaluateSettings()


# ---------------------------------------------------------------- orchestration


class OrchestrationConfig(_Strict):
    """Scheduling only; the science does not depend on it."""

    dask_address: str | None = None
    dask_local_workers: PositiveInt | None = None
    task_retries: int = Field(2, ge=0)
    retry_delay_s: float = Field(2.0, ge=0)
    retrain_cron: str = "0 3 * * *"


class Catalog(_Strict):
    version: Literal[1] = 1
    recipe: Recipe = "paper"
    datasets: dict[str, DatasetConfig]
    target: str
    # The pre-training set of stage 1; not needed where stage 1 does not run (`uwav evaluate`,
    # `uwav parse`, a released generator, released pseudo-labels).
    pretrain: str | None = None
    stores: StoresConfig = StoresConfig()
    encoders: EncodersConfig = EncodersConfig()
    stages: StagesConfig = StagesConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()
    # Folder of the catalog file; relative locations resolve against it. Not read from YAML.
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)
    # Dotted `stages` keys the catalog file sets itself (the recipe fills in the rest). Not read from YAML.
    explicit_settings: frozenset[str] = Field(default_factory=frozenset, exclude=True)

    @model_validator(mode="after")
    def _references_exist(self) -> Catalog:
        for role in ("target", "pretrain"):
            name = getattr(self, role)
            if name is not None and name not in self.datasets:
                raise ValueError(f"`{role}: {name}` names no entry of `datasets` ({sorted(self.datasets)})")
        return self

    def resolve(self, location: str | None) -> str | None:
        """A catalog location as an absolute local path, or the fsspec URL unchanged."""
        if location is None:
            return None
        if is_url(location):
            return location
        path = Path(os.path.expanduser(location))
        return str(path if path.is_absolute() else (self.base_dir / path).resolve())

    def dataset(self, name: str) -> DatasetConfig:
        try:
            return self.datasets[name]
        except KeyError:
            raise CatalogError(f"catalog: no dataset named {name!r} (have {sorted(self.datasets)})") from None

    def store(self, which: Literal["features", "pseudo_labels", "runs"]) -> str:
        return self.resolve(getattr(self.stores, which))  # type: ignore[return-value]

    def used_encoders(self) -> list[str]:
        """The `encoders` entries the pipeline or `uwav parse` may build: CLIP and CLAP (the
        generator's inputs) and those of the HAN inputs (`stages.train.han.inputs`)."""
        han = {
            "clip_clap": ("clip", "clap", "r2plus1d"),
            "official": ("vggish", "resnet152", "r2plus1d"),
            "clap_maps": ("clip", "clap", "r2plus1d"),  # the maps come from the CLAP audio encoder
        }
        return list(dict.fromkeys(("clip", "clap", *han[self.stages.train.han.inputs])))

    def locations(self) -> dict[str, str]:
        """Every location the catalog names, by dotted key, resolved."""
        found: dict[str, str] = {}
        for name, ds in self.datasets.items():
            for key in ("annotations", "media_root", "dense"):
                value = getattr(ds, key)
                if value is not None:
                    found[f"datasets.{name}.{key}"] = self.resolve(value)  # type: ignore[assignment]
        for key in ("features", "pseudo_labels", "runs"):
            found[f"stores.{key}"] = self.store(key)  # type: ignore[arg-type]
        for key in self.used_encoders():
            checkpoint = getattr(self.encoders, key).checkpoint
            if checkpoint is not None:
                found[f"encoders.{key}.checkpoint"] = self.resolve(checkpoint)  # type: ignore[assignment]
        roots = {
            "stages.features.official_root": self.stages.features.official_root,
            "stages.features.released_root": self.stages.features.released_root,
            "stages.pseudo_labels.released_root": self.stages.pseudo_labels.released_root,
        }
        found.update({key: self.resolve(root) for key, root in roots.items() if root is not None})  # type: ignore[misc]
        return found


def effective_settings(catalog: Catalog) -> list[tuple[str, Any, str]]:
    """(dotted `stages` key, value, source) of every stage setting; source is `catalog` (set in
    the file), `recipe <name>` (filled in by the recipe) or `default` (the settings' own default)."""
    recipe = RECIPE_SETTINGS[catalog.recipe]
    rows = []
    for key in sorted(leaf_keys(catalog.stages.model_dump(mode="python"))):
        value: Any = catalog.stages
        for part in key.split("."):
            value = getattr(value, part)
        if key in catalog.explicit_settings:
            source = "catalog"
        elif key in recipe:
            source = f"recipe {catalog.recipe}"
        else:
            source = "default"
        rows.append((f"stages.{key}", value, source))
    return rows


# How to fill in a required key the catalog lacks, by the key's last part.
MISSING_KEY_FIXES: dict[str, str] = {
    "datasets": "add `datasets:` with the target dataset, e.g. `llp: {kind: llp, annotations: <folder>}`",
    "target": "add `target: <name>` naming the entry of `datasets` to train and evaluate on",
    "kind": "add `kind:` (one of llp, unav100, ave, custom, synthetic)",
    "annotations": "add `annotations:` (the dataset's annotation file or folder)",
    "name": "add `name:` (the encoder's model config)",
}
# A value longer than this is not repeated in an error message (a mapping can be the whole catalog).
SHOWN_VALUE_CHARS = 80


def _format_errors(path: Path, error: ValidationError) -> str:
    lines = [f"{path}: invalid catalog"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        elif item["type"] == "missing":
            fix = MISSING_KEY_FIXES.get(str(item["loc"][-1]), "add it")
            lines.append(f"  {key}: required key missing: {fix}")
        else:
            shown = repr(item.get("input"))
            got = "" if isinstance(item.get("input"), dict | list) or len(shown) > SHOWN_VALUE_CHARS else f" (got {shown})"
            lines.append(f"  {key}: {item['msg'].removeprefix('Value error, ')}{got}")
    return "\n".join(lines)


def parse_catalog(data: dict[str, Any], base_dir: Path, source: Path | str = "<catalog>") -> Catalog:
    """Validate a catalog given as a mapping (as read from YAML)."""
    if not isinstance(data, dict):
        raise CatalogError(f"{source}: the catalog must be a mapping, got {type(data).__name__}")
    for internal in ("base_dir", "explicit_settings"):
        if internal in data:
            raise CatalogError(f"{source}: {internal}: unknown key")
    stages = data.get("stages", {})
    fields = {
        "stages": apply_recipe(stages, data.get("recipe", "paper")),
        "base_dir": Path(base_dir).resolve(),
        "explicit_settings": frozenset(leaf_keys(stages)) if isinstance(stages, dict) else frozenset(),
    }
    try:
        return Catalog.model_validate({**data, **fields})
    except ValidationError as error:
        raise CatalogError(_format_errors(Path(source), error)) from None


def load_catalog(path: str | Path) -> Catalog:
    """Read and validate `data_catalog.yaml`; relative paths resolve against its folder."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise CatalogError(f"{path}: cannot read the catalog: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise CatalogError(f"{path}: not valid YAML: {error}") from None
    return parse_catalog(data, path.resolve().parent, path)


def check_catalog(catalog: Catalog) -> list[tuple[str, str, bool]]:
    """(key, resolved location, exists) for every location; URLs are checked through fsspec."""
    rows = []
    for key, location in catalog.locations().items():
        if is_url(location):
            import fsspec

            fs, inner = fsspec.core.url_to_fs(location)
            exists = fs.exists(inner)
        else:
            exists = Path(location).exists()
        rows.append((key, location, exists))
    return rows
