"""The documentation's commands are tested. Every fenced block of README.md and docs/*.md:
- ```bash / ```python without a marker runs, in order, in a scratch copy of the repository (its own results/, the
  data at ../shared/data, the Hub offline), and must succeed (a page's Python blocks share one interpreter, each
  continuing the one before); a ```text block right after it holds output whose
  every number the block must print;
- ```bash gpu / network / long (a word after the language) does not run;
- in every block, each `gpo-bench` command line is parsed by the CLI's own parser (a renamed flag fails), and each
  `pytest` and `ruff` command line by pytest and ruff themselves.
The README's first block, the set-up commands (they build a virtual environment), is flag-checked only; `.ci/run`
must run its test command verbatim."""

import contextlib
import io
import json
import os
import re
import select
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from gpo_bench.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("GPO_BENCH_DATA", REPO.parent / "shared" / "data"))
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKERS = {"gpu", "network", "long"}
SHELLS = {"bash", "sh", "shell", "console"}
NOT_COPIED = {".git", ".venv", "results", "__pycache__", ".pytest_cache", ".ruff_cache"}
BLOCK_TIMEOUT_S = 300
NUMBER = re.compile(r"\d+(?:\.\d+)?")


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    marker: str
    code: str
    output: str | None  # the ```text block right after it, if any

    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a Markdown page, each with the ```text block that follows it."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[tuple[int, str, str, int]] = []  # (first line, info string, code, line after the fence)
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            info, start = lines[i][3:].strip(), i
            i += 1
            body = []
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            if i == len(lines):
                raise AssertionError(f"{page.relative_to(REPO)}:{start + 1}: the fenced block is never closed")
            found.append((start + 1, info, "\n".join(body) + "\n", i + 1))
        i += 1
    result = []
    for n, (line, info, code, after) in enumerate(found):
        words = info.split()
        lang, marker = (words[0] if words else ""), " ".join(words[1:])
        if lang == "text":
            continue
        output = None
        if n + 1 < len(found) and found[n + 1][1].split()[:1] == ["text"]:
            between = lines[after : found[n + 1][0] - 1]
            if not any(s.strip() for s in between):
                output = found[n + 1][2]
        result.append(Block(page, line, lang, marker, code, output))
    return result


def setup_block() -> Block:
    return blocks(REPO / "README.md")[0]


def command_lines(code: str) -> list[list[str]]:
    """Each simple command of a shell block as its words: continuation lines joined, comments dropped, split at
    `&&`, `||`, `;` and `|`, leading VAR=value assignments dropped."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars="&|;")
        lexer.whitespace_split = True
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set("&|;"):
                while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
                    words.pop(0)
                if words:
                    commands.append(words)
                words = []
            else:
                words.append(token)
    return commands


def gpo_bench_args(words: list[str]) -> list[str] | None:
    """The arguments of a `gpo-bench …` (or `python -m gpo_bench …`) command, else None."""
    if Path(words[0]).name == "gpo-bench":
        return words[1:]
    if Path(words[0]).name.startswith("python") and words[1:3] == ["-m", "gpo_bench"]:
        return words[3:]
    return None


def parser_error(args: list[str]) -> str | None:
    """What the CLI's parser says about these arguments (None: they parse)."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(args)
    except SystemExit as exit_:
        if exit_.code not in (0, None):  # --help exits 0
            return stderr.getvalue().strip().splitlines()[-1]
    return None


def tool_error(words: list[str], scratch: Path) -> str | None:
    """What pytest or ruff says about a command line of theirs (None: not theirs, or its flags are valid)."""
    name = Path(words[0]).name
    if name.startswith("python") and words[1:3] == ["-m", "pytest"]:
        words, name = words[2:], "pytest"
    if name == "pytest":  # collect from an empty folder: exit 5 (nothing collected) unless a flag is wrong (4)
        empty = scratch / "empty"
        empty.mkdir(exist_ok=True)
        command = [sys.executable, "-m", "pytest", *words[1:], "--collect-only", "-q", "-p", "no:cacheprovider"]
        command += ["-c", str(REPO / "pyproject.toml"), "--rootdir", str(REPO), str(empty)]
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        return None if done.returncode in (0, 5) else (done.stdout + done.stderr).strip()[-500:]
    if name == "ruff":  # exit 2 is a usage error; 1 only a finding
        ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
        args = words[1:]
        if args[:1] == ["format"] and "--check" not in args and "--diff" not in args:
            args = [*args, "--check"]  # never rewrite files from a test
        done = subprocess.run([ruff, *args], capture_output=True, text=True, cwd=REPO)
        return None if done.returncode in (0, 1) else (done.stdout + done.stderr).strip()[-500:]
    return None


ALL_SHELL_BLOCKS = [b for page in PAGES for b in blocks(page) if b.lang in SHELLS]


@pytest.mark.parametrize("block", ALL_SHELL_BLOCKS, ids=[b.where() for b in ALL_SHELL_BLOCKS])
def test_documented_command_lines_parse(block: Block, tmp_path: Path) -> None:
    problems = []
    for words in command_lines(block.code):
        args = gpo_bench_args(words)
        error = parser_error(args) if args is not None else tool_error(words, tmp_path)
        if error:
            problems.append(f"{shlex.join(words)}\n    -> {error}")
    assert not problems, f"{block.where()}: a documented command no longer parses:\n" + "\n".join(problems)


def test_the_checks_catch_a_renamed_flag_and_a_figure_not_printed(tmp_path: Path) -> None:
    assert parser_error(["run", "--task", "opinionqa", "--method", "population", "--shots", "0,5"]) is None
    assert "--nshots" in parser_error(["run", "--task", "opinionqa", "--method", "population", "--nshots", "5"])
    assert "--task" in parser_error(
        ["run", "--tasks", "opinionqa", "--method", "population"]
    )  # a required flag renamed
    assert parser_error(["leaderboard", "--help"]) is None
    assert tool_error(["pytest", "-q", "-m", "slow"], tmp_path) is None
    assert tool_error(["pytest", "--no-such-flag"], tmp_path)
    assert tool_error(["ruff", "check", "--no-such-flag", "."], tmp_path)
    assert command_lines("A=1 gpo-bench list && .venv/bin/ruff check . # note\nx \\\n  --y 'a b' | z\n") == [
        ["gpo-bench", "list"],
        [".venv/bin/ruff", "check", "."],
        ["x", "--y", "a b"],
        ["z"],
    ]
    assert missing_figures("K = 5: 0.8833 [0.8664, 0.9042]", "5 0.8833 [0.8664, 0.9042]") == []
    assert missing_figures("K = 5: 0.883 [0.873, 0.897]", "5 0.8833 [0.8664, 0.9042]") == ["0.883", "0.873", "0.897"]


def test_readme_set_up_commands_come_first_and_ci_runs_the_test_command() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = setup_block()
    first_fence = readme.splitlines().index(next(s for s in readme.splitlines() if s.startswith("```"))) + 1
    assert block.line == first_fence
    lines = [s for s in block.code.splitlines() if s.strip() and not s.startswith("#")]
    assert len(lines) == 2, "the README's first block holds the two set-up commands"
    run_line, test_line = lines
    assert run_line.startswith("python3 -m venv .venv") and "gpo-bench run --task opinionqa --method gpo" in run_line
    assert test_line.startswith("python3 -m venv .venv") and test_line.endswith("python -m pytest -q")
    assert test_line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert len(readme.splitlines()) <= 150


