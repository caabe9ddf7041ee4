"""Run every fuzz target under atheris for a bounded time, one after the other.

    python -m tests.fuzz [TARGET ...]          (FUZZ_SECONDS per target, default 30)
    python -m tests.fuzz --run TARGET [libFuzzer options and corpus folders]

Each target runs in its own process with ``-max_total_time`` and ``-rss_limit_mb``, its seeds
from tests/fuzz/corpus/<target>/ and a working corpus in .fuzz/corpus/<target>/ (kept between
runs, not committed). A crash, timeout or out-of-memory input is saved as
tests/fuzz/crashes/<target>-<hash>, where ``test_corpus`` replays it in the normal suite.
Exits non-zero if any target found one.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SEEDS = HERE / "corpus"
CRASHES = HERE / "crashes"
WORK = ROOT / ".fuzz"
FINDING_PREFIXES = ("crash-", "timeout-", "oom-", "leak-")


def run_one(name: str, libfuzzer_args: list[str]) -> None:
    """The child: instrument funnel_tw, then hand the target to libFuzzer (never returns)."""
    import atheris  # type: ignore  # no stubs; not installed outside `make fuzz`

    # the pure-Python XChaCha20 of cookie replies: no branches worth covering, and slow
    # when every line is instrumented
    with atheris.instrument_imports(include=["funnel_tw"], exclude=["funnel_tw.wireguard.crypto"]):
        from .targets import TARGETS

    atheris.Setup([sys.argv[0], *libfuzzer_args], TARGETS[name])
    atheris.Fuzz()


def fuzz(name: str, seconds: int, rss_mb: int) -> tuple[int, list[Path], str, int]:
    """Run one target; (executions, saved findings, the tail of its output, exit code)."""
    work = WORK / "corpus" / name
    work.mkdir(parents=True, exist_ok=True)
    tmp = WORK / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    CRASHES.mkdir(exist_ok=True)
    log_path = WORK / f"{name}.log"
    with tempfile.TemporaryDirectory(dir=WORK) as artifacts:
        command = [
            sys.executable,
            "-m",
            "tests.fuzz",
            "--run",
            name,
            f"-max_total_time={seconds}",
            f"-rss_limit_mb={rss_mb}",
            "-timeout=10",
            "-print_final_stats=1",
            f"-artifact_prefix={artifacts}/",
            str(work),
            str(SEEDS / name),
        ]
        env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(ROOT)}
        with open(log_path, "w") as log:
            code = subprocess.run(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            ).returncode
        found = []
        for artifact in sorted(Path(artifacts).iterdir()):
            if artifact.name.startswith(FINDING_PREFIXES):
                data = artifact.read_bytes()
                target = CRASHES / f"{name}-{hashlib.sha1(data).hexdigest()[:12]}"
                shutil.copyfile(artifact, target)
                found.append(target)
    output = log_path.read_text(errors="replace")
    match = re.search(r"stat::number_of_executed_units:\s*(\d+)", output)
    if match is None:
        match = re.search(r"Done (\d+) runs", output)
    executions = int(match.group(1)) if match else 0
    tail = ""
    if found or code:
        start = output.find("=== Uncaught Python exception")
        tail = output[start:] if start >= 0 else output[-3000:]
    return executions, found, tail, code


def main(argv: list[str]) -> int:
    if argv[:1] == ["--run"]:
        run_one(argv[1], argv[2:])
        return 0
    from .targets import TARGETS

    names = argv or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        print(f"unknown targets: {', '.join(unknown)} (known: {', '.join(TARGETS)})")
        return 2
    seconds = int(os.environ.get("FUZZ_SECONDS", "30"))
    rss_mb = int(os.environ.get("FUZZ_RSS_MB", "2048"))
    failed = []
    for name in names:
        started = time.monotonic()
        executions, found, tail, code = fuzz(name, seconds, rss_mb)
        took = time.monotonic() - started
        if found:
            verdict = "FOUND " + ", ".join(str(p.name) for p in found)
        else:
            verdict = f"ERROR: exit code {code}, no input saved" if code else "no crash"
        print(f"{name:16} {executions:>9} executions in {took:5.0f} s  {verdict}", flush=True)
        if found or code:
            failed.append(name)
            print(tail.rstrip(), flush=True)
    if failed:
        print(f"fuzz: failed: {', '.join(failed)} (inputs under {CRASHES.relative_to(ROOT)}/)")
        return 1
    print(f"fuzz: {len(names)} targets, no findings")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
