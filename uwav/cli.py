"""`uwav ...`: the command line. Thin: every command calls the library.

A `UwavError` (a failure the user can fix: a bad catalog, a missing input, a wrong setting) from
any command prints as one `error: ...` line on stderr with exit status 2, like a usage error;
`uwav --debug ...` shows its traceback instead. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_args

import click
import typer
from typer.core import TyperGroup

from uwav.catalog import Catalog, Task, check_catalog, effective_settings, load_catalog
from uwav.demo import DEFAULT_ADDED_VIDEOS
from uwav.errors import InvalidInputError, UwavError

if TYPE_CHECKING:
    from uwav.releases import Fetched

USER_ERROR_EXIT = 2


def one_line(error: BaseException) -> str:
    """An error's message on one line (a catalog error lists one key per line)."""
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


class _UwavGroup(TyperGroup):
    """Catches a UwavError from every command, sub-app commands included, in one place."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UwavError as error:
            if ctx.params.get("debug"):
                raise
            typer.echo(f"error: {one_line(error)}", err=True)
            raise typer.Exit(USER_ERROR_EXIT) from None


app = typer.Typer(cls=_UwavGroup, no_args_is_help=True)
catalog_app = typer.Typer(help="Inspect the data catalog.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")
weights_app = typer.Typer(help="Encoder weights in the standard caches (HF_HOME, TORCH_HOME).", no_args_is_help=True)
app.add_typer(weights_app, name="weights")
release_app = typer.Typer(help="Public feature releases from the Hugging Face Hub.", no_args_is_help=True)
app.add_typer(release_app, name="release")

CatalogOption = Annotated[Path, typer.Option("--catalog", "-c", help="Path of data_catalog.yaml.")]
DEFAULT_CATALOG = Path("data_catalog.yaml")
ModelOption = Annotated[
    Path | None, typer.Option("--model", help="A uwav checkpoint folder or a released state dict (default: the current model).")
]
KindOption = Annotated[
    str,
    typer.Option(
        "--kind",
        help=(
            "What --model is: checkpoint (a uwav checkpoint folder) or a released HAN state dict: avvp-eccv20, "
            "valor (VALOR, VALOR+), valor++ (VALOR++: CLAP maps + CLIP + R(2+1)D), uwav."
        ),
    ),
]


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="On an error, show the traceback instead of the one-line message.")] = False,
) -> None:
    """UWAV: weakly-supervised audio-visual video parsing pipeline."""
    # `debug` is read by _UwavGroup.invoke, which wraps every command.


@catalog_app.command("check")
def catalog_check(catalog: CatalogOption = DEFAULT_CATALOG) -> None:
    """Print every location the catalog names, resolved, and whether it exists, each published
    weights file its encoders need and whether it is in the cache, then the effective stage
    settings and where each comes from (the catalog, its recipe, or the default). Exit 1 if a
    location is missing, or a weights file is and downloads are off."""
    loaded = load_catalog(catalog)
    typer.echo(f"catalog {catalog.resolve()}: target={loaded.target} pretrain={loaded.pretrain} recipe={loaded.recipe}")
    missing = 0
    for key, location, exists in check_catalog(loaded):
        produced = key.startswith("stores.")  # stores are created by the pipeline
        status = "ok" if exists else ("will be created" if produced else "missing")
        missing += not exists and not produced
        typer.echo(f"  {status:>15}  {key} = {location}")
    missing += _check_weights(loaded)
    typer.echo("effective settings (source: catalog = set in the file, recipe = filled in by it, default):")
    rows = effective_settings(loaded)
    width = max(len(key) for key, _, _ in rows)
    for key, value, source in rows:
        shown = list(value) if isinstance(value, tuple) else value
        typer.echo(f"  {key.ljust(width)}  {shown!s:<24} {source}")
    raise typer.Exit(1 if missing else 0)


def _check_weights(loaded: Catalog) -> int:
    """Print each published weights file the catalog's encoders need: in the cache, or not (then
    downloaded on first use, or missing when downloads are off). Returns how many are missing."""
    from uwav.features.encoders import encoder_weight_files

    missing = 0
    for key, files in encoder_weight_files(loaded.encoders, loaded.used_encoders()).items():
        for file in files:
            path = file.cached()
            offline = file.offline_reason()
            status = "ok" if path else ("missing" if offline else "will download")
            missing += path is None and offline is not None
            typer.echo(f"  {status:>15}  encoders.{key} weights {file.source} = {path or file.cache_folder()}")
    return missing


def _size(n_bytes: int) -> str:
    size = float(n_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


@weights_app.command("fetch")
def weights_fetch(catalog: CatalogOption = DEFAULT_CATALOG) -> None:
    """Download every published weights file the catalog's encoders need (the encoders `uwav run`
    and `uwav parse` build) into the standard caches, and print each: source, size, cache path.
    For a machine without network: run it where there is one and copy the caches there."""
    from uwav.features.encoders import encoder_weight_files
    from uwav.features.weights import fetch_weights, weights_mirror

    loaded = load_catalog(catalog)
    mirror = weights_mirror(loaded.encoders.weights_mirror)
    listed = encoder_weight_files(loaded.encoders, loaded.used_encoders())
    for key, files in listed.items():
        what = f"encoders.{key} {getattr(loaded.encoders, key).name!r}"
        for weights in fetch_weights(files, what=what, mirror=mirror):
            typer.echo(f"encoders.{key}  {weights.file.source}  {_size(weights.size)}  {weights.path}")
    if not any(listed.values()):
        typer.echo("the catalog's encoders use no published weights (local checkpoints or random init)")


@release_app.command("fetch")
def release_fetch(
    name: Annotated[
        str, typer.Argument(help="The release: uwav (UWAV's CLIP/CLAP features) or valor (VALOR's, and its trained models).")
    ],
    out: Annotated[Path, typer.Option(help="Folder to unpack into: `stages.features.released_root`.")],
) -> None:
    """Download a public feature release from the Hugging Face Hub and unpack it into the layout
    `stages.features.source: released` reads; resumable, each archive checked and unpacked
    atomically, nothing asked for again once there. Says where the rest of the layout comes from."""
    from uwav.releases import elsewhere, fetch_release

    def report(done: Fetched) -> None:
        typer.echo(f"{done.file.source}  {_size(done.size)}  -> {done.target}  ({done.state}, {done.files} file{'' if done.files == 1 else 's'})")

    fetch_release(name, out, report)
    typer.echo("not on the hub, to fetch by hand:")
    for line in elsewhere(name, out):
        typer.echo(f"  {line}")
    typer.echo(f"catalog: stages.features: {{source: released, released_root: {out.resolve()}}}")


def _stage_list(value: str | None) -> list[str] | None:
    return [name.strip().replace("-", "_") for name in value.split(",") if name.strip()] if value else None


@app.command()
def run(
    catalog: CatalogOption = DEFAULT_CATALOG,
    stages: Annotated[str | None, typer.Option(help="Comma-separated stages to bring up to date (default: all).")] = None,
    force: Annotated[str | None, typer.Option(help="Comma-separated stages to recompute even if fresh.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Run the pipeline without Prefect: stale stages run, fresh ones are skipped."""
    from uwav.stages import run_pipeline

    loaded = load_catalog(catalog)
    records = run_pipeline(
        loaded, _stage_list(stages), _stage_list(force) or (), progress=progress,
        on_stage=lambda record: typer.echo(f"{record.stage:>14}: done in {record.seconds:.1f} s ({record.fingerprint})"),
    )
    if not records:
        typer.echo("everything is fresh: nothing to do")
    elif any(record.stage == "train" for record in records):
        from uwav.stages.promotion import promote_model

        typer.echo(promote_model(loaded, only_if_better=False)[1])


