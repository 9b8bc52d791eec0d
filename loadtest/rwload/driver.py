"""What every locustfile of `loadtest/` shares: targets, the users' schedule, recording every
response with its classification, a progress line, the verdict and the report at the end.

A scenario (one locustfile) builds its rig in `setup(options)` and returns a `Rig`: the targets,
the policy and judging mode of each counter domain, and optional faults. Locust then runs
`LoadUser`s:

* **steady** users (one identity each) make one call to every target per round, in a random
  order, at most one round per `period` seconds: below the limit, so every call must be
  admitted; their calls give the paired latency figures (same user, same round, every target);
* **burst** users share one identity and call back to back, far above the limit, from several
  users at once (concurrent calls on one counter, through every worker and instance);
* every user stops after `rounds` rounds; the run is also bounded by locust's `--run-time`.

The verdict (`verdict.py`) is computed when the run stops; any infrastructure error, any
over- or under-admission fails the run (exit code 1), as does a rig that did not come up.
"""

from __future__ import annotations

import csv
import os
import random
import statistics
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import gevent
from locust import FastHttpUser, events, task
from locust.exception import StopUser

from .classify import Outcome, classify_exception
from .procs import ROOT
from .verdict import Fault, Policy, Rec, judge

STEADY_PREFIX = "steady"
BURST_ID = "burst-0"


@dataclass
class Target:
    """One address under load. `request(identity, n)` -> (method, url, headers, body);
    `classify(status, body)` -> (Outcome, detail); `cells(identity)` -> (user, tenant, tool) as
    the limiter sees that identity."""

    name: str
    domain: str
    request: Callable
    classify: Callable
    cells: Callable
    with_headers: bool = False  # classify(status, body, headers)


@dataclass
class Rig:
    targets: list
    policy_of: dict  # domain -> Policy
    mode_of: dict  # domain -> exact | per_process:N | unlimited | unjudged
    stop: Callable
    baseline: str | None = None  # target the paired latency ratios are against
    faults: list = field(default_factory=list)  # Fault, filled in as they happen
    fault_plan: Callable | None = None  # started in its own greenlet when the load starts
    description: str = ""
    # seconds the limiter's clock may differ from this host's wall clock, per domain (default 2 ms)
    eps_of: dict = field(default_factory=dict)


class Run:
    """The state of one run (module-level singleton: locust loads the locustfile once)."""

    def __init__(self):
        self.rig: Rig | None = None
        self.records: list[Rec] = []
        self.lock = threading.Lock()
        self.out: Path | None = None
        self.started = 0.0
        self.next_user = 0
        self.options = None
        self.scenario = ""
        self.setup_error: str | None = None
        self.verdict = None
        self.users_done = 0
        self.planned_users = 0
        self.latency_until = None  # set from the burst delay once the run starts
        self.burst_delay = 0.0


RUN = Run()


def add_common_arguments(parser, scenario: str) -> None:
    g = parser.add_argument_group(f"ratewall {scenario} scenario")
    g.add_argument("--rw-out", default="", help="folder for the report (default loadtest/out/<scenario>-<time>)")
    g.add_argument("--rw-short", action="store_true", help="the short CI version")
    g.add_argument("--rw-rounds", type=int, default=0, help="rounds per user (0: scenario default)")
    g.add_argument("--rw-burst-users", type=int, default=-1, help="users sharing the burst identity (-1: default)")
    g.add_argument("--rw-period", type=float, default=0.0, help="seconds per steady round (0: scenario default)")
    g.add_argument("--rw-burst-delay", type=float, default=-1,
                   help="seconds before the burst users start (-1: scenario default); the latency table uses the "
                        "steady calls made before it, so every target is measured under the same load")


