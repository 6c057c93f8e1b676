"""DLG — Deep Leakage from Gradients (Zhu, Liu & Han, NeurIPS 2019).

Dummy images and dummy soft labels are optimised jointly with L-BFGS so that
their gradient matches the observed one in squared L2 distance.
"""

from __future__ import annotations

from fedsim.api import Attack, MatchConfig, MatchingParams, Observation, Reconstruction
from fedsim.api import reconstruct_by_matching as run


class DLG(Attack):
    name = "dlg"
    summary = "Deep Leakage from Gradients: L-BFGS on dummy images and soft labels, L2 distance."
    Params = MatchingParams

    def reconstruct(self, observation: Observation) -> Reconstruction:
        config = MatchConfig(distance="l2", optimizer="lbfgs", **self.params.budget())
        return run(observation, config)
