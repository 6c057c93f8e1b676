"""DLG — Deep Leakage from Gradients (Zhu, Liu & Han, NeurIPS 2019).

Dummy images and dummy soft labels are optimised jointly with L-BFGS so that
their gradient matches the observed one in squared L2 distance.

Defaults differ from the paper's demo where measurements (``benchmarks/dlg_speed.py``)
showed a gain at no cost to what the attack is: dummy images start in the pixel
range, U(0, 1), instead of N(0, 1); L-BFGS keeps a longer memory; the loop is
checked after every L-BFGS iteration; CPU convolutions use the faster backend
for the model; a restart ends once its objective plateaus (``tolerance``, ``window``
and ``stall_loss``, measured with ``benchmarks/attack_stops.py``).
``label_init = "gradient_sign"`` additionally starts the label logits on the classes
the head's bias gradient marks (off by default: plain DLG). Use it with many
classes: on the DLG paper's 100-class LeNet the plain start fails 3 of the 13
cases a textbook DLG loop solves, ``gradient_sign`` none (``benchmarks/dlg_speed.py``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedsim.api import Observation
from fedsim.inversion.gradient_matching import MatchConfig
from fedsim.inversion.matching import MatchingAttack, MatchingParams


class DLGParams(MatchingParams):
    init: Literal["normal", "uniform"] = Field(
        "uniform", description="dummy image initialisation: N(0,1) or U(0,1)"
    )
    label_init: Literal["random", "gradient_sign"] = Field(
        "random",
        description="dummy label logits: N(0,1), or N(0,1) + 5 on the classes whose "
        "head bias-gradient entry is negative (the true class for one sample)",
    )
    tolerance: float = Field(
        1e-3, ge=0.0, lt=1.0,
        description="convergence stop: end a restart once its best objective improved by at "
        "most this fraction over the last `window` steps; 0 turns the stop off",
    )  # fmt: skip
    window: int | None = Field(
        5, ge=1, le=1_000_000,
        description="steps (as `iterations` counts them: 20 L-BFGS iterations each) over "
        "which `tolerance` is measured",
    )  # fmt: skip
    stall_loss: float = Field(
        1e-3, gt=0.0,
        description="a plateau above this squared gradient distance is a stall and moves on "
        "to the next restart; at or below it the attack has converged",
    )  # fmt: skip
    history_size: int = Field(200, ge=1, le=10_000, description="L-BFGS memory")
    conv_backend: Literal["auto", "default", "native"] = Field(
        "auto",
        description="CPU convolutions: 'auto' times both and takes the faster (results can "
        "differ in the last digits between machines and loads); 'default' or 'native' fix it",
    )


class DLG(MatchingAttack[DLGParams]):
    name = "dlg"
    summary = "Deep Leakage from Gradients: L-BFGS on dummy images and soft labels, L2 distance."
    Params = DLGParams
    recovers_labels = False  # labels are optimised jointly unless the threat model grants them

    def match_config(self, observation: Observation) -> MatchConfig:
        return config(self.params)


ITERATIONS_PER_STEP = 20
"""``iterations`` counts L-BFGS steps of PyTorch's default 20 iterations, as before."""


def config(params: DLGParams) -> MatchConfig:
    """DLG's :class:`MatchConfig` for ``params``: L-BFGS (lr 1, no line search) on the
    squared L2 gradient distance. The engine runs one L-BFGS iteration per step
    (``iterations × 20`` of them, the same budget; ``window`` likewise) so that the
    loss threshold, the convergence stop and callbacks are checked after every
    iteration instead of every 20."""
    budget = params.budget()
    budget["iterations"] *= ITERATIONS_PER_STEP
    if budget["window"] is not None:
        budget["window"] *= ITERATIONS_PER_STEP
    return MatchConfig(
        distance="l2", optimizer="lbfgs", max_iter=1, history_size=params.history_size,
        label_init=params.label_init, conv_backend=params.conv_backend, **budget,
    )  # fmt: skip
