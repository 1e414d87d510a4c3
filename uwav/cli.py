"""`uwav ...`: the command line. Thin: every command calls the library."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from uwav.catalog import CatalogError, Catalog, check_catalog, load_catalog

app = typer.Typer(help="UWAV: weakly-supervised audio-visual video parsing pipeline.", no_args_is_help=True)
catalog_app = typer.Typer(help="Inspect the data catalog.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")

CatalogOption = Annotated[Path, typer.Option("--catalog", "-c", help="Path of data_catalog.yaml.")]
DEFAULT_CATALOG = Path("data_catalog.yaml")


def _load(path: Path) -> Catalog:
    try:
        return load_catalog(path)
    except CatalogError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None


@catalog_app.command("check")
def catalog_check(catalog: CatalogOption = DEFAULT_CATALOG) -> None:
    """Print every location the catalog names, resolved, and whether it exists. Exit 1 if any is missing."""
    loaded = _load(catalog)
    typer.echo(f"catalog {catalog.resolve()}: target={loaded.target} pretrain={loaded.pretrain}")
    missing = 0
    for key, location, exists in check_catalog(loaded):
        produced = key.startswith("stores.")  # stores are created by the pipeline
        status = "ok" if exists else ("will be created" if produced else "missing")
        missing += not exists and not produced
        typer.echo(f"  {status:>15}  {key} = {location}")
    raise typer.Exit(1 if missing else 0)


def main() -> None:
    app()
