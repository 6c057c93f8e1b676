"""The report treats everything in a run directory as untrusted: hostile text is shown as
text (never run), only PNGs inside the run directory are embedded, and what it embeds is
capped. The runs are real (scenario, validation, results store, report) with a stand-in
for Flower, and plugins whose names and parameters carry markup."""

from __future__ import annotations

import base64
import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from browser import render
from fedsim_plugins.dlg import DLG
from fedsim_plugins.gaussian_noise import GaussianNoise, GaussianNoiseParams
from markupsafe import escape
from pydantic import Field
from rich.console import Console

import fedsim.federation.runner as runner
import fedsim.registry as registry
import fedsim.report.embed as embed
from fedsim.cli import main
from fedsim.federation.observer import run_attack
from fedsim.metrics import score_batch
from fedsim.registry import instantiate_attack
from fedsim.results.images import save_png
from fedsim.results.schema import FailedClient, ImageResult
from fedsim.results.store import Record, ResultsStore, read_results
from fedsim.run import run_scenario
from fedsim.scenario import Trial

# Each payload, if the page ran it, would rename the document: the title names the culprit.
# (No double quotes: the scenario's text shows them escaped as TOML and JSON strings.)
NAME = "</title><script>document.title='XSS by the name'</script>"
DESCRIPTION = "<img src=x alt=XSS-by-the-description onerror=document.title=alt>"
ATTACK = "<svg id=XSS-by-the-attack-name onload=document.title=id>"
DEFENCE = "<img src=y alt=XSS-by-the-defence-name onerror=document.title=alt>"
PARAMETER = "</pre><script>document.title='XSS by a parameter'</script>"
ERROR_CLASS = "<img src=z alt=XSS-by-a-class-name onerror=document.title=alt>Error"
CLIENT_ERROR = "<script>document.title='XSS by a client error'</script>"
HOSTILE = (NAME, DESCRIPTION, ATTACK, DEFENCE, PARAMETER, ERROR_CLASS, CLIENT_ERROR)
BATCH = 2


