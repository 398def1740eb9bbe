"""Each kernel set compiles into its own Inductor cache (conftest.py), so no run reuses another's kernels.

On an AVX512 machine, chapter 7's compiled model trained to nan under `ATEN_CPU_CAPABILITY=avx2` when the
cache still held what the native run had compiled: Inductor's cache key leaves the kernel set out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import conftest

ROOT = Path(__file__).resolve().parent.parent

PRINT_DIR = (
    "import json, pathlib, conftest; "
    "print(json.dumps(str(conftest.inductor_cache_dir(pathlib.Path('cache')))))"
)


def cache_dir_under(capability: str | None, threads: int) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS")}
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    env["OMP_NUM_THREADS"] = str(threads)
    out = subprocess.run(
        [sys.executable, "-c", PRINT_DIR],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_chapters_compile_into_the_cache_of_this_kernel_set(pytestconfig):
    root = pytestconfig.stash[conftest._INDUCTOR_ROOT]
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(conftest.inductor_cache_dir(root))
    assert conftest.inductor_cache_dir(root).parent == root


def test_every_kernel_set_and_thread_count_of_test_portable_gets_its_own_cache():
    runs = [(None, 2), ("avx2", 1), ("avx2", 2), ("default", 1), ("default", 2)]
    dirs = {run: cache_dir_under(*run) for run in runs}
    if (
        dirs[(None, 2)] == dirs[("avx2", 2)]
    ):  # an AVX2 machine: its native kernels *are* avx2, one cache is right
        del dirs[(None, 2)]
    assert len(set(dirs.values())) == len(dirs), dirs
    # torch names the kernels in the directory: "default" (2.14) or "no_avx" (2.6)
    assert all(("default" in d or "no_avx" in d) for (cap, _), d in dirs.items() if cap == "default")


def test_the_same_kernel_set_finds_the_same_cache_again():
    assert cache_dir_under("avx2", 1) == cache_dir_under("avx2", 1)
