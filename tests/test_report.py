"""The HTML report of a large sweep (10 points × 5 attacks × 8 images), built by the real
run loop, results store and PNG writer with a stand-in for Flower, then opened in
headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from browser import render, screenshot
from markupsafe import escape
from rich.console import Console
from run_helpers import run_faked

import fedsim.federation.runner as runner
import fedsim.report
from fedsim.cli import main
from fedsim.metrics import score_batch
from fedsim.report.leakage import format_psnr
from fedsim.results.images import save_png
from fedsim.results.schema import FailedClient, ImageResult, RunResults
from fedsim.results.store import Record, ResultsStore, read_results
from fedsim.run import run_scenario
from fedsim.scenario import Trial
from fedsim.trial_inputs import federated_data

SIGMAS = [0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
ATTACKS = [
    ("dlg", "server"),
    ("idlg", "server"),
    ("wdlg", "server"),
    ("inverting_gradients", "server"),
    ("dlg", "participant"),
]
BATCH = 8
SCENARIO = f"""\
name = "big_sweep"
[data]
dataset = "digits"
image_size = 16
max_samples = 200
[model]
name = "convnet"
layers = [[3, 4, 2]]
activation = "tanh"
[federation]
num_clients = 2
clients_per_round = 2
rounds = 2
batch_size = {BATCH}
{"".join(f'[[attacks]]{chr(10)}name = "{a}"{chr(10)}position = "{p}"{chr(10)}' for a, p in ATTACKS)}
[[defences]]
name = "gaussian_noise"
sigma = {SIGMAS}
"""
FAILED_POINT = 7  # its federation raises after the attacks
FAILURES = {
    (3, 2): ("failed", "objective became non-finite at step 12"),
    (5, 1): ("unsupported", "unsupported layer 'pool' (MaxPool2d): pooling"),
}
CLIENT_ERROR = "ClientAppException: MemoryError"
CLIENT_TIMEOUT = "no reply within 30 s (federation.round_timeout)"
CRASH = "RuntimeError: Ray worker died"


def fake_federation(
    trial: Trial, store: ResultsStore, run_dir: Path, progress: Any, *_: object
) -> None:
    """What a federation writes: accuracy per round, one client failure, and per attack
    the real batch of client 0 with a noisy copy as its reconstruction, scored and saved
    as PNGs exactly as the round attacker does."""
    sigma = trial.scenario.defences[0].params["sigma"]
    for server_round in (0, 1, 2):
        store.set_accuracy(trial.index, server_round, 0.1 + 0.3 * server_round / (1 + sigma))
    if trial.index == 2:
        store.add_client_failures(
            trial.index,
            [
                FailedClient(round=2, client=1, kind="error", error=CLIENT_ERROR),
                FailedClient(round=2, client=0, kind="timeout", error=CLIENT_TIMEOUT),
            ],
        )
    originals, labels = federated_data(trial.scenario).shards[0].batch(torch.arange(BATCH))
    generator = torch.Generator().manual_seed(trial.index)
    for index, (attack, position) in enumerate(ATTACKS):
        status, reason = FAILURES.get((trial.index, index), ("ok", ""))
        record = Record(
            trial=trial.index,
            point=trial.point,
            round=1,
            client=0 if position == "server" else None,
            position=position,
            attack=attack,
            attack_index=index,
            update_kind="gradient",
            status=status,
            reason=reason,
            attack_seconds=1.5,
        )
        if status == "ok":
            noise = (sigma + 0.01 * index) * torch.randn(originals.shape, generator=generator)
            guesses = (originals + noise).clamp(0, 1)
            for k, score in enumerate(score_batch(originals, labels, guesses, labels)):
                stem = f"images/t{trial.index}_a{index}_{k}"
                (run_dir / "images").mkdir(exist_ok=True)
                save_png(originals[score.original_index], run_dir / f"{stem}_original.png")
                save_png(guesses[k], run_dir / f"{stem}_reconstruction.png")
                record.images.append(
                    ImageResult.model_validate(
                        {
                            **score.as_dict(),
                            "original_png": f"{stem}_original.png",
                            "reconstruction_png": f"{stem}_reconstruction.png",
                        }
                    )
                )
            record.metrics = {
                "psnr": sum(i.psnr for i in record.images) / BATCH,
                "ssim": sum(i.ssim for i in record.images) / BATCH,
                "mse": sum(i.mse for i in record.images) / BATCH,
                "label_accuracy": 1.0,
                "success": 0.0,
            }
        store.add(record)
    if trial.index == FAILED_POINT:
        raise RuntimeError("Ray worker died")


@pytest.fixture(scope="module")
def big_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir, status = run_faked(tmp_path_factory.mktemp("big"), SCENARIO, fake_federation)
    assert status == "partial"
    return run_dir


def results_of(run_dir: Path) -> RunResults:
    return read_results(run_dir)


def test_every_reconstruction_is_on_the_page_with_its_scores(big_run: Path) -> None:
    page = (big_run / "report.html").read_text(encoding="utf-8")
    results = results_of(big_run)
    images = [im for r in results.records for im in r.images]
    assert len(images) == 10 * 5 * BATCH - 2 * BATCH  # two records failed
    # every original and reconstruction embedded, once in the gallery
    assert page.count('alt="reconstruction ') == len(images)
    assert page.count('alt="original ') == len(images)
    for im in images[:: BATCH * 3]:
        assert f"{format_psnr(im.psnr)}</b> · SSIM {im.ssim:.3f}" in page
    # one collapsible section per point; only the first opened, so the page stays short
    assert page.count('<details class="point" open>') == 1
    assert page.count('<details class="point"') == len(SIGMAS)
    # self-contained: no script, no stylesheet or image fetched from anywhere
    assert "<script" not in page and "<link" not in page
    assert not re.search(r'src="(?!data:)', page)


def test_failures_are_listed_with_their_reasons(big_run: Path) -> None:
    page = (big_run / "report.html").read_text(encoding="utf-8")
    problems = page[page.index('id="problems"') : page.index('id="reading"')]
    assert "Problems (6)" in problems
    assert "run partial" in problems
    assert f"point {FAILED_POINT + 1} (sigma=0.2) failed</b>: {CRASH}" in problems
    for (point, attack), (status, reason) in FAILURES.items():
        name, position = ATTACKS[attack]
        assert f"{name} ({position}) {status}</b>: {escape(reason)}" in problems
        assert f"point {point + 1} (sigma={SIGMAS[point]}), round 1, client 0" in problems
    assert f"client failed</b>: {CLIENT_ERROR} — " in problems
    assert f"client timed out</b>: {CLIENT_TIMEOUT} — " in problems
    assert "point 3 (sigma=0.005), round 2, client 1" in problems


def test_report_rebuilds_from_the_run_directory(
    big_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    written = (big_run / "report.html").read_text(encoding="utf-8")
    (big_run / "report.html").unlink()
    assert main(["report", str(big_run)]) == 0
    assert (big_run / "report.html").read_text(encoding="utf-8") == written
    assert main(["report", str(big_run / "missing")]) == 2
    assert main(["report", str(big_run / "images")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"fedsim: {big_run / 'missing'}: no such run directory",
        f"fedsim: {big_run / 'images'}: not a fedsim run directory (no results.json)",
    ]


def test_a_report_that_fails_never_loses_the_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "small.toml"
    source.write_text(SCENARIO.replace(str(SIGMAS), "[0.0]"), encoding="utf-8")

    def broken(run_dir: Path) -> Path:
        raise KeyError("psnr")

    monkeypatch.setattr(runner, "run_trial", fake_federation)
    monkeypatch.setattr(fedsim.report, "write_report", broken)
    console = Console(record=True, width=300)
    run_dir, status = run_scenario(source, [], tmp_path / "run", console)
    assert status == "complete" and not (run_dir / "report.html").exists()
    assert len(results_of(run_dir).records) == len(ATTACKS)
    assert (
        "warning: report.html not written (KeyError: 'psnr'); the results are saved; "
        f"retry with: fedsim report {run_dir}"
    ) in console.export_text()


def test_page_renders_in_chromium(big_run: Path, tmp_path: Path) -> None:
    rendered = render(big_run / "report.html")
    assert rendered.errors == []
    assert rendered.broken == []
    plots = len(results_of(big_run).plots or []) - 1  # grid.png is not repeated
    strip = len(ATTACKS) * (1 + len(SIGMAS)) - len(FAILURES)  # a failed attack has no image
    assert rendered.images == 2 * (10 * 5 - 2) * BATCH + strip + plots
    shot = screenshot(big_run / "report.html", tmp_path / "page.png")
    assert shot.shape[1] == 1280 and shot.std() > 20


def test_the_browser_check_sees_a_broken_page(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text(
        '<html><head></head><body><img src="gone.png" alt="gone">'
        "<script>undefined_function()</script></body></html>",
        encoding="utf-8",
    )
    rendered = render(page)
    assert rendered.images == 1 and rendered.broken == ["gone"]
    assert any("undefined_function" in e for e in rendered.errors)


def test_audit_table_and_advice_are_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "audited.toml"
    audited = SCENARIO.replace(str(SIGMAS), "[0.0]").replace(
        "[federation]", "[audit]\n[federation]"
    )
    source.write_text(audited, encoding="utf-8")
    monkeypatch.setattr(runner, "run_trial", fake_federation)
    run_dir, _ = run_scenario(source, [], tmp_path / "run", Console(quiet=True))
    (audit,) = results_of(run_dir).audit or []
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    section = page[page.index('id="audit"') : page.index('id="leakage"')]
    assert f'c(M) = <b class="big">{audit.c_m:.1f}</b>' in section
    (layer,) = audit.layers
    assert f"<td>{layer.index} {layer.name}: {layer.conv}</td>" in section
    assert f"<td>{layer.rank}</td>" in section
    for line in audit.advice:
        assert f"<li>{escape(line)}</li>" in section


def test_what_clients_sent_and_where_their_noise_came_from(big_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(big_run, run_dir)
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    older = {k: v for k, v in results.items() if k != "client_noise"}  # an older fedsim's
    older["trials"] = [
        {k: v for k, v in t.items() if k != "client_sent"} for t in results["trials"]
    ]
    (run_dir / "results.json").write_text(json.dumps(older), encoding="utf-8")
    assert main(["report", str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "<dt>client noise</dt>" not in page and "<dt>what clients sent</dt>" not in page
    results["client_noise"] = "os-entropy"
    for trial in results["trials"]:
        trial["client_sent"] = ["num-examples", "update"]
    (run_dir / "results.json").write_text(json.dumps(results), encoding="utf-8")
    assert main(["report", str(run_dir)]) == 0
    facts = (run_dir / "report.html").read_text(encoding="utf-8").split('id="run"')[1]
    assert (
        "<dt>client noise</dt><dd>from the operating system&#39;s entropy (a deployment): "
        "the server cannot know the clients&#39; DP noise</dd>"
    ) in facts
    assert "<dt>what clients sent</dt><dd>num-examples, update</dd>" in facts

    results["client_noise"] = "seeded"
    results["trials"][1]["client_sent"] = ["defence0.epsilon", "num-examples", "update"]
    (run_dir / "results.json").write_text(json.dumps(results), encoding="utf-8")
    assert main(["report", str(run_dir)]) == 0
    facts = (run_dir / "report.html").read_text(encoding="utf-8").split('id="run"')[1]
    assert "<dt>client noise</dt><dd>seeded (a simulation): the clients&#39; DP noise is " in facts
    sent = "; ".join(
        f"point {i + 1}: {'defence0.epsilon, ' if i == 1 else ''}num-examples, update"
        for i in range(len(SIGMAS))
    )
    assert f"<dt>what clients sent</dt><dd>{sent}</dd>" in facts
