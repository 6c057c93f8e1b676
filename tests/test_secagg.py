"""Secure aggregation (``secagg``: Flower's SecAgg+ between fedsim's apps): what the
server receives, what it unmasks, what the attacks get, what is refused, and the ε of
the sum.

The protocol-level tests drive the ServerApp's SecAgg+ round (``SecAggPlusGrid``)
against fedsim's ClientApp through :class:`LoopbackGrid`, in this process; one pair of
small Flower simulations, with and without ``secagg``, checks the whole federation."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, Error, Message, RecordDict
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from run_helpers import TINY, read_run, scenario_toml
from test_dp_defences import DELTA, rdp_epsilon

import fedsim.federation.server_app as server_app
from fedsim.cli import main
from fedsim.federation import secure_server
from fedsim.federation.client_app import local_update, make_client_app
from fedsim.federation.defence_stages import ClientDefences
from fedsim.federation.protocol import Addressee, TrainInstruction, TrainReply, secagg_stage
from fedsim.federation.secure_server import SecAggPlusGrid, SecureRound
from fedsim.federation.server_step import ServerStep
from fedsim.privacy.noise import weighted_mean
from fedsim.scenario import Scenario, ScenarioError, expand
from fedsim.scenario.preflight import preflight
from fedsim.scenario.secure_aggregation import largest_examples, secure_sum
from fedsim.trial_inputs import federated_data, model_factory

NODES = [11, 12, 13, 14]
"""The loopback's node ids; node ``NODES[p]`` acts as partition ``p``."""
FEDAVG = {"num_clients": 4, "clients_per_round": 4, "protocol": "fedavg", "batch_size": 8}
SECAGG = {"name": "secagg"}


@pytest.fixture(autouse=True, scope="module")
def task_identity() -> Iterator[None]:
    """Flower's Message needs the identity a running Flower process would set."""
    saved = {k: getattr(TaskIdentity, f"_{k}", None) for k in ("task_id", "run_id", "node_id")}
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    for key, value in saved.items():
        setattr(TaskIdentity, f"_{key}", value)


def scenario(*defences: dict[str, Any], **federation: Any) -> Scenario:
    """A tiny LeNet federation (FedAvg over 4 clients unless ``federation`` says
    otherwise) with ``defences``."""
    raw = {
        **TINY,
        "model": {"name": "lenet"},
        "federation": {**FEDAVG, **federation},
        "defences": list(defences),
    }
    return expand(raw, "test")[0].scenario


class LoopbackGrid(Grid):
    """Nodes running ``app`` in this process, each with its own Context, one message
    after another. A message reaches its node as a copy, as over the wire;
    ``fail(message)`` may raise in the node's place (a dropout, answered by an error
    reply). ``exchanges`` keeps every batch sent with its replies."""

    def __init__(
        self,
        nodes: Iterable[int],
        app: Callable[[Message, Context], Message],
        fail: Callable[[Message], None] = lambda _message: None,
    ) -> None:
        self.contexts = {node: Context(1, node, {}, RecordDict(), {}) for node in nodes}
        self.app, self.fail = app, fail
        self.exchanges: list[tuple[list[Message], list[Message]]] = []
        self._run = Run.create_empty(1)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("the loopback only sends and receives")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("the loopback only sends and receives")

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        sent, replies = list(messages), []
        for message in sent:
            try:
                self.fail(message)
                node = message.metadata.dst_node_id
                reply = self.app(copy.deepcopy(message), self.contexts[node])
            except Exception as exc:
                reply = Message(Error(0, f"{type(exc).__name__}: {exc}"), reply_to=message)
            replies.append(reply)
        self.exchanges.append((sent, replies))
        return replies

    def masked_vectors(self) -> dict[int, np.ndarray]:
        """Each node's masked upload as the server received it (the weight dropped)."""
        return {
            reply.metadata.src_node_id: np.concatenate(
                [
                    bytes_to_ndarray(b).ravel()
                    for b in reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
                ][1:]
            )
            for sent, replies in self.exchanges
            if secagg_stage(sent[0]) == Stage.COLLECT_MASKED_VECTORS
            for reply in replies
            if not reply.has_error()
        }


def start_arrays(secure: Scenario) -> ArrayRecord:
    return ArrayRecord.from_torch_state_dict(
        model_factory(secure, federated_data(secure))().state_dict()
    )


