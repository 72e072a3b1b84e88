"""The README and docs/ against the code, so that they cannot drift apart.

Checked: every ``landmarks <command> --option`` shown (in code blocks, and in inline code that starts with a
command) is a real command and option; every command of the CLI is shown in the README; the ``report.json``
keys of the data-formats table are exactly the keys ``evaluate`` writes (a real run on the session's index);
the default values in the docs' tables and in ``name`` (N) / ``name`` = N prose equal ``retrieval/defaults.py``
and the CLI's; the set-up command is the one CI runs; links between the pages resolve.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import click
import pandas as pd
import pytest
import typer.main
from typer.testing import CliRunner

from cli import app
from retrieval.defaults import DEFAULT_LOCAL, DEFAULT_RECOGNITION_CONF
from retrieval.local_features import split_local_conf
from retrieval.registry import local_registry

DEFAULT_PRIMARY = split_local_conf(DEFAULT_LOCAL)[0]  # the default's first (primary) local features
from retrieval.image_io import DEFAULT_MAX_PIXELS
from retrieval.recognize import resolve_recognition_conf
from tests.conftest import read_csv

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
GROUP = typer.main.get_command(app)
GROUP_OPTIONS = {"-v", "--verbose", "-q", "--quiet", "--help"}
SHELL_LANGS = {"", "bash", "sh", "shell", "console"}

_FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.M | re.S)
_SPAN = re.compile(r"`([^`\n]+)`")


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]


def prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return _FENCE.sub("", text)


def _tokens(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:  # an unbalanced quote in a shortened example: plain words are enough here
        return command.split()


def shell_commands(block: str) -> list[list[str]]:
    """The token lists of the shell commands in a code block: continuations joined, comments dropped, split at
    ``&&``, ``;`` and ``|``."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        line = re.sub(r"(^|\s)#.*", "", line)  # a comment starts a line or follows a space
        for part in re.split(r"&&|;|\|", line):
            words = _tokens(part.strip())
            if words[:1] == ["$"]:
                words = words[1:]
            if words:
                out.append(words)
    return out


def landmarks_uses(path: Path) -> list[tuple[str, list[str]]]:
    """(where, tokens after ``landmarks``) for every ``landmarks ...`` in code blocks, and for inline code that
    starts with ``landmarks`` or with a command name followed by an option (``predict --no-guesses``)."""
    text = _text(path)
    uses = []
    for lang, body in code_blocks(text):
        if lang in SHELL_LANGS:
            uses += [(f"{path.name}: {' '.join(w)}", w[1:]) for w in shell_commands(body) if w[0] == "landmarks"]
    for span in _SPAN.findall(prose(text)):
        words = _tokens(span)
        if words[:1] == ["landmarks"] and len(words) > 1:
            uses.append((f"{path.name}: `{span}`", words[1:]))
        elif len(words) > 1 and words[0] in GROUP.commands and words[1].startswith("--"):
            uses.append((f"{path.name}: `{span}`", words))
    return uses


def _options(command: click.Command) -> set[str]:
    return {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}


def check_use(where: str, words: list[str]) -> list[str]:
    """What is wrong with one documented use of the CLI (empty: nothing)."""
    words = [w.strip("[]") for w in words]
    while words and words[0] in GROUP_OPTIONS:
        words = words[1:]
    if not words:
        return []
    name = words[0]
    if name not in GROUP.commands:
        return [f"{where}: no command {name!r} (commands: {', '.join(GROUP.commands)})"]
    known = _options(GROUP.commands[name])
    used = {w.split("=", 1)[0] for w in words[1:] if re.match(r"--?[A-Za-z]", w)}
    return [f"{where}: `landmarks {name}` has no option {o}" for o in sorted(used - known)]


def test_every_documented_command_and_option_exists():
    uses = [u for page in PAGES for u in landmarks_uses(page)]
    assert len(uses) > 40  # the parser found the examples (a broken parser must not pass silently)
    problems = [p for where, words in uses for p in check_use(where, words)]
    assert not problems, "\n".join(problems)


