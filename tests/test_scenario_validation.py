"""Scenario files: one-line errors naming file and key, sweeps, overrides, run directories."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from rich.console import Console

from fedsim.cli import main
from fedsim.run import RunError, run_scenario
from fedsim.scenario import ScenarioError, expand, load, parse_override

VALID = """\
name = "tiny"
[data]
dataset = "photos"
samples_per_class = 3
[federation]
num_clients = 2
clients_per_round = 1
[[attacks]]
name = "dlg"
iterations = 5
[[defences]]
name = "gaussian_noise"
sigma = 0.1
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def run_cli(path: Path, out: Path, *extra: str) -> int:
    return main(["run", str(path), "--out", str(out), *extra])


def assert_one_line_error(capsys: pytest.CaptureFixture[str], path: Path, *fragments: str) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert str(path) in line
    for fragment in fragments:
        assert fragment in line
    return line


BAD_FILES = {
    "typo in key": (
        "[federation]\nroudns = 2\n",
        ["federation.roudns", "did you mean 'rounds'"],
    ),
    "wrong type": (
        '[federation]\nbatch_size = "four"\n',
        ["federation.batch_size", "integer"],
    ),
    "negative lr": (
        "[federation]\nlr = -1\n",
        ["federation.lr", "greater than 0"],
    ),
    "negative sigma": (
        '[[defences]]\nname = "gaussian_noise"\nsigma = -0.5\n',
        ["defences[0].sigma", "greater than or equal to 0"],
    ),
    "unknown plugin": (
        '[[attacks]]\nname = "dlgg"\n',
        ["attacks[0].name", "'dlgg'", "did you mean 'dlg'"],
    ),
    "unknown plugin parameter": (
        '[[attacks]]\nname = "dlg"\niteratons = 5\n',
        ["attacks[0].iteratons", "did you mean 'iterations'"],
    ),
    "more sampled clients than clients": (
        "[federation]\nnum_clients = 2\nclients_per_round = 3\n",
        ["federation:", "clients_per_round (3) exceeds num_clients (2)"],
    ),
    "attack round beyond the federation": (
        '[federation]\nrounds = 2\n[[attacks]]\nname = "dlg"\nrounds = [1, 3]\n',
        ["attacks[0].rounds", "[3] outside", "1..2"],
    ),
    "attacked client beyond the federation": (
        '[federation]\nnum_clients = 4\n[[attacks]]\nname = "dlg"\nclients = [1, 4]\n',
        ["attacks[0].clients", "[4] outside", "0..3"],
    ),
    "attacked clients for a participant": (
        '[[attacks]]\nname = "dlg"\nposition = "participant"\nclients = [0]\n',
        ["attacks[0].clients", "participant sees only the aggregate"],
    ),
    "empty attacked clients": (
        '[[attacks]]\nname = "dlg"\nclients = []\n',
        ["attacks[0].clients", "at least 1 item"],
    ),
    "client needs more cores than Ray gets": (
        "[simulation]\nclient_cpus = 3\ncpus = 2\n",
        ["simulation:", "client_cpus (3) exceeds cpus (2)"],
    ),
    "negative GPU share": (
        "[simulation]\nclient_gpus = -0.5\n",
        ["simulation.client_gpus", "greater than or equal to 0"],
    ),
    "zero round timeout": (
        "[federation]\nround_timeout = 0\n",
        ["federation.round_timeout", "greater than 0"],
    ),
    "swept plugin name": (
        '[[attacks]]\nname = ["dlg", "dlg"]\n',
        ["attacks[0].name", "cannot be swept"],
    ),
    "invalid TOML": (
        "[federation\nrounds = 2\n",
        ["invalid TOML"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_scenario_is_one_line_exit_2_and_writes_nothing(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, fragments = BAD_FILES[case]
    path = write(tmp_path, text)
    out = tmp_path / "run"

    assert run_cli(path, out) == 2
    assert_one_line_error(capsys, path, *fragments)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_gpu_share_without_a_gpu_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, VALID + "[simulation]\nclient_gpus = 0.5\n")
    out = tmp_path / "run"

    assert run_cli(path, out) == 2
    assert_one_line_error(capsys, path, "simulation.client_gpus", "0 CUDA GPUs are visible")
    assert not out.exists()


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.toml"
    out = tmp_path / "run"

    assert run_cli(path, out) == 2
    assert_one_line_error(capsys, path, "file not found")
    assert not out.exists()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: p.mkdir(), id="directory"),
        pytest.param(lambda p: p.write_bytes(b"\xff\xfe name = 1"), id="not-utf8"),
    ],
)
def test_unreadable_file(make, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "scenario.toml"
    make(path)
    out = tmp_path / "run"

    assert run_cli(path, out) == 2
    assert_one_line_error(capsys, path)
    assert not out.exists()


def test_set_override_with_invalid_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, VALID)
    out = tmp_path / "run"

    assert run_cli(path, out, "--set", "federation.lr=-1") == 2
    assert_one_line_error(capsys, path, "federation.lr", "greater than 0")
    assert not out.exists()


