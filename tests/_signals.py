"""Child processes that tests spawn (and then signal) start with default SIGINT/SIGTERM handling.

A launcher may ignore SIGINT (a script's ``cmd &``, some CI agents) or block it; both are inherited
across fork and exec, so a child that a test Ctrl-Cs would never see the signal.
"""

from __future__ import annotations

import signal

#: the signals tests send; SIGHUP is left alone so that ``nohup make test`` keeps its meaning
RESET = (signal.SIGINT, signal.SIGTERM)


def default_signals() -> None:
    """``preexec_fn`` for ``subprocess.Popen``: default dispositions and an unblocked mask for :data:`RESET`."""
    for sig in RESET:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, RESET)
