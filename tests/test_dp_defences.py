"""Clip + noise (dp_gaussian), pruning, quantisation and the stage contract, without Flower."""

from __future__ import annotations

import math

import pytest
import torch
from dp_accounting import dp_event, rdp
from fedsim_plugins.dp_gaussian import DPGaussian
from fedsim_plugins.gaussian_noise import GaussianNoise
from fedsim_plugins.pruning import Pruning
from fedsim_plugins.quantisation import Quantisation

from fedsim.api import Defence
from fedsim.privacy.noise import clip_update, global_norm, weighted_mean
from fedsim.registry import _defence_problem
from fedsim.scenario import ScenarioError, expand

# The sample std of n i.i.d. normal draws has relative standard error ≈ 1/sqrt(2n);
# with n = 100,000 that is 0.22 %, so a 2 % tolerance is ~9 standard errors: it
# cannot fail by chance, yet catches a wrong scale (z·C/m vs z·C, or z/2).
REL_TOL = 0.02
DELTA = 1e-5


def make_update(scale: float = 1.0, seed: int = 0, size: int = 25_000) -> dict[str, torch.Tensor]:
    """An update of ``4 × size`` float32 coordinates (100,000 by default)."""
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(3 * size, generator=g).view(-1, 3) * scale,
            "b": torch.randn(size, generator=g)}  # fmt: skip


def rdp_epsilon(noise_multiplier: float, releases: int) -> float:
    """ε of ``releases`` Gaussian mechanisms, straight from dp-accounting (not Flower's wrapper)."""
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_event.GaussianDpEvent(noise_multiplier), releases)
    return accountant.get_epsilon(DELTA)


def dp(**params: object) -> DPGaussian:
    return DPGaussian(DPGaussian.Params(delta=DELTA, **params))


def test_clipping_never_lets_a_norm_above_c_through() -> None:
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        clip = float(torch.rand(1, generator=g)) * 5 + 0.01
        # from far below to far above C, and the float32 edge just above it
        for scale in (0.001, 0.5, 1.0000001, 1.5, 1e3):
            update = make_update(seed=seed, size=1000)
            update = {k: v * (scale * clip / global_norm(update)) for k, v in update.items()}
            clipped, norm = clip_update(update, clip)
            assert global_norm(clipped) <= clip, (seed, scale)
            assert norm == pytest.approx(scale * clip, rel=1e-5)
            if scale < 1:  # below C: unchanged
                assert all(torch.equal(clipped[k], update[k]) for k in update)
            else:  # above C: scaled onto the sphere, direction kept
                assert global_norm(clipped) == pytest.approx(clip, rel=1e-6)
                cos = sum(float((clipped[k] * update[k]).sum()) for k in update)
                assert cos / (global_norm(clipped) * global_norm(update)) == pytest.approx(1.0)


def test_client_placement_clips_then_adds_noise_of_std_z_times_c() -> None:
    update = make_update(scale=3.0)  # norm ≈ 800, far above C
    defence = dp(clip_norm=2.0, noise_multiplier=0.05, placement="client")
    noisy, measured = defence.apply(update, torch.Generator().manual_seed(1))
    clipped, _ = clip_update(update, 2.0)
    noise = torch.cat([(noisy[k] - clipped[k]).flatten() for k in update])

    assert defence.stage == "upload"
    assert noise.std().item() == pytest.approx(0.05 * 2.0, rel=REL_TOL)
    assert measured["noise_std"] == pytest.approx(0.1)
    assert measured["measured_noise_std"] == pytest.approx(noise.std(correction=0).item(), rel=1e-4)
    assert measured["update_norm"] == pytest.approx(2.0, rel=1e-6)  # the clipped update's norm
    assert measured["noise_to_update_norm"] == pytest.approx(noise.norm().item() / 2.0, rel=1e-4)
    assert measured["clipped"] == 1.0


def test_client_epsilon_composes_over_rounds_and_survives_state_round_trip() -> None:
    first = dp(clip_norm=1.0, noise_multiplier=2.0)
    epsilons, state = [], {}
    for round_ in range(3):
        defence = dp(clip_norm=1.0, noise_multiplier=2.0)  # a new instance each round
        if state:
            defence.load_state_dict(state)
        _, measured = defence.apply(make_update(), torch.Generator().manual_seed(round_))
        state = defence.state_dict()
        epsilons.append(measured["epsilon"])
    # Any two datasets of one client give clipped updates 2C apart: multiplier z/2 per upload.
    assert epsilons == pytest.approx([rdp_epsilon(1.0, k) for k in (1, 2, 3)], rel=1e-9)
    assert first.accountant.epsilon() == 0.0


def test_no_noise_means_no_guarantee() -> None:
    _, measured = dp(clip_norm=1.0, noise_multiplier=0.0).apply(
        make_update(), torch.Generator().manual_seed(0)
    )
    assert math.isinf(measured["epsilon"])
    assert measured["measured_noise_std"] == 0.0


