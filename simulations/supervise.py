"""Run a job in a child process that one Ctrl-C (or SIGTERM) stops cleanly, within seconds.

Flower's simulation engine and Ray do not survive a SIGINT sent to the whole process group (what
a terminal's Ctrl-C does): the workers die and the driver waits for them forever. So `fedprune run`
supervises: the run itself is a child in a session of its own (the terminal's Ctrl-C reaches only
the supervisor), and on SIGINT or SIGTERM the supervisor kills the child's process group (Ray's
processes elsewhere die with the child through their fate-sharing), then says how to resume and
exits 130. The child
dies with the supervisor too (``PR_SET_PDEATHSIG``), so a killed supervisor leaves nothing running.
Checkpoints are replaced atomically, so the last finished round's survives any stop.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

INTERRUPTED = 130
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def supervise(command: list[str], env: dict[str, str], on_stop) -> int:
    """Run ``command``; its exit code, or 130 after a SIGINT/SIGTERM (``on_stop()`` says what to do next)."""
    stopped: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: stopped.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        child = subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=_die_with_parent)
        while child.poll() is None and not stopped:
            time.sleep(0.1)
        if not stopped:
            return child.returncode
        _end_session(child)
        print(f"\ninterrupted ({signal.Signals(stopped[0]).name}): {on_stop()}", file=sys.stderr, flush=True)
        return INTERRUPTED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _end_session(child: subprocess.Popen) -> None:
    """SIGKILL to the child's process group at once; Ray's processes outside it die with the child.

    Nothing is lost that a stop should keep: checkpoints are replaced atomically and a torn last
    metrics line is dropped on resume. A gentler SIGTERM lets Flower's handlers run, and its worker
    threads then print the workers' deaths as tracebacks.
    """
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait()
