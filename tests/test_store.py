"""Which MLflow store a command uses: flag > config > $REDFLOW_TRACKING_URI / $MLFLOW_TRACKING_URI > default,
and reading never creates a store."""
from __future__ import annotations

import pytest

from registry import store
from registry.store import StoreNotFound, resolve_tracking_uri, setup_tracking


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("REDFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return monkeypatch


def test_resolution_order_flag_config_env_default(tmp_path, clean_env):
    runs = tmp_path / "runs"
    default = resolve_tracking_uri(None, runs)
    assert default.uri == f"sqlite:///{(runs / 'mlflow.db').resolve()}" and default.source.startswith("default")

    clean_env.setenv("MLFLOW_TRACKING_URI", "http://team-server:5000")  # what MLflow users export
    assert resolve_tracking_uri(None, runs) == store.TrackingTarget("http://team-server:5000", "$MLFLOW_TRACKING_URI")
    clean_env.setenv("REDFLOW_TRACKING_URI", str(tmp_path / "redflow.db"))
    assert resolve_tracking_uri(None, runs).source == "$REDFLOW_TRACKING_URI"
    config = resolve_tracking_uri(None, runs, config_uri="sqlite:///cfg.db")
    assert (config.uri, config.source) == ("sqlite:///cfg.db", "config tracking_uri")
    flag = resolve_tracking_uri("http://flag:5000", runs, config_uri="sqlite:///cfg.db", source="--tracking-uri")
    assert (flag.uri, flag.source) == ("http://flag:5000", "--tracking-uri")
    assert "from --tracking-uri" in flag.describe()


def test_a_uri_redflow_exported_itself_is_not_taken_for_configuration(tmp_path, clean_env):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; the next command must not inherit the last store."""
    first = setup_tracking(f"sqlite:///{tmp_path}/first.db")
    import os

    assert os.environ["MLFLOW_TRACKING_URI"] == first  # MLflow's own export
    assert resolve_tracking_uri(None, tmp_path / "runs").source.startswith("default")


def test_reading_never_creates_a_store(tmp_path, clean_env):
    elsewhere = tmp_path / "elsewhere"
    with pytest.raises(StoreNotFound, match=r"no MLflow store at .*mlflow\.db.*Fix: pass --tracking-uri"):
        setup_tracking(None, elsewhere / "runs", create=False)
    assert not elsewhere.exists()
    setup_tracking(None, elsewhere / "runs")  # a writer creates it
    assert (elsewhere / "runs" / "mlartifacts").is_dir()
