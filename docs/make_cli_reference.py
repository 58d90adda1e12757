"""Write docs/cli-reference.md from the click commands of ``bbreprog``.

    .venv/bin/python docs/make_cli_reference.py           # rewrite docs/cli-reference.md
    .venv/bin/python docs/make_cli_reference.py --check   # exit 1 if the file is out of date

The page lists every command of ``blackbox_reprog.tools.cli.main``: its usage line, its help text,
its arguments and every option with its type, default and help. Nothing in it is written by
hand, so it cannot drift from the code: ``tests/test_docs.py`` fails when the committed file
differs from what this script writes.
"""
from __future__ import annotations

import inspect
import sys
from pathlib import Path

import click

PAGE = Path(__file__).with_name("cli-reference.md")
PROGRAM = "bbreprog"


def _unset(value) -> bool:
    """No default: None, or click's UNSET sentinel (click ≥ 8.2)."""
    return value is None or type(value).__name__ == "Sentinel"


def _paragraphs(text: str | None) -> list[str]:
    """A click help text as paragraphs, each on one line (click rewraps them the same way)."""
    text = inspect.cleandoc(text or "").split("\f")[0]      # \f: click hides what follows
    blocks = [block for block in text.split("\n\n") if block.strip()]
    return [" ".join(line.strip() for line in block.replace("\b\n", "").splitlines()) for block in blocks]


def _prose(text: str) -> str:
    """Help text as markdown: '<' and '>' outside `code` escaped, so '<key>' is not taken for HTML."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def _cell(text: str) -> str:
    """Text fit for a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ").strip()


def _type(param: click.Parameter) -> str:
    kind = param.type
    if isinstance(kind, click.Choice):
        return "choice: " + ", ".join(f"`{choice}`" for choice in kind.choices)
    if isinstance(param, click.Option) and param.is_flag:
        return "flag"
    if isinstance(kind, click.Path):
        return {"file": "file path", "directory": "folder path"}.get(kind.name, "path")
    return {"integer": "integer", "float": "number", "text": "text", "boolean": "true/false"}.get(kind.name, kind.name)


def _default(param: click.Option, ctx: click.Context) -> str:
    value = param.get_default(ctx, call=False)
    if param.is_flag:
        return "off" if not value else "on"
    if _unset(value) or value == ():
        return "—"
    return f"`{value}`"


def _metavar(param: click.Parameter, ctx: click.Context) -> str:
    """What ``--help`` shows after the option's name."""
    try:
        return param.make_metavar(ctx)
    except TypeError:                      # click < 8.2: make_metavar() takes no context
        return param.make_metavar()


def _option_names(param: click.Option, ctx: click.Context) -> str:
    names = sorted(param.opts, key=lambda name: (not name.startswith("--"), name))   # --long first
    metavar = "" if param.is_flag else f" {_metavar(param, ctx)}"
    return ", ".join(f"`{name}{metavar}`" for name in names)


def _help(param: click.Option) -> str:
    sentences = [" ".join(_paragraphs(param.help))]
    if param.required:
        sentences.append("Required.")
    if param.multiple:
        sentences.append("Repeatable.")
    return " ".join(s for s in sentences if s)


def _argument_row(param: click.Argument) -> str:
    name = param.human_readable_name + ("..." if param.nargs == -1 else "")
    count = "one or more" if param.nargs == -1 else ("one" if param.nargs == 1 else str(param.nargs))
    need = "required" if param.required else "optional"
    return f"| `{name}` | {_type(param)} | {count}, {need} |"


def _command(name: str, command: click.Command, parent: click.Context) -> list[str]:
    ctx = click.Context(command, info_name=name, parent=parent)
    usage = " ".join([PROGRAM, name, *command.collect_usage_pieces(ctx)])
    lines = [f"## `{PROGRAM} {name}`", "", "```text", usage, "```", ""]
    for paragraph in _paragraphs(command.help):
        lines += [_prose(paragraph), ""]
    arguments = [p for p in command.params if isinstance(p, click.Argument)]
    options = [p for p in command.params if isinstance(p, click.Option)]
    if arguments:
        lines += ["| argument | type | how many |", "|---|---|---|"]
        lines += [_argument_row(p) for p in arguments] + [""]
    if options:
        lines += ["| option | type | default | help |", "|---|---|---|---|"]
        for p in options:
            lines.append(f"| {_cell(_option_names(p, ctx))} | {_cell(_type(p))} | {_cell(_default(p, ctx))} "
                         f"| {_cell(_prose(_help(p)))} |")
        lines.append("")
    else:
        lines += ["No options besides `--help`.", ""]
    return lines


def render() -> str:
    """The page, as markdown."""
    from blackbox_reprog.tools import cli

    group = cli.main
    root = click.Context(group, info_name=PROGRAM)
    names = sorted(group.list_commands(root))
    lines = [
        "# Command-line reference",
        "",
        "<!-- Generated by docs/make_cli_reference.py from blackbox_reprog/tools/cli/: do not edit by hand. -->",
        "<!-- tests/test_docs.py::test_cli_reference_is_up_to_date fails when this page is out of date. -->",
        "",
        "Every command of `bbreprog`, with every option, as the code defines them. This page is",
        "generated; after changing a command, run `.venv/bin/python docs/make_cli_reference.py`.",
        "What the commands are for, with examples: [cli.md](cli.md). A tutorial:",
        "[getting-started.md](getting-started.md). When a command refuses: [troubleshooting.md](troubleshooting.md).",
        "",
        "```text",
        f"{PROGRAM} [--version] [--help] COMMAND [ARGS]...",
        "```",
        "",
        *[_prose(p) + "\n" for p in _paragraphs(group.help)],
        "Every command also takes `--help`; `bbreprog --version` prints the version.",
        "",
    ]
    exit_codes = [p for p in _paragraphs(cli.__doc__) if p.startswith("Exit codes")]
    if exit_codes:
        lines += [_prose(exit_codes[0]), ""]
    lines += ["| command | what it does |", "|---|---|"]
    for name in names:
        command = group.get_command(root, name)
        summary = command.get_short_help_str(limit=10_000)
        lines.append(f"| [`{name}`](#{PROGRAM}-{name}) | {_cell(_prose(summary))} |")
    lines.append("")
    for name in names:
        lines += _command(name, group.get_command(root, name), root)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not PAGE.is_file() or PAGE.read_text(encoding="utf-8") != text:
            print(f"{PAGE} is out of date: run python {Path(__file__).as_posix()}", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