def secure_round(
    secure: Scenario, fail: Callable[[Message], None] = lambda _message: None
) -> tuple[SecureRound, LoopbackGrid]:
    """Round 1 of ``secure`` as one SecAgg+ round over the loopback's nodes."""
    resolved = secure_sum(secure)
    assert resolved is not None
    shards = federated_data(secure).shards.sizes()
    loopback = LoopbackGrid(NODES, make_client_app(simulated=True), fail)
    grid = SecAggPlusGrid(loopback, resolved, resolved.max_weight(largest_examples(secure, shards)))
    arrays = start_arrays(secure)
    instructions = [
        TrainInstruction(Addressee(secure.model_dump_json(), 1, p), arrays, True, {}).to_message(n)
        for p, n in enumerate(NODES)
    ]
    replied = list(grid.send_and_receive(instructions, timeout=60))
    outcome = grid.take_round()
    assert replied == outcome.replies
    return outcome, loopback


def true_updates(secure: Scenario) -> list[TrainReply]:
    """Each partition's round-1 reply computed directly, as the client computes it."""
    arrays = start_arrays(secure)
    return [local_update(secure, p, 1, arrays, {})[0] for p in range(len(NODES))]


def max_error(mean: dict[str, np.ndarray], expected: dict[str, torch.Tensor]) -> float:
    assert list(mean) == list(expected)
    return max(float(np.abs(mean[k] - expected[k].double().numpy()).max()) for k in mean)


def resolution(secure: Scenario, weights: list[int]) -> float:
    """The most stochastic rounding can move the mean: a step 2c/T of a client's weighted
    update is 2c/T · max_weight / weight of its update."""
    resolved = secure_sum(secure)
    assert resolved is not None
    protocol = resolved.protocol
    largest = resolved.max_weight(largest_examples(secure, federated_data(secure).shards.sizes()))
    return 2 * protocol.clipping_range / protocol.quantization_range * largest / min(weights)


def drop(node: int, stage: str) -> Callable[[Message], None]:
    """A dropout: ``node`` fails when it receives its message of SecAgg+ ``stage``."""

    def fail(message: Message) -> None:
        if message.metadata.dst_node_id == node and secagg_stage(message) == stage:
            raise RuntimeError(f"node {node} drops out at {stage}")

    return fail


# ---------------------------------------------------------------- the protocol


@pytest.fixture(scope="module")
def fedavg() -> Scenario:
    return scenario(SECAGG)


@pytest.fixture(scope="module")
def one_round(fedavg: Scenario) -> tuple[SecureRound, LoopbackGrid]:
    return secure_round(fedavg)


def test_the_server_unmasks_only_fedavgs_weighted_mean(
    fedavg: Scenario, one_round: tuple[SecureRound, LoopbackGrid]
) -> None:
    outcome, _ = one_round
    truth = true_updates(fedavg)
    weights = [u.num_examples for u in truth]
    assert len(set(weights)) > 1  # unequal shards: the weights matter

    assert outcome.mean is not None and outcome.dropped == {}
    expected = weighted_mean([u.update for u in truth], weights)
    error = max_error(outcome.mean, expected)
    assert error <= resolution(fedavg, weights)
    assert error < 1e-5  # measured: 3.0e-6 (bound 3.9e-6), on a mean of RMS 6.6e-3

    # In clear: the metadata, the update's key order and the truth (simulation only);
    # the update itself left only masked, and the training loss not at all.
    received = [TrainReply.from_masked_message(m) for m in outcome.replies]
    assert sorted(r.partition_id for r in received) == [0, 1, 2, 3]
    assert all(r.update == {} and r.train_loss is None for r in received)
    assert all(r.truth is not None for r in received)
    for message in outcome.replies:
        content = message.content
        assert "update" not in content and len(content.array_records["fitres.parameters"]) == 0
        assert "train-loss" not in content.metric_records["metrics"]


def test_each_masked_upload_looks_uniform_and_unrelated_to_the_update(
    fedavg: Scenario, one_round: tuple[SecureRound, LoopbackGrid]
) -> None:
    _, loopback = one_round
    masked = loopback.masked_vectors()
    truth = true_updates(fedavg)
    modulus = 2**32
    assert len(masked) == len(NODES)
    for p, node in enumerate(NODES):
        values = masked[node].astype(np.float64) / modulus
        update = torch.cat([v.flatten() for v in truth[p].update.values()]).double().numpy()
        assert values.size == update.size > 5000
        # Uniform on [0, 1): mean 1/2, std 1/√12, every tenth holding a tenth (4–5 SE).
        assert values.mean() == pytest.approx(0.5, abs=0.02)
        assert values.std() == pytest.approx(1 / math.sqrt(12), abs=0.01)
        deciles = np.histogram(values, bins=10, range=(0, 1))[0] / values.size
        assert np.abs(deciles - 0.1).max() < 0.02
        assert abs(np.corrcoef(values, update)[0, 1]) < 0.05


