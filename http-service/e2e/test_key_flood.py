"""Key flood, short: 300,000 distinct user ids through ratewall-server's memory store bounded at
50,000 keys (so 250,000 evictions), driven by wrk with loadtest/key_flood.lua; the long 10,000,000-id
run with the default bound is `python3 loadtest/key_flood.py --ids 10000000` (docs/OPERATIONS.md,
"Sizing"). Asserts that the store keeps its bound, that its RSS grows by at most the documented
bytes per key (with a margin for the small store's fixed costs), and that a victim at its limit
before the flood is still denied after it (eviction forgets the cells closest to fresh)."""

import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("key_flood", ROOT / "loadtest" / "key_flood.py")
key_flood = importlib.util.module_from_spec(spec)
spec.loader.exec_module(key_flood)

IDS = 300_000
MAX_KEYS = 50_000
# docs/OPERATIONS.md, "Sizing": the service's RSS grows by at most this many bytes per stored key.
DOCUMENTED_RSS_BYTES_PER_KEY = 400
# A store of 50,000 keys is small next to the process's fixed costs that only a flood touches
# (64 connections' buffers, the allocator's per-thread arenas): allow 4 MiB on top.
MARGIN_BYTES = 4 * 1024 * 1024


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (tests/run-all.sh installs it)")
def test_a_flood_of_fresh_ids_keeps_the_bound_the_rss_and_the_victim_denied():
    r = key_flood.run(IDS, MAX_KEYS, threads=2, connections=64, timeout=60, algorithm="fixed_window")
    assert r["all_ids_reached_server"], r
    # every id beyond the bound evicted one cell; the bound holds (racing insertions: a few over)
    assert r["keys_stored"] <= MAX_KEYS + 8, r
    assert r["evictions"] >= r["ids_inserted"] - MAX_KEYS - 8, r
    growth = r["rss_peak_bytes"] - r["rss_start_bytes"]
    bound = MAX_KEYS * DOCUMENTED_RSS_BYTES_PER_KEY + MARGIN_BYTES
    assert growth <= bound, f"RSS grew {growth} bytes > {bound} ({r['bytes_per_key']} per key): {r}"
    # the victim was at its limit (10 admitted, 11th denied) before the flood
    assert r["victim_after"] == 429, r
