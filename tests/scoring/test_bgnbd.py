"""BG/NBD: the published CDNOW parameters, from the summary and from raw touchpoints."""

from __future__ import annotations

import numpy as np
import pytest

from cx_connector import db
from cx_connector.errors import FitError
from cx_connector.scoring import bgnbd, features, retention
from cx_connector.scoring.settings import ScoringSettings
from tests.scoring import cdnow

PUBLISHED = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}


def sig3(x: float) -> float:
    return float(f"{x:.3g}")


def assert_published(p: bgnbd.BGNBDParams) -> None:
    for name, value in PUBLISHED.items():
        assert sig3(getattr(p, name)) == sig3(value), name
    assert sig3(p.log_likelihood) == sig3(-9582.4)
    assert p.log_likelihood == pytest.approx(-9582.4, abs=0.05)


def summary_arrays():
    rows = cdnow.summary()
    return (np.array([r["x"] for r in rows]), np.array([r["t_x"] for r in rows]),
            np.array([r["T"] for r in rows]))


def test_fit_on_the_published_summary_reproduces_fader_hardie_lee():
    p = bgnbd.fit(*summary_arrays())
    assert_published(p)
    assert p.customers == 2357


def test_raw_transactions_summarised_as_the_service_does_give_the_published_fit(engine):
    """Touchpoints in the database -> features.load -> retention.summary -> fit."""
    n = cdnow.load(engine)
    with db.read(engine) as conn:
        f = features.load(conn, list(range(1, n + 1)), cdnow.CUTOFF_END, full=True)
    buyers, x, t_x, T = retention.summary(f)
    published = {int(r["ID"]): r for r in cdnow.summary()}
    ids = f.ids[buyers]
    assert len(ids) == len(published) == 2357
    assert np.array_equal(x, [published[i]["x"] for i in ids.tolist()])
    assert np.allclose(t_x, [published[i]["t_x"] for i in ids.tolist()], atol=0.006)
    assert np.allclose(T, [published[i]["T"] for i in ids.tolist()], atol=0.006)
    assert_published(bgnbd.fit(x, t_x, T))


def test_conditional_expectation_matches_the_published_example():
    """Fader & Hardie's Excel note: a customer with x=2, t_x=30.43, T=38.86 is expected to
    make 1.226 purchases in the next 39 weeks."""
    p = bgnbd.fit(*summary_arrays())
    assert bgnbd.expected_purchases(p, 39, [2], [30.43], [38.86])[0] == pytest.approx(1.226, abs=0.001)


def test_retention_is_not_raw_p_alive():
    """P(alive) is 1 for every one-time buyer; the retention probability falls with time."""
    p = bgnbd.fit(*summary_arrays())
    h = 90 / 7
    x, t_x, T = [0, 0, 0], [0, 0, 0], [2.0, 20.0, 80.0]
    assert np.all(bgnbd.p_alive(p, x, t_x, T) == 1)
    r = bgnbd.prob_purchase_within(p, h, x, t_x, T)
    assert r[0] > r[1] > r[2]
    # and a repeat buyer who went quiet is less likely to buy than one who bought recently
    recent, quiet = bgnbd.prob_purchase_within(p, h, [5, 5], [37, 10], [38, 38])
    assert recent > quiet
    expected = bgnbd.p_alive(p, [5], [10], [38]) * (1 - ((p.alpha + 38) / (p.alpha + 38 + h)) ** (p.r + 5))
    assert quiet == pytest.approx(expected[0])


def test_gradient_matches_finite_differences():
    from scipy.optimize import check_grad
    data = bgnbd._Data(*summary_arrays())
    err = check_grad(lambda v: bgnbd._objective(v, data)[0], lambda v: bgnbd._objective(v, data)[1],
                     np.log([0.5, 3.0, 1.2, 2.0]))
    assert err < 1e-5


def test_warm_start_converges_to_the_same_fit():
    cold = bgnbd.fit(*summary_arrays())
    warm = bgnbd.fit(*summary_arrays(), start=bgnbd.BGNBDParams(0.3, 5, 1, 3, 0, 0))
    assert warm.log_likelihood == pytest.approx(cold.log_likelihood, abs=1e-6)


@pytest.mark.parametrize(("x", "t_x", "T", "message"), [
    ([], [], [], "no purchasing customers"),
    ([0, 0, 0], [0, 0, 0], [5, 6, 7], "nobody has bought twice"),
])
def test_unfittable_data_raises_fit_error(x, t_x, T, message):
    with pytest.raises(FitError, match=message):
        bgnbd.fit(x, t_x, T)


def test_population_fit_falls_back_below_min_purchasers(engine):
    cdnow.load(engine)
    with db.read(engine) as conn:
        f = features.load(conn, list(range(1, 2358)), cdnow.CUTOFF_END, full=True)
    pop = retention.fit_population(f, ScoringSettings(min_purchasers=5000))
    assert pop.bgnbd is None and "only 2,357 customers have purchases" in pop.bgnbd_error
    assert pop.gamma_gamma is None and "scoring.min_purchasers" in pop.gamma_gamma_error


