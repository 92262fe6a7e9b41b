"""Tests for cluster.yaml: Ray's own config validation, token auth, autoscaling GPUs, exposure.

Everything here is offline: Ray's schema check and default merging read files shipped with
Ray; nothing contacts AWS.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"
RAY_SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"


def _load() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _prepared(config: dict[str, Any]) -> dict[str, Any]:
    """The config as `ray up` validates it: merged with Ray's AWS defaults, then checked."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _segments(command: str) -> list[list[str]]:
    """Split one shell command line into the word lists of its `;`/`&&`/`||` parts."""
    return [shlex.split(part) for part in re.split(r";|&&|\|\|", command) if part.strip()]


def _ray_start(command: str) -> tuple[dict[str, str], list[str]] | None:
    """Return (environment set before it, arguments) of the `ray start` in a command, if any."""
    env: dict[str, str] = {}
    for words in _segments(command):
        if words[:1] == ["export"]:
            for word in words[1:]:
                key, _, value = word.partition("=")
                env[key] = value
            continue
        # Inline assignments: `RAY_AUTH_MODE=token ray start ...`.
        inline = {}
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            key, value = words.pop(0).split("=", 1)
            inline[key] = value
        if words[:2] == ["ray", "start"]:
            return {**env, **inline}, words[2:]
    return None


def _option(args: list[str], name: str) -> str | None:
    """The value of `--name=value` or `--name value` in an argument list."""
    for index, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name and index + 1 < len(args):
            return args[index + 1]
    return None


def _start_commands(config: dict[str, Any], key: str) -> list[tuple[dict[str, str], list[str]]]:
    starts = [parsed for cmd in config[key] if (parsed := _ray_start(cmd)) is not None]
    assert starts, f"no `ray start` in {key}"
    return starts


def _worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    head = config["head_node_type"]
    return {k: v for k, v in config["available_node_types"].items() if k != head}


def test_cluster_yaml_matches_rays_schema() -> None:
    schema = json.loads(RAY_SCHEMA.read_text())
    jsonschema.validate(_load(), schema)


def test_cluster_yaml_passes_rays_validation_after_defaults() -> None:
    prepared = _prepared(_load())
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_validation_catches_a_misspelt_key() -> None:
    # Proves the check above can fail: Ray's schema forbids unknown top-level keys.
    config = _load()
    config["max_worker"] = config.pop("max_workers")
    with pytest.raises(jsonschema.ValidationError):
        _prepared(config)


def test_validation_catches_min_workers_above_max_workers() -> None:
    config = _load()
    for node_type in _worker_types(config).values():
        node_type["min_workers"] = config["max_workers"] + 1
    with pytest.raises(ValueError, match="max_workers"):
        _prepared(config)


@pytest.mark.parametrize("key", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_every_ray_start_has_token_auth(key: str) -> None:
    for env, _args in _start_commands(_load(), key):
        assert env.get("RAY_AUTH_MODE") == "token"


def test_token_auth_survives_ray_defaults() -> None:
    # Ray's defaults must not replace the start commands (they start Ray without token auth).
    prepared = _prepared(_load())
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for env, _args in _start_commands(prepared, key):
            assert env.get("RAY_AUTH_MODE") == "token"


def test_token_auth_in_node_shells_and_token_on_every_node() -> None:
    config = _load()
    setup = " ".join(config["setup_commands"])
    assert "export RAY_AUTH_MODE=token" in setup and "~/.bashrc" in setup
    # file_mounts reach the head and every worker; the token file is the shared secret.
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


def test_workers_scale_from_zero_and_bring_gpus() -> None:
    config = _load()
    workers = _worker_types(config)
    assert workers
    for name, node_type in workers.items():
        assert node_type.get("min_workers", 0) == 0, name
        assert node_type.get("max_workers", config["max_workers"]) >= 1, name
    gpu_types = {n: t for n, t in workers.items() if t.get("resources", {}).get("GPU", 0) >= 1}
    assert gpu_types, "no worker type states GPU resources"
    for node_type in gpu_types.values():
        assert re.match(r"(g|p)\d", node_type["node_config"]["InstanceType"])


def test_head_is_a_cpu_node() -> None:
    config = _load()
    head = config["available_node_types"][config["head_node_type"]]
    assert head.get("resources", {}).get("GPU", 0) == 0
    assert not re.match(r"(g|p)\d", head["node_config"]["InstanceType"])


def test_dashboard_listens_on_localhost_only() -> None:
    config = _load()
    for _env, args in _start_commands(config, "head_start_ray_commands"):
        assert _option(args, "--dashboard-host") == "127.0.0.1"
    commands = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert not any("0.0.0.0" in command for command in commands)


def test_security_group_opens_only_ssh() -> None:
    provider = _load()["provider"]
    group = provider["security_group"]
    assert group.get("GroupName")
    # Ray adds SSH (22) from anywhere and intra-cluster traffic; extra rules may only be SSH.
    for rule in group.get("IpPermissions", []):
        assert (rule.get("IpProtocol"), rule.get("FromPort"), rule.get("ToPort")) == (
            "tcp",
            22,
            22,
        ), rule
    # A node type with its own groups would bypass the rules above.
    for name, node_type in _load()["available_node_types"].items():
        node_config = node_type["node_config"]
        assert "SecurityGroupIds" not in node_config, name
        assert "NetworkInterfaces" not in node_config, name


def test_project_is_installed_on_every_node() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = _load()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    prefix = "~/study/"
    mounted = {
        remote.removeprefix(prefix): local
        for remote, local in config["file_mounts"].items()
        if remote.startswith(prefix)
    }
    for name, local in mounted.items():
        assert local == f"./{name}", (name, local)
    # What `pip install ~/study` needs: pyproject.toml, its readme and its packages.
    packages = {
        pattern.rstrip("*.")
        for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    needed = {"pyproject.toml", pyproject["project"]["readme"], *packages}
    assert needed <= set(mounted), needed - set(mounted)
    for name in ("pyproject.toml", *packages):
        assert (REPO / name).exists(), name
    assert any(re.search(r"pip install .*~/study(\s|$)", cmd) for cmd in config["setup_commands"])
    common = " ".join(config["setup_commands"])
    # The cluster's Ray must equal the Ray that runs `ray up` and `ray job submit`.
    assert f"ray[default,tune]=={ray.__version__}" in common
