"""iDLG — improved DLG (Zhao, Mopuri & Bilen 2020).

The label (unless the threat model grants it) is read off the gradient of the
classification head first (the
only negative entry of the bias gradient; batch label counts for B > 1), then
only the images are optimised, with L-BFGS on the squared L2 gradient distance.
"""

from __future__ import annotations

from fedsim.api import Observation
from fedsim.inversion.gradient_matching import MatchConfig
from fedsim.inversion.matching import MatchingAttack, MatchingParams


class IDLG(MatchingAttack[MatchingParams]):
    name = "idlg"
    summary = "iDLG: labels from the head's gradient, then L-BFGS on the images (L2 distance)."
    Params = MatchingParams

    def match_config(self, observation: Observation) -> MatchConfig:
        return MatchConfig(distance="l2", optimizer="lbfgs", **self.params.budget())
