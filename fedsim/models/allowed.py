"""Which models a client on Flower's deployment engine agrees to build.

The scenario arrives with every message, so on real machines the server would
choose what each client imports. A deployed client therefore builds only:

- the models an installed distribution declares in the ``fedsim.models`` entry-point
  group (``my_net = "my_package.nets:Net"`` in its ``pyproject.toml``; fedsim declares
  its zoo, ``lenet`` and ``convnet``), by entry-point name or by that import path;
- import paths listed in the node's own configuration,
  ``flower-supernode --node-config "partition-id=0 allow-models='pkg.mod:Net other.mod:Cnn'"``
  (separated by spaces or commas).

Anything else is refused before it is imported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from fedsim.registry import MODEL_GROUP, registered_models

ALLOW_MODELS_KEY = "allow-models"
"""The ``--node-config`` key listing the import paths a node builds."""


def allowed_models(node_config: Mapping[str, object]) -> frozenset[str]:
    """Model names this node builds: registered models (by entry-point name and import
    path) and its ``allow-models``."""
    listed = re.split(r"[\s,]+", str(node_config.get(ALLOW_MODELS_KEY, "")).strip())
    registered = registered_models()
    return frozenset((*registered, *registered.values(), *filter(None, listed)))


def check_allowed(name: str, node_config: Mapping[str, object]) -> None:
    """Refuse a model this node does not allow, without importing anything.

    Raises:
        PermissionError: ``name`` is not among :func:`allowed_models` (one line).
    """
    if name not in allowed_models(node_config):
        raise PermissionError(
            f"this node does not build model {name!r}: it builds the models registered in "
            f"the {MODEL_GROUP!r} entry-point group ({', '.join(sorted(registered_models()))}) "
            f"and import paths in its --node-config {ALLOW_MODELS_KEY}"
        )
