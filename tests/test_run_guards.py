"""``fedsim run`` refuses what it cannot do safely with one line and exit status 2,
and never lets what users wrote escape its place: a scenario's name in a path,
rich markup in the console, a signal during validation as a traceback.

The federation is replaced by a stand-in (``runner.run_trial``) that completes at
once, or fails, so these tests take a second.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

import fedsim.federation.runner as runner
import fedsim.run
from fedsim.cli import main
from fedsim.run import safe_name
from fedsim.scenario import MAX_SWEEP_POINTS, ScenarioError, load

SCENARIO = """\
name = "guards"
[data]
dataset = "digits"
image_size = 8
max_samples = 200
[model]
name = "convnet"
layers = [[3, 4, 2]]
[federation]
num_clients = 2
[output]
dir = "{out}"
"""


def no_federation(*_args: Any) -> None:
    """Stands in for ``run_trial``: the point completes, with nothing recorded."""


def failing_federation(*_args: Any) -> None:
    raise RuntimeError("bad value [/red] in [bold]")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "run_trial", no_federation)


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def scenario(tmp_path: Path, **top: str) -> Path:
    head = "".join(f"{key} = {value}\n" for key, value in top.items())
    body = SCENARIO.format(out=tmp_path / "runs")
    if head:
        body = body.replace('name = "guards"\n', head)
    return write(tmp_path, body)


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("fedsim: ") and "Traceback" not in err
    return err.strip()


# ---------------------------------------------------------------- the run directory


def test_safe_name_is_one_path_component() -> None:
    assert safe_name("../../escaped") == "escaped"
    assert safe_name("dp sweep v1.2") == "dp-sweep-v1-2"
    assert safe_name("/etc/passwd") == "etc-passwd"
    assert safe_name("..") == safe_name("") == safe_name("///") == "scenario"
    assert safe_name("résumé_2") == "résumé_2"


@pytest.mark.usefixtures("fake")
def test_a_name_cannot_place_the_run_outside_output_dir(tmp_path: Path) -> None:
    base = tmp_path / "deep" / "er"
    source = write(tmp_path, SCENARIO.format(out=base).replace('"guards"', '"../../escaped"'))

    assert main(["run", str(source)]) == 0

    (run_dir,) = base.iterdir()
    assert run_dir.name.startswith("escaped-") and (run_dir / "results.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "s.toml"]
    assert [p.name for p in (tmp_path / "deep").iterdir()] == ["er"]


@pytest.mark.parametrize("where", ["proc", "under_a_file"])
@pytest.mark.usefixtures("fake")
def test_an_out_that_cannot_be_created_is_one_line(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = scenario(tmp_path)
    (tmp_path / "file.txt").write_text("x", encoding="utf-8")
    out = Path("/proc/fedsim-run") if where == "proc" else tmp_path / "file.txt" / "run"

    assert main(["run", str(source), "--out", str(out)]) == 2

    line = one_error_line(capsys)
    assert line.startswith(f"fedsim: cannot create run directory {out}: ")
    assert not out.exists()


@pytest.mark.usefixtures("fake")
def test_resume_of_a_truncated_results_json_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, run_dir = scenario(tmp_path), tmp_path / "run"
    assert main(["run", str(source), "--out", str(run_dir)]) == 0
    results = run_dir / "results.json"
    results.write_text(results.read_text(encoding="utf-8")[:200], encoding="utf-8")
    capsys.readouterr()

    assert main(["run", str(source), "--resume", str(run_dir)]) == 2

    line = one_error_line(capsys)
    assert line.startswith(f"fedsim: {run_dir}: results.json is damaged (")
    assert line.endswith("it cannot be resumed: start a new run")


@pytest.mark.usefixtures("fake")
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"schema_version": 99},
            "results.json has schema_version 99, newer than this fedsim reads (2): upgrade "
            "fedsim to read it; it cannot be resumed",
        ),
        (
            {"trials": [{"index": "first"}]},
            "results.json is not what fedsim wrote (trials.0.index: Input should be a valid "
            "integer, unable to parse string as an integer (and 2 more)); it cannot be resumed: "
            "start a new run",
        ),
    ],
    ids=["newer-schema", "malformed"],
)
def test_resume_of_a_results_json_fedsim_cannot_read_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any], expected: str
) -> None:
    source, run_dir = scenario(tmp_path), tmp_path / "run"
    assert main(["run", str(source), "--out", str(run_dir)]) == 0
    results = run_dir / "results.json"
    before = json.loads(results.read_text(encoding="utf-8"))
    results.write_text(json.dumps({**before, **change}), encoding="utf-8")
    capsys.readouterr()

    assert main(["run", str(source), "--resume", str(run_dir)]) == 2

    assert one_error_line(capsys) == f"fedsim: {run_dir}: {expected}"


# ---------------------------------------------------------------- the scenario file


@pytest.mark.parametrize("text", ["", "# only a comment\n\n"], ids=["empty", "comments"])
def test_a_scenario_that_sets_nothing_is_refused(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write(tmp_path, text)

    assert main(["run", str(source), "--out", str(tmp_path / "run")]) == 2

    assert one_error_line(capsys) == (
        f"fedsim: {source}: the file sets nothing (it is empty or only comments): describe "
        "the federation ([data], [model], [federation]) and the [[attacks]] to run, as in "
        "scenarios/quickstart.toml"
    )
    assert not (tmp_path / "run").exists()


def test_a_sweep_above_the_limit_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    # 101 × 100 points: one over the limit. Expanding them would validate each.
    rounds = ", ".join(["1"] * 101)
    lrs = ", ".join(str(0.01 * (i + 1)) for i in range(100))
    source = write(tmp_path, f"[federation]\nrounds = [{rounds}]\nlr = [{lrs}]\n")
    assert MAX_SWEEP_POINTS == 10_000

    with pytest.raises(ScenarioError) as error:
        load(source)

    assert str(error.value) == (
        f"{source}: the sweep has 10,100 points (federation.rounds: 101 × federation.lr: 100), "
        "more than the limit of 10,000; split it into several scenarios"
    )


# ---------------------------------------------------------------- signals and markup


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_validation_is_one_line(
    signum: int, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = scenario(tmp_path)
    real_load = fedsim.run.load

    def signalled_load(*args: Any) -> Any:
        os.kill(os.getpid(), signum)  # delivered to this (the main) thread before the next line
        return real_load(*args)

    monkeypatch.setattr(fedsim.run, "load", signalled_load)
    before = signal.getsignal(signal.SIGTERM)
    try:
        assert main(["run", str(source), "--out", str(tmp_path / "run")]) == 128 + signum
    finally:
        signal.signal(signal.SIGTERM, before)

    name = "SIGINT (Ctrl-C)" if signum == signal.SIGINT else "SIGTERM"
    assert one_error_line(capsys) == f"fedsim: interrupted by {name}"
    assert not (tmp_path / "run").exists()


def test_user_text_with_rich_markup_is_printed_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = scenario(tmp_path, name='"[/oops]"')
    out = tmp_path / "[bold]run"
    monkeypatch.setattr(runner, "run_trial", failing_federation)

    assert main(["run", str(source), "--out", str(out)]) == 1  # the point failed; no crash

    printed = capsys.readouterr().out
    assert "point 1/1 failed: RuntimeError: bad value [/red] in [bold]" in printed
    assert "[/oops]: partial" in printed
    assert f"results in {out} (partial)" in printed


@pytest.mark.usefixtures("fake")
def test_the_audit_title_shows_its_sweep_point(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = SCENARIO.format(out=tmp_path / "runs").replace(
        "layers = [[3, 4, 2]]", 'layers = [[3, 4, 2]]\nactivation = ["relu", "tanh"]'
    )
    source = write(tmp_path, text + "[audit]\n")

    assert main(["run", str(source), "--out", str(tmp_path / "run")]) == 0

    printed = capsys.readouterr().out
    assert "[model.activation=relu]" in printed and "[model.activation=tanh]" in printed
