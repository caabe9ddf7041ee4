"""Run the suite with trial and end with one countable line: ``N passed, N failed, N skipped``.

python -m tests.run [trial arguments] [test names]   (default: all of ``tests``)
"""

from __future__ import annotations

import re
import subprocess
import sys


def summarize(output: str) -> tuple[int, int, int] | None:
    """(passed, failed, skipped) from trial's closing ``PASSED (...)``/``FAILED (...)``."""
    match = re.search(r"^(PASSED|FAILED) \((.*)\)\s*$", output, re.MULTILINE)
    if match is None:
        return None
    counts = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
    passed = counts.get("successes", 0)
    failed = sum(counts.get(k, 0) for k in ("failures", "errors", "unexpectedSuccesses"))
    skipped = counts.get("skips", 0) + counts.get("expectedFailures", 0)
    return passed, failed, skipped


def main(argv: list[str]) -> int:
    names = [a for a in argv if not a.startswith("-")] or ["tests"]
    flags = [a for a in argv if a.startswith("-")]
    process = subprocess.Popen(
        [sys.executable, "-m", "twisted.trial", *flags, *names],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        sys.stdout.write(line)
        lines.append(line)
    code = process.wait()
    counts = summarize("".join(lines))
    if counts is None:
        print("tests: trial printed no result line")
        return code or 1
    passed, failed, skipped = counts
    print(f"tests: {passed} passed, {failed} failed, {skipped} skipped")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
