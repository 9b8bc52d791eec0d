"""The conformance suite: every scenario of tests/conformance/scenarios/ through every packaging
that can express it, on memory and on Redis (single node and a 3-node cluster), against the
decisions and header lines the scenario file expects. See docs/CONFORMANCE.md.

One test per (scenario, driver). The drivers of a scenario run concurrently against one aligned
t0 (the first of its tests runs them all; the others read the results), so the suite costs about
the sum of the scenarios' durations. Processes are started once for the module (runner/rig.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "conformance"))

from runner import drivers as dr  # noqa: E402
from runner import rig as rg  # noqa: E402
from runner.run import run_cross, run_parallel  # noqa: E402
from runner.scenario import load_all  # noqa: E402

pytestmark = pytest.mark.timeout(300)

SCENARIOS = load_all()

# Imported here, on the main thread: importing them first from the drivers' threads deadlocks on
# Python's module locks.
import cpex.framework.manager  # noqa: E402,F401
import grpc  # noqa: E402,F401
import ratewall.engine_py  # noqa: E402,F401
import ratewall.gateway  # noqa: E402,F401


def make_drivers(tmp: Path) -> list[dr.Driver]:
    out: list[dr.Driver] = [
        dr.EngineDriver("memory"),
        dr.EngineDriver("redis"),
        dr.EngineDriver("redis-cluster"),
        dr.PythonEngineDriver(),
    ]
    for engine in ("rust", "python"):
        for backend in ("memory", "redis"):
            out.append(dr.PluginDriver(engine, backend, tmp))
    for backend in ("memory", "redis"):
        out.append(dr.ServiceCheckDriver(backend, None))
        out.append(dr.ServiceAuthzDriver(backend, None))
        out.append(dr.RlsDriver(backend, None))
    out.append(dr.EnvoyDriver("local", "memory"))
    out.append(dr.EnvoyDriver("remote", "redis"))
    return out


DRIVERS = make_drivers(Path("/nonexistent"))  # names and features only, for collection


def cases():
    for sc in SCENARIOS:
        if sc.cross:
            yield pytest.param(sc, None, id=f"{sc.name}-cross")
            continue
        for d in DRIVERS:
            if d.can_run(sc) is None:
                marks = []
                if d.name in sc.xfail:
                    marks.append(pytest.mark.xfail(strict=True, reason=sc.xfail[d.name]))
                yield pytest.param(sc, d.name, id=f"{sc.name}-{d.name}", marks=marks)


class Rig:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs = []
        self.redis = self._own(rg.RedisServer())
        self.cluster = self._own(rg.RedisCluster())
        harness = rg.service_harness()
        assert rg.SERVER_BIN.exists(), f"{rg.SERVER_BIN} missing: cargo build --release -p ratewall-server"
        assert rg.FILTER_WASM.exists(), f"{rg.FILTER_WASM} missing: proxy-wasm-filter/build.sh"
        svc = {label: self._own(dr.ServiceProcess(harness.Server, tmp, label))
               for label in ("check-memory", "authz-memory", "check-redis", "authz-redis", "remote-redis")}
        self.drivers = make_drivers(tmp)
        for d in self.drivers:
            if isinstance(d, (dr.ServiceCheckDriver, dr.RlsDriver)):
                d.proc = svc[f"check-{d.backend}"]
            elif isinstance(d, dr.ServiceAuthzDriver):
                d.proc = svc[f"authz-{d.backend}"]
        self.by_name = {d.name: d for d in self.drivers}
        envoy = rg.envoy_rig()
        local = self.by_name["envoy-local"]
        remote = self.by_name["envoy-remote-redis"]
        remote.service = svc["remote-redis"]
        cfg = lambda d, sc: d.filter_config(sc, dict(sc.policy, redis_key_prefix="x"))  # noqa: E731
        local_ls = {sc.name: cfg(local, sc) for sc in SCENARIOS if local.can_run(sc) is None}
        remote_ls = {sc.name: cfg(remote, sc) for sc in SCENARIOS
                     if remote.can_run(sc) is None or any(s.via == remote.name for s in sc.steps)}
        self.envoys = [self._own(rg.EnvoyProcess(envoy, local_ls, tmp)),
                       self._own(rg.EnvoyProcess(envoy, remote_ls, tmp, clusters=[("ratewall", remote.service.server.port)]))]
        local.ports, remote.ports = self.envoys[0].ports, self.envoys[1].ports
        self.results = {}

    def _own(self, p):
        self.procs.append(p)
        return p

    def stop(self):
        problems = [e.log_problems() for e in self.envoys]
        for p in reversed(self.procs):
            p.stop()
        assert not any(problems), problems

    def run(self, sc):
        if sc.name in self.results:
            return self.results[sc.name]
        doomed = rg.RedisServer() if "redis_down" in sc.features() else None

        def redis_url(d):
            if d.backend == "redis-cluster":
                return self.cluster.url
            return doomed.url if doomed else self.redis.url

        try:
            if sc.cross:
                out = run_cross(sc, self.by_name, redis_url, lambda: doomed.stop())
            else:
                ds = [d for d in self.drivers if d.can_run(sc) is None]
                out = run_parallel(sc, ds, redis_url, lambda: doomed.stop())
        finally:
            if doomed:
                doomed.stop()
        self.results[sc.name] = out
        return out


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = Rig(tmp_path_factory.mktemp("conformance"))
    yield r
    r.stop()


@pytest.mark.parametrize("scenario,driver", list(cases()))
def test_scenario(rig, scenario, driver):
    out = rig.run(scenario)
    res = out if driver is None else out[driver]
    failures = res.failures(rig.by_name)
    assert not failures, f"{scenario.name} through {res.driver} (t0={res.t0}):\n" + "\n".join(failures)


def test_every_scenario_runs_somewhere_and_every_driver_runs_something():
    """No scenario is silently dropped by the feature filter, and every driver is exercised."""
    used = set()
    for sc in SCENARIOS:
        if sc.cross:
            names = {s.via for s in sc.requests}
            assert names <= {d.name for d in DRIVERS}, (sc.name, names)
            used |= names
            continue
        runs = [d.name for d in DRIVERS if d.can_run(sc) is None]
        assert len(runs) >= 2, f"{sc.name} runs through {runs} only"
        used |= set(runs)
    assert used == {d.name for d in DRIVERS}, {d.name for d in DRIVERS} - used


def matrix_rows() -> list[str]:
    rows = ["| scenario | " + " | ".join(d.name for d in DRIVERS) + " |", "|---|" + "---|" * len(DRIVERS)]
    for sc in SCENARIOS:
        if sc.cross:
            via = {s.via for s in sc.requests}
            cells = ["x" if d.name in via else "—" for d in DRIVERS]
        else:
            cells = [("xfail" if d.name in sc.xfail else "x") if d.can_run(sc) is None else "—" for d in DRIVERS]
        rows.append(f"| {sc.name} | " + " | ".join(cells) + " |")
    return rows


def test_the_matrix_in_docs_is_the_suite():
    """docs/CONFORMANCE.md's table is what the suite runs (regenerate it from matrix_rows())."""
    text = (rg.ROOT / "docs" / "CONFORMANCE.md").read_text()
    table = text.split("<!-- matrix:start -->\n", 1)[1].split("<!-- matrix:end -->", 1)[0]
    assert table.strip().splitlines() == matrix_rows(), "\n".join(matrix_rows())