@pytest.mark.parametrize("override", ["[]=1", ".=3", "federation..rounds=2", "[0]=1"])
def test_set_override_without_a_key_is_one_line(
    override: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, VALID)

    assert main(["audit", str(path), "--set", override]) == 2
    assert_one_line_error(capsys, path, f"--set {override!r} must look like key.path=value")


DEEP = "[" * 500 + "]" * 500


@pytest.mark.parametrize(
    ("text", "override", "fragment"),
    [
        (VALID.replace("sigma = 0.1", f"sigma = {DEEP}"), None, "invalid TOML: arrays or tables"),
        (VALID, f"defences[0].sigma={DEEP}", "--set defences[0].sigma: value nested too deeply"),
    ],
    ids=["file", "override"],
)
def test_arrays_nested_too_deeply_are_one_line(
    text: str,
    override: str | None,
    fragment: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write(tmp_path, text)
    out = tmp_path / "run"

    assert run_cli(path, out, *(["--set", override] if override else [])) == 2
    assert_one_line_error(capsys, path, fragment)
    assert not out.exists()


def test_nesting_deeper_than_the_limit_is_refused(tmp_path: Path) -> None:
    """200 levels parse, but the scenario travels to the clients as JSON, which
    pydantic reads only to about 200 levels: such a run would fail mid-federation."""
    deep = "[" * 200 + "1" + "]" * 200
    path = write(tmp_path, VALID + f'[model]\nname = "pkg.mod:Net"\nkwargs = {{a = {deep}}}\n')

    with pytest.raises(ScenarioError) as error:
        load(path)
    assert str(error.value) == f"{path}: model.kwargs.a: nested more than 32 levels deep"


def test_user_model_that_does_not_fit_the_data_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 1-channel model on 3-channel photos: the model's own error, in one line."""
    path = write(
        tmp_path,
        VALID + '[model]\nname = "torch.nn:Conv2d"\n'
        "kwargs = {in_channels = 1, out_channels = 2, kernel_size = 3}\n",
    )
    out = tmp_path / "run"

    assert run_cli(path, out) == 2
    assert_one_line_error(
        capsys,
        path,
        "model: model 'torch.nn:Conv2d' cannot take a (3, 32, 32) (C, H, W) input: RuntimeError: ",
        "to have 1 channels, but got 3 channels instead",
    )
    assert not out.exists()


def test_invalid_sweep_point_rejects_whole_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The first point is valid, the second is not: nothing may run or be written.
    path = write(tmp_path, VALID.replace("sigma = 0.1", "sigma = [0.1, -1.0]"))
    out = tmp_path / "run"

    assert run_cli(path, out) == 2
    assert_one_line_error(capsys, path, "defences[0].sigma")
    assert not out.exists()


def test_existing_out_directory_is_refused_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, VALID)
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine", encoding="utf-8")

    with pytest.raises(RunError, match="already exists"):
        run_scenario(path, [], out, Console(quiet=True))
    assert run_cli(path, out) == 2

    line = capsys.readouterr().err.strip()
    assert "already exists" in line and "\n" not in line
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text(encoding="utf-8") == "mine"


# ---------------------------------------------------------------- expand


