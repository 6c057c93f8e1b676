"""The deployment engine's ClientApp: the simulation's ClientApp with the switches for
real machines (its node's own partition only, scoring on the client, noise from the
operating system's entropy; see :mod:`fedsim.deployment`). It imports nothing of the
server's side, since each message starts a new process."""

from __future__ import annotations

from fedsim.federation.client_app import make_client_app

client_app = make_client_app(simulated=False)
