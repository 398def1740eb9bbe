"""Launching ``torchrun`` from Python (chapter 10): one call that starts a process group and leaves nothing behind.

``torchrun --nproc_per_node=N`` starts ``N`` processes (the *ranks*) that train together; a notebook
that launches it must not hang when a rank waits forever for the others, nor leave workers running
when it is interrupted. :func:`run_process_group` runs a command in a process group of its own, with a
timeout, and stops every process of that group (SIGTERM, then SIGKILL) however the call ends;
:func:`torchrun` builds the ``torchrun`` command line for it.

Starting processes is not training them: the training side of DDP is :mod:`companion.distributed`.
This module imports nothing of the companion but :mod:`companion.checks`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from companion.checks import is_int

__all__ = ["TorchrunError", "run_process_group", "torchrun"]


class TorchrunError(RuntimeError):
    """A launched process group that failed or ran past its time; its processes have been stopped."""


def _stop_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM every process of ``proc``'s group, then SIGKILL what is left after ``grace`` seconds."""
    if not hasattr(os, "killpg"):  # Windows has no process groups of this kind: stop the launcher
        if proc.poll() is None:
            proc.kill()
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return  # nothing left
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()  # reap the launcher, so that it does not linger as a zombie of the group
        try:
            os.killpg(proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(text: str, lines: int = 25) -> str:
    kept = text.strip().splitlines()[-lines:]
    return "\n".join(kept) if kept else "(no output)"


def _drain(stream: Any, sink: list[str]) -> threading.Thread:
    """Read ``stream`` to its end in a thread (a full pipe would block the process writing to it)."""
    thread = threading.Thread(target=lambda: sink.append(stream.read()), daemon=True)
    thread.start()
    return thread


def run_process_group(
    command: Sequence[str],
    *,
    timeout: float,
    cwd: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``command`` in a session of its own; return its ``CompletedProcess`` (text stdout and stderr).

    The command and every process it starts (``torchrun``'s workers) share a new process group, which
    is stopped (SIGTERM, then SIGKILL) when the command runs past ``timeout`` seconds or is interrupted,
    and in any case once the command has ended: no worker outlives the call.

    Raises:
        TorchrunError: the command exited with a non-zero status (the message ends with its last
            lines of stderr, the workers' tracebacks included) or ran past ``timeout``.
    """
    proc = subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        start_new_session=True,
    )
    out: list[str] = []
    err: list[str] = []
    readers = [_drain(proc.stdout, out), _drain(proc.stderr, err)]
    timed_out = False
    try:
        proc.wait(timeout=timeout)  # the launcher's end, not its pipes': a stray worker may hold them
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        # whatever happened (an interrupt too), stop every process still in the group
        _stop_group(proc, grace=3.0 if timed_out or proc.poll() is None else 1.0)
        for reader in readers:
            reader.join()
        proc.wait()
    stdout, stderr = "".join(out), "".join(err)
    shown = " ".join(command[1:] if command and command[0] == sys.executable else command)
    if timed_out:
        raise TorchrunError(
            f"`{shown}` did not finish within {timeout:g} s, so all its processes were stopped (a rank "
            "waiting for the others hangs until then: check that every rank runs the same collectives). "
            f"Its last output:\n{_tail(stderr + stdout)}"
        )
    if proc.returncode != 0:
        raise TorchrunError(
            f"`{shown}` failed with exit status {proc.returncode}. Its last output:\n{_tail(stderr)}"
        )
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def torchrun(
    target: str,
    *args: str,
    nproc_per_node: int = 2,
    module: bool = True,
    timeout: float = 300,
    cwd: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=N [-m] target args...`` with this Python, via :func:`run_process_group`.

    ``--standalone`` runs a rendezvous on this machine at a free port, so runs never collide over one.
    ``module=True`` runs ``target`` as a module (``python -m target``), ``False`` as a script path.
    """
    if not is_int(nproc_per_node) or nproc_per_node < 1:
        raise ValueError(
            f"nproc_per_node must be a positive int (processes to start), got {nproc_per_node!r}"
        )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc_per_node}",
        *(["-m"] if module else []),
        target,
        *args,
    ]
    return run_process_group(command, timeout=timeout, cwd=cwd, env=env)