@app.command()
def status(catalog: CatalogOption = DEFAULT_CATALOG) -> None:
    """Each stage as fresh, stale (and why) or missing."""
    from uwav.stages import stage_status

    for item in stage_status(load_catalog(catalog)):
        why = f"  ({item.why})" if item.why and item.state != "fresh" else ""
        typer.echo(f"{item.stage:>14}  {item.state:<8} {item.fingerprint}{why}")


@app.command()
def synth(
    out: Annotated[
        Path | None, typer.Option(help="Folder to write the dataset into (encoders: the cache folder, default UWAV_CACHE or ~/.cache/uwav).")
    ] = None,
    mode: Annotated[
        str,
        typer.Option(
            help="media (MP4 files + annotations), features (per-segment vectors) or encoders (tiny CLIP and CLAP "
            "trained on the synthetic caption corpus)."
        ),
    ] = "media",
    seed: int = 0,
    n_pretrain: Annotated[int | None, typer.Option(help="Pre-training videos (default: the mode's).")] = None,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    layouts_from: Annotated[Path | None, typer.Option(help="Real LLP dense-label file to draw event layouts from (features mode).")] = None,
    target_layout: Annotated[str, typer.Option(help="llp (LLP-like events) or ave (one audio-visual event per video).")] = "llp",
) -> None:
    """Write the synthetic audio-visual benchmark, or train its aligned encoders (deterministic by seed)."""
    if mode not in ("media", "features", "encoders"):
        raise InvalidInputError(f"--mode must be 'media', 'features' or 'encoders', got {mode!r}")
    if mode == "encoders":
        unused = [flag for flag, value in (("--n-pretrain", n_pretrain), ("--n-train", n_train), ("--n-val", n_val),
                                           ("--n-test", n_test), ("--layouts-from", layouts_from)) if value is not None]
        if unused:
            raise InvalidInputError(f"{', '.join(unused)}: not used by --mode encoders (its corpus is fixed by the seed)")
        # Apart from synth_main, which the segment stage runs: the encoders are no part of its code.
        from uwav.synthetic.encoders import aligned_encoders, alignment_lines

        encoders = aligned_encoders(seed, cache=out, log=typer.echo)
        for line in alignment_lines(encoders):
            typer.echo(line)
        return
    if out is None:
        raise InvalidInputError(f"--out is required with --mode {mode}")
    from uwav.synthetic.synthesize import synth_main

    if target_layout not in get_args(Task):
        raise InvalidInputError(f"--target-layout must be one of {get_args(Task)}, got {target_layout!r}")
    sizes = {"--n-pretrain": n_pretrain, "--n-train": n_train, "--n-val": n_val, "--n-test": n_test}
    too_small = [f"{flag} {value}" for flag, value in sizes.items() if value is not None and value < 1]
    if too_small:  # as the catalog's `synthetic` block: every split has a video
        raise InvalidInputError(f"synthetic split sizes must be at least 1, got {', '.join(too_small)}")
    written = synth_main(
        mode,  # type: ignore[arg-type]
        out,
        seed,
        n_pretrain=n_pretrain,
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
        layouts_from=layouts_from,
        target_layout=target_layout,  # type: ignore[arg-type]
    )
    typer.echo(f"synthetic {mode} benchmark written to {written}")


