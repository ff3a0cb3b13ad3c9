"""The `maskspine` command line (Typer), installed as the package `maskspine.cli`."""
