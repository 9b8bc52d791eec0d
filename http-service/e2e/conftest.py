"""Fixtures for the ratewall-server end-to-end tests (see service_harness.py)."""

import shutil

import pytest

from service_harness import Redis, Server


@pytest.fixture
def tmp(tmp_path):
    return tmp_path


@pytest.fixture
def servers(tmp_path):
    """Factory: servers(config_text, env=..., args=...) -> Server; all stopped at teardown."""
    started = []

    def make(config, env=None, args=()):
        s = Server(config, tmp_path, env=env, args=args)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def redis_server():
    r = Redis()
    yield r
    r.stop()
    shutil.rmtree(r.dir, ignore_errors=True)
