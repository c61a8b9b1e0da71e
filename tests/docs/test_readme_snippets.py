"""Every shell and Python snippet of README.md and docs/*.md, run against a
real asarrayd.

A fenced block in sh, bash, console or python is a snippet, and each is a
test case of its own (its id: the section's name and the block's number in
it). The snippets run in document order against one server listening on
its default socket: their processes get an XDG_RUNTIME_DIR of the test's,
so the default socket of asarrayctl and the Python client is that
server's. The blocks of one section share a working directory, so a file
an earlier block writes is there for a later one; in it `build` is the
build tree and every other entry of the repository root is linked, as if
the snippet ran at the root after scripts/build.sh. A shell snippet runs
under `bash -e -o pipefail`, a console snippet's `$ ` lines the same way,
a Python snippet with this interpreter and the assembled client.

A snippet that cannot run here says why in a comment right before its block:
    <!-- snippet: not run: REASON -->      (a cluster, a GPU, another host)
    <!-- snippet: template: REASON -->     (placeholders for the reader)
A block in another language (cpp, text) is not a snippet. A block without
a language, a marker without a reason and a marker with no block after it
fail the test.

Environment (set by ctest): ASARRAYD, the server; ASARRAY_BUILD_DIR, the
build tree; PYTHONPATH with the assembled client; ASARRAY_SOURCE_DIR.
"""

import dataclasses
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types

import pytest

ROOT = pathlib.Path(os.environ.get("ASARRAY_SOURCE_DIR", pathlib.Path(__file__).parents[2]))
SNIPPET_LANGUAGES = {"sh", "bash", "console", "python"}
TIMEOUT_S = 120
MARKER = re.compile(r"<!--\s*snippet:\s*(.*?)\s*-->")
FENCE = re.compile(r"^(\s*)(`{3,})(.*)$")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


@dataclasses.dataclass
class Block:
    path: str  # relative to ROOT
    line: int  # of the opening fence, from 1
    section: str
    language: str
    text: str
    marker: str  # the marker's text after "snippet:", or ""

    @property
    def where(self):
        return f"{self.path}:{self.line}"


def documents():
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def parse(path, relative):
    """(blocks, problems) of one Markdown file, named `relative` in them."""
    blocks, problems = [], []
    section, marker, marker_line = path.stem, None, 0
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = FENCE.match(line)
        if fence:
            ticks, language = fence.group(2), fence.group(3).strip()
            body, i = [], i + 1
            while i < len(lines) and not re.match(rf"^\s*{ticks}`*\s*$", lines[i]):
                body.append(lines[i][len(fence.group(1)):] if lines[i].startswith(fence.group(1))
                            else lines[i].lstrip())
                i += 1
            blocks.append(Block(relative, i - len(body), section, language.split()[0]
                                if language else "", "\n".join(body) + "\n", marker or ""))
            marker = None
        elif line.strip():
            if marker is not None:
                problems.append(f"{relative}:{marker_line}: a snippet marker must come right "
                                "before its block")
                marker = None
            found = MARKER.search(line)
            heading = HEADING.match(line)
            if found:
                marker, marker_line = found.group(1), i + 1
            elif heading:
                section = heading.group(1)
        i += 1
    if marker is not None:
        problems.append(f"{relative}:{marker_line}: a snippet marker with no block after it")
    return blocks, problems


def all_blocks():
    blocks, problems = [], []
    for path in documents():
        b, p = parse(path, str(path.relative_to(ROOT)))
        blocks += b
        problems += p
    return blocks, problems


def marker_problem(block):
    """Why `block`'s marker or language is wrong, or None."""
    if not block.language:
        return f"{block.where}: a block without a language (sh, python, cpp, text, ...)"
    if not block.marker:
        return None
    kind, _, reason = block.marker.partition(":")
    if kind.strip() not in ("not run", "template"):
        return f"{block.where}: unknown snippet marker {block.marker!r}"
    if not reason.strip():
        return f"{block.where}: the marker {block.marker!r} gives no reason"
    if block.language not in SNIPPET_LANGUAGES:
        return f"{block.where}: a marker on a {block.language} block, which never runs"
    return None


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def runnable():
    """(id, block) of every snippet to run, in document order."""
    out, counts = [], {}
    for block in all_blocks()[0]:
        if block.language not in SNIPPET_LANGUAGES:
            continue
        key = (block.path, block.section)
        counts[key] = counts.get(key, 0) + 1
        if block.marker:
            continue
        prefix = "" if block.path == "README.md" else block.path + ":"
        out.append((f"{prefix}{slug(block.section)}-{counts[key]}", block))
    return out