@app.command()
def serve(
    catalog: CatalogOption = DEFAULT_CATALOG,
    limit: Annotated[int | None, typer.Option(help="Most flow runs at once.")] = None,
    api_grace: Annotated[
        float,
        typer.Option(
            envvar="UWAV_API_GRACE_S",
            min=1,
            max=180,  # past ~3 min without the API, Prefect's runner stops polling by itself
            help="Seconds without an answer from the Prefect API before serving ends with status 1.",
        ),
    ] = 120,
) -> None:
    """Register the uwav/* deployments with the Prefect API (PREFECT_API_URL) and serve them.

    SIGTERM or SIGINT stops its flow runs and ends it with status 0 within 10 s, server or not.
    """
    load_catalog(catalog)  # refuse a bad catalog before talking to the server
    from flows.deployments import serve_deployments  # Prefect lives in flows/, not in the library

    serve_deployments(catalog, limit=limit, api_grace_s=api_grace)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the generated data, stores, metrics.json and report.html.")] = Path("demo-out"),
    seed: int = 0,
    prefect: Annotated[bool, typer.Option(help="Run through the Prefect flow (embedded server); --no-prefect runs the stages directly.")] = True,
    retrain: Annotated[
        bool,
        typer.Option(help="After a demo in --out: add training videos and retrain as the scheduled uwav/retrain deployment does."),
    ] = False,
    add: Annotated[int, typer.Option(min=1, help="Training videos --retrain adds.")] = DEFAULT_ADDED_VIDEOS,
) -> None:
    """The synthetic media benchmark through the full pipeline with tiny encoders on CPU.

    CLIP and CLAP are the synthetic world's own, trained on its caption corpus (first use only:
    they are cached, `uwav synth --mode encoders`). The table shows the trained HAN on the test
    split beside references on the same videos: the pseudo-labels it trained on, the encoders'
    zero-shot per-segment labels, and predicting nothing."""
    import json
    import shutil
    import time

    from uwav.demo import grow_demo, retrain_report, write_demo_catalog
    from uwav.evaluation.report import format_scores_table
    from uwav.stages import run_pipeline
    from uwav.stages.planner import stage_record
    from uwav.stages.promotion import promote_model

    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {out}: exists and is not a folder")
    started = time.perf_counter()
    grown = grow_demo(out, add) if retrain else None
    catalog_path = grown.catalog_path if grown else write_demo_catalog(out, seed, log=typer.echo)
    typer.echo(f"demo catalog: {catalog_path}")
    if prefect:
        import os

        # The demo's embedded server is throwaway and offline: no usage telemetry.
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        from flows.pipeline import uwav_flow

        uwav_flow(catalog=str(catalog_path), retrain=retrain)
    else:
        loaded = load_catalog(catalog_path)
        run_pipeline(loaded, progress=True)
        promote_model(loaded, only_if_better=retrain)
    loaded = load_catalog(catalog_path)
    record = stage_record(loaded, "evaluate")
    scores = record.metrics["scores"]
    (out / "metrics.json").write_text(json.dumps(scores, indent=1))
    shutil.copyfile(record.outputs["report"], out / "report.html")
    typer.echo(f"{loaded.stages.evaluate.split} split, {record.metrics['videos']} videos:")
    typer.echo(format_scores_table(scores, references=record.metrics.get("references")))
    train_warnings = stage_record(loaded, "train").metrics.get("health_warnings", [])
    for warning in [*train_warnings, *record.metrics.get("health_warnings", [])]:
        typer.echo(f"warning: {warning}")
    if grown:
        for line in retrain_report(loaded, grown):
            typer.echo(line)
    typer.echo(f"wrote {out / 'metrics.json'} and {out / 'report.html'} in {time.perf_counter() - started:.0f} s")


