"""Which models a client on Flower's deployment engine agrees to build.

The scenario arrives with every message, so on real machines the server would
choose what each client imports. A deployed client therefore builds only:

- the zoo models (:data:`fedsim.models.zoo.ZOO_MODELS`);
- import paths that an installed distribution declares in the ``fedsim.models``
  entry-point group (``my_net = "my_package.nets:Net"`` in its ``pyproject.toml``);
- import paths listed in the node's own configuration,
  ``flower-supernode --node-config "partition-id=0 allow-models='pkg.mod:Net other.mod:Cnn'"``
  (separated by spaces or commas).

Anything else is refused before it is imported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from fedsim.models.zoo import ZOO_MODELS
from fedsim.registry import MODEL_GROUP, registered_models

ALLOW_MODELS_KEY = "allow-models"
"""The ``--node-config`` key listing the import paths a node builds."""


def allowed_models(node_config: Mapping[str, object]) -> frozenset[str]:
    """Model names this node builds: the zoo, registered models, its ``allow-models``."""
    listed = re.split(r"[\s,]+", str(node_config.get(ALLOW_MODELS_KEY, "")).strip())
    return frozenset((*ZOO_MODELS, *registered_models().values(), *filter(None, listed)))


def check_allowed(name: str, node_config: Mapping[str, object]) -> None:
    """Refuse a model this node does not allow, without importing anything.

    Raises:
        PermissionError: ``name`` is not among :func:`allowed_models` (one line).
    """
    if name not in allowed_models(node_config):
        raise PermissionError(
            f"this node does not build model {name!r}: it builds {', '.join(ZOO_MODELS)}, "
            f"models registered in the {MODEL_GROUP!r} entry-point group, and import paths "
            f"in its --node-config {ALLOW_MODELS_KEY}"
        )