def base_raw(**defence: object) -> dict[str, object]:
    return {
        "federation": {"num_clients": 2, "rounds": 2},
        "attacks": [{"name": "dlg", "rounds": [1, 2]}],
        "defences": [{"name": "gaussian_noise", **defence}],
    }


def test_list_on_scalar_field_is_a_sweep() -> None:
    trials = expand(base_raw(sigma=[0, 0.1, 1]), "s.toml")

    assert [t.index for t in trials] == [0, 1, 2]
    assert [t.point for t in trials] == [
        {"defences[0].sigma": 0},
        {"defences[0].sigma": 0.1},
        {"defences[0].sigma": 1},
    ]
    assert [t.scenario.defences[0].params["sigma"] for t in trials] == [0.0, 0.1, 1.0]


def test_two_sweeps_form_a_grid() -> None:
    raw = base_raw(sigma=[0, 0.1, 1])
    raw["federation"] = {"num_clients": 2, "rounds": 2, "lr": [0.1, 0.01]}

    trials = expand(raw, "s.toml")

    pairs = {(t.scenario.defences[0].params["sigma"], t.scenario.federation.lr) for t in trials}
    assert len(trials) == 6
    assert pairs == {(s, lr) for s in (0.0, 0.1, 1.0) for lr in (0.1, 0.01)}
    assert all(set(t.point) == {"defences[0].sigma", "federation.lr"} for t in trials)


def test_list_typed_field_is_not_a_sweep() -> None:
    trials = expand(base_raw(sigma=0.5), "s.toml")

    assert len(trials) == 1
    assert trials[0].point == {}
    assert trials[0].scenario.attacks[0].rounds == [1, 2]


def test_empty_sweep_is_an_error() -> None:
    with pytest.raises(ScenarioError, match=r"defences\[0\]\.sigma: an empty list"):
        expand(base_raw(sigma=[]), "s.toml")


def test_parse_override() -> None:
    assert parse_override("federation.rounds=2") == (("federation", "rounds"), 2)
    assert parse_override("defences[0].sigma=[0, 0.5]") == (("defences", 0, "sigma"), [0, 0.5])
    # A value that is not TOML is taken as a plain string.
    assert parse_override("model.name=lenet") == (("model", "name"), "lenet")
    with pytest.raises(ScenarioError, match=r"key\.path=value"):
        parse_override("federation.rounds")


def test_load_applies_overrides_before_expanding(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)

    raw, trials = load(path, ["federation.rounds=2", "defences[0].sigma=[0, 0.5]"])

    assert raw["federation"]["rounds"] == 2
    assert [t.point for t in trials] == [{"defences[0].sigma": 0}, {"defences[0].sigma": 0.5}]
    assert all(t.scenario.federation.rounds == 2 for t in trials)


def test_override_of_missing_entry_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)

    with pytest.raises(ScenarioError, match=r"defences\[3\]: --set: no such entry") as info:
        load(path, ["defences[3].sigma=1"])
    assert str(info.value).startswith(str(path))


def test_validation_builds_no_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a scenario asks the plugin classes (knowledge needed, stage chosen by a
    parameter) and never builds a plugin: an attack or defence whose constructor has side
    effects (a download, an accountant) must not run them at validation."""
    from fedsim.api import Attack, Defence

    def refuse(self: object, params: object) -> None:
        raise AssertionError(f"validation built {type(self).__name__}")

    monkeypatch.setattr(Attack, "__init__", refuse)
    monkeypatch.setattr(Defence, "__init__", refuse)
    text = VALID.replace("sigma = 0.1", 'sigma = 0.1\nplacement = "server"')
    path = write(tmp_path, text + '[[defences]]\nname = "dp_sgd"\nnoise_multiplier = 1.0\n')
    clash = ["defences[1].name='dp_gaussian'", "defences[1].placement='server'"]
    with pytest.raises(ScenarioError, match="only one defence may act at stage 'aggregate'"):
        load(path, clash)
    (trial,) = load(path, ["federation.protocol='fedavg'"])[1]
    assert [d.name for d in trial.scenario.defences] == ["gaussian_noise", "dp_sgd"]
    with pytest.raises(ScenarioError, match="local_hyperparameters"):
        load(path, ["federation.protocol='fedavg'", "attacks[0].knows_local_hyperparameters=false"])