def register(scenario: str, setup: Callable[[object], Rig]) -> None:
    """Hook a scenario into locust's events."""
    RUN.scenario = scenario

    @events.init.add_listener
    def _init(environment, **_kw):
        opts = environment.parsed_options
        if opts is None:
            return
        RUN.options = opts
        out = Path(opts.rw_out).resolve() if opts.rw_out else \
            ROOT / "loadtest" / "out" / f"{scenario}-{time.strftime('%Y%m%d-%H%M%S')}"
        out.mkdir(parents=True, exist_ok=True)
        RUN.out = out
        if not getattr(opts, "html_file", None):
            opts.html_file = str(out / "report.html")
        RUN.planned_users = opts.num_users or 0
        rig_dir = out / "rig"
        rig_dir.mkdir(exist_ok=True)
        try:
            RUN.rig = setup(opts, rig_dir)
        except BaseException:  # noqa: BLE001 - reported, and the run fails (setup stops what it started)
            RUN.setup_error = traceback.format_exc()
            (out / "SETUP-FAILED.txt").write_text(RUN.setup_error)
            print(f"rig setup failed:\n{RUN.setup_error}", file=sys.stderr, flush=True)
            sys.exit(2)

    @events.test_start.add_listener
    def _start(environment, **_kw):
        RUN.started = time.time()
        if RUN.burst_delay > 0:
            RUN.latency_until = RUN.started + RUN.burst_delay
        gevent.spawn(_progress, environment)
        if RUN.rig is not None and RUN.rig.fault_plan is not None:
            gevent.spawn(_guarded, RUN.rig.fault_plan, RUN)

    @events.test_stop.add_listener
    def _stop(environment, **_kw):
        if RUN.rig is None or RUN.verdict is not None:
            return
        from .report import write_report

        with RUN.lock:
            recs = list(RUN.records)
        RUN.verdict = judge(recs, RUN.rig.policy_of, RUN.rig.mode_of, RUN.rig.faults, RUN.rig.eps_of)
        write_report(RUN, recs, environment)
        if not RUN.verdict.ok:
            environment.process_exit_code = 1

    @events.quitting.add_listener
    def _quit(environment, **_kw):
        if RUN.rig is not None:
            try:
                RUN.rig.stop()
            except Exception:  # noqa: BLE001
                traceback.print_exc()
        if RUN.setup_error:
            environment.process_exit_code = 2
        elif RUN.verdict is None and RUN.rig is not None:
            print("no verdict: the run stopped before its users did", file=sys.stderr)
            environment.process_exit_code = 1


def _guarded(fn, run):
    try:
        fn(run)
    except Exception:  # noqa: BLE001
        traceback.print_exc()


def _progress(environment):
    """One line every 5 s: elapsed, calls per outcome, users; stops the run once every user
    has finished its rounds."""
    last = 0
    while True:
        gevent.sleep(1.0)
        runner = environment.runner
        alive = runner.user_count if runner is not None else 0
        now = time.time()
        if now - last >= 5 or (alive == 0 and RUN.users_done):
            last = now
            with RUN.lock:
                n = len(RUN.records)
                by = {}
                for r in RUN.records:
                    by[r.outcome.value] = by.get(r.outcome.value, 0) + 1
            parts = " ".join(f"{k}={v}" for k, v in sorted(by.items()))
            print(f"[{now - RUN.started:6.1f} s] users {alive:3d}  calls {n:6d}  {parts}", flush=True)
        if runner is not None and alive == 0 and RUN.users_done and RUN.users_done >= RUN.planned_users:
            print("every user finished its rounds", flush=True)
            runner.quit()
            return


def record(target: Target, identity: str, t0: float, t1: float, outcome: Outcome, detail: str, rnd: int) -> None:
    user, tenant, tool = target.cells(identity)
    with RUN.lock:
        RUN.records.append(Rec(target.name, target.domain, user, tenant, tool, t0, t1, outcome, detail, rnd))


def call(client, target: Target, identity: str, n: int, rnd: int) -> Outcome:
    """One request through locust's client, classified and recorded; locust's own statistics
    get it under `<target> <outcome>` (rate-limited is a success there too)."""
    method, url, headers, body = target.request(identity, n)
    t0 = time.time()
    with client.request(method, url, headers=headers, data=body, name=target.name, catch_response=True) as resp:
        t1 = time.time()
        err = getattr(resp, "error", None) or resp.request_meta.get("exception")
        if resp.status_code in (0, None) or (err is not None and not resp.status_code):
            outcome, detail = classify_exception(err), repr(err)[:200]
        else:
            try:
                content = resp.content or b""
            except Exception as e:  # noqa: BLE001 - a broken body is a server error
                content, err = b"", e
            if target.with_headers:
                outcome, detail = target.classify(resp.status_code, content, resp.headers)
            else:
                outcome, detail = target.classify(resp.status_code, content)
        resp.request_meta["name"] = f"{target.name} {outcome.value}"
        if outcome.is_infrastructure_error:
            resp.failure(f"{outcome.value}: {detail}")
        else:
            resp.success()
    record(target, identity, t0, t1, outcome, detail, rnd)
    return outcome


class LoadUser(FastHttpUser):
    """Steady or burst, by the order users are spawned in (the first `burst_users` are burst)."""

    host = "http://127.0.0.1"
    network_timeout = 30.0
    connection_timeout = 10.0
    abstract = True
    # per scenario (set by the locustfile from its defaults and the options)
    rounds = 10
    period = 2.0
    burst_users = 2
    burst_cap = 100_000
    burst_delay = 0.0

    def on_start(self):
        if RUN.rig is None:
            raise StopUser()
        self.index = RUN.next_user
        RUN.next_user += 1
        self.burst = self.index < self.burst_users
        self.identity = BURST_ID if self.burst else f"{STEADY_PREFIX}-{self.index - self.burst_users}"
        self.round = 0
        self.n = 0
        self.rng = random.Random(self.index)

    @task
    def one_round(self):
        # steady users stop after `rounds` rounds; burst users when the steady schedule is over
        # (and after at most `burst_cap` rounds)
        if self.burst and self.round == 0 and self.burst_delay > 0:
            gevent.sleep(max(0.0, RUN.started + self.burst_delay - time.time()))
        if self.burst:
            done = time.time() >= RUN.started + self.rounds * self.period or self.round >= self.burst_cap
        else:
            done = self.round >= self.rounds
        if done:
            RUN.users_done += 1
            raise StopUser()
        t_start = time.time()
        order = list(RUN.rig.targets)
        self.rng.shuffle(order)
        for t in order:
            self.n += 1
            call(self.client, t, self.identity, self.index * 1_000_000 + self.n, self.round if not self.burst else -1)
        self.round += 1
        if not self.burst:
            left = self.period - (time.time() - t_start)
            if left > 0:
                gevent.sleep(left)


