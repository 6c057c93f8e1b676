"""Closed-form inversion of fully-connected layers (COPA Lemma A.1; Aono et al. 2017).

A linear layer ``z = W x + b`` has ``dJ/dW = (dJ/dz) xᵀ`` and ``dJ/db = dJ/dz``:
its input is ``x = (dJ/dW)ᵀ dJ/dz / ‖dJ/dz‖²`` exactly (the bias trick). Below
the head, ``dJ/dz`` follows from the layer above through the activation's
derivative (the lemma's general form), so a whole MLP is inverted layer by layer.
Models with conv layers are outside its reach: use ``rgap`` or ``copa``.
"""

from __future__ import annotations

from fedsim.api import Attack, AttackParams, Observation, Reconstruction
from fedsim.inversion.analytic_attack import reconstruct_analytically


class FCInversion(Attack[AttackParams]):
    name = "fc_inversion"
    summary = "Closed-form input of fully-connected layers (bias trick, Lemma A.1); MLPs, batch 1."
    uses = frozenset({"labels", "batch_size"})

    def reconstruct(self, observation: Observation) -> Reconstruction:
        return reconstruct_analytically(observation, conv_solver=None)
