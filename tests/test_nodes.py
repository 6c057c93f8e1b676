"""What a client failure looks like in the results: the gist of Flower's error reason."""

from __future__ import annotations

from fedsim.federation.nodes import error_summary

# As a deployed SuperNode reports an exception raised in fedsim's ClientApp.
DEPLOYED = "<class 'RuntimeError'>:<'tripwire: batch 43.259 fails on purpose'>"
# As Flower's simulation engine reports it with ClientApps in threads: Flower's wrapper.
THREADS = (
    "<class 'flwr.clientapp.client_app.ClientAppException'>:<'\nException "
    "ClientAppException occurred. Message: tripwire: batch 43.259 fails on purpose'>"
)
# With ClientApps in Ray's actors: Ray's traceback around Flower's wrapper.
SIMULATED = (
    "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'ray::ClientAppActor.run() "
    '(pid=1, ip=192.0.2.2)\n  File "tripwire.py", line 48, in forward\n'
    '    raise RuntimeError(f"tripwire: batch {key} fails on purpose")\n'
    "RuntimeError: tripwire: batch 43.259 fails on purpose\n\nThe above exception was the "
    "direct cause of the following exception:\n\nflwr.clientapp.client_app.ClientAppException: "
    "\nException ClientAppException occurred. Message: tripwire: batch 43.259 fails on purpose'>"
)


def test_error_summary_is_the_clients_exception_message_in_every_engine() -> None:
    expected = "tripwire: batch 43.259 fails on purpose"
    assert error_summary(DEPLOYED) == expected
    assert error_summary(THREADS) == expected
    assert error_summary(SIMULATED) == expected


def test_error_summary_of_other_reasons() -> None:
    assert error_summary("Message unavailable\nreply expired") == "reply expired"
    assert error_summary("") == "no reason given"
    assert len(error_summary("x" * 1000, limit=50)) == 50
