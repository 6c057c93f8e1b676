"""``results.json`` through its typed models (:mod:`fedsim.results.schema`): what the store
writes reads back unchanged, older files (version 1, with or without ``schema_version``)
still read, in the newest shape, newer ones are refused in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fedsim.cli import main
from fedsim.results.schema import (
    SCHEMA_VERSION,
    FailedClient,
    ImageResult,
    ResultsFileError,
    ThreatRecord,
    parse_results,
    results_json,
)
from fedsim.results.store import Record, ResultsStore, read_results


def a_run(run_dir: Path) -> ResultsStore:
    """A store with one of everything it records (non-finite numbers included)."""
    store = ResultsStore(run_dir, "schema", "simulation", "shared-truth", "the note")
    store.start_trial(0, {"defences[0].sigma": 0.1})
    store.set_accuracy(0, 0, 0.1)
    store.set_accuracy(0, 1, 0.5)
    store.add_round_defences(0, 1, {0: {0: {"epsilon": math.inf}}}, {1: {"delta": 1e-5}})
    store.add_client_failures(0, [FailedClient(round=1, client=2, kind="timeout", error="late")])
    store.add_client_sent(0, {"update", "num-examples"})
    store.set_trial_info(0, "rel_perceptual_l1", {"status": "unavailable", "reason": "no VGG"})
    store.set_trial_info(0, "model_start", {"initialisation": "seeded"})
    record = Record(
        trial=0, point={"defences[0].sigma": 0.1}, round=1, client=None, position="participant",
        attack="dlg", attack_index=0, update_kind="gradient", status="ok",
        diagnostics={"iterations": 3, "loss_curve": [1.0, math.nan, math.inf]},
        defence_measurements={0: {"noise_std": 0.5, "epsilon": math.inf}},
        threat_model=ThreatRecord(position="participant", knows=["labels"], sok_class="B"),
    )  # fmt: skip
    record.images.append(
        ImageResult(original_index=0, mse=0.0, psnr=math.inf, ssim=1.0, label_correct=True,
                    original_png="images/o.png", reconstruction_png="images/r.png")
    )  # fmt: skip
    record.metrics = {"psnr": math.inf, "ssim": 1.0, "mse": 0.0, "label_accuracy": None}
    store.add(record)
    store.finish_trial(0, "complete")
    store.set_plots([{"path": "accuracy.png", "title": "test accuracy per round"}])
    store.add_wall_seconds(1.5)
    store.close("complete")
    return store


def test_a_results_file_round_trips_through_the_models_unchanged(tmp_path: Path) -> None:
    store = a_run(tmp_path)
    text = (tmp_path / "results.json").read_text(encoding="utf-8")
    raw = json.loads(text)
    assert raw["schema_version"] == SCHEMA_VERSION
    assert raw["trials"][0]["accuracy"] == {"0": 0.1, "1": 0.5}
    assert raw["records"][0]["diagnostics"]["loss_curve"] == [1.0, "nan", "inf"]
    assert "rel_perceptual_l1" not in raw["records"][0]["images"][0]  # never set: absent
    results = read_results(tmp_path)
    assert results_json(results) == text
    assert results.trials[0].accuracy == {0: 0.1, 1: 0.5}
    assert results.records[0].images[0].psnr == math.inf
    assert raw["trials"][0]["defences"]["1"] == {
        "clients": {"0": {"epsilon": "inf"}},
        "aggregate": {"1": {"delta": 1e-5}},
    }
    assert results.trials[0].defences[1].clients == {0: {"epsilon": math.inf}}
    assert results.records[0].defence_measurements == {0: {"noise_std": 0.5, "epsilon": math.inf}}
    assert results.completed == store.completed == {0}


def flat(measured: dict[str, dict[str, object]]) -> dict[str, object]:
    """Version 1's names of nested measurements: ``defence<i>.<name>``."""
    return {f"defence{i}.{k}": v for i, values in measured.items() for k, v in values.items()}


@pytest.mark.parametrize("version", [None, 1])
def test_a_version_1_file_reads_in_the_newest_shape_and_keeps_its_keys(
    tmp_path: Path, version: int | None
) -> None:
    a_run(tmp_path)
    raw = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    # fedsim 0.1 wrote no schema_version, client_noise, environment, plots, client_sent,
    # model_start; version 1 named the measurements flat.
    newest = {k: v for k, v in raw.items() if k not in ("client_noise", "environment", "plots")}
    newest["trials"] = [
        {k: v for k, v in t.items() if k not in ("client_sent", "model_start")}
        for t in raw["trials"]
    ]
    older = {k: v for k, v in newest.items() if k != "schema_version"}
    if version is not None:
        older["schema_version"] = version
    older["trials"] = [
        {**t, "defences": {r: {side: flat(m) for side, m in sides.items()}
                           for r, sides in t["defences"].items()}}
        for t in newest["trials"]
    ]  # fmt: skip
    older["records"] = [
        {**r, "defence_measurements": flat(r["defence_measurements"])} for r in raw["records"]
    ]
    assert older["records"][0]["defence_measurements"] == {
        "defence0.noise_std": 0.5, "defence0.epsilon": "inf"
    }  # fmt: skip
    results = parse_results(older)
    assert results.schema_version == SCHEMA_VERSION
    assert results.client_noise is None and results.trials[0].client_sent is None
    assert results.trials[0].defences[1].aggregate == {1: {"delta": 1e-5}}
    assert results.records[0].defence_measurements == {0: {"noise_std": 0.5, "epsilon": math.inf}}
    assert json.loads(results_json(results)) == newest


def test_a_version_1_measurement_of_another_name_is_refused_in_one_line(tmp_path: Path) -> None:
    a_run(tmp_path)
    raw = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    raw["schema_version"] = 1
    raw["records"][0]["defence_measurements"] = {"noise_std": 0.5}
    with pytest.raises(ResultsFileError, match=r"^records\.0\.defence_measurements\.noise_std"):
        parse_results(raw)


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 99])
def test_a_newer_schema_version_is_refused_in_one_line(tmp_path: Path, version: int) -> None:
    a_run(tmp_path)
    raw = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    raw["schema_version"] = version
    with pytest.raises(ResultsFileError) as refused:
        parse_results(raw)
    (line,) = str(refused.value).splitlines()
    assert f"has schema_version {version}, newer than this fedsim reads ({SCHEMA_VERSION})" in line


def test_the_report_of_a_newer_schema_version_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_run(tmp_path)
    raw = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    newer = SCHEMA_VERSION + 1
    (tmp_path / "results.json").write_text(json.dumps({**raw, "schema_version": newer}), "utf-8")
    assert main(["report", str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f"fedsim: {tmp_path}: results.json has schema_version {newer}, newer than this fedsim "
        f"reads ({SCHEMA_VERSION}): upgrade fedsim to read it"
    )
    assert not (tmp_path / "report.html").exists()


def test_a_malformed_file_names_where_in_one_line() -> None:
    with pytest.raises(ResultsFileError, match=r"^trials: Field required$"):
        parse_results({"records": []})
    with pytest.raises(ResultsFileError, match="not a JSON object"):
        parse_results([])
