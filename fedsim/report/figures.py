"""The run's plots (listed in ``results.json``'s ``plots``), each with what it shows."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fedsim.metrics import SUCCESS_PSNR
from fedsim.report.embed import Embedder, Picture
from fedsim.results.schema import RunResults

EXPLANATIONS = {
    "sweep_leakage.png": "How much each attack recovered at each value of the swept parameter "
    f"(higher PSNR = more leaked; the dashed line is the {SUCCESS_PSNR:.0f} dB success "
    "threshold). One panel per attacker position.",
    "sweep_accuracy.png": "What the defence costs: the global model's test accuracy after the "
    "last round at each value of the swept parameter.",
    "sweep_frontier.png": "The privacy–utility trade-off: one point per setting, the best "
    "attack's PSNR against test accuracy. Good settings sit bottom-right (useful model, "
    "little leaked).",
    "sweep_epsilon.png": "The formal privacy guarantee at each setting: ε spent by the end "
    "(smaller = stronger; settings without noise have none).",
    "leaderboard.png": "Every defence set at its strengths: the best attack's PSNR (top) and "
    "SSIM (bottom) against the model's test accuracy, one panel per attacker position; each "
    "point is labelled with its strength, the black star is the undefended run. Good defences "
    "sit bottom-right.",
    "accuracy.png": "How well the global model learned: its test accuracy after each round "
    "(round 0 is the untrained model). A flat line at 1 / number of classes means it did not "
    "learn.",
    "leakage_rounds.png": "Leakage as the model trains: each attack's PSNR, SSIM and labels "
    "recovered (per image solid, as counts dotted) against the round it attacked, with the test "
    "accuracy after each round dashed on the right axis. With several seeds, the mean and ± one "
    "standard deviation.",
    "loss_curves.png": "How each attack's optimisation went: its objective (the distance "
    "between the gradient of its guess and the observed one) per step, log scale. A curve "
    "that drops by many orders of magnitude usually ends in a close copy; one that flattens "
    "early was stopped by noise or got stuck.",
}
SWEEP = ("sweep_leakage.png", "sweep_accuracy.png", "sweep_frontier.png", "sweep_epsilon.png")
SHOWN_ELSEWHERE = ("grid.png",)
"""Plots the page does not repeat (``grid.png`` is the gallery as one image)."""


WIDE = 2.0
"""Plots wider than this aspect ratio (several panels) take a whole row of the page."""


@dataclass(frozen=True)
class Figure:
    """One plot as the page shows it: the picture, its title and explanation, and whether
    it takes a whole row."""

    picture: Picture
    title: str
    explanation: str

    @property
    def wide(self) -> bool:
        return self.picture.width > WIDE * self.picture.height


def plots(embed: Embedder, results: RunResults, names: tuple[str, ...] | None) -> list[Figure]:
    """The listed plots among ``names`` (all the others when ``None``), in that order."""
    listed = results.plots or []
    known = (*SWEEP, "leaderboard.png", "accuracy.png", "loss_curves.png", *SHOWN_ELSEWHERE)
    chosen = [p for p in listed if (p.path in names if names is not None else p.path not in known)]
    if names is not None:
        chosen.sort(key=lambda p: names.index(p.path))
    return [Figure(embed.image(p.path), p.title, explanation(p.path)) for p in chosen]


def explanation(path: str) -> str:
    """What the plot at ``path`` shows; one per sweep point (``leakage_rounds_t3.png``)
    shares the explanation of its kind (``leakage_rounds.png``)."""
    return EXPLANATIONS.get(path) or EXPLANATIONS.get(re.sub(r"_t\d+\.png$", ".png", path), "")
