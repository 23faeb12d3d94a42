from __future__ import annotations

import pytest

from jobbatch.cli import build_parser, config_from_args, main
from jobbatch.config import OperatorConfig


def test_help_lists_run(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "run" in capsys.readouterr().out


def test_run_flags_build_config() -> None:
    args = build_parser().parse_args(
        ["run", "-n", "a", "-n", "b", "--max-running-shards", "50", "--log-level", "debug"]
    )
    config = config_from_args(args)
    assert config == OperatorConfig(namespaces=("a", "b"), max_running_shards=50, log_level="DEBUG")
    assert not config.clusterwide


def test_env_supplies_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBBATCH_NAMESPACES", "x,y")
    monkeypatch.setenv("JOBBATCH_MAX_RUNNING_SHARDS", "7")
    config = config_from_args(build_parser().parse_args(["run"]))
    assert config.namespaces == ("x", "y")
    assert config.max_running_shards == 7


def test_no_namespaces_means_clusterwide() -> None:
    assert OperatorConfig().clusterwide


def test_negative_cap_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--max-running-shards", "-1"])
    assert exc.value.code == 2
    assert "max_running_shards must be >= 0" in capsys.readouterr().err


def test_leader_election_flags() -> None:
    args = build_parser().parse_args(
        ["run", "--leader-elect", "--leader-election-namespace", "ops", "--lease-duration", "9"]
    )
    config = config_from_args(args)
    assert config.leader_election
    assert (config.leader_election_namespace, config.leader_election_lease) == ("ops", "jobbatch-operator")
    assert config.lease_duration_seconds == 9


def test_leader_election_is_off_by_default() -> None:
    assert not config_from_args(build_parser().parse_args(["run"])).leader_election


def test_new_run_flags() -> None:
    args = build_parser().parse_args(
        ["run", "--metrics-bind-address", "127.0.0.1", "--payload-validation-timeout", "5"]
    )
    config = config_from_args(args)
    assert (config.metrics_bind_address, config.payload_validation_timeout) == ("127.0.0.1", 5.0)
    with pytest.raises(ValueError, match="payload_validation_timeout"):
        OperatorConfig(payload_validation_timeout=0)


def test_cleanup_lists_unless_told_yes() -> None:
    args = build_parser().parse_args(["cleanup", "-n", "a"])
    assert (args.namespaces, args.yes) == (["a"], False)
    assert build_parser().parse_args(["cleanup", "--yes"]).yes