def toml_string(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid TOML basic string


def scenario_text(description: str = DESCRIPTION, name: str = NAME) -> str:
    return f"""\
name = {toml_string(name)}
description = {toml_string(description)}
[data]
dataset = "digits"
image_size = 8
max_samples = 100
[model]
name = "convnet"
layers = [[3, 4, 2]]
activation = "tanh"
[federation]
num_clients = 2
clients_per_round = 2
rounds = 1
batch_size = {BATCH}
[[attacks]]
name = "dlg"
position = "server"
[[attacks]]
name = {toml_string(ATTACK)}
position = "server"
[[defences]]
name = {toml_string(DEFENCE)}
note = {toml_string(PARAMETER)}
"""


class HostileError(RuntimeError):
    pass


HostileError.__name__ = ERROR_CLASS


class HostileAttack(DLG):
    """DLG whose every run fails with an exception class named with markup."""

    def supports(self, model: torch.nn.Module) -> str | None:
        raise HostileError("the attack broke")


HostileAttack.__name__ = HostileAttack.__qualname__ = ATTACK


class NoteParams(GaussianNoiseParams):
    note: str = Field("", description="free text, shown in the report")


class NotedNoise(GaussianNoise):
    Params = NoteParams


NotedNoise.__name__ = NotedNoise.__qualname__ = DEFENCE


def install_hostile_plugins(patch: pytest.MonkeyPatch) -> None:
    """The installed plugins plus the two hostile ones."""
    found = registry.discover()
    plugins = dataclasses.replace(
        found,
        attacks={**found.attacks, ATTACK: HostileAttack},
        defences={**found.defences, DEFENCE: NotedNoise},
    )
    patch.setattr(registry, "discover", lambda: plugins)


def fake_federation(
    trial: Trial, store: ResultsStore, run_dir: Path, progress: Any, *_: object
) -> None:
    """A federation's results: one round's accuracy, a failed client, and each attack run
    on a stand-in upload; ``dlg`` "rebuilds" a noisy copy of two digits (scored and
    saved as PNGs as the round attacker does), the hostile attack raises."""
    store.set_accuracy(trial.index, 1, 0.5)
    store.add_client_failures(
        trial.index, [FailedClient(round=1, client=1, kind="error", error=CLIENT_ERROR)]
    )
    generator = torch.Generator().manual_seed(0)
    originals = torch.rand((BATCH, 1, 8, 8), generator=generator)
    labels = torch.arange(BATCH)
    for index, config in enumerate(trial.scenario.attacks):
        attack = instantiate_attack(config.name, config.params)
        upload = SimpleNamespace(batch_size=BATCH, model=lambda: None)
        result = (
            run_attack(attack, upload)  # type: ignore[arg-type]
            if config.name == ATTACK
            else SimpleNamespace(status="ok", reason="")
        )
        record = Record(
            trial=trial.index,
            point=trial.point,
            round=1,
            client=0,
            position=config.position,
            attack=config.name,
            attack_index=index,
            update_kind="gradient",
            status=result.status,
            reason=result.reason,
            attack_seconds=0.1,
        )
        if result.status == "ok":
            guesses = (originals + 0.1 * torch.randn(originals.shape, generator=generator)).clamp(
                0, 1
            )
            (run_dir / "images").mkdir(exist_ok=True)
            for k, score in enumerate(score_batch(originals, labels, guesses, labels)):
                stem = f"images/a{index}_{k}"
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
            record.metrics = {"psnr": 20.0, "ssim": 0.5, "mse": 0.01, "label_accuracy": 1.0}
        store.add(record)


def make_run(folder: Path, text: str) -> Path:
    """``fedsim run`` of the scenario ``text`` (with the hostile plugins) in ``folder``."""
    source = folder / "scenario.toml"
    source.write_text(text, encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        install_hostile_plugins(patch)
        patch.setattr(runner, "run_trial", fake_federation)
        run_dir, status = run_scenario(source, [], folder / "run", Console(quiet=True))
    assert status == "complete"
    return run_dir


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("hostile"), scenario_text())


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the run at ``tmp_path/a/run`` (so ``../../`` leaves it for ``tmp_path``)."""
    copy = tmp_path / "a" / "run"
    shutil.copytree(run_dir, copy)
    return copy


def test_hostile_text_is_shown_as_text_and_never_runs(hostile_run: Path) -> None:
    page = (hostile_run / "report.html").read_text(encoding="utf-8")
    results = read_results(hostile_run)
    failed = next(r for r in results.records if r.status != "ok")
    assert failed.reason == f"{ERROR_CLASS}: the attack broke"  # the plugin's class name
    assert "<script" not in page and "<img src=x" not in page
    # The page forbids every script itself, too (the browser check below takes that out).
    assert (
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'\">"
    ) in page
    rendered = render(hostile_run / "report.html")
    assert rendered.title == f"fedsim report: {NAME}"
    assert rendered.errors == [] and rendered.broken == []
    plots = [p for p in results.plots or [] if p.path != "grid.png"]
    assert rendered.images == 2 * BATCH + len(plots)
    for text in HOSTILE:
        assert text in rendered.text, text
    assert f"Defences: {DEFENCE} (note = {PARAMETER})." in rendered.text


def test_images_outside_the_run_directory_or_not_png_are_left_out(
    hostile_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = copy_run(hostile_run, tmp_path)
    secret = tmp_path / "secret.txt"  # a real PNG, but not the run's
    shutil.copy(run_dir / "images" / "a0_0_original.png", secret)
    (run_dir / "images" / "link.png").symlink_to(secret)
    (run_dir / "images" / "notes.png").write_text("private notes", encoding="utf-8")
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    first, second = next(r for r in results["records"] if r["images"])["images"]
    first["original_png"] = "../../secret.txt"
    first["reconstruction_png"] = str(secret)
    second["original_png"] = "images/link.png"
    second["reconstruction_png"] = "images/notes.png"
    (run_dir / "results.json").write_text(json.dumps(results), encoding="utf-8")

    assert main(["report", str(run_dir)]) == 0
    assert capsys.readouterr().err == ""
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert base64.b64encode(secret.read_bytes()).decode() not in page
    assert base64.b64encode(b"private notes").decode() not in page
    notes = [
        "../../secret.txt is outside the run directory",
        f"{secret} is outside the run directory",
        "images/link.png is outside the run directory",
        "images/notes.png is not a PNG image",
    ]
    for note in notes:
        assert f'<span class="missing">not embedded: {note}</span>' in page
    assert f"<b>image not embedded</b>: 4×: {'; '.join(notes)}</li>" in page
    assert "Problems (3)" in page  # the failed attack, the failed client, these images
    assert 'alt="original' not in page and 'alt="reconstruction' not in page


def test_run_files_linked_from_outside_are_refused(
    hostile_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = copy_run(hostile_run, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("password = hunter2", encoding="utf-8")
    (run_dir / "scenario.toml").unlink()
    (run_dir / "scenario.toml").symlink_to(secret)
    assert main(["report", str(run_dir)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"fedsim: {run_dir}: scenario.toml links to a file outside the run directory"
    ]


def test_a_large_scenario_makes_a_small_report(tmp_path: Path) -> None:
    line = "# " + "x" * 98 + "\n"
    huge = "y" * 10_000_000
    text = scenario_text(description=huge, name="n" * 50_000) + line * 200_000  # 30 MB
    run_dir = make_run(tmp_path, text)
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert len(page) < 1_000_000
    assert f"<pre>{escape(text[: embed.MAX_TEXT_CHARS])}</pre>" in page
    assert (
        f"truncated: the first {embed.MAX_TEXT_CHARS:,} of {len(text):,} characters are "
        "shown; the whole text is in scenario.toml in the run directory."
    ) in page
    assert 'scenario.toml) <span class="problem">(truncated)</span></summary>' in page
    assert "the whole text is in scenario.resolved.json in the run directory" in page
    cut = f"{'n' * embed.MAX_VALUE_CHARS}… [truncated: 48,000 more characters]"
    assert f"<title>fedsim report: {cut}</title>" in page


def test_embedded_files_stop_at_the_page_budget(
    hostile_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = copy_run(hostile_run, tmp_path)
    first = [
        "images/a0_0_original.png",
        "images/a0_0_reconstruction.png",
        "images/a0_1_original.png",
    ]
    room = sum(len(uri(run_dir / name)) for name in first)
    monkeypatch.setattr(embed, "MAX_EMBEDDED_CHARS", room)  # the first three images
    assert main(["report", str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    for name in first:
        assert uri(run_dir / name) in page
    assert page.count("<img ") == len(first)
    spent = f"the report's {room / 1e6:g} MB for embedded files are spent"
    for name in ("images/a0_1_reconstruction.png", "accuracy.png"):
        assert f'<span class="missing">{escape(f"not embedded: {name}: {spent}")}</span>' in page
    assert page.count("<pre></pre>") == 2  # nothing left for the scenario's texts
    assert "truncated: the first 0 of " in page


def uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (lambda r: r["records"][0].pop("attack"), "records.0.attack: Field required"),
        (
            lambda r: r["records"][0]["images"][0].update(original_png=7),
            "records.0.images.0.original_png: Input should be a valid string",
        ),
        (lambda r: r["trials"].__setitem__(0, "a string"), "trials.0: Input should be"),
    ],
    ids=["missing-key", "path-not-a-string", "trial-not-a-table"],
)
def test_a_malformed_results_file_is_one_line(
    hostile_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: Any,
    complaint: str,
) -> None:
    run_dir = copy_run(hostile_run, tmp_path)
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    change(results)
    (run_dir / "results.json").write_text(json.dumps(results), encoding="utf-8")
    assert main(["report", str(run_dir)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"fedsim: {run_dir}: results.json is not a fedsim results file (")
    assert complaint in line
