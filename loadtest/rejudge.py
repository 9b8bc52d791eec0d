#!/usr/bin/env python3
"""Judge a finished run again from its folder (`records.csv` + `run.json`), e.g. after a change
to the verdicts, and rewrite its `summary.md` and `plot.png`:

    python loadtest/rejudge.py loadtest/out/gateway-20261203-164500 [--eps-of DOMAIN=SECONDS ...]
"""

import argparse
import csv
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rwload.classify import Outcome  # noqa: E402
from rwload.driver import Rig, Run, Target  # noqa: E402
from rwload.report import write_report  # noqa: E402
from rwload.verdict import Fault, Limit, Policy, Rec, judge  # noqa: E402


def load(out: Path, eps_over: dict):
    doc = json.loads((out / "run.json").read_text())

    def lim(x):
        return Limit(**x) if x else None

    policy_of = {d: Policy(p["algorithm"], lim(p["by_user"]), lim(p["by_tenant"]),
                           {k: Limit(**v) for k, v in p["by_tool"].items()}) for d, p in doc["policy_of"].items()}
    rig = Rig(targets=[Target(n, d, None, None, None) for n, d in doc["targets"]], policy_of=policy_of,
              mode_of=doc["mode_of"], stop=lambda: None, baseline=doc["baseline"],
              faults=[Fault(**f) for f in doc["faults"]], description=doc["description"],
              eps_of={**doc["eps_of"], **eps_over})
    run = Run()
    run.rig, run.out, run.scenario, run.started = rig, out, doc["scenario"], doc["started"]
    run.latency_until, run.burst_delay = doc["latency_until"], doc["burst_delay"]
    os.environ["RW_COMMAND"] = doc.get("command", "") + "  (re-judged by loadtest/rejudge.py)"
    recs = [Rec(r["target"], r["domain"], r["user"] or None, r["tenant"] or None, r["tool"] or None,
                float(r["t0"]), float(r["t1"]), Outcome(r["outcome"]), r["detail"], int(r["round"]))
            for r in csv.DictReader(open(out / "records.csv"))]
    return run, recs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--eps-of", action="append", default=[], help="DOMAIN=SECONDS clock slack override")
    a = ap.parse_args()
    over = {k: float(v) for k, v in (x.split("=", 1) for x in a.eps_of)}
    run, recs = load(a.out, over)
    run.verdict = judge(recs, run.rig.policy_of, run.rig.mode_of, run.rig.faults, run.rig.eps_of)
    write_report(run, recs, None)
    sys.exit(0 if run.verdict.ok else 1)


if __name__ == "__main__":
    main()
