"""Plugin discovery with faulty third-party plugins: each is isolated, clashes are flagged.

Each test installs fake distributions as ``*.dist-info`` directories (with an
``entry_points.txt``) on ``sys.path``, so that ``importlib.metadata`` finds them
exactly as it finds installed packages.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fedsim.cli import main
from fedsim.registry import discover, registered_models
from fedsim.run import check_scenario
from fedsim.scenario import ScenarioError, expand

REQUIRED = """
from pydantic import Field
from fedsim.api import Attack, AttackParams, Reconstruction


class SecretParams(AttackParams):
    secret: float = Field(description="has no default")


class NeedsSecret(Attack):
    name = "needs_secret"
    summary = "An attack with a required parameter."
    Params = SecretParams

    def reconstruct(self, observation):
        return Reconstruction.unsupported("test plugin")
"""

Install = Callable[..., None]


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Install]:
    """``install(dist, entry_points, modules, append=False)``: a fake distribution
    ``dist`` declaring ``entry_points`` (``{group: {name: "module:Attr"}}``), with the
    ``modules`` (``{name: source}``) beside it, found first (or last, ``append``) on
    ``sys.path``."""
    modules: list[str] = []

    def install(
        dist: str,
        groups: dict[str, dict[str, str]],
        sources: dict[str, str],
        append: bool = False,
    ) -> None:
        root = tmp_path / dist
        info = root / f"{dist}-0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n", encoding="utf-8"
        )
        (info / "entry_points.txt").write_text(
            "".join(
                f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items())
                for group, eps in groups.items()
            ),
            encoding="utf-8",
        )
        for name, source in sources.items():
            (root / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
            modules.append(name)
        if append:
            monkeypatch.setattr(sys, "path", [*sys.path, str(root)])
        else:
            monkeypatch.syspath_prepend(str(root))
        discover.cache_clear()
        registered_models.cache_clear()

    yield install
    discover.cache_clear()
    registered_models.cache_clear()
    for name in modules:
        sys.modules.pop(name, None)


def test_plugin_with_a_required_parameter_is_listed(
    install: Install, capsys: pytest.CaptureFixture[str]
) -> None:
    install(
        "fakeplug", {"fedsim.attacks": {"needs_secret": "fake_required:NeedsSecret"}},
        {"fake_required": REQUIRED},
    )  # fmt: skip

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "needs_secret" in out
    assert "secret = (required)  has no default" in out
    assert "needs: model" in out  # a class-level answer: no instance (and no secret) needed


def test_plugin_that_exits_on_import_is_isolated(
    install: Install, capsys: pytest.CaptureFixture[str]
) -> None:
    install(
        "fakeplug",
        {"fedsim.attacks": {"quitter": "fake_quitter:Quitter"}},
        {"fake_quitter": "import sys\nsys.exit(0)\n"},
    )

    found = discover()
    assert "dlg" in found.attacks and "quitter" not in found.attacks
    assert found.broken["fedsim.attacks:quitter"] == "SystemExit: 0"
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "could not load plugin fedsim.attacks:quitter: SystemExit: 0" in out
    assert "inverting_gradients" in out  # the other plugins are still listed


@pytest.mark.parametrize("append", [False, True], ids=["third-party first", "built-in first"])
def test_third_party_plugin_cannot_take_a_built_in_name(
    install: Install, capsys: pytest.CaptureFixture[str], append: bool
) -> None:
    install(
        "fakeplug", {"fedsim.attacks": {"dlg": "fake_required:NeedsSecret"}},
        {"fake_required": REQUIRED}, append=append,
    )  # fmt: skip

    found = discover()
    assert found.attacks["dlg"].__module__ == "fedsim_plugins.dlg"
    assert "fake_required" not in sys.modules  # the ignored plugin never ran
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert (
        "plugin name clash fedsim.attacks:dlg: declared by 'fedsim' (built in, used) and by "
        "'fakeplug' (ignored)" in " ".join(out.split())
    )


def test_name_clash_between_third_party_plugins_refuses_the_name(install: Install) -> None:
    for dist in ("plugone", "plugtwo"):
        install(
            dist, {"fedsim.attacks": {"twin": f"{dist}_mod:NeedsSecret"}},
            {f"{dist}_mod": REQUIRED},
        )  # fmt: skip

    assert "twin" not in discover().attacks
    with pytest.raises(ScenarioError) as error:
        expand({"attacks": [{"name": "twin", "secret": 1.0}]}, "s.toml")
    assert str(error.value) == (
        "s.toml: attacks[0].name: attack plugin 'twin' is declared by 'plugone' and 'plugtwo': "
        "none is used; uninstall all but one"
    )


def test_a_scenario_using_a_clashing_name_is_warned(install: Install, tmp_path: Path) -> None:
    install(
        "fakeplug", {"fedsim.attacks": {"dlg": "fake_required:NeedsSecret"}},
        {"fake_required": REQUIRED},
    )  # fmt: skip
    scenario = tmp_path / "s.toml"
    scenario.write_text('[[attacks]]\nname = "dlg"\n[[attacks]]\nname = "idlg"\n', "utf-8")

    checked = check_scenario(scenario, [], "deployment")
    assert checked.clashes == [
        "plugin name 'dlg' is declared by 'fedsim' (built in, used) and by 'fakeplug' (ignored)"
    ]


def test_plugins_lists_the_datasets_and_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for name in ("digits", "photos", "mnist", "cifar10", "imagefolder"):
        assert f"│ {name} " in out
    assert "fedsim.models.zoo:LeNet" in out and "fedsim.models.zoo:ConvNet" in out
