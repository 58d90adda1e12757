"""The docs' examples run as written, and docs/cli-reference.md matches the commands.

Every ```python block and every ```bash block of the pages in PAGES runs, in order, in one
temporary folder per page (a later block may use an earlier block's run folder or file):
python blocks in one namespace per page, shell commands through bash with the installed
console script (the `bbreprog` beside sys.executable) first on the PATH, each command's exit
code checked. A bash block runs when each of its commands starts with `bbreprog ` or
`.venv/bin/bbreprog `, or is one of the few shell lines a page needs around them:
`export NAME=VALUE` (expanded by bash, kept for the page's later commands and seen by its
python blocks), a bbreprog command
ending in `&` (started in the background, like a server the next block talks to) and
`kill %N` (stops the page's Nth background command and checks that it exits cleanly). Any
other python or bash block must say why it does not run, or the test fails, so nothing is
skipped silently. Shell commands see `$REPO`, the repository's root. Every page of docs/ is either in PAGES or in
OTHER_PAGES with the reason its examples are not run.

Markers are HTML comments on the lines just above a fence (invisible on GitHub):

    <!-- not run: REASON -->     the block is shown only, for REASON
    <!-- file: NAME -->          the block is written to NAME in the page's folder, not run
    <!-- exit: N -->             every command of the bash block must exit with N (default 0)
    <!-- creates: PATH ... -->   after the block runs, each PATH exists
    <!-- output -->              this text block must match the output of the block just above:
                                 its lines appear in that order among the output's lines (stdout,
                                 then stderr, per command), '…' standing for any text in a line
    <!-- setup: COMMAND -->      a shell command run before the block, that must succeed (what
                                 a page takes for granted, e.g. a run folder it only shows)
    <!-- run with: OPTIONS -->   each bbreprog command of the bash block runs with OPTIONS added
                                 at its end (before a trailing comment), e.g. a smaller budget for
                                 full-length runs: the commands as written, only shorter

Each page's test prints how many blocks ran, were written, were checked against output, and
which were not run and why. Run `python -m pytest tests/test_docs.py -s` to see the list.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent            # the virtualenv's bin: its bbreprog console script
PAGES = ["getting-started.md", "troubleshooting.md", "cli.md", "concepts.md", "algorithms.md", "cli-reference.md",
         "remote.md", "writing-a-backend.md", "benchmarks.md"]
#: pages whose examples this runner does not run, and why (every page is in one list or the other)
OTHER_PAGES: dict[str, str] = {}

FENCE = re.compile(r"^(`{3,})([\w-]*)\s*$")
MARKER = re.compile(r"^<!--\s*([a-z][a-z ]*?)\s*(?::\s*(.*?))?\s*-->$")
MARKERS = {"not run", "file", "exit", "creates", "output", "setup", "run with"}
PYTHON = {"python", "python3", "py"}
SHELL = {"bash", "sh", "shell", "console"}
CLI_PREFIXES = ("bbreprog ", ".venv/bin/bbreprog ")
COMMAND_TIMEOUT = 900                    # the smoke suite of benchmarks.md takes minutes on a busy CI machine


@dataclass
class Block:
    lang: str
    code: str
    line: int                                  # the line of the opening fence, counting from 1
    markers: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Summary:
    ran: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    not_run: list[tuple[str, str]] = field(default_factory=list)
    shown: int = 0

    def text(self, page: str) -> str:
        lines = [f"docs/{page}: {len(self.ran)} blocks ran, {len(self.written)} written to files, "
                 f"{len(self.checked)} outputs checked, {len(self.not_run)} not run, {self.shown} shown only "
                 f"(not python or bash)"]
        lines += [f"    not run: line {where}: {reason}" for where, reason in self.not_run]
        return "\n".join(lines)


def blocks_of(path: Path) -> list[Block]:
    """The fenced blocks of a markdown page, with the markers just above each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, lang, start = opening.group(1), opening.group(2), i
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence), None)
        assert end is not None, f"{path.name}:{start + 1}: a code fence that is never closed"
        markers: dict[str, list[str]] = {}
        j = start - 1
        while j >= 0 and lines[j].strip().startswith("<!--"):
            marker = MARKER.match(lines[j].strip())
            assert marker and marker.group(1) in MARKERS, (
                f"{path.name}:{j + 1}: unknown marker {lines[j].strip()!r}; known: {', '.join(sorted(MARKERS))}")
            markers.setdefault(marker.group(1), []).insert(0, marker.group(2) or "")
            j -= 1
        blocks.append(Block(lang, "\n".join(lines[start + 1:end]) + "\n", start + 1, markers))
        i = end + 1
    return blocks


