"""``fedsim run``'s progress bar: typed events, and only a finished round advances it."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import Progress, TextColumn

from fedsim.federation.progress import (
    AttackScored,
    AttackStarted,
    ClientsFailed,
    Note,
    RoundDone,
)
from fedsim.run import round_bar


def test_only_a_finished_round_advances_the_bar_whatever_an_attack_is_called() -> None:
    progress = Progress(TextColumn("{task.fields[note]}"), console=Console(file=io.StringIO()))
    task = progress.add_task("federation", total=2, note="starting")
    show = round_bar(progress, task)

    def state() -> tuple[float, str]:
        (shown,) = progress.tasks
        return shown.completed, shown.fields["note"]

    show(AttackStarted(1, "done_attack", "client 0"))
    assert state() == (0, "round 1: done_attack on client 0")
    show(ClientsFailed(1, 2))
    assert state() == (0, "round 1: 2 client(s) failed")
    show(Note("round 1 done"))  # a note is text only, whatever it says
    assert state() == (0, "round 1 done")
    show(RoundDone(1, 2, 0.25))
    assert state() == (1, "round 1/2 done, test accuracy 0.250")
    show(AttackStarted(2, "dlg", "aggregate"))
    assert state() == (1, "round 2: dlg on aggregate")


def test_each_scored_attack_is_printed_as_a_line_above_the_bar_as_it_comes() -> None:
    screen = io.StringIO()
    progress = Progress(TextColumn("{task.fields[note]}"), console=Console(file=screen, width=200))
    task = progress.add_task("point 2/4", total=3, note="starting", heading="point 2/4 sigma=0.001")
    show = round_bar(progress, task)

    show(AttackStarted(1, "dlg", "client 1"))
    assert "dlg" not in screen.getvalue()  # a start is a note only
    show(AttackScored(1, "dlg", "client 1", "ok", psnr=48.23, label_accuracy=1.0))
    assert screen.getvalue().splitlines() == [
        "point 2/4 sigma=0.001: dlg on client 1, round 1: 48.2 dB, labels 100%"
    ]
    show(AttackScored(1, "idlg", "aggregate", "failed", reason="diverged"))
    assert screen.getvalue().splitlines()[-1] == (
        "point 2/4 sigma=0.001: idlg on aggregate, round 1: failed (diverged)"
    )
    (shown,) = progress.tasks
    assert shown.completed == 0  # a scored attack does not advance the bar