def console_commands(text):
    """The commands of a console block: its `$ ` lines and their continuations."""
    commands, continued = [], False
    for line in text.splitlines():
        if continued or line.startswith("$ "):
            commands.append(line if continued else line[2:])
            continued = line.endswith("\\")
    return "\n".join(commands) + "\n"


@pytest.fixture(scope="module")
def server():
    """asarrayd on its defaults, with XDG_RUNTIME_DIR pointing into a
    directory of its own; server.log() reads what it logged."""
    top = tempfile.mkdtemp(prefix="asarrayd-docs-")
    runtime = os.path.join(top, "run")
    os.mkdir(runtime, 0o700)
    prefix = f"asarrayd-docs-{os.getpid()}"
    with open(os.path.join(top, "asarrayd.log"), "w+") as log:
        process = subprocess.Popen([os.environ["ASARRAYD"], f"--shm_prefix={prefix}"],
                                   env=dict(os.environ, XDG_RUNTIME_DIR=runtime), stdout=log,
                                   stderr=subprocess.STDOUT)

        def read_log():
            log.seek(0)
            return log.read()

        s = types.SimpleNamespace(runtime=runtime, process=process, log=read_log)
        from asarray_client import Client
        address = f"unix:{runtime}/asarrayd/asarrayd.sock"
        deadline = time.monotonic() + 20
        while True:
            try:
                with Client(address) as client:
                    client.stats()
                break
            except Exception:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"asarrayd did not start on {address}:\n{s.log()}")
                time.sleep(0.02)
        yield s
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, s.log()
    shutil.rmtree(top, ignore_errors=True)
    left = [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]
    assert not left, f"segments left in /dev/shm: {left}"


@pytest.fixture(scope="module")
def workdirs():
    """A working directory per section: the repository root's entries, with
    `build` the build tree."""
    top = pathlib.Path(tempfile.mkdtemp(prefix="asarrayd-snippets-"))
    made = {}

    def get(block):
        key = (block.path, block.section)
        if key not in made:
            made[key] = top / f"{len(made)}-{slug(block.section)}"
            made[key].mkdir()
            for entry in ROOT.iterdir():
                if entry.name not in ("build", ".git"):
                    (made[key] / entry.name).symlink_to(entry)
            (made[key] / "build").symlink_to(os.environ["ASARRAY_BUILD_DIR"])
        return made[key]

    yield get
    shutil.rmtree(top, ignore_errors=True)


def snippet_env(server):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASARRAY")}
    env["XDG_RUNTIME_DIR"] = server.runtime
    return env


def run_snippet(block, cwd, env):
    """(exit status, output) of the snippet, killed past TIMEOUT_S."""
    if block.language == "python":
        argv = [sys.executable, "-c", block.text]
    else:
        text = console_commands(block.text) if block.language == "console" else block.text
        argv = ["bash", "-e", "-o", "pipefail", "-c", text]
    with subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as process:
        try:
            output, _ = process.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            return f"killed after {TIMEOUT_S} s", output
    return process.returncode, output


