"""Shared test fixtures.

Tests never touch the network: Hugging Face and Flower's telemetry are switched off before
anything imports them (CI sets the same variables; this covers a plain ``pytest`` run).
"""

import os

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """A cache folder shared by the session: pass it as ``cache_dir=`` so tests never write to ~/.cache."""
    return tmp_path_factory.mktemp("fedprune-cache")


@pytest.fixture
def task_identity():
    """Flower's runtime names the run and node of the process; tests that call a handler directly do what it does."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
