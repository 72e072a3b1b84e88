"""Reading the JSON-lines files a resumable run appends to (evidence, a retrieval run's partial results)."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

logger = logging.getLogger(__name__)


def read_jsonl(path: Path) -> Iterator[Any]:
    """The objects of the lines of ``path``, in order (blank lines skipped). A last line cut by an interruption is
    dropped with a warning (the run resumes without it); a bad line before it raises ValueError naming it."""
    lines = path.read_text(encoding="utf-8").split("\n")
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if n >= len(lines) - 1:  # the last line, cut by an interruption
                logger.warning("%s: ignoring a truncated last line (%d)", path, n)
                continue
            raise ValueError(f"{path}, line {n}: not valid JSON") from None
