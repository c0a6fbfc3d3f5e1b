"""Run a call in a forked process, with a hard time limit.

:func:`start_forked` starts ``fn(*args, **kwargs)`` in a forked child that sends
back ``("ok", result)`` or ``("error", (type name, message))`` through a pipe;
:func:`run_with_timeout` waits for it at most ``timeout`` seconds and kills the
child otherwise (raising :class:`TimeoutExpired`). Forking keeps what the parent
has loaded and cached (compiled kernels, space-group tables) without pickling
the call's arguments.
"""

from __future__ import annotations


class TimeoutExpired(Exception):
    """The call gave no result within its time limit (the process was killed)."""


def _child(conn, fn, args, kwargs):
    try:
        conn.send(("ok", fn(*args, **kwargs)))
    except BaseException as exc:  # report everything, including NotApplicable
        conn.send(("error", (type(exc).__name__, str(exc))))
    finally:
        conn.close()


def start_forked(fn, *args, **kwargs):
    """Start ``fn(*args, **kwargs)`` in a forked process; returns (process, receiving connection)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, args, kwargs), daemon=True)
    proc.start()
    send.close()
    return proc, recv


def run_with_timeout(fn, *args, timeout: float | None = None, **kwargs):
    """Call ``fn`` in a forked process; raise TimeoutExpired after ``timeout`` s (the process is killed).

    Exceptions in the child come back as RuntimeError("Type: message").
    """
    proc, conn = start_forked(fn, *args, **kwargs)
    try:
        if not conn.poll(timeout):
            raise TimeoutExpired(f"no result after {timeout:g} s")
        status, value = conn.recv()
    except EOFError:
        proc.join(1)
        raise RuntimeError(f"worker died (exit code {proc.exitcode})") from None
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        conn.close()
    if status == "error":
        raise RuntimeError(f"{value[0]}: {value[1]}")
    return value