def test_the_check_catches_a_wrong_command_or_option():
    assert check_use("x", ["evaluate", "--index", "idx/", "--out", "r/"]) == []
    assert check_use("x", ["-q", "query", "--index", "i", "-k", "5", "[--json]"]) == []
    assert check_use("x", ["evaluate", "--thresold", "3"]) == ["x: `landmarks evaluate` has no option --thresold"]
    assert check_use("x", ["fit", "--index", "i"])[0].startswith("x: no command 'fit'")
    assert check_use("x", ["serve", "--max-pixels=5"]) == []
    page = "```bash\nlandmarks recognize --index idx/ a.jpg --bogus  # --also-bogus in a comment\n```\n" \
           "and `predict --no-guesss`, but not `--free-standing`.\n"
    uses = []
    for lang, body in code_blocks(page):
        uses += [w[1:] for w in shell_commands(body) if w[0] == "landmarks"]
    assert uses == [["recognize", "--index", "idx/", "a.jpg", "--bogus"]]
    assert [s for s in _SPAN.findall(prose(page))] == ["predict --no-guesss", "--free-standing"]


def test_readme_shows_every_command():
    shown = {words[0] for _, words in landmarks_uses(README) if words and words[0] in GROUP.commands}
    missing = sorted(set(GROUP.commands) - shown)
    assert not missing, f"README.md shows no example of: {', '.join(missing)}"


def test_setup_commands_are_the_ones_ci_runs():
    lang, first = code_blocks(_text(README))[0]
    lines = [w for w in shell_commands(first)]
    assert lines[0] == ["pip", "install", "-e", ".[test]", "-c", "constraints.txt"] and lines[1] == ["landmarks", "demo"]
    assert lines[2] == ["pytest"]
    ci = _text(ROOT / ".ci" / "run")
    assert 'pip install -e ".[test]" -c constraints.txt' in ci and re.search(r"^\S+ -m pytest\b", ci, re.M)


def test_constraints_pin_what_the_project_needs():
    """The lock file pins (==) every direct dependency of the package and of its test extra."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pins = {}
    for line in _text(ROOT / "constraints.txt").splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not a pin"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    project = tomllib.loads(_text(ROOT / "pyproject.toml"))["project"]
    needed = project["dependencies"] + project["optional-dependencies"]["test"]
    names = {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", d).group(0)).lower() for d in needed}
    assert not names - set(pins), f"constraints.txt pins none of: {sorted(names - set(pins))}"


# ----------------------------------------------------------------------------- report.json


def report_table(text: str) -> dict[str, set[str]]:
    """The README's ``report.json`` table: its rows' first cells -> the backticked keys of their second."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|") and "`report.json`" in line.split("|")[1]), None)
    assert start is not None, "no table headed `report.json` (its keys) in the README"
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = set(re.findall(r"`([a-z][a-z0-9_]*)`", cells[1]))
    return rows


@pytest.fixture(scope="module")
def reports(built_index, demo_data, tmp_path_factory):
    """report.json of a real evaluate run, recognition and retrieval, on the session's index (three of its
    queries, two landmark and one non-landmark: the keys are the point, not the figures)."""
    out = tmp_path_factory.mktemp("docs-eval")
    holdout = read_csv(demo_data.holdout_csv)
    queries = out / "queries.csv"
    pd.concat([holdout[holdout["landmark_id"] != ""].head(2), holdout[holdout["landmark_id"] == ""].head(1)]).to_csv(
        queries, index=False)
    runner = CliRunner()
    common = ["--index", str(built_index), "--queries", str(queries),
              "--images", str(demo_data.images_dir), "--bootstrap", "10"]
    recognition = runner.invoke(app, ["-q", "evaluate", *common, "--out", str(out / "rec")])
    assert recognition.exit_code == 0, recognition.output
    retrieval = runner.invoke(app, ["-q", "evaluate", "--task", "retrieval", *common, "--out", str(out / "ret")])
    assert retrieval.exit_code == 0, retrieval.output
    return (json.loads((out / "rec" / "report.json").read_text()),
            json.loads((out / "ret" / "report.json").read_text()))


