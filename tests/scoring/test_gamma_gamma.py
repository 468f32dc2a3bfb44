"""Gamma-Gamma: the published CDNOW spend parameters, from the summary and from touchpoints."""

from __future__ import annotations

import numpy as np
import pytest

from cx_connector import db
from cx_connector.errors import FitError
from cx_connector.scoring import features, gamma_gamma, retention
from tests.scoring import cdnow


def sig3(x: float) -> float:
    return float(f"{x:.3g}")


def assert_published(g: gamma_gamma.GammaGammaParams) -> None:
    assert (sig3(g.p), sig3(g.q), sig3(g.gamma)) == (6.25, 3.74, 15.4)
    assert (g.p, g.q, g.gamma) == pytest.approx((6.25, 3.74, 15.44), abs=0.01)
    assert g.customers == 946


def test_fit_on_the_published_summary():
    rows = cdnow.summary()
    g = gamma_gamma.fit([r["x"] for r in rows], [r["zbar"] for r in rows])
    assert_published(g)


def test_raw_transactions_summarised_as_the_service_does_give_the_published_fit(engine):
    cdnow.load(engine)
    with db.read(engine) as conn:
        f = features.load(conn, list(range(1, 2358)), cdnow.CUTOFF_END, full=True)
    x, m = retention.spend_summary(f)
    published = {int(r["ID"]): r for r in cdnow.summary()}
    assert np.allclose(m, [published[i]["zbar"] for i in f.ids.tolist()], atol=0.006)
    assert_published(gamma_gamma.fit(x, m))


def test_expected_spend_shrinks_own_mean_towards_the_population_mean():
    g = gamma_gamma.GammaGammaParams(p=6.25, q=3.74, gamma=15.44, log_likelihood=0, customers=1)
    population = 6.25 * 15.44 / 2.74
    few, many, none = gamma_gamma.expected_spend(g, [1, 50, 0], [100.0, 100.0, 0.0])
    assert none == pytest.approx(population)
    assert population < few < many < 100
    assert few == pytest.approx(6.25 * (15.44 + 100) / (6.25 + 3.74 - 1))


def test_gradient_matches_finite_differences():
    from scipy.optimize import check_grad
    rows = [r for r in cdnow.summary() if r["x"] > 0]
    x = np.array([r["x"] for r in rows])
    m = np.array([r["zbar"] for r in rows])
    args = (x, m, np.ones(len(x)), np.log(m), np.log(x))
    err = check_grad(lambda v: gamma_gamma._objective(v, *args)[0],
                     lambda v: gamma_gamma._objective(v, *args)[1], np.log([3.0, 2.0, 10.0]))
    assert err < 1e-5


def test_no_repeat_buyers_is_a_fit_error():
    with pytest.raises(FitError, match="no repeat buyers"):
        gamma_gamma.fit([0, 0], [10.0, 20.0])
