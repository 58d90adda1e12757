"""What every command shares: the command group, the common options, and refusals."""
from __future__ import annotations

import sys

import click


def close(bar) -> None:
    if bar is not None:
        bar.close()


def fail(message: str, code: int = 2):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def with_method(overrides: tuple[str, ...], method: str | None) -> tuple[str, ...]:
    return overrides + ((f"train.method={method}",) if method else ())


def common_options(command):
    for option in reversed([
        click.option("--budget", type=int, help="Queries to spend (all but the final test pass)."),
        click.option("--seed", type=int, help="Random seed; same seed, same result."),
        click.option("--method", type=click.Choice(["blackbox", "whitebox", "evolution"]),
                     help="blackbox: zeroth-order estimates; whitebox: autograd through the torch "
                          "plugin (reference); evolution: nevergrad."),
        click.option("--out", type=click.Path(file_okay=False), help="Folder for run folders [runs]."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override a config key, e.g. --set estimator.directions=20."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]):
        command = option(command)
    return command


@click.group()
@click.version_option(package_name="blackbox-reprog")
def main():
    """Reprogram models you can only query: learn an input program and a label map with
    zeroth-order gradient estimates, counting every query."""