def test_local_links_resolve() -> None:
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            path = target.split("#")[0]
            if path and not re.match(r"[a-z]+:", path) and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_docs_index_lists_every_page() -> None:
    index = (REPO / "docs" / "index.md").read_text(encoding="utf-8")
    unlisted = [p.name for p in PAGES if p.parent.name == "docs" and p.name != "index.md" and f"({p.name}" not in index]
    assert not unlisted, f"docs/index.md does not link: {unlisted}"


def missing_figures(shown: str, printed: str) -> list[str]:
    """The numbers of the shown output that the command did not print (each compared as a whole number token)."""
    have = set(NUMBER.findall(printed))
    return [n for n in NUMBER.findall(shown) if n not in have]


@pytest.fixture(scope="module")
def data_dir() -> Path:
    if not (DATA_DIR / "opinionqa").is_dir():
        pytest.skip(f"real data not found at {DATA_DIR} (set GPO_BENCH_DATA to the shared data folder)")
    return DATA_DIR


def scratch_repository(root: Path, data: Path) -> Path:
    """ROOT/repo: the repository's files as links (results/ copied without runs); ROOT/shared/data: the data, and
    beside it what lies beside the data (../shared/tools/rescore.py)."""
    (root / "shared").mkdir()
    (root / "shared" / "data").symlink_to(data.resolve(), target_is_directory=True)
    for sibling in data.resolve().parent.iterdir():
        if not (root / "shared" / sibling.name).exists():
            (root / "shared" / sibling.name).symlink_to(sibling, target_is_directory=sibling.is_dir())
    repo = root / "repo"
    repo.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in NOT_COPIED:
            (repo / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    if (REPO / "results").is_dir():
        shutil.copytree(REPO / "results", repo / "results", ignore=shutil.ignore_patterns("runs", "report"))
    return repo


RUNNABLE = {
    page: [b for b in blocks(page) if b.lang in SHELLS | {"python"} and not b.marker and b != setup_block()]
    for page in PAGES
}


# The page's Python blocks run in one interpreter, each continuing the one before (as in a notebook); it answers
# every block with one JSON line: whether it ran and what it printed.
PYTHON_SESSION = """
import contextlib, io, json, sys, traceback

if __name__ == "__main__":  # spawned worker processes import this file; only the session itself reads blocks
    namespace = {"__name__": "__main__"}
    for line in sys.stdin:
        printed = io.StringIO()
        ok = True
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            try:
                exec(compile(json.loads(line), "<docs block>", "exec"), namespace)
            except BaseException:
                traceback.print_exc()
                ok = False
        sys.__stdout__.write(json.dumps({"ok": ok, "printed": printed.getvalue()}) + "\\n")
        sys.__stdout__.flush()
"""


class PythonSession:
    """One Python process for a page's ```python blocks."""

    def __init__(self, cwd: Path, env: dict[str, str], folder: Path) -> None:
        script = folder / "docs_python_session.py"
        script.write_text(PYTHON_SESSION, encoding="utf-8")
        self.process = subprocess.Popen(
            [sys.executable, str(script)], cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def run(self, code: str) -> tuple[bool, str]:
        self.process.stdin.write(json.dumps(code) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], BLOCK_TIMEOUT_S)
        if not ready:
            return False, f"no answer within {BLOCK_TIMEOUT_S} s"
        line = self.process.stdout.readline()
        if not line:
            return False, f"the Python session ended (exit {self.process.wait()})"
        answer = json.loads(line)
        return answer["ok"], answer["printed"]

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.mark.parametrize("page", list(RUNNABLE), ids=[str(p.relative_to(REPO)) for p in RUNNABLE])
def test_documented_commands_run_and_print_what_the_page_shows(page: Path, data_dir: Path, tmp_path: Path) -> None:
    runnable = RUNNABLE[page]
    if not runnable:
        pytest.skip(f"{page.relative_to(REPO)} has no block to run")
    for marker in {b.marker for b in blocks(page)} - {""} - MARKERS:
        pytest.fail(f"{page.relative_to(REPO)}: unknown block marker {marker!r} (known: {sorted(MARKERS)})")
    repo = scratch_repository(tmp_path, data_dir)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env["HF_HUB_OFFLINE"] = "1"  # what the docs run must run offline
    env.pop("GPO_BENCH_INCLUDE_PATH", None)
    env.pop("GPO_BENCH_DATA", None)
    python = PythonSession(repo, env, tmp_path) if any(b.lang == "python" for b in runnable) else None
    try:
        for block in runnable:
            if block.lang == "python":
                ok, printed = python.run(block.code)
            else:
                done = subprocess.run(
                    ["bash", "-e", "-o", "pipefail", "-c", block.code],
                    cwd=repo,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=BLOCK_TIMEOUT_S,
                    check=False,
                )
                ok, printed = done.returncode == 0, done.stdout + done.stderr
            assert ok, f"{block.where()} failed:\n{block.code}\n{printed[-3000:]}"
            if block.output is not None:
                missing = missing_figures(block.output, printed)
                assert not missing, (
                    f"{block.where()}: the shown output has {missing}, which it did not print:\n{printed[-3000:]}"
                )
    finally:
        if python is not None:
            python.close()


def test_a_pages_python_blocks_share_one_session(tmp_path: Path) -> None:
    session = PythonSession(tmp_path, dict(os.environ), tmp_path)
    try:
        assert session.run("x = 6 * 7\n") == (True, "")
        assert session.run("print(x)\n") == (True, "42\n")
        ok, printed = session.run("raise ValueError('not a number')\n")
        assert not ok and "ValueError: not a number" in printed
    finally:
        session.close()
