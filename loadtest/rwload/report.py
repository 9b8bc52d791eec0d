"""The report of a run, in its folder: `summary.md` (verdict, outcomes, latencies), `plot.png`
(admitted / denied / errors per second of the burst identity against the limit, per counter
domain), `records.csv` (every request) and locust's own `report.html`."""

from __future__ import annotations

import math
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

from .classify import Outcome

ORDER = [o.value for o in Outcome]


def write_report(run, recs, environment) -> None:
    from .driver import BURST_ID, paired_latencies, write_records

    out: Path = run.out
    rig = run.rig
    v = run.verdict
    write_records(out / "records.csv", recs)
    save_run(out / "run.json", run)
    lat = paired_latencies(recs, rig.baseline, run.latency_until)
    try:
        plot(out / "plot.png", recs, rig, run.started, BURST_ID)
        plotted = True
    except Exception as e:  # noqa: BLE001 - a missing matplotlib must not hide the verdict
        print(f"plot not written: {e!r}", file=sys.stderr)
        plotted = False

    lines = [f"# ratewall load test: {run.scenario}", ""]
    lines.append(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(run.started))}; "
                 f"{len(recs)} calls in {max((r.t1 for r in recs), default=run.started) - run.started:.1f} s; "
                 f"command: `{os.environ.get('RW_COMMAND') or ' '.join(['locust'] + sys.argv[1:])}`")
    lines.append("")
    if rig.description:
        lines += [rig.description, ""]
    lines.append(f"**Verdict: {'PASS' if v.ok else 'FAIL'}** "
                 f"({v.infrastructure_errors} infrastructure errors; rate-limited answers are correct outcomes)")
    lines.append("")
    lines.append("| counter domain | judged as | algorithm | calls | " + " | ".join(ORDER) +
                 " | cells | windows over the limit (admitted exactly the limit) | verdict |")
    lines.append("|---" * (len(ORDER) + 7) + "|")
    for d in v.domains:
        win = f"{d.windows_over} ({d.windows_at_limit})" if d.algorithm == "fixed_window" and d.mode != "unlimited" else "-"
        lines.append(f"| {d.domain} | {d.mode} | {d.algorithm} | {d.requests} | " +
                     " | ".join(str(d.outcomes.get(o, 0)) for o in ORDER) +
                     f" | {d.cells} | {win} | {'ok' if d.ok else '**FAIL**'} |")
    lines.append("")
    for d in v.domains:
        if d.violations or d.notes:
            lines.append(f"- **{d.domain}**: " + "; ".join(d.notes))
            for m in d.violations:
                lines.append(f"  - {m}")
    lines.append("")
    lines.append("## Latency of admitted steady calls (paired)")
    lines.append("")
    base = rig.baseline
    lines.append(f"Every steady user calls every target once per round, in a random order; the paired ratio is "
                 f"the median over (user, round) pairs of latency(target) / latency({base or 'baseline'}), both "
                 f"admitted; the p99 ratio is p99(target) / p99({base or 'baseline'}) over the same calls."
                 + (f" Only calls sent in the first {run.burst_delay:.0f} s, before the burst users started, so every "
                    f"target was measured under the same load." if run.latency_until else ""))
    lines.append("")
    lines.append("| target | admitted steady calls | p50 ms | p99 ms | paired p50 ratio | paired p50 delta ms | p99 ratio |")
    lines.append("|---|---|---|---|---|---|---|")
    for t in [t.name for t in rig.targets]:
        x = lat.get(t)
        if not x:
            lines.append(f"| {t} | 0 | - | - | - | - | - |")
            continue
        ratio = "baseline" if t == base else (f"{x['ratio_p50']:.3f} ({x['pairs']} pairs)" if x["ratio_p50"] else "-")
        delta = "" if t == base or x["delta_p50"] is None else f"{x['delta_p50']:+.2f}"
        r99 = "" if t == base or x["ratio_p99"] is None else f"{x['ratio_p99']:.3f}"
        lines.append(f"| {t} | {x['n']} | {x['p50']:.2f} | {x['p99']:.2f} | {ratio} | {delta} | {r99} |")
    lines.append("")
    lines.append("## Calls per target and outcome")
    lines.append("")
    per = defaultdict(lambda: defaultdict(int))
    for r in recs:
        per[r.target][r.outcome.value] += 1
    lines.append("| target | " + " | ".join(ORDER) + " |")
    lines.append("|---" * (len(ORDER) + 1) + "|")
    for t in [t.name for t in rig.targets]:
        lines.append(f"| {t} | " + " | ".join(str(per[t].get(o, 0)) for o in ORDER) + " |")
    lines.append("")
    lines.append("Files: [report.html](report.html) (locust), " + ("[plot.png](plot.png), " if plotted else "") +
                 "[records.csv](records.csv) (every call: target, identity, send and answer times, outcome).")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    print(f"\nreport: {out}/summary.md, {out}/report.html" + (f", {out}/plot.png" if plotted else ""), flush=True)


