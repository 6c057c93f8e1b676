"""fedsim's ServerApp and ClientApp for Flower's deployment engine.

``flwr run`` loads :data:`server.server_app` and :data:`client.client_app` (see
``deploy/pyproject.toml``): a SuperLink runs the ServerApp, and each SuperNode, started
with ``--node-config "partition-id=N"``, runs the ClientApp for its own client, one
``flwr-clientapp`` process per message, which imports only the client's side. They are
the same code that ``fedsim run`` drives in simulation, with the switches set for real
machines: each node serves only its own partition, and reconstructions are scored on
the clients (``on-client``), so no image leaves a client.

Run config (``flwr run ... --run-config 'scenario="..." run-dir="..."'``):

- ``scenario``: path of the scenario TOML file, read by the ServerApp;
  relative paths start from the SuperLink's working directory.
- ``run-dir``: run directory to create there (must not exist); empty: a new
  directory under the scenario's ``output.dir``.

The ServerApp runs every sweep point and writes the same run directory as
``fedsim run``; its progress goes to Flower's log (``flwr run --stream`` or
``flwr log``). Clients receive the scenario with each message and need only
fedsim installed (and, for file datasets, the data under ``data.root``).
"""
