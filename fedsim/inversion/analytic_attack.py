"""The closed-form attack on one sample's update, as an attack plugin runs it.

:func:`reconstruct_analytically` extracts the model's conv/linear chain
(:func:`fedsim.analytic.chain.extract_chain`) and inverts it top-down
(:func:`fedsim.analytic.recursive.invert_chain`) from the observed update read
as a gradient. It returns one ``(1, C, H, W)`` float32 image clamped to [0, 1]
and the ``(1,)`` int64 label (given, or recovered with the iDLG rule), or an
``unsupported``/``failed`` :class:`~fedsim.api.Reconstruction` (it never raises
for a model or batch it cannot handle).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fedsim.analytic.chain import UnsupportedModel, extract_chain
from fedsim.analytic.recursive import ConvSolver, invert_chain
from fedsim.api import Observation, Reconstruction
from fedsim.inversion.labels import recover_labels
from fedsim.inversion.matching import DELTA_AS_GRADIENT


def reconstruct_analytically(
    observation: Observation,
    conv_solver: ConvSolver | None,
    postprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Reconstruction:
    """Run the top-down recursion (:func:`invert_chain`) on one sample's update.

    Returns ``unsupported`` (never raises) for a batch larger than one, a model
    that is not a supported chain, or clients whose loss has a term beyond
    cross-entropy (racecar training: the layer constraints assume it has none).
    The label is recovered with the iDLG rule unless the observation carries
    labels. ``postprocess`` maps the ``(1, C, H, W)`` image in [0, 1] to a new one
    (e.g. denoising).
    """
    if observation.batch_size != 1:
        return Reconstruction.unsupported(
            f"analytic attacks here reconstruct a single image; this update comes from a batch of "
            f"{observation.batch_size}"
        )
    if observation.training_regulariser is not None:
        return Reconstruction.unsupported(
            "the clients' loss has a term beyond cross-entropy (racecar training); the closed "
            "form assumes dJ/dW = (dJ/dz) x^T, which that term breaks"
        )
    model = observation.model()
    try:
        chain = extract_chain(model, observation.input_shape)
        inversion = invert_chain(chain, observation.gradient_estimate(), conv_solver)
    except UnsupportedModel as exc:
        return Reconstruction.unsupported(str(exc))
    except ValueError as exc:
        return Reconstruction.failed(str(exc))
    raw = inversion.image.float()
    images = raw.clamp(0, 1)[None]
    if postprocess is not None:
        images = postprocess(images)
    diagnostics: dict[str, Any] = {
        "layers": inversion.layers,
        "raw_range": [float(raw.min()), float(raw.max())],
        "clipped_before_inversion": inversion.clipped,
    }
    if observation.kind == "delta":
        diagnostics["gradient_source"] = DELTA_AS_GRADIENT
    if observation.labels is not None:
        labels = observation.labels.detach().cpu().long()
        diagnostics["label_source"] = "given by the threat model (knows_labels)"
    else:
        labels = recover_labels(observation)
        diagnostics["label_source"] = "recovered (iDLG rule)"
        diagnostics["recovered_labels"] = labels.tolist()
    return Reconstruction(images.to(torch.float32), labels, diagnostics=diagnostics)