def plot(path: Path, recs, rig, started: float, burst_id: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = []
    for t in rig.targets:
        if t.domain not in domains:
            domains.append(t.domain)
    n = len(domains)
    fig, axes = plt.subplots(n, 1, figsize=(11, 2.6 * n + 0.6), squeeze=False, sharex=True)
    end = max((r.t1 for r in recs), default=started + 1) - started
    bins = max(1, int(math.ceil(end)))
    for ax, dom in zip(axes[:, 0], domains):
        burst = [r for r in recs if r.domain == dom and r.user is not None and r.user.startswith(burst_id)]
        adm, den, err = [0] * bins, [0] * bins, [0] * bins
        for r in burst:
            b = min(bins - 1, max(0, int(r.t1 - started)))
            if r.outcome is Outcome.ALLOWED:
                adm[b] += 1
            elif r.outcome is Outcome.RATE_LIMITED:
                den[b] += 1
            else:
                err[b] += 1
        xs = list(range(bins + 1))
        ax.step(xs, adm + adm[-1:], where="post", color="#2b8a3e", linewidth=1.6, label="admitted/s")
        ax.step(xs, den + den[-1:], where="post", color="#f08c00", linewidth=1.2, label="rate-limited/s")
        ax.step(xs, err + err[-1:], where="post", color="#c92a2a", linewidth=1.2,
                label="errors/s (incl. backend unavailable)")
        ax.set_yscale("symlog", linthresh=10)
        ax.set_ylim(bottom=0)
        pol = rig.policy_of.get(dom)
        lim = pol.by_user if pol is not None else None
        mode = rig.mode_of.get(dom, "exact")
        if lim is not None and mode not in ("unlimited",):
            scale = int(mode.split(":")[1]) if mode.startswith("per_process:") else 1
            ax.axhline(scale * lim.count / lim.window, color="black", linestyle="--", linewidth=1,
                       label=f"limit: {scale * lim.count}/{lim.window} s = {scale * lim.count / lim.window:.2f}/s")
            # what each aligned window admitted for the burst identity, against its limit
            if pol.algorithm in ("fixed_window", "sliding_window_counter") and lim.window > 1:
                top = ax.get_ylim()[1]
                for k in range(int(started // lim.window) + 1, int((started + end) // lim.window)):
                    a, b = k * lim.window - started, (k + 1) * lim.window - started
                    got = sum(1 for r in burst if r.outcome is Outcome.ALLOWED and a <= r.t1 - started < b)
                    ax.axvline(a, color="#adb5bd", linewidth=0.5)
                    ax.text(a + 0.05, top * 0.6, f"{got}/{scale * lim.count}", fontsize=7)
        for f in rig.faults:
            if f.domain == dom:
                ax.axvspan(f.start - started, f.end - started, color="#868e96", alpha=0.25,
                           label=f"Redis paused (fail_mode {f.fail_mode})")
        ax.set_title(f"{dom}: burst identity ({mode}, {pol.algorithm if pol else ''})", fontsize=9)
        ax.set_ylabel("calls/s")
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("seconds since the load started")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_run(path: Path, run) -> None:
    """What the verdict needs besides the records (`loadtest/rejudge.py` reads it back)."""
    import dataclasses
    import json

    rig = run.rig

    def pol(p):
        return {"algorithm": p.algorithm,
                "by_user": dataclasses.asdict(p.by_user) if p.by_user else None,
                "by_tenant": dataclasses.asdict(p.by_tenant) if p.by_tenant else None,
                "by_tool": {k: dataclasses.asdict(v) for k, v in p.by_tool.items()}}

    doc = {
        "scenario": run.scenario, "started": run.started,
        "command": os.environ.get("RW_COMMAND") or " ".join(["locust"] + sys.argv[1:]), "latency_until": run.latency_until,
        "burst_delay": run.burst_delay, "baseline": rig.baseline, "description": rig.description,
        "targets": [[t.name, t.domain] for t in rig.targets],
        "policy_of": {d: pol(p) for d, p in rig.policy_of.items()},
        "mode_of": rig.mode_of, "eps_of": rig.eps_of,
        "faults": [dataclasses.asdict(f) for f in rig.faults],
    }
    path.write_text(json.dumps(doc, indent=1))
