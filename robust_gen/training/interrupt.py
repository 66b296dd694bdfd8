"""SIGTERM (preemption) and SIGINT (Ctrl-C): one way to stop, whatever the recipe is doing.

During training the trainer finishes the current step, writes a checkpoint and raises :class:`StopRequested`;
before it (autoencoder, latent cache, corpus) the signal raises :class:`StopRequested` at once, and the stage's
atomic writers leave nothing half-written. The recipe entry point (:mod:`robust_gen.training.entry`) turns it into
one line and exit code ``128 + signal`` (143 for SIGTERM, 130 for SIGINT), so a scheduler never reads a stopped
run as a finished one.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

__all__ = ["STOP_SIGNALS", "StopRequested", "handle_stop_signals", "signal_name"]

#: The signals that stop a run cleanly.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15.

    Examples
    --------
    >>> signal_name(15), signal_name(2)
    ('SIGTERM', 'SIGINT')
    """
    return signal.Signals(signum).name


class StopRequested(Exception):
    """A stop signal arrived: ``step`` is the checkpointed step (None before training), ``exit_code`` 128 + signal.

    Examples
    --------
    >>> error = StopRequested(15, step=40)
    >>> error.exit_code, str(error)
    (143, 'stopped at step 40 (SIGTERM); a checkpoint is written: re-run the same command to resume')
    """

    def __init__(self, signum: int, step: int | None = None) -> None:
        self.signum, self.step = signum, step
        self.exit_code = 128 + signum
        if step is None:
            message = (f"stopped by {signal_name(signum)} before training started (data, autoencoder or cache "
                       "stage); nothing half-written is kept: re-run the same command to go on")
        else:
            message = (f"stopped at step {step} ({signal_name(signum)}); a checkpoint is written: re-run the same "
                       "command to resume")
        super().__init__(message)


def _raise_stop(signum, frame) -> None:
    raise StopRequested(signum)


@contextlib.contextmanager
def handle_stop_signals(handler: Callable = _raise_stop) -> Iterator[None]:
    """Route SIGTERM and SIGINT to ``handler`` (default: raise :class:`StopRequested`) inside the block, then
    restore the previous handlers. Off the main thread (where signals cannot be handled) it does nothing.

    Examples
    --------
    >>> import os
    >>> try:
    ...     with handle_stop_signals():
    ...         os.kill(os.getpid(), signal.SIGTERM)
    ... except StopRequested as e:
    ...     print(e.exit_code)
    143
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
