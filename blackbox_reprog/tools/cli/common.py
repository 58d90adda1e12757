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
        click.option("--dry-run", is_flag=True,
                     help="Print what the run would spend, per purpose, and stop: no query is sent, no run "
                          "folder written."),
        click.option("--price", type=click.FloatRange(min=0), metavar="P",
                     help="Price per 1,000 queries: the plan and the summary say what the queries cost."),
    ]):
        command = option(command)
    return command


class WholeSummaries(click.Group):
    """The command group: ``bbreprog --help`` lists each command with its summary whole (its
    ``short_help``, else the first sentence of its help), wrapped rather than cut at the
    terminal's width as click does by default."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=sys.maxsize)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=WholeSummaries, context_settings={"max_content_width": 100})
@click.version_option(package_name="blackbox-reprog")
def main():
    """Reprogram models you can only query: learn an input program and a label map with
    zeroth-order gradient estimates, counting every query.

    To start: `bbreprog datasets` and `bbreprog models` list what is built in, `bbreprog init
    signals` writes a config to start from, `bbreprog train signals.toml` trains it."""
