"""bench/load.py's smallest mode runs and its checks hold, so the script a user reruns for
BENCHMARKS.md cannot rot: a few seconds of mixed signed HubSpot, Zendesk and Shopify
traffic against gunicorn and the clock on SQLite, write-back to the script's mock platforms.

It runs on SQLite whatever CX_TEST_DATABASE_URL says: the point is the script, and its
PostgreSQL runs need a database it may reset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_a_short_load_run_stores_scores_and_writes_back_everything_once(tmp_path):
    out = tmp_path / "load.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "load.py"), "run", "--rate", "20", "--seconds", "3",
         "--customers", "150", "--score-every", "1s", "--sync-every", "1s", "--catch-up", "60",
         "--json", str(out)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    run, check = result["run"], result["check"]
    assert run["statuses"] == {"200": 60}
    traffic = result["traffic"]
    assert traffic["hubspot"] and traffic["zendesk"] and traffic["shopify"]
    assert traffic["events"] > traffic["hubspot"]  # HubSpot sends batches
    # every acknowledged delivery stored once, its touchpoints too, every customer scored,
    # every record written with its last values, nothing sent twice
    assert check["lost_total"] == 0 and check["duplicated_total"] == 0, check
    assert check["acknowledged_deliveries"] == check["stored_deliveries"] > 0
    assert check["touchpoints_expected"] == check["touchpoints_stored"] > check["acknowledged_deliveries"]
    assert check["records_written"] > 0 and check["platform_writes"] >= check["records_written"]
    assert {"hubspot", "zendesk", "shopify"} <= {k for k, v in check["mock_requests"].items() if v}
    assert result["catch_up"]["caught_up_s"] is not None
    assert run["cpu"]["cpu_s"]["gunicorn"] > 0  # the per-process CPU accounting found the server