def commands_of(code: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, blank lines and comments left out."""
    commands, pending = [], ""
    for line in code.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1].strip() + " "
            continue
        command = (pending + line.strip()).strip()
        pending = ""
        if command and not command.startswith("#"):
            commands.append(command)
    return commands


EXPORT = re.compile(r"^export ([A-Za-z_][A-Za-z0-9_]*)=(.+)$")
TRAILING_COMMENT = re.compile(r"\s+#\s.*$")
KILL = re.compile(r"^kill %([1-9][0-9]*)(?:\s+#.*)?$")


def shell_env() -> dict[str, str]:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", MPLBACKEND="Agg",
               REPO=str(ROOT))
    found = shutil.which("bbreprog", path=env["PATH"])
    assert found and Path(found).parent == BIN, f"expected the bbreprog console script in {BIN}, found {found}"
    return env


def run_command(command: str, folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    if command.startswith(".venv/bin/bbreprog "):
        command = command[len(".venv/bin/"):]      # the same script, found on the PATH
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=folder, env=env, text=True,
                          capture_output=True, timeout=COMMAND_TIMEOUT)


def check_output(expected: str, output: str, where: str) -> None:
    """Each expected line, '…' matching any text, matches a line of the output, in order."""
    got = [line.rstrip() for line in output.splitlines()]
    position = 0
    for want in expected.strip("\n").splitlines():
        pattern = re.compile(".*?".join(re.escape(part) for part in want.rstrip().split("…")))
        while position < len(got) and not pattern.fullmatch(got[position]):
            position += 1
        assert position < len(got), (f"{where}: the output has no line {want!r} (in this order); "
                                     f"the output was:\n{output}")
        position += 1


def run_python(block: Block, page: str, namespace: dict) -> str:
    source = "\n" * block.line + block.code       # tracebacks give the page's own line numbers
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        exec(compile(source, str(DOCS / page), "exec"), namespace)
    return stdout.getvalue()


@dataclass
class Shell:
    """What a page's shell commands share: the folder, the environment its exports extend, and
    the commands it started in the background (stopped by `kill %N`, or when the page ends)."""
    folder: Path
    env: dict[str, str]
    background: list[subprocess.Popen] = field(default_factory=list)
    exported: dict[str, str] = field(default_factory=dict)

    def export(self, name: str, value: str) -> None:
        result = subprocess.run(["bash", "-c", f'printf %s {value}'], env=self.env, text=True,
                                capture_output=True, timeout=60)
        assert result.returncode == 0, f"export {name}: {result.stderr}"
        self.env[name] = self.exported[name] = result.stdout

    @contextlib.contextmanager
    def python_sees_exports(self):
        """A python block reads what the page exported (os.environ), as it would in that shell."""
        saved = {name: os.environ.get(name) for name in self.exported}
        os.environ.update(self.exported)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def start(self, command: str, where: str) -> None:
        """A server the page's next commands talk to: started, then awaited until it prints its
        first line (a server announces where it listens); its output is read when it stops."""
        log = open(self.folder / f".background-{len(self.background) + 1}.log", "w+", encoding="utf-8")
        process = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=self.folder, env=self.env,
                                   stdout=log, stderr=subprocess.STDOUT, text=True)
        process.log = log
        self.background.append(process)
        deadline = time.monotonic() + 60
        while not Path(log.name).stat().st_size and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process.poll() is None, f"{where}: `{command}` stopped at once:\n{Path(log.name).read_text()}"

    def stop(self, number: int, where: str) -> str:
        assert 1 <= number <= len(self.background), f"{where}: kill %{number}: no such background command"
        process = self.background[number - 1]
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=60)
        process.log.seek(0)
        output = process.log.read()
        assert process.returncode == 0, f"{where}: background command {number} exited with {process.returncode}:\n{output}"
        return output

    def close(self) -> None:
        for process in self.background:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.log.close()


def run_bash(block: Block, where: str, shell: Shell) -> str:
    commands = commands_of(block.code)
    others = [c for c in commands if not (c.startswith(CLI_PREFIXES) or EXPORT.match(c) or KILL.match(c))]
    assert commands and not others, (
        f"{where}: a bash block with commands other than bbreprog, export and kill %N ({others[:1] or 'none'}): "
        f"mark it <!-- not run: REASON --> or make each line a bbreprog command")
    expected = int(block.markers.get("exit", ["0"])[0])
    extra = " ".join(block.markers.get("run with", []))
    output = ""
    for command in commands:
        if exported := EXPORT.match(command):
            shell.export(*exported.groups())
            continue
        if killed := KILL.match(command):
            output += shell.stop(int(killed.group(1)), where)
            continue
        if command.endswith("&") and not command.endswith("&&"):
            shell.start(command[:-1].strip(), where)
            continue
        if extra:
            command = f"{TRAILING_COMMENT.sub('', command)} {extra}"
        result = run_command(command, shell.folder, shell.env)
        assert result.returncode == expected, (
            f"{where}: `{command}` exited with {result.returncode}, expected {expected}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        output += result.stdout + ("\n" if result.stdout and not result.stdout.endswith("\n") else "")
        output += result.stderr + ("\n" if result.stderr and not result.stderr.endswith("\n") else "")
    return output


def run_page(page: str, folder: Path) -> Summary:
    """Run a page's blocks in order in ``folder``; returns what ran and what did not."""
    shell = Shell(folder, shell_env())
    try:
        return _run_blocks(page, shell)
    finally:
        shell.close()


def _run_blocks(page: str, shell: Shell) -> Summary:
    summary, namespace, folder = Summary(), {"__name__": "__docs__"}, shell.folder
    previous_output: str | None = None           # the output of the block just above, if it ran
    for block in blocks_of(DOCS / page):
        where, markers = f"{page}:{block.line}", block.markers
        for command in markers.get("setup", []):
            result = run_command(command, folder, shell.env)
            assert result.returncode == 0, f"{where}: setup `{command}` failed:\n{result.stdout}\n{result.stderr}"
        output = None
        if "not run" in markers:
            reason = markers["not run"][0]
            assert reason, f"{where}: <!-- not run: REASON --> needs a reason"
            summary.not_run.append((str(block.line), reason))
        elif "file" in markers:
            name = markers["file"][0]
            assert name and not Path(name).is_absolute() and ".." not in Path(name).parts, f"{where}: bad file name"
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(block.code, encoding="utf-8")
            summary.written.append(name)
        elif "output" in markers:
            assert previous_output is not None, f"{where}: <!-- output --> must follow a block that ran"
            check_output(block.code, previous_output, where)
            summary.checked.append(str(block.line))
        elif block.lang in PYTHON:
            assert "exit" not in markers, f"{where}: <!-- exit --> is for bash blocks"
            with shell.python_sees_exports():
                output = run_python(block, page, namespace)
            summary.ran.append(str(block.line))
        elif block.lang in SHELL:
            output = run_bash(block, where, shell)
            summary.ran.append(str(block.line))
        else:
            assert not set(markers) & {"exit", "creates"}, f"{where}: a {block.lang or 'plain'} block does not run"
            summary.shown += 1
        if output is not None:
            for path in " ".join(markers.get("creates", [])).split():
                assert (folder / path).exists(), f"{where}: the block should create {path}, it did not"
        previous_output = output
    return summary


#: pages whose examples take minutes (full runs, servers): `make check` leaves them out
SLOW_PAGES = {"getting-started.md", "troubleshooting.md", "cli.md", "remote.md", "benchmarks.md"}


@pytest.mark.parametrize("page", [pytest.param(page, marks=pytest.mark.slow) if page in SLOW_PAGES else page
                                  for page in PAGES])
def test_doc_examples_run(page, tmp_path, monkeypatch, capsys, request):
    monkeypatch.chdir(tmp_path)                  # python blocks write where the shell commands do
    monkeypatch.syspath_prepend(str(tmp_path))   # modules written by <!-- file: x.py --> import
    if page == "benchmarks.md":                  # its smoke suite resumes the session's: run once
        monkeypatch.setenv("BBREPROG_SMOKE_RESULTS", str(request.getfixturevalue("smoke_suite")[0]))
    summary = run_page(page, tmp_path)
    with capsys.disabled():
        print("\n" + summary.text(page))
    code_blocks = [b for b in blocks_of(DOCS / page) if b.lang in PYTHON | SHELL]
    assert len(summary.ran) + len(summary.not_run) + len(summary.written) >= len(code_blocks)


def test_every_page_is_listed():
    """A new page is either run (PAGES) or listed with the reason it is not (OTHER_PAGES)."""
    pages = {path.name for path in DOCS.glob("*.md")}
    assert pages == set(PAGES) | set(OTHER_PAGES), "add the new page to PAGES, or to OTHER_PAGES with a reason"


def test_marker_parsing(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n<!-- not run: needs a GPU -->\n```bash\nmake demo\n```\n"
                    "<!-- exit: 2 -->\n<!-- creates: a b -->\n```bash\nbbreprog x \\\n  --y\n# note\n```\n")
    first, second = blocks_of(page)
    assert first.markers == {"not run": ["needs a GPU"]} and first.line == 3
    assert second.markers == {"exit": ["2"], "creates": ["a b"]}
    assert commands_of(second.code) == ["bbreprog x --y"]
    check_output("queries: … = train …\nrun folder: runs/x", "noise\nqueries: 1 = train 2\nmore\nrun folder: runs/x\n", "t")
    with pytest.raises(AssertionError):
        check_output("b\na", "a\nb\n", "t")       # in order only


def _reference_module():
    spec = importlib.util.spec_from_file_location("make_cli_reference", DOCS / "make_cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_up_to_date():
    committed = (DOCS / "cli-reference.md").read_text(encoding="utf-8")
    assert committed == _reference_module().render(), (
        "docs/cli-reference.md is out of date: run .venv/bin/python docs/make_cli_reference.py")


def test_cli_reference_lists_every_option():
    """The generated page names every command and every option of the click group."""
    from blackbox_reprog.tools.cli import main
    text = _reference_module().render()
    for name, command in main.commands.items():
        assert f"## `bbreprog {name}`" in text
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-"):
                    assert f"`{opt}" in text, f"{name}: {opt} missing from the reference"


@pytest.mark.parametrize("page", sorted(path.name for path in DOCS.glob("*.md")))
def test_toml_blocks_parse(page):
    """Config fragments are shown, not run: each must at least be valid TOML as written."""
    import tomllib
    for block in blocks_of(DOCS / page):
        if block.lang == "toml":
            try:
                tomllib.loads(block.code)
            except tomllib.TOMLDecodeError as error:
                pytest.fail(f"{page}:{block.line}: a toml block that does not parse: {error}")