@app.command()
def parse(
    videos: Annotated[list[Path], typer.Argument(help="Video files to parse.")],
    out: Annotated[Path, typer.Option(help="Folder for events.json, events.parquet, segments.parquet and timelines.")] = Path("parsed"),
    catalog: CatalogOption = DEFAULT_CATALOG,
    model: ModelOption = None,
    kind: KindOption = "checkpoint",
) -> None:
    """Per-segment audio / visual / audio-visual events of VIDEOS with the catalog's current model (or --model).

    Videos that cannot be parsed are skipped and listed on stderr (and in events.json); the exit
    status is 1 only when none could be parsed."""
    from uwav.stages.parse import NothingParsedError, parse_media

    try:
        outputs = parse_media(load_catalog(catalog), videos, out, model_path=model, kind=kind)
    except NothingParsedError as error:
        for failure in error.failures:
            typer.echo(f"skipped {failure['path']}: {failure['reason']}", err=True)
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    for failure in outputs.failed:
        typer.echo(f"skipped {failure['path']}: {failure['reason']}", err=True)
    typer.echo(f"events: {outputs.events_json}, {outputs.events_parquet}; segments: {outputs.segments_parquet}")
    for video_id, path in outputs.timelines.items():
        typer.echo(f"  {video_id}: {path}")


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option(help="A uwav checkpoint folder or a released state dict (.pt).")],
    kind: KindOption = "checkpoint",
    catalog: CatalogOption = DEFAULT_CATALOG,
    out: Annotated[Path, typer.Option(help="Folder for metrics.json, predictions.npz, report.html and timelines.")] = Path("evaluation"),
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Score a HAN (uwav's or a released one) on the catalog's evaluation split with the LLP protocol."""
    from uwav.evaluation.report import format_scores_table
    from uwav.stages import run_pipeline
    from uwav.stages.evaluate import check_model_argument, evaluate_imported

    loaded = load_catalog(catalog)
    check_model_argument(model, kind)
    run_pipeline(loaded, ["features"], progress=progress)
    result = evaluate_imported(loaded, model, kind, out)
    typer.echo(format_scores_table(result.scores))
    typer.echo(f"{result.videos} videos; wrote {result.outputs.metrics} and {result.outputs.report}")


@app.command()
def ablation(
    catalog: CatalogOption = DEFAULT_CATALOG,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """The paper's Table-4 ablation grid on the catalog's pseudo-labels (runs the pipeline up to pseudo_labels first)."""
    from uwav.stages import run_pipeline
    from uwav.stages.train import run_ablation_grid
    from uwav.training.han_train import format_ablation

    loaded = load_catalog(catalog)
    run_pipeline(loaded, ["pseudo_labels"], progress=progress)
    table = run_ablation_grid(loaded, progress=progress)
    typer.echo(format_ablation(table))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
