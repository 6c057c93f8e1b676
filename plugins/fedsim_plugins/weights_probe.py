"""Weights-only probe: what the parameters alone show of the training images.

No gradient, no delta: the probe reads the model the client started the
round from (the global model, which every participant receives) and returns
the top right singular vectors of its first layer's weight map as images.
Racecar training (Xie & Thuerey) drives these towards the dominant structures
of the training data; under standard training they are mostly the random
initialisation. For a linear first layer the map is its weight matrix; for a
conv layer it is the convolution as a map of the whole image (matrix-free
Lanczos), not the small filters.

A singular vector is defined up to sign and scale: the probe takes the sign
with a positive pixel sum (images are non-negative) and stretches each vector
to [0, 1] (min-max). It returns as many images as the batch behind the
upload (or ``components``, if fewer); fedsim scores them against the client's
batch with its usual best matching. Needs a plain conv/linear chain.
"""

from __future__ import annotations

import torch
from pydantic import Field

from fedsim.analytic.chain import UnsupportedModel, extract_chain
from fedsim.analytic.spectrum import top_right_singular_vectors
from fedsim.api import Attack, AttackParams, Observation, Reconstruction


class WeightsProbeParams(AttackParams):
    components: int | None = Field(
        None, ge=1, le=4096, description="singular vectors returned (default: the batch size)"
    )


def as_images(vectors: torch.Tensor) -> torch.Tensor:
    """``(k, C, H, W)`` unit vectors → images in [0, 1]: positive-sum sign, min-max per vector."""
    flat = vectors.flatten(1)
    flat = flat * torch.where(flat.sum(1, keepdim=True) < 0, -1.0, 1.0)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-12)).reshape(vectors.shape)


class WeightsProbe(Attack[WeightsProbeParams]):
    name = "weights_probe"
    summary = "First layer's top right singular vectors, from the weights alone, as images."
    Params = WeightsProbeParams

    def reconstruct(self, observation: Observation) -> Reconstruction:
        try:
            chain = extract_chain(observation.model().cpu(), observation.input_shape)
        except UnsupportedModel as exc:
            return Reconstruction.unsupported(str(exc))
        first = chain.layers[0]
        k = min(self.params.components or observation.batch_size, observation.batch_size)
        values, vectors = top_right_singular_vectors(first, k, seed=observation.seed)
        images = as_images(vectors.reshape(k, *observation.input_shape))
        return Reconstruction(
            images,
            diagnostics={
                "layer": first.name,
                "singular_values": [float(v) for v in values],
                "source": "parameters the client started from (no gradient used)",
            },
        )
