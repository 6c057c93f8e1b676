"""docker/: what can be checked without Docker. The compose file parses, its services use
files that exist and Flower commands and flags that the installed Flower accepts, its
SuperNodes cover the default scenario's clients, and deploy/ is a valid Flower App."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from flwr.cli.config_utils import load_and_validate
from flwr.cli.flower_config import parse_superlink_connection

from fedsim.scenario import load

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COMPOSE = ROOT / "docker" / "compose.yaml"


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]  # type: ignore[no-any-return]


@cache
def help_text(*command: str) -> str:
    done = subprocess.run(
        [str(BIN / command[0]), *command[1:], "--help"], capture_output=True, text=True, timeout=60
    )
    return done.stdout + done.stderr


def flags(arguments: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in arguments if a.startswith("--")]


def test_every_service_builds_the_fedsim_image_from_files_that_exist(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        build = service["build"]
        dockerfile = (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve()
        assert dockerfile == ROOT / "docker" / "Dockerfile", name
    for line in (ROOT / "docker" / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if line.startswith("COPY "):
            *sources, _ = line.split()[1:]
            assert all((ROOT / source).exists() for source in sources), line


def test_flower_services_use_installed_commands_and_flags(
    services: dict[str, dict[str, Any]],
) -> None:
    expected = {"superlink": "flower-superlink", "serverapp": "flower-superexec"}
    for name, service in services.items():
        if name == "run":
            continue
        (command,) = service["entrypoint"]
        assert command == expected.get(name, "flower-supernode"), name
        usage = help_text(command)
        for flag in flags(service["command"]):
            assert re.search(rf"{flag}\b", usage), f"{name}: {command} has no {flag}"
        assert "--insecure" in service["command"]  # TLS off for local use


def test_supernodes_hold_the_default_scenarios_partitions(
    services: dict[str, dict[str, Any]],
) -> None:
    configs = [
        dict(pair.split("=") for pair in arg.split("=", 1)[1].split())
        for name, service in services.items()
        if name.startswith("supernode-")
        for arg in service["command"]
        if arg.startswith("--node-config=")
    ]
    default = re.search(r"\$\{SCENARIO:-(.+)\}", services["run"]["environment"]["SCENARIO"])
    assert default is not None
    _, trials = load(ROOT / default.group(1))
    clients = trials[0].scenario.federation.num_clients

    assert sorted(int(c["partition-id"]) for c in configs) == list(range(clients))
    assert {c["num-partitions"] for c in configs} == {str(clients)}
    for service in services.values():
        for arg in service.get("command", []):
            if arg.startswith(("--superlink=", "--runtime-api-address=")):
                assert arg.split("=", 1)[1] == "superlink:8000"


def test_run_service_writes_a_valid_connection_and_runs_the_flower_app(
    services: dict[str, dict[str, Any]],
) -> None:
    (script,) = services["run"]["command"]
    printf = re.search(r"printf '([^']*)'", script)
    assert printf is not None
    config = tomllib.loads(printf.group(1).replace("\\n", "\n"))
    connection = parse_superlink_connection(config["superlink"]["docker"], "docker")
    assert (connection.address, connection.insecure) == ("superlink:8000", True)

    words = shlex.split(script.replace("$$", "$"))
    run = words.index("run", words.index("flwr"))
    app = words[run + 1]
    assert (ROOT / app / "pyproject.toml").is_file()
    assert {"--run-config", "--stream"} <= set(flags(words[run:]))
    assert all(flag in help_text("flwr", "run") for flag in flags(words[run:]))
    assert "flwr ls docker" in script and "ls" in help_text("flwr")


def test_deploy_is_a_flower_app_with_fedsims_components() -> None:
    config, _ = load_and_validate(ROOT / "deploy" / "pyproject.toml", check_module=True)
    flwr = config["tool"]["flwr"]["app"]

    assert flwr["components"] == {
        "serverapp": "fedsim.deployment.server:server_app",
        "clientapp": "fedsim.deployment.client:client_app",
    }
    assert set(flwr["config"]) == {"scenario", "run-dir"}
    assert (ROOT / flwr["config"]["scenario"]).is_file()
