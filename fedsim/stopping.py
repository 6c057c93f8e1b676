"""Stopping ``fedsim run`` with SIGINT (Ctrl-C) or SIGTERM.

Before a run directory exists, either signal interrupts at once: SIGINT raises
Python's ``KeyboardInterrupt`` and :func:`interrupt_on_sigterm` makes SIGTERM
raise :class:`Interrupted`, a ``KeyboardInterrupt`` too.

While a run writes its directory, a signal raising an exception at an arbitrary
point could land inside Ray or Flower (a lock held forever, Ray torn down under
a thread still using it). So :func:`deferred` turns both signals into a
:class:`StopRequest` that the federation obeys at its next step and the run loop
checks between sweep points. A second signal while the first is being obeyed
means "now": the run stops waiting for the federation (``abandoned``).

The exit status after a signal is 128 + its number (:func:`exit_status`): 130
for SIGINT, 143 for SIGTERM.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by signal ``signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_status(signum: int) -> int:
    """The shell's convention for a process ended by signal ``signum``."""
    return 128 + signum


def describe(signum: int | None) -> str:
    """``"SIGINT (Ctrl-C)"`` (also for ``None``: a plain ``KeyboardInterrupt``) or
    the signal's name, e.g. ``"SIGTERM"``."""
    if signum is None or signum == signal.SIGINT:
        return "SIGINT (Ctrl-C)"
    return signal.Signals(signum).name


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signum)


def interrupt_on_sigterm() -> None:
    """Make SIGTERM interrupt like Ctrl-C (it raises :class:`Interrupted`)."""
    signal.signal(signal.SIGTERM, _raise_interrupted)


class StopRequest:
    """Signals received while a run writes its directory: ``signum`` is the first
    (``None``: none yet), ``abandoned`` says a second one came. Threads poll it."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.abandoned = False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def reset(self) -> None:
        self.signum, self.abandoned = None, False

    def __call__(self, signum: int, _frame: FrameType | None = None) -> None:
        """The signal handler: record the request; it never raises."""
        if self.signum is None:
            self.signum = signum
        else:
            self.abandoned = True

    def interrupted(self) -> Interrupted:
        """The exception that ends a run stopped by this request (SIGINT if none came)."""
        return Interrupted(self.signum or signal.SIGINT)


REQUEST = StopRequest()
"""The process's stop request (signal handlers are per process)."""


@contextlib.contextmanager
def deferred(request: StopRequest = REQUEST) -> Iterator[StopRequest]:
    """Within the block SIGINT and SIGTERM only set ``request`` (cleared on entry);
    the previous handlers are restored on exit. Outside the main thread, where
    handlers cannot be installed, the block just yields ``request``."""
    request.reset()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {signum: signal.signal(signum, request) for signum in STOP_SIGNALS}
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