def test_documented_report_keys_are_the_keys_evaluate_writes(reports):
    recognition, retrieval = reports
    rows = report_table(_text(README))
    documented = set().union(*(keys for label, keys in rows.items() if "--task retrieval" not in label))
    assert documented == set(recognition), (
        f"documented but not written: {sorted(documented - set(recognition))}; "
        f"written but not documented: {sorted(set(recognition) - documented)}")
    metrics = next(keys for label, keys in rows.items() if "pipeline" in label)
    systems = next(keys for label, keys in rows.items() if "same metrics" in label)
    for name in systems:
        assert set(recognition[name]) == metrics, name
    retrieval_keys = next(keys for label, keys in rows.items() if "--task retrieval" in label)
    assert retrieval_keys == set(retrieval), (sorted(retrieval_keys ^ set(retrieval)))


def test_report_table_parser():
    text = ("| `report.json` of `evaluate` | keys |\n|---|---|\n| a | `gap`, `x_y` (a `b c` note) |\n"
            "| `--task retrieval` | `task` |\n\nafter\n")
    assert report_table(text) == {"a": {"gap", "x_y"}, "`--task retrieval`": {"task"}}


# ----------------------------------------------------------------------------- defaults


def _number(cell: str) -> float | None:
    m = re.fullmatch(r"([0-9][0-9,]*(?:\.[0-9]+)?)\s*(?:×|x)?", cell.strip())
    return float(m.group(1).replace(",", "")) if m else None


def _equal(cell: str, value) -> bool:
    """A documented number against the code's value (None, e.g. early exit off, equals no number)."""
    number = _number(cell)
    return number is not None and isinstance(value, (int, float)) and number == float(value)


def tables(text: str) -> list[list[list[str]]]:
    """Every markdown table outside code blocks: a list of rows (the header first), each a list of cells."""
    out, current = [], []
    for line in prose(text).splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                current.append(cells)
        elif current:
            out.append(current)
            current = []
    return out


def default_table_problems(text: str, where: str) -> list[str]:
    """Recognition-default tables (a header of backticked parameter names, rows named by local features) and
    option tables (header "`landmarks CMD` option | default"), against the code."""
    problems = []
    for table in tables(text):
        header = table[0]
        keys = [(re.findall(r"`(\w+)`", h) or [None])[0] for h in header]
        if sum(k in DEFAULT_RECOGNITION_CONF for k in keys) >= 2:
            second = "second matcher" in header[0]
            for row in table[1:]:
                name = re.findall(r"`([\w+]+)`", row[0])[0]
                conf = (resolve_recognition_conf(extractor=DEFAULT_PRIMARY, second=name) if second
                        else resolve_recognition_conf(extractor=name))
                for key, cell in zip(keys[1:], row[1:]):
                    if key in DEFAULT_RECOGNITION_CONF and not _equal(cell, conf[key]):
                        problems.append(f"{where}: {name} {key} documented {cell}, code {conf[key]}")
        m = re.fullmatch(r"`landmarks ([\w-]+)` option", header[0])
        if m and "default" in header:
            command = GROUP.commands[m.group(1)]
            col = header.index("default")
            for row in table[1:]:
                for option in re.findall(r"`(--[\w-]+)`", row[0]):
                    param = next((p for p in command.params if option in p.opts), None)
                    if param is None:
                        problems.append(f"{where}: `landmarks {m.group(1)}` has no option {option}")
                        continue
                    cell = row[col]
                    if cell.startswith("("):  # "(required)", "(the index's)": described, not a value
                        continue
                    value = _number(cell)
                    same = value == float(param.default) if value is not None else cell == str(param.default)
                    if not same:
                        problems.append(f"{where}: {option} of {m.group(1)} documented default {cell}, code {param.default}")
    return problems


# Parameters whose default is the same for every local configuration: prose may quote them by name.
_COMMON = {k for k in DEFAULT_RECOGNITION_CONF
           if not any(k in e.decision or k in e.as_second for e in local_registry.values())}
