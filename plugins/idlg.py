"""iDLG — improved DLG (Zhao, Mopuri & Bilen 2020).

The label is read off the gradient of the classification head first (the
only negative entry of the bias gradient; batch label counts for B > 1), then
only the images are optimised, with L-BFGS on the squared L2 gradient distance.
"""

from __future__ import annotations

from fedsim.api import (
    Attack,
    MatchConfig,
    MatchingParams,
    Observation,
    Reconstruction,
    recover_labels,
)
from fedsim.api import reconstruct_by_matching as run


class IDLG(Attack):
    name = "idlg"
    summary = "iDLG: labels from the head's gradient, then L-BFGS on the images (L2 distance)."
    Params = MatchingParams

    def reconstruct(self, observation: Observation) -> Reconstruction:
        config = MatchConfig(distance="l2", optimizer="lbfgs", **self.params.budget())
        return run(observation, config, recover_labels(observation))