def configure_users(cls, opts, rounds, period, burst_users, burst_delay=0.0):
    cls.rounds = opts.rw_rounds or rounds
    cls.period = opts.rw_period or period
    cls.burst_users = burst_users if opts.rw_burst_users < 0 else opts.rw_burst_users
    cls.burst_delay = burst_delay if opts.rw_burst_delay < 0 else opts.rw_burst_delay
    RUN.burst_delay = cls.burst_delay


def paired_latencies(recs: list[Rec], baseline: str | None, until: float | None = None) -> dict:
    """Per target: p50/p99 of admitted steady calls (sent before `until`, if given), the median
    over (user, round) pairs of latency(target) / latency(baseline), both admitted, and the
    ratio of the p99s."""
    by_target = {}
    pairs = {}
    for r in recs:
        if r.round < 0 or r.outcome is not Outcome.ALLOWED or (until is not None and r.t0 >= until):
            continue
        ms = (r.t1 - r.t0) * 1000
        by_target.setdefault(r.target, []).append(ms)
        pairs.setdefault((r.user, r.round), {})[r.target] = ms
    out = {}
    base99 = _pct(sorted(by_target.get(baseline, [])), 99) if baseline else None
    for t, xs in by_target.items():
        xs.sort()
        ratios = []
        if baseline and t != baseline:
            for p in pairs.values():
                if t in p and baseline in p:
                    ratios.append(p[t] / p[baseline])
        out[t] = {
            "n": len(xs),
            "p50": _pct(xs, 50),
            "p99": _pct(xs, 99),
            "ratio_p50": statistics.median(ratios) if ratios else None,
            "pairs": len(ratios),
            "ratio_p99": (_pct(xs, 99) / base99) if base99 and t != baseline else None,
            "delta_p50": (statistics.median([p[t] - p[baseline] for p in pairs.values() if t in p and baseline in p])
                          if ratios else None),
        }
    return out


def _pct(xs, q):
    if not xs:
        return None
    k = max(0, min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1)))))
    return xs[k]


def write_records(path: Path, recs: list[Rec]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["target", "domain", "user", "tenant", "tool", "t0", "t1", "outcome", "detail", "round"])
        for r in recs:
            w.writerow([r.target, r.domain, r.user, r.tenant or "", r.tool or "", f"{r.t0:.6f}", f"{r.t1:.6f}",
                        r.outcome.value, r.detail, r.round])


def exec_locust(locustfile: str, users: int, run_time: str, doc: str = "", arguments=None) -> None:
    """`python loadtest/<locustfile>.py [options]`: run locust headless on this file with the
    scenario's bounded defaults (users, spawn rate, run time), overridable on the command line.
    `--help` prints the scenario's doc and options (locust's own: `python -m locust --help`)."""
    argv = sys.argv[1:]
    if "-h" in argv or "--help" in argv:
        import argparse

        p = argparse.ArgumentParser(prog=f"python {os.path.relpath(locustfile)}", description=doc,
                                    formatter_class=argparse.RawDescriptionHelpFormatter,
                                    epilog=f"Defaults: --headless -u {users} -r {users} -t {run_time} --only-summary. "
                                           "Any locust option may be added (python -m locust --help).")
        if arguments is not None:
            arguments(p)
        p.print_help()
        sys.exit(0)
    args = [sys.executable, "-m", "locust", "-f", locustfile, "--headless", "--only-summary",
            "--loglevel", "WARNING"]
    if not any(a in ("-u", "--users") or a.startswith("--users=") for a in argv):
        args += ["-u", str(users)]
    if not any(a in ("-r", "--spawn-rate") or a.startswith("--spawn-rate=") for a in argv):
        args += ["-r", str(max(users, 1))]
    if not any(a in ("-t", "--run-time") or a.startswith("--run-time=") for a in argv):
        args += ["-t", run_time]
    args += argv
    os.environ["RW_COMMAND"] = " ".join(["python", os.path.relpath(locustfile)] + argv)
    os.execv(sys.executable, args)
