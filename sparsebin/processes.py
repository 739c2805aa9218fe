"""Whether a process still runs: shared by the worker registry and background builds."""

import os


def pid_alive(pid: int) -> bool:
    """True while `pid` runs; our own child that has exited is reaped, not left a zombie."""
    if pid <= 0:
        return False
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass  # not our child: ask the kernel instead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True
