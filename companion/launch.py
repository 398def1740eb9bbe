"""Launching ``torchrun`` from Python (chapter 10): one call that starts a process group and leaves nothing behind.

``torchrun --nproc_per_node=N`` starts ``N`` processes (the *ranks*) that train together; a notebook
that launches it must not hang when a rank waits forever for the others, nor leave workers running
when it is interrupted. :func:`run_process_group` runs a command in a process group of its own, with a
timeout, and stops every process of that group (SIGTERM, then SIGKILL) however the call ends;
:func:`torchrun` builds the ``torchrun`` command line for it (:func:`torchrun_command`).

A cluster starts the same ``torchrun`` once per machine (a *node*), with ``--nnodes``, its
``--node_rank`` and a rendezvous that every node can reach; :func:`torchrun_nodes` starts those launches
side by side on this machine, a "node" each, with a c10d rendezvous on ``127.0.0.1``.

Starting processes is not training them: the training side of DDP is :mod:`companion.distributed`.
This module imports nothing of the companion but :mod:`companion.checks`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from companion.checks import is_int

__all__ = [
    "TorchrunError",
    "free_port",
    "run_process_group",
    "torchrun",
    "torchrun_command",
    "torchrun_nodes",
]


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


def _start(
    command: Sequence[str], cwd: str | os.PathLike | None, env: Mapping[str, str] | None
) -> tuple[subprocess.Popen, list[str], list[str], list[threading.Thread]]:
    """Start ``command`` in a session (and process group) of its own, its output read by two threads."""
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
    return proc, out, err, [_drain(proc.stdout, out), _drain(proc.stderr, err)]


def _shown(command: Sequence[str]) -> str:
    return " ".join(command[1:] if command and command[0] == sys.executable else command)


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
    proc, out, err, readers = _start(command, cwd, env)
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
    shown = _shown(command)
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
    command = torchrun_command(target, *args, nproc_per_node=nproc_per_node, module=module)
    return run_process_group(command, timeout=timeout, cwd=cwd, env=env)


def _check_positive(value: Any, name: str, what: str) -> int:
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int ({what}), got {value!r}")
    return int(value)


def torchrun_command(
    target: str,
    *args: str,
    nproc_per_node: int = 2,
    module: bool = True,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
    rdzv_id: str = "companion",
    rdzv_backend: str = "c10d",
) -> list[str]:
    """The ``torchrun`` command line (with this Python) that :func:`torchrun` and :func:`torchrun_nodes` run.

    ``nnodes=1`` without ``rdzv_endpoint``: ``--standalone``, a rendezvous on this machine at a free
    port. Otherwise the launch of node ``node_rank`` of ``nnodes``, meeting the others at
    ``rdzv_endpoint`` (``host:port``) under the job name ``rdzv_id``, with the ``rdzv_backend``
    rendezvous (``c10d``: a store hosted by one of the launches; ``--node_rank`` then only names the
    node, the ranks are given out as the nodes join). Node 0 is told to host the store
    (``--rdzv_conf=is_host=1``), the others not, so that two "nodes" on one machine do not both try.
    """
    nproc_per_node = _check_positive(nproc_per_node, "nproc_per_node", "processes to start")
    nnodes = _check_positive(nnodes, "nnodes", "machines taking part")
    if not is_int(node_rank) or not 0 <= node_rank < nnodes:
        raise ValueError(f"node_rank must be an int from 0 to nnodes - 1 = {nnodes - 1}, got {node_rank!r}")
    if nnodes > 1 and rdzv_endpoint is None:
        raise ValueError(
            f"nnodes={nnodes} needs rdzv_endpoint='host:port', where the nodes meet: the address of one "
            "of them that every node can reach (on one machine: f'127.0.0.1:{free_port()}')"
        )
    if rdzv_endpoint is None:
        where = ["--standalone"]
    else:
        where = [
            f"--nnodes={nnodes}",
            f"--node_rank={node_rank}",
            f"--rdzv_backend={rdzv_backend}",
            f"--rdzv_endpoint={rdzv_endpoint}",
            f"--rdzv_id={rdzv_id}",
            *([f"--rdzv_conf=is_host={int(node_rank == 0)}"] if rdzv_backend == "c10d" else []),
        ]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *where,
        f"--nproc_per_node={nproc_per_node}",
        *(["-m"] if module else []),
        target,
        *args,
    ]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on now (the system picks it; free until someone binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def torchrun_nodes(
    target: str,
    *args: str,
    nnodes: int = 2,
    nproc_per_node: int = 1,
    module: bool = True,
    timeout: float = 300,
    cwd: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
) -> list[subprocess.CompletedProcess]:
    """Launch ``nnodes`` "nodes" on this machine at once, as a cluster would launch one per machine.

    Each node is its own ``torchrun --nnodes=N --node_rank=i --rdzv_backend=c10d
    --rdzv_endpoint=127.0.0.1:PORT --rdzv_id=ID --nproc_per_node=P`` (:func:`torchrun_command`), in a
    process group of its own; they meet at a free port under a fresh job id, and the
    ``nnodes * nproc_per_node`` workers form one process group. Returns each node's
    ``CompletedProcess``, in node order (``stdout``: its workers' lines).

    Raises:
        TorchrunError: a node exited with a non-zero status, or they had not all finished within
            ``timeout`` seconds; every node's processes are stopped first (a node whose partner failed
            would wait for it until the rendezvous timed out).
    """
    nnodes = _check_positive(nnodes, "nnodes", "launches to start")
    endpoint, job = f"127.0.0.1:{free_port()}", f"companion-{os.getpid()}-{time.monotonic_ns()}"
    commands = [
        torchrun_command(
            target,
            *args,
            nproc_per_node=nproc_per_node,
            module=module,
            nnodes=nnodes,
            node_rank=i,
            rdzv_endpoint=endpoint,
            rdzv_id=job,
        )
        for i in range(nnodes)
    ]
    started = [_start(command, cwd, env) for command in commands]
    deadline = time.monotonic() + timeout
    failed: int | None = None
    try:
        while time.monotonic() < deadline:
            codes = [proc.poll() for proc, *_ in started]
            failed = next((i for i, code in enumerate(codes) if code not in (None, 0)), None)
            if failed is not None or all(code == 0 for code in codes):
                break
            time.sleep(0.05)
    finally:
        for proc, *_ in started:  # whatever happened (an interrupt too), stop every node's processes
            _stop_group(proc, grace=3.0 if proc.poll() is None else 1.0)
        for proc, _, _, readers in started:
            for reader in readers:
                reader.join()
            proc.wait()
    results = [
        subprocess.CompletedProcess(proc.args, proc.returncode, "".join(out), "".join(err))
        for proc, out, err, _ in started
    ]
    if failed is not None:
        result = results[failed]
        raise TorchrunError(
            f"node {failed} of {nnodes} (`{_shown(commands[failed])}`) failed with exit status "
            f"{result.returncode}, so every node's processes were stopped. Its last output:\n{_tail(result.stderr)}"
        )
    if any(r.returncode != 0 for r in results):
        raise TorchrunError(
            f"the {nnodes} nodes did not all finish within {timeout:g} s, so all their processes were stopped "
            "(a node waits for the others at the rendezvous and at every collective). Node 0's last "
            f"output:\n{_tail(results[0].stderr + results[0].stdout)}"
        )
    return results
