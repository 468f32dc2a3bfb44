"""Cross-sell: co-occurrence lift over all customers, the best item not yet bought, the score."""

from __future__ import annotations

import pytest

from cx_connector.runtime import build
from cx_connector.scoring import explain, run
from tests.conftest import NOW, make_config
from tests.scoring.shop import add, ago, explanation, order, tp, values


@pytest.fixture
def shop(database_url):
    rt = build(make_config(database_url, scoring={"min_purchasers": 10}), clock=lambda: NOW)
    orders = []
    for i in range(6):
        orders.append(order(f"both{i}", ago(10), 20, f"b{i}", "coffee", "syrups"))
    for i in range(2):
        orders.append(order(f"coffee{i}", ago(10), 20, f"c{i}", "coffee"))
    for i in range(4):
        orders.append(order(f"tea{i}", ago(10), 20, f"t{i}", "tea"))
    add(rt, *orders)
    yield rt
    rt.engine.dispose()


def test_the_strongest_association_not_yet_bought_is_recommended(shop):
    report = run.run(shop, full=True)
    assert report["models"]["cross_sell"] == {"by": "category", "customers": 12, "items": 3, "rules": 2,
                                              "min_support": 5}
    v = values(shop, "coffee0")
    assert v["cx_next_best_product"] == "syrups"
    retention = 0.5 ** (10 / 90)
    assert v["cx_cross_sell_score"] == round(100 * retention * 6 / 8)
    c = explanation(shop, "coffee0")["cross_sell"]
    # 6 of 8 coffee buyers bought syrups; syrups buyers are 6 of 12: lift 0.75 / 0.5
    assert c == {"bought": 1, "item": "syrups", "method": "rule", "because": "coffee", "support": 6,
                 "confidence": 0.75, "lift": 1.5}
    words = explain.render(explanation(shop, "coffee0"), v)["cx_next_best_product"]
    assert words.startswith("Customers who bought coffee bought syrups 1.50 times as often as the average "
                            "buyer (6 customers bought both; 75% of coffee buyers bought syrups)."), words


def test_without_an_association_the_most_popular_item_not_bought_is_recommended(shop):
    run.run(shop, full=True)
    assert values(shop, "tea0")["cx_next_best_product"] == "coffee"
    c = explanation(shop, "tea0")["cross_sell"]
    assert c["method"] == "popular" and c["base_rate"] == pytest.approx(8 / 12, abs=1e-4)
    # bought coffee and syrups: the rules point at what they have; tea is next in popularity
    assert values(shop, "both0")["cx_next_best_product"] == "tea"


def test_pairs_below_min_support_are_no_association(database_url):
    rt = build(make_config(database_url, scoring={"min_purchasers": 2, "cross_sell": {"min_support": 7}}),
               clock=lambda: NOW)
    add(rt, *[order(f"b{i}", ago(10), 20, f"b{i}", "coffee", "syrups") for i in range(6)],
        order("c", ago(10), 20, "c", "coffee"))
    report = run.run(rt, full=True)
    assert report["models"]["cross_sell"]["rules"] == 0
    assert explanation(rt, "c")["cross_sell"]["method"] == "popular"
    rt.engine.dispose()


def test_too_few_buyers_give_a_recommendation_but_no_score(rt):
    add(rt, order("a", ago(5), 10, "1", "coffee", "tea"), order("b", ago(5), 10, "2", "coffee"))
    run.run(rt, full=True)
    v = values(rt, "b")
    assert v["cx_next_best_product"] == "tea" and v["cx_cross_sell_score"] is None
    words = explain.render(explanation(rt, "b"), v)["cx_cross_sell_score"]
    assert words.startswith("No strong association from what they bought (1 category), so the most "
                            "popular item they do not have yet: tea, bought by 50% of the customers who "
                            "bought items. Only 2 customers have bought items (fewer than 50")


def test_customers_who_bought_everything_get_no_recommendation(shop):
    add(shop, order("all", ago(10), 20, "x", "coffee", "syrups", "tea"))
    run.run(shop, full=True)
    v = values(shop, "all")
    assert v["cx_next_best_product"] is None and v["cx_cross_sell_score"] is None
    assert explanation(shop, "all")["cross_sell"] == {"bought": 3, "method": "none"}


def test_non_buyers_get_the_most_popular_item(shop):
    add(shop, tp("email_engaged", "lead", ago(1)))
    run.run(shop, full=True)
    assert values(shop, "lead")["cx_next_best_product"] == "coffee"
    words = explain.render(explanation(shop, "lead"), values(shop, "lead"))["cx_next_best_product"]
    assert words.startswith("Nothing bought yet, so the most popular item: coffee, bought by ")


def test_recommendations_by_product(database_url):
    rt = build(make_config(database_url, scoring={"min_purchasers": 2,
                                                  "cross_sell": {"by": "product", "min_support": 2}}),
               clock=lambda: NOW)
    p = [{"id": "mug", "title": "Blue mug"}, {"id": "beans", "title": "Beans 1kg"}]
    add(rt, *[tp("order_placed", f"b{i}", ago(3), value=9, order_id=f"o{i}", products=p) for i in range(3)],
        tp("order_placed", "one", ago(3), value=9, order_id="x", products=p[:1]))
    run.run(rt, full=True)
    assert values(rt, "one")["cx_next_best_product"] == "Beans 1kg"
    rt.engine.dispose()


def test_buyers_without_line_items_are_not_told_nothing_was_bought(shop):
    """A won deal or an order without products is a purchase (retention says "Bought on 1
    day"): the recommendation must not say "Nothing bought yet" beside it."""
    add(shop, order("deal", ago(3), 12000, "d1"))
    run.run(shop, full=True)
    words = explain.render(explanation(shop, "deal"), values(shop, "deal"))
    assert words["cx_retention_probability"].startswith("Bought on 1 day")
    assert words["cx_next_best_product"].startswith(
        "No category known from their purchases (no line items), so the most popular item: coffee")
