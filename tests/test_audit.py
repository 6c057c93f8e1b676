"""The c(M) audit: COPA's Table 1, refusals naming the layer, the CLI and the [audit] section."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from analytic_helpers import UNSUPPORTED, Rectified

from fedsim.analytic import rank
from fedsim.analytic.chain import UnsupportedModel
from fedsim.analytic.conv import ConvGeometry, ConvOperator
from fedsim.analytic.rank import RankError, dense_rank, structured_rank
from fedsim.audit.cm import audit_model
from fedsim.cli import main
from fedsim.models.zoo import build_model

TABLE_1 = {"cnn3-1": -2267, "cnn3-2": -1995, "cnn3-3": 0, "cnn3-4": -2146}
"""c(M) of COPA's Table 1 (variant 1's exact value is −2266.5)."""


@pytest.mark.slow
@pytest.mark.parametrize(("preset", "expected"), TABLE_1.items())
def test_cm_of_the_cnn3_variants_matches_table_1(preset: str, expected: int) -> None:
    model = build_model(
        "convnet", input_shape=(3, 32, 32), num_classes=10, preset=preset, activation="tanh"
    )
    sample = (
        torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)),
        torch.tensor([3]),
    )
    report = audit_model(model, (3, 32, 32), sample, "noise")

    assert abs(report.c_m - expected) <= 0.5
    assert [a.rank for a in report.layers] == [a.count for a in report.layers]
    assert report.warnings == []


@pytest.mark.parametrize(("model", "message"), UNSUPPORTED)
def test_audit_refuses_models_outside_the_chain(model, message: str) -> None:
    sample = (torch.rand(1, 3, 8, 8), torch.tensor([0]))
    with pytest.raises(UnsupportedModel) as error:
        audit_model(model(), (3, 8, 8), sample, "noise")
    assert message in str(error.value)


def test_audit_of_a_relu_model_notes_the_non_invertible_activation() -> None:
    report = audit_model(
        Rectified(), (3, 8, 8), (torch.rand(1, 3, 8, 8), torch.tensor([0])), "noise"
    )

    assert any("relu" in note and "not invertible" in note for note in report.notes)


def write(tmp_path: Path, body: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


TINY = """
    [data]
    dataset = "photos"
    image_size = 12
    samples_per_class = 2
    [model]
    name = "convnet"
    layers = [[3, 4, 1], [3, 2, 2]]
    activation = "tanh"
    [federation]
    num_clients = 2
"""


def test_fedsim_audit_prints_the_table_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, TINY)
    assert main(["audit", str(path)]) == 0
    text = capsys.readouterr().out
    assert "c(M) =" in text and "tolerance:" in text and "layer 2 (structured" in text

    assert main(["audit", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"c_m", "layers", "tolerance", "advice", "sample"} <= set(report)
    assert [layer["n"] for layer in report["layers"]] == [3 * 12 * 12, 4 * 10 * 10]
    assert report["c_m"] == sum(layer["contribution"] for layer in report["layers"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[audit]\nmethod = "fast"\n', "audit.method"),
        ("[audit]\nrank = 3\n", "audit.rank: unknown key"),
    ],
)
def test_audit_section_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, message: str
) -> None:
    path = write(tmp_path, TINY + extra)
    assert main(["audit", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_run_with_audit_of_an_unsupported_model_exits_2_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pooled_models.py").write_text(
        "from analytic_helpers import Pooled\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    path = write(
        tmp_path,
        TINY.replace(
            'name = "convnet"\n    layers = [[3, 4, 1], [3, 2, 2]]\n    activation = "tanh"',
            'name = "pooled_models:Pooled"\n    kwargs = {}',
        ).replace("image_size = 12", "image_size = 8")
        + "[audit]\n",
    )
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                str(path),
                "--out",
                str(out),
                "--set",
                "data.classes=['chelsea', 'rocket']",
                "--set",
                "data.test_fraction=0.5",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "audit: unsupported layer 'pool' (MaxPool2d): pooling" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ('name = "no_such_module_fedsim:Net"', "cannot import module 'no_such_module_fedsim'"),
        ('name = "this:Foo"', "the source of module 'this' defines no 'Foo'"),
        (
            'name = "torch.nn:Flatten"\n    kwargs = {width = 3}',
            "model 'torch.nn:Flatten' cannot be built with kwargs {'width': 3}: TypeError: ",
        ),
    ],
    ids=["missing module", "missing name", "bad kwargs"],
)
def test_audit_of_a_model_that_cannot_be_built_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str, message: str
) -> None:
    path = write(
        tmp_path,
        TINY.replace(
            'name = "convnet"\n    layers = [[3, 4, 1], [3, 2, 2]]\n    activation = "tanh"', model
        ),
    )

    assert main(["audit", str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fedsim: {path}: model: ")
    assert message in lines[0]


def test_audit_refuses_a_dense_rank_over_the_memory_budget_before_allocating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 3×256×256 input: the dense U of its first layer (and the 196,608² identity that
    builds it) would need hundreds of GiB; the audit says so at once instead of running
    out of memory."""

    def allocate(_op: ConvOperator) -> None:
        raise AssertionError("the dense matrices were allocated")

    monkeypatch.setattr(ConvOperator, "dense", allocate)
    path = write(
        tmp_path,
        TINY.replace("image_size = 12", "image_size = 256").replace(
            "[[3, 4, 1], [3, 2, 2]]", "[[3, 2, 1]]"
        ),
    )

    assert main(["audit", str(path), "--dense"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"fedsim: {path}: model: the dense path for this k3 s1 p0, 3→2 ch layer would need "
        "855.3 GiB, over the memory budget of "
    )


def test_rank_computations_check_their_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    op = ConvOperator(
        ConvGeometry(3, 8, 8, 4, (3, 3)), torch.rand(4, 3, 3, 3, dtype=torch.float64),
        torch.rand(4, 6, 6, dtype=torch.float64),
    )  # fmt: skip
    assert dense_rank(op).rank == structured_rank(op).rank  # within the real budget

    monkeypatch.setattr(rank, "memory_budget", lambda limit=None: 1000)
    with pytest.raises(RankError, match=r"^the dense path for this .* over the memory budget"):
        dense_rank(op)
    with pytest.raises(RankError, match=r"^the eigenproblem of size \d+ for this .* over the"):
        structured_rank(op)
