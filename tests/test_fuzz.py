"""Property: signed random and mutated webhooks of every source, through the real app.

A few hundred cases of ``bench/fuzz.py``'s generator (the 100,000-case run is
``python bench/fuzz.py``), drawn from hypothesis' random stream, derandomized: never a
5xx; a 401 or 413 only for a case made to get one (bad signature, body at the size
limit); every 200 a processed, failed or ignored delivery stored once under its key, with
the answered status and, unless processed, a reason; a failure is a payload error, never
a crash of the normaliser or of the store; a replayed failure says why again.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fuzz import SOURCES, Fuzzer, Target, compare, fuzz_runtime, replay_sample

FUZZER = Fuzzer(seed=0)


@pytest.fixture
def target(database_url: str, tmp_path: Any) -> Any:
    rt = fuzz_runtime(database_url, tmp_path / "exports")
    yield Target(rt)
    rt.engine.dispose()


def test_signed_random_and_mutated_webhooks_are_stored_once_with_a_reason_never_a_5xx(target):
    @settings(max_examples=400, derandomize=True, database=None, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(rng=st.randoms(use_true_random=True), source=st.sampled_from(SOURCES))
    def one(rng, source):
        case = FUZZER.fresh(rng, len(target.sent), source)
        target.send(case)
        assert target.check.ok, (dict(target.check.counts), dict(target.check.examples))

    one()
    check, sent = target.check, target.sent
    rows = compare(check, target.rt.engine, sent)
    replayed = replay_sample(check, target.rt, 25, seed=0)
    assert check.ok, (dict(check.counts), dict(check.examples))
    # the run reached every source and every outcome
    assert {s.source for s in sent} == set(SOURCES)
    answered = Counter(s.status for s in sent if s.code == 200)
    assert min(answered["processed"], answered["failed"], answered["ignored"]) >= 10, answered
    assert Counter(s.code for s in sent)[401] >= 1
    assert sum(sum(c.values()) for c in rows.values()) == sum(
        n for status, n in answered.items() if status != "duplicate")
    assert replayed and set(replayed) <= {"processed", "failed", "ignored", "redacted"}