def test_rounding_is_seeded_while_the_masks_are_fresh(
    fedavg: Scenario, one_round: tuple[SecureRound, LoopbackGrid]
) -> None:
    first, first_grid = one_round
    again, again_grid = secure_round(fedavg)
    assert first.mean is not None and again.mean is not None
    # Fresh keys and masks, yet the same sum to the bit: the masks cancel exactly and the
    # stochastic rounding is seeded from the scenario in simulation.
    assert all(np.array_equal(first.mean[k], again.mean[k]) for k in first.mean)
    assert not np.array_equal(
        first_grid.masked_vectors()[NODES[0]], again_grid.masked_vectors()[NODES[0]]
    )


def test_a_client_lost_while_training_leaves_the_others_sum(fedavg: Scenario) -> None:
    outcome, _ = secure_round(fedavg, drop(NODES[1], Stage.COLLECT_MASKED_VECTORS))
    truth = [u for u in true_updates(fedavg) if u.partition_id != 1]

    assert outcome.mean is not None
    assert list(outcome.dropped) == [NODES[1]]
    assert outcome.dropped[NODES[1]].kind == "error"
    assert "collect_masked_vectors" in outcome.dropped[NODES[1]].reason
    expected = weighted_mean([u.update for u in truth], [u.num_examples for u in truth])
    assert max_error(outcome.mean, expected) < 1e-5