def test_markers_are_checked(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n```\nuntagged\n```\n## Run\n<!-- snippet: not run -->\n"
                    "```sh\nno reason\n```\n<!-- snippet: not run: a cluster -->\n```cpp\n"
                    "int x;\n```\n<!-- snippet: not run: a GPU -->\n\n```console\n$ nvidia-smi\n"
                    "output\n```\n<!-- snippet: template: ID -->\nprose\n\n```python\nx\n```\n"
                    "<!-- snippet: maybe: later -->\n```bash\ny\n```\n<!-- snippet: not run: end -->\n")
    blocks, problems = parse(page, "page.md")
    assert [(b.section, b.language, b.line) for b in blocks] == [
        ("Page", "", 3), ("Run", "sh", 8), ("Run", "cpp", 12), ("Run", "console", 17),
        ("Run", "python", 24), ("Run", "bash", 28)]
    assert blocks[3].marker == "not run: a GPU" and not blocks[4].marker
    assert console_commands("$ a \\\n  b\nout\n$ c\n") == "a \\\n  b\nc\n"
    problems += [p for p in map(marker_problem, blocks) if p]
    assert problems == [
        "page.md:21: a snippet marker must come right before its block",
        "page.md:31: a snippet marker with no block after it",
        "page.md:3: a block without a language (sh, python, cpp, text, ...)",
        "page.md:8: the marker 'not run' gives no reason",
        "page.md:12: a marker on a cpp block, which never runs",
        "page.md:28: unknown snippet marker 'maybe: later'"]


def test_every_block_runs_or_says_why_not():
    blocks, problems = all_blocks()
    problems += [p for p in map(marker_problem, blocks) if p]
    assert not problems, "\n".join(problems)
    assert runnable(), "no snippet found"


@pytest.mark.parametrize("block", [b for _, b in runnable()], ids=[i for i, _ in runnable()])
def test_snippet(block, server, workdirs):
    status, output = run_snippet(block, workdirs(block), snippet_env(server))
    assert status == 0, (f"{block.where} ({block.language}) exited {status}:\n{block.text}\n"
                         f"--- output ---\n{output}")
    assert server.process.poll() is None, f"asarrayd died:\n{server.log()}"


def build_group():
    """The packages `scripts/deps.sh build` installs on a machine with none of
    them: it runs with a dpkg-query that finds nothing and an apt-get (and
    sudo) that only succeed."""
    shims = pathlib.Path(tempfile.mkdtemp(prefix="asarrayd-deps-"))
    try:
        for name, body in (("dpkg-query", "exit 1"), ("apt-get", "exit 0"),
                           ("sudo", 'exec "$@"')):
            (shims / name).write_text(f"#!/bin/sh\n{body}\n")
            (shims / name).chmod(0o755)
        result = subprocess.run(
            ["bash", str(ROOT / "scripts" / "deps.sh"), "build"], capture_output=True, text=True,
            env=dict(os.environ, PATH=f"{shims}:{os.environ['PATH']}"), check=True)
    finally:
        shutil.rmtree(shims)
    found = re.search(r"^deps: installing (.*)$", result.stdout, re.M)
    assert found, result.stdout + result.stderr
    return set(found.group(1).split())


def debian_package(module):
    """The Debian package that holds the module /usr/bin/python3 imports."""
    file = subprocess.run(["/usr/bin/python3", "-c", f"import {module}; print({module}.__file__)"],
                          env={"PATH": os.environ["PATH"]}, capture_output=True, text=True,
                          check=True).stdout.strip()
    owner = subprocess.run(["dpkg", "-S", file], capture_output=True, text=True, check=True)
    return owner.stdout.split(":")[0]


def test_quick_start_needs_only_what_run_sh_installs():
    """scripts/run.sh installs `deps.sh build`; every module the Quick start
    imports must come from a package of that group."""
    quick_start = [b for b in all_blocks()[0]
                   if b.section == "Quick start" and b.language in SNIPPET_LANGUAGES]
    assert quick_start, "README has no Quick start snippet"
    assert "deps.sh\" build" in (ROOT / "scripts" / "run.sh").read_text()
    text = "".join(b.text for b in quick_start)
    modules = set(re.findall(r"\bimport\s+([A-Za-z_]\w*)", text))
    modules |= set(re.findall(r"\bfrom\s+([A-Za-z_]\w*)\s+import", text))
    # The standard library comes with the interpreter, the client with the build.
    built = {p.name for p in pathlib.Path(os.environ["ASARRAY_BUILD_DIR"], "python").iterdir()}
    modules -= set(sys.stdlib_module_names) | built
    installed = build_group()
    missing = {m: debian_package(m) for m in sorted(modules)}
    missing = {m: p for m, p in missing.items() if p not in installed}
    assert not missing, (f"the Quick start imports modules that `deps.sh build` does not "
                         f"install: {missing}")
