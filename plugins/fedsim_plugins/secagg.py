"""Secure aggregation with Flower's SecAgg+: the server learns only the round's sum.

Each client masks its upload with pairwise masks (agreed by Diffie-Hellman with
its neighbours, cancelling in the sum) and a private mask, and shares the seeds
of both by Shamir's secret sharing among its neighbours, so that the server can
remove the masks of clients that dropped out and of those that did not, but only
of the sum. This is SecAgg (Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS 2017) when every client of the round
is every other's neighbour, and SecAgg+ (Bell et al., "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead", CCS 2020) with ``num_shares``
neighbours each. fedsim runs Flower's implementation: ``secaggplus_mod`` on the
ClientApp and the server workflow ``SecAggPlusWorkflow``
(:mod:`fedsim.federation.secure_server`, :mod:`fedsim.federation.secure_client`).

Before masking, a client scales its update by its weight (its example count over
``max_weight``), clips each coordinate to [−c, c] and rounds it stochastically
onto 0..T; the server gets back FedAvg's weighted mean up to that rounding.

It hides individual uploads from the server; it is no differential privacy
(``formal_guarantee = False``): the sum itself is released in clear, and with
few clients it says much about each. Flower's implementation folds its seeds to
32 bits for NumPy's generator, so fedsim simulates the protocol's information
flow without claiming its cryptographic security.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from fedsim.api import Defence, DefenceParams, SecureAggregation


class SecAggParams(DefenceParams):
    num_shares: int | None = Field(
        None,
        ge=3,
        description="k: neighbours each client shares its secrets with, itself included "
        "(odd; default: every client of the round, i.e. SecAgg)",
    )
    reconstruction_threshold: int | None = Field(
        None,
        ge=2,
        description="t < k: shares that reconstruct a secret; the sum holds ≥ t uploads "
        "(default: a majority of k)",
    )
    clipping_range: float = Field(
        8.0, gt=0.0, description="c: each coordinate of the weighted update is clipped to [-c, c]"
    )
    quantization_range: int = Field(
        2**22, ge=2, lt=2**32, description="T: [-c, c] is rounded stochastically onto 0..T"
    )
    max_weight: float | None = Field(
        None,
        gt=0.0,
        description="the largest example count a client reports (default: from the data; "
        "ignored when clients weigh equally)",
    )
    timeout: float | None = Field(
        None, gt=0.0, description="seconds per protocol exchange (default: round_timeout)"
    )

    @model_validator(mode="after")
    def _threshold_below_shares(self) -> SecAggParams:
        shares, threshold = self.num_shares, self.reconstruction_threshold
        if shares is not None and threshold is not None and threshold >= shares:
            raise ValueError(
                f"reconstruction_threshold ({threshold}) must be below num_shares ({shares})"
            )
        return self


class SecAgg(Defence[SecAggParams]):
    name = "secagg"
    summary = (
        "Secure aggregation (Flower's SecAgg+): clients mask their uploads; the server, "
        "like a participant, learns only the round's sum. Hides uploads; not DP."
    )
    stages = ("secure_aggregation",)
    Params = SecAggParams

    def secure_aggregation(self, clients: int) -> SecureAggregation:
        """k defaults to ``clients`` (SecAgg), t to a majority of k.

        Raises:
            ValueError: k exceeds ``clients``, is even below it (SecAgg+'s
                neighbourhoods are symmetric around each client), or t is not below k.
        """
        params = self.params
        shares = clients if params.num_shares is None else params.num_shares
        if shares > clients:
            raise ValueError(f"num_shares ({shares}) exceeds the {clients} clients of a round")
        if shares < clients and shares % 2 == 0:
            raise ValueError(
                f"num_shares ({shares}) must be odd when below the {clients} clients of a "
                "round (each client's neighbours lie symmetrically around it)"
            )
        threshold = (
            shares // 2 + 1
            if params.reconstruction_threshold is None
            else params.reconstruction_threshold
        )
        if threshold >= shares:
            raise ValueError(
                f"reconstruction_threshold ({threshold}) must be below num_shares ({shares})"
            )
        return SecureAggregation(
            num_shares=shares,
            reconstruction_threshold=threshold,
            clipping_range=params.clipping_range,
            quantization_range=params.quantization_range,
            max_weight=params.max_weight,
            timeout=params.timeout,
        )