def test_a_client_lost_in_the_key_exchange_leaves_the_others_sum(
    fedavg: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome, _ = secure_round(fedavg, drop(NODES[2], Stage.SETUP))
    truth = [u for u in true_updates(fedavg) if u.partition_id != 2]

    assert outcome.mean is not None and list(outcome.dropped) == [NODES[2]]
    expected = weighted_mean([u.update for u in truth], [u.num_examples for u in truth])
    assert max_error(outcome.mean, expected) < 1e-5

    # Flower 1.42's own share_keys_stage halts such a round: the others are asked for
    # shares of the lost node that they never received. (If this starts to pass,
    # Flower has fixed it and fedsim's workaround can go.)
    monkeypatch.setattr(
        secure_server._RoundWorkflow, "share_keys_stage", SecAggPlusWorkflow.share_keys_stage
    )
    halted, _ = secure_round(fedavg, drop(NODES[2], Stage.SETUP))
    assert halted.mean is None and sorted(halted.dropped) == NODES


def test_the_client_sends_no_update_outside_a_secagg_round(fedavg: Scenario) -> None:
    to = Addressee(fedavg.model_dump_json(), 1, 0)
    plain = TrainInstruction(to, start_arrays(fedavg), True, {})
    context = Context(1, 5, {}, RecordDict(), {})
    with pytest.raises(PermissionError, match="aggregates securely"):
        make_client_app(simulated=True)(plain.to_message(5), context)


# ---------------------------------------------------------------- differential privacy


def dp_gaussian(noise_multiplier: float) -> dict[str, Any]:
    return {
        "name": "dp_gaussian",
        "clip_norm": 1.0,
        "noise_multiplier": noise_multiplier,
        "placement": "client",
        "delta": DELTA,
    }


def test_epsilon_of_the_sum_composes_the_releases_at_z_sqrt_t() -> None:
    """A client's upload is a Gaussian mechanism of multiplier z/2 (dp_gaussian's: its
    clipped updates are 2C apart); the sum of ≥ t uploads carries t noises: z·√t/2."""
    z, t, rounds = 0.8, 3, 4
    secure = scenario(
        dp_gaussian(z),
        {"name": "secagg", "reconstruction_threshold": t},
        num_clients=5,
        clients_per_round=5,
    )
    plain = scenario(dp_gaussian(z))
    update = {"w": torch.ones(10) * 0.1}
    state: dict[str, Any] = {}
    for server_round in range(1, rounds + 1):
        defences = ClientDefences(secure, state)
        _, (report,) = defences.defend_upload(update, server_round, 0)
        defences.save_state(state)
    _, (alone,) = ClientDefences(plain, {}).defend_upload(update, 1, 0)

    assert report.values["epsilon"] == pytest.approx(rdp_epsilon(z / 2, rounds), rel=1e-9)
    assert report.values["epsilon_sum"] == pytest.approx(
        rdp_epsilon(z * math.sqrt(t) / 2, rounds), rel=1e-9
    )
    assert report.values["delta_sum"] == DELTA
    assert report.values["epsilon_sum"] < report.values["epsilon"] / 2
    # Public measurements only (the sum's ε depends on nothing else); none without secagg.
    assert set(report.values) == {"noise_std", "epsilon", "delta", "epsilon_sum", "delta_sum"}
    assert "epsilon_sum" not in alone.values


def test_under_a_client_guarantee_every_client_weighs_one() -> None:
    secure = scenario(dp_gaussian(0.5), SECAGG)
    outcome, _ = secure_round(secure)
    truth = true_updates(secure)
    assert len({u.num_examples for u in truth}) > 1

    assert outcome.mean is not None
    expected = weighted_mean([u.update for u in truth], [1.0] * len(truth))
    assert max_error(outcome.mean, expected) <= resolution(secure, [1])
    reports = [TrainReply.from_masked_message(m).defences for m in outcome.replies]
    assert all("epsilon_sum" in r[0].values for r in reports)


# ---------------------------------------------------------------- refusals


def toml(scenario_raw: dict[str, Any]) -> str:
    """:func:`scenario_toml` of ``scenario_raw``, its ``defences`` as ``[[defences]]``."""
    tables = "".join(
        "[[defences]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in defence.items())
        for defence in scenario_raw.get("defences", [])
    )
    return scenario_toml({k: v for k, v in scenario_raw.items() if k != "defences"}) + tables


def raw(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        **TINY,
        "federation": {"num_clients": 5, "clients_per_round": 5},
        "defences": [SECAGG],
    }
    return {**base, **changes}


REFUSED = {
    "aggregate defence": (
        raw(defences=[SECAGG, {"name": "dp_gaussian", "placement": "server"}]),
        "defences[1]: dp_gaussian combines the individual uploads on the server",
    ),
    "two clients": (
        raw(federation={"num_clients": 5, "clients_per_round": 2}),
        "federation.clients_per_round: secure aggregation (defences[0]) needs at least 3",
    ),
    "overflow": (
        raw(federation={"num_clients": 1024, "clients_per_round": 1024}),
        "1024 clients × quantization_range 4194304 of secure aggregation (defences[0]) reach",
    ),
    "even num_shares": (
        raw(defences=[{"name": "secagg", "num_shares": 4}]),
        "defences[0]: num_shares (4) must be odd",
    ),
    "too many shares": (
        raw(defences=[{"name": "secagg", "num_shares": 7}]),
        "defences[0]: num_shares (7) exceeds the 5 clients",
    ),
    "threshold": (
        raw(defences=[{"name": "secagg", "num_shares": 3, "reconstruction_threshold": 3}]),
        "reconstruction_threshold (3) must be below num_shares (3)",
    ),
    "twice": (
        raw(defences=[SECAGG, SECAGG]),
        "only one defence may act at stage 'secure_aggregation'",
    ),
    "chosen clients": (
        raw(attacks=[{"name": "dlg", "position": "server", "clients": [0]}]),
        "attacks[0].clients: under secure aggregation (defences[0]), the server sees only",
    ),
    "participant's own upload": (
        raw(attacks=[{"name": "dlg", "position": "participant", "participant_client": 0}]),
        "attacks[0].participant_client: under secure aggregation",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_secure_aggregation_cannot_run_with_is_refused(case: str) -> None:
    scenario_raw, message = REFUSED[case]
    with pytest.raises(ScenarioError, match=r"^test: ") as refused:
        expand(scenario_raw, "test")
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_what_it_runs_with_is_accepted() -> None:
    allowed = raw(
        federation={"num_clients": 1023, "clients_per_round": 1023},
        defences=[{"name": "dp_gaussian", "placement": "client"}, SECAGG],
        attacks=[{"name": "dlg", "position": "server"}, {"name": "dlg", "position": "participant"}],
    )
    secure = expand(allowed, "test")[0].scenario
    resolved = secure_sum(secure)
    assert resolved is not None and resolved.uniform
    assert (resolved.protocol.num_shares, resolved.protocol.reconstruction_threshold) == (1023, 512)


def test_a_max_weight_below_a_clients_weight_is_refused_before_the_run(tmp_path: Path) -> None:
    low = raw(defences=[{"name": "secagg", "max_weight": 3.0}])
    low["federation"] = {**low["federation"], "protocol": "fedavg"}
    trials = expand(low, "test")
    with pytest.raises(ScenarioError, match=r"defences\[0\]\.max_weight: 3 is below the \d+"):
        preflight(trials, "test", "simulation")
    path = tmp_path / "low.toml"
    path.write_text(toml(low), encoding="utf-8")
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2


# ---------------------------------------------------------------- the federation


SIMULATED = {
    **TINY,
    "data": {**TINY["data"], "max_samples": 60},
    "model": {"name": "lenet"},
    "federation": {
        "num_clients": 4,
        "clients_per_round": 4,
        "rounds": 2,
        "protocol": "fedsgd",
        "batch_size": 1,
    },
}
ATTACK = {"name": "idlg", "rounds": [1], "iterations": 20}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``plain`` and ``secagg`` runs of one scenario, each with the global model after
    every round. Attacks[0] (same seed in both runs) is the participant's in ``plain``
    and the server's in ``secagg``; attacks[1] the server's and the participant's."""
    folder = tmp_path_factory.mktemp("secagg")
    done: dict[str, Any] = {}
    states: list[dict[str, torch.Tensor]] = []

    class Recorded(ServerStep):
        def __call__(
            self, start: dict[str, torch.Tensor], aggregate: dict[str, torch.Tensor]
        ) -> dict[str, torch.Tensor]:
            states.append(super().__call__(start, aggregate))
            return states[-1]

    for name, defences, positions in (
        ("plain", [], ("participant", "server")),
        ("secagg", [SECAGG], ("server", "participant")),
    ):
        attacks = [{**ATTACK, "position": p} for p in positions]
        path = folder / f"{name}.toml"
        path.write_text(
            toml({**SIMULATED, "defences": defences, "attacks": attacks}), encoding="utf-8"
        )
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(server_app, "ServerStep", Recorded)
            assert main(["run", str(path), "--out", str(folder / name)]) == 0
        results, _ = read_run(folder / name)
        done[name] = {"results": results, "states": states[:]}
        states.clear()
    return done


def records(run: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The run's attack records by attack index."""
    return {r["attack_index"]: r for r in run["results"]["records"]}


def test_the_secure_federation_learns_the_plain_one_model(runs: dict[str, Any]) -> None:
    plain, secure = runs["plain"], runs["secagg"]
    assert len(plain["states"]) == len(secure["states"]) == 2
    for ours, theirs in zip(secure["states"], plain["states"], strict=True):
        assert max(float((ours[k] - theirs[k]).abs().max()) for k in theirs) < 1e-4
        assert all(ours[k].dtype == theirs[k].dtype for k in theirs)
    (trial,) = secure["results"]["trials"]
    assert trial["status"] == "complete" and trial["client_failures"] == []
    assert trial["defences"]["1"]["aggregate"]["0"] == {
        "clients_in_sum": 4,
        "clients_dropped": 0,
        "num_shares": 4,
        "reconstruction_threshold": 3,
    }
    sent = set(trial["client_sent"])
    assert {"secaggplus_configs", "fitres.parameters", "truth", "num-examples"} <= sent
    assert not {"update", "train-loss"} & sent


def test_the_server_attacks_the_aggregate_as_a_participant_does(runs: dict[str, Any]) -> None:
    plain, secure = records(runs["plain"]), records(runs["secagg"])
    server = secure[0]
    assert (server["position"], server["client"], server["status"]) == ("server", None, "ok")
    assert len(server["images"]) == 4  # scored against the four clients in the sum
    assert server["defence_measurements"]["0"]["clients_in_sum"] == 4
    # The same observation as a participant's without secagg (up to SecAgg+'s rounding)
    # and the same seed: the same reconstruction; far below the server's without secagg,
    # which attacked one client's one-image gradient.
    assert plain[0]["position"] == "participant" and plain[1]["client"] is not None
    assert server["metrics"]["psnr"] == pytest.approx(plain[0]["metrics"]["psnr"], abs=1.0)
    assert plain[1]["metrics"]["psnr"] > server["metrics"]["psnr"] + 20
    assert secure[1]["client"] is None and len(secure[1]["images"]) == 4