_LETTERS = {"k": "k", "C": "num_candidates", "R": "refs_per_candidate"}


def prose_default_problems(text: str, where: str) -> list[str]:
    """``name`` (N), ``name`` = N and the letters k/C/R = N in prose, against the defaults (C and R: those of
    the default local features)."""
    problems = []
    body = prose(text)
    for key, value in re.findall(r"`(\w+)`\s*(?:=\s*|\()([0-9][0-9.,]*)", body):
        if key in _COMMON and not _equal(value.rstrip(".,"), DEFAULT_RECOGNITION_CONF[key]):
            problems.append(f"{where}: `{key}` documented {value}, code {DEFAULT_RECOGNITION_CONF[key]}")
    base = resolve_recognition_conf(extractor=DEFAULT_PRIMARY)
    for letter, value in re.findall(r"(?<![\w`])([kCR]) = ([0-9]+)", body):
        if float(value) != float(base[_LETTERS[letter]]):
            problems.append(f"{where}: {letter} = {value} documented, code {base[_LETTERS[letter]]}")
    for value, mp in re.findall(r"`--max-pixels`[^.]*?default ([0-9][0-9,_]*)( MP)?", body):
        if int(value.replace(",", "").replace("_", "")) * (10**6 if mp else 1) != DEFAULT_MAX_PIXELS:
            problems.append(f"{where}: --max-pixels default documented {value}{mp}, code {DEFAULT_MAX_PIXELS}")
    return problems


def test_documented_defaults_equal_the_code():
    problems, tables_seen = [], 0
    for page in PAGES:
        text = _text(page)
        tables_seen += sum(1 for t in tables(text) if "`inlier_threshold`" in t[0] or "`cascade_threshold`" in t[0])
        problems += default_table_problems(text, page.name) + prose_default_problems(text, page.name)
    assert tables_seen >= 2  # the README's two default tables are there and were read
    assert not problems, "\n".join(problems)


def test_default_checks_catch_a_wrong_value():
    good = ("| local features | `inlier_threshold` | `min_margin` |\n|---|---|---|\n| `rootsift` (default) | 12 | 1 |\n"
            "| `xfeat` | 40 | 1.5 |\n\n| `landmarks serve` option | default | meaning |\n|---|---|---|\n"
            "| `--port` | 8000 | port |\n| `--index` | (required) | x |\n\nAll take `k` = 50; `cascade_pairs` (5) aside, "
            "C = 10 and `--max-pixels` (default 40,000,000; `--max-pixels`, default 40 MP).\n")
    assert default_table_problems(good, "g") == [] and prose_default_problems(good, "g") == []
    bad = good.replace("| `xfeat` | 40 |", "| `xfeat` | 30 |").replace("| 8000 |", "| 8080 |")
    assert default_table_problems(bad, "b") == ["b: xfeat inlier_threshold documented 30, code 40",
                                                 "b: --port of serve documented default 8080, code 8000"]
    bad = good.replace("`k` = 50", "`k` = 30").replace("C = 10", "C = 12").replace("40,000,000", "180,000,000")
    assert len(prose_default_problems(bad.replace("40 MP", "180 MP"), "b")) == 4
    # early exit is off (None): a documented number for it is wrong
    assert prose_default_problems("stop at `confirm_inliers` (60)", "b") == ["b: `confirm_inliers` documented 60, code None"]


# ----------------------------------------------------------------------------- links


def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_pages_resolve():
    linked = set()
    problems = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(_text(page))):
            if re.match(r"[a-z]+:", target):
                continue  # an outside address
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                problems.append(f"{page.name}: link to missing {target}")
                continue
            if page == README:
                linked.add(dest)
            if anchor and dest.suffix == ".md":
                headings = {_slug(h) for h in re.findall(r"^#+ (.+)$", prose(_text(dest)), re.M)}
                if anchor not in headings:
                    problems.append(f"{page.name}: no heading #{anchor} in {dest.name}")
    problems += [f"README.md does not link {p.relative_to(ROOT)}" for p in PAGES[1:] if p.resolve() not in linked]
    assert not problems, "\n".join(problems)