def test_server_placement_clips_each_upload_averages_uniformly_and_noises_z_c_over_m() -> None:
    uploads = [make_update(scale=s, seed=s) for s in (1, 2, 3, 4)]
    defence = dp(clip_norm=5.0, noise_multiplier=0.4, placement="server")
    aggregate, measured = defence.aggregate(
        uploads, [1.0, 10.0, 100.0, 1000.0], torch.Generator().manual_seed(2)
    )
    clean = weighted_mean([clip_update(u, 5.0)[0] for u in uploads], [1.0] * 4)
    noise = torch.cat([(aggregate[k] - clean[k]).flatten() for k in clean])

    assert defence.stage == "aggregate"
    assert noise.std().item() == pytest.approx(0.4 * 5.0 / 4, rel=REL_TOL)
    assert measured["clipped_fraction"] == 1.0
    # Adding or removing one client moves the sum by at most C: multiplier z per round.
    assert measured["epsilon"] == pytest.approx(rdp_epsilon(0.4, 1), rel=1e-9)
    _, again = defence.aggregate(uploads, [1.0] * 4, torch.Generator().manual_seed(3))
    assert again["epsilon"] == pytest.approx(rdp_epsilon(0.4, 2), rel=1e-9)


def test_gaussian_noise_on_the_aggregate_noises_fedavgs_weighted_mean() -> None:
    uploads = [make_update(seed=1), make_update(seed=2)]
    defence = GaussianNoise(GaussianNoise.Params(sigma=0.3, placement="server"))
    aggregate, measured = defence.aggregate(uploads, [1.0, 3.0], torch.Generator().manual_seed(0))
    clean = weighted_mean(uploads, [1.0, 3.0])
    noise = torch.cat([(aggregate[k] - clean[k]).flatten() for k in clean])

    assert defence.stage == "aggregate"
    assert noise.std().item() == pytest.approx(0.3, rel=REL_TOL)
    assert measured["measured_noise_std"] == pytest.approx(0.3, rel=REL_TOL)


def test_pruning_zeroes_the_smallest_fraction_of_each_tensor() -> None:
    update = make_update()
    pruned, measured = Pruning(Pruning.Params(p=0.9)).apply(update, torch.Generator())
    for name, value in update.items():
        kept = pruned[name] != 0
        assert kept.float().mean().item() == pytest.approx(0.1, abs=1e-4)
        assert torch.equal(pruned[name][kept], value[kept])  # survivors untouched
        assert value[~kept].abs().max() <= value[kept].abs().min()  # the smallest went
    assert measured["pruned_fraction"] == pytest.approx(0.9, abs=1e-4)
    assert 0 < measured["kept_norm_fraction"] < 1


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quantisation_rounds_to_a_grid_of_bits_bits(bits: int) -> None:
    update = make_update()
    quantised, measured = Quantisation(Quantisation.Params(bits=bits)).apply(
        update, torch.Generator()
    )
    levels = 2 ** (bits - 1) - 1
    for name, value in update.items():
        step = value.abs().max().item() / levels
        assert len(torch.unique(quantised[name])) <= 2 * levels + 1
        assert (quantised[name] - value).abs().max().item() <= step / 2 * (1 + 1e-5)
    assert 0 < measured["error_to_update_norm"] < 1


def test_a_defence_must_implement_the_hook_of_its_stage() -> None:
    class TrainsNothing(Defence):
        name = "trains_nothing"
        summary = "declares training, implements apply"
        stages = ("training",)

        def apply(self, update, generator):  # type: ignore[no-untyped-def]
            return update, {}

    class Nowhere(Defence):
        name = "nowhere"
        summary = "an unknown stage"
        stages = ("somewhere",)  # type: ignore[assignment]

    assert _defence_problem(TrainsNothing) == (
        "declares stages ['training'] but does not implement train()"
    )
    assert "stages must be among" in (_defence_problem(Nowhere) or "")
    assert _defence_problem(DPGaussian) is None


def test_one_defence_per_replacing_stage() -> None:
    raw = {
        "defences": [
            {"name": "gaussian_noise", "sigma": 0.1, "placement": "server"},
            {"name": "pruning", "p": 0.5},
            {"name": "dp_gaussian", "placement": ["client", "server"]},
        ]
    }
    with pytest.raises(ScenarioError) as error:
        expand(raw, "x.toml")
    assert str(error.value) == (
        "x.toml: defences[2]: only one defence may act at stage 'aggregate'; "
        "defences[0] already does"
    )
    with pytest.raises(ScenarioError, match=r"defences\[0\]\.placement: Input should be"):
        expand({"defences": [{"name": "dp_gaussian", "placement": "cloud"}]}, "x.toml")
