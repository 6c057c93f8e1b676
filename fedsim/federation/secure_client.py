"""The ClientApp's side of secure aggregation: Flower's ``secaggplus_mod`` on the
``train`` messages of a SecAgg+ round (see :mod:`fedsim.scenario.secure_aggregation`).

``secaggplus_mod`` answers the protocol's key exchange (``setup``, ``share_keys``)
and unmasking (``unmask``) itself; only its masking stage
(``collect_masked_vectors``) carries fedsim's train instruction, and there the
ClientApp's train handler runs and replies in the mod's layout
(:meth:`~fedsim.federation.protocol.TrainReply.to_masked_content`). The mod masks
the update and empties every other array record; :func:`masking_mod` keeps those
(the truth, which only a simulation shares) aside and puts them back. A ``train``
message outside the protocol passes untouched (``secaggplus_mod`` would fail on it).
``secaggplus_mod`` modifies the message it receives, and in the simulation's thread
backend every node receives the very object the server sent (one for all, in the
key exchange): :func:`masking_mod` hands it a copy.

The mod rounds the weighted update stochastically with NumPy's global random
state. :func:`masking_mod` seeds it for each masking, from the scenario in
simulation (the sum is then reproducible: the masks cancel exactly) and from the
OS entropy on the deployment engine, and holds a lock meanwhile, since the
simulation's thread backend runs several clients in one process; the previous
state is restored afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Iterator

import numpy as np
import torch
from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.secure_aggregation.secaggplus_constants import Stage

from fedsim.federation import protocol
from fedsim.privacy.noise import NoiseSource, noise_generator
from fedsim.trial_inputs import derive_seed

_ROUNDING = threading.Lock()
"""Held while a masking uses NumPy's global random state."""


@contextlib.contextmanager
def _numpy_seeded(seed: int) -> Iterator[None]:
    """NumPy's global random state seeded with ``seed`` (< 2³²) for the block, under
    :data:`_ROUNDING`; the state before is restored after."""
    with _ROUNDING:
        saved = np.random.get_state()
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(saved)


def rounding_seed(message: Message, noise: NoiseSource) -> int:
    """The seed of the stochastic rounding of the masking ``message`` asks for: derived
    from its scenario, round and partition (``seeded``) or drawn from the OS entropy
    (``os-entropy``)."""
    to = protocol.Addressee.from_message(message)
    seeded = torch.Generator().manual_seed(
        derive_seed(to.scenario.seed, "secagg", to.server_round, to.partition_id)
    )
    return int(torch.randint(2**32, (1,), generator=noise_generator(noise, seeded)))


def masking_mod(noise: NoiseSource) -> Mod:
    """A train mod applying ``secaggplus_mod`` to the messages of a SecAgg+ round, its
    stochastic rounding drawn as ``noise`` says."""

    def mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        stage = protocol.secagg_stage(message)
        if stage is None:
            return call_next(message, context)
        message = copy.deepcopy(message)
        if stage != Stage.COLLECT_MASKED_VECTORS:
            return secaggplus_mod(message, context, call_next)  # keys and shares only
        reply = call_next(message, context)  # fedsim's training, outside the lock
        clear = protocol.take_clear_arrays(reply.content)
        with _numpy_seeded(rounding_seed(message, noise)):
            masked = secaggplus_mod(message, context, lambda _message, _context: reply)
        for name, record in clear.items():
            masked.content[name] = record
        return masked

    return mod