def test_a_scoring_pass_at_the_cutoff_stores_the_published_fits(database_url):
    """The strongest check: CDNOW transactions as touchpoints, the service's own scoring
    run, the parameters it stores (and, report-only, those of --as-of)."""
    from datetime import date

    from sqlalchemy import select

    from cx_connector.models import population_models
    from cx_connector.runtime import build
    from cx_connector.scoring import run
    from cx_connector.scoring.gamma_gamma import GammaGammaParams
    from tests.conftest import NOW, count, make_config
    from tests.scoring.test_gamma_gamma import assert_published as assert_gg

    rt = build(make_config(database_url), clock=lambda: cdnow.CUTOFF_END)
    cdnow.load(rt.engine)
    report = run.run(rt)
    assert report["mode"] == "full" and report["customers_scored"] == 2357
    with db.read(rt.engine) as conn:
        stored = dict(conn.execute(select(population_models.c.kind, population_models.c.params)).all())
    assert_published(bgnbd.BGNBDParams.from_json(stored["bgnbd"]["params"]))
    assert_gg(GammaGammaParams.from_json(stored["gamma_gamma"]["params"]))
    # customer 1: x=2, t_x=30.43, T=38.86; scored and explained with the fitted model
    from cx_connector.models import scores
    from cx_connector.scoring import explain
    with db.read(rt.engine) as conn:
        values, why = conn.execute(select(scores.c.score_values, scores.c.explanation)
                                   .where(scores.c.customer_id == 1)).one()
        why = explain.stored(conn, why)
    p = bgnbd.BGNBDParams.from_json(stored["bgnbd"]["params"])
    h = 90 / 7
    assert values["cx_retention_probability"] == round(
        100 * bgnbd.prob_purchase_within(p, h, [2], [30.43], [38.86])[0])
    assert values["cx_expected_purchases_90d"] == pytest.approx(
        bgnbd.expected_purchases(p, h, [2], [30.43], [38.86])[0], abs=0.006)
    words = explain.render(why, values)
    assert "The BG/NBD model fitted on 2357 purchasing customers (r=0.243, alpha=4.41, a=0.793, b=2.43)" \
        in words["cx_retention_probability"]
    assert "Gamma-Gamma" in words["cx_clv_90d"] and "Revenue, not profit" in words["cx_clv_90d"]
    # the sentence ends with the value the rep sees, not the product of its rounded factors
    assert f"= {values['cx_clv_90d']:.2f}. The value per purchase" in words["cx_clv_90d"], words["cx_clv_90d"]
    # the value per purchase is the weighted mean the sentence states, of the two averages it
    # names (it once named the average of all purchases, first included: outside the two)
    g = GammaGammaParams.from_json(stored["gamma_gamma"]["params"])
    with db.read(rt.engine) as conn:
        explained = [explain.stored(conn, e) for e in conn.execute(select(scores.c.explanation)).scalars()]
    every = [e["value"] for e in explained]
    repeat = [v for v in every if v and v["repeat_days_with_value"]]
    assert len(repeat) == 946  # the repeat buyers of the calibration period, as published
    for v in repeat:
        x, m = v["repeat_days_with_value"], v["repeat_mean"]
        w = g.p * x / (g.p * x + g.q - 1)
        # both sides rounded to the cent: the mean shown, and the value
        assert v["per_purchase"] == pytest.approx(w * m + (1 - w) * g.population_mean, abs=0.011), v
        assert min(m, g.population_mean) - 0.01 <= v["per_purchase"] <= max(m, g.population_mean) + 0.01
    one = next(v for v in repeat if v["repeat_days_with_value"] == 1)
    w = g.p / (g.p + g.q - 1)
    text = explain.render({**why, "value": one}, {**values, "cx_clv_90d": 12.34})["cx_clv_90d"]
    assert text.startswith(f"Expected purchases {why['expected_purchases']['value']:.4g} x expected value "
                           f"per purchase {one['per_purchase']:.2f} = 12.34. The value per purchase is "
                           f"{100 * w:.0f}% their own average repeat purchase {one['repeat_mean']:.2f} "
                           f"(1 purchase day after the first, which the model leaves out) and "
                           f"{100 - 100 * w:.0f}% the population average {g.population_mean:.2f}, "
                           "from the Gamma-Gamma"), text
    # a one-time buyer's P(alive) is 1: the sentence says why rather than leave "100% active"
    # beside a high churn risk
    once = next(e for e in explained if e["retention"].get("purchase_days") == 1)
    text = explain.render(once, {})["cx_retention_probability"]
    assert "probability still an active customer 100% x" in text
    assert "so a one-time buyer counts as active however long ago they bought" in text
    assert "one-time" not in explain.render(why, values)["cx_retention_probability"]  # customer 1: 3 days
    rt.engine.dispose()

    today = build(make_config(database_url), clock=lambda: NOW)
    models_before = count(today.engine, "population_models")
    report = run.run(today, as_of=date(1997, 9, 30))
    b = report["models"]["bgnbd"]
    assert_published(bgnbd.BGNBDParams(b["r"], b["alpha"], b["a"], b["b"], b["log_likelihood"],
                                       b["customers"]))
    assert count(today.engine, "population_models") == models_before
    today.engine.dispose()
