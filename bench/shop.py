"""A synthetic shop for the scoring benchmark: customers, orders, tickets and ratings.

Purchases follow the BG/NBD story (a gamma-distributed purchase rate, a beta-distributed
drop-out after each purchase), so the population fit has something real to find;
orders carry line items from categories customers prefer in clusters, so the
co-occurrence model has associations to find. Everything is generated with numpy
and written with bulk inserts (indexes dropped during the load and rebuilt after).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import Engine

from cx_connector import db
from cx_connector.models import customers, identities, touchpoints

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
SOURCE = "benchshop"
CATEGORIES = ["coffee", "tea", "cups", "grinders", "machines", "filters", "syrups", "snacks",
              "gifts", "cleaning", "books", "subscriptions"]
#: clusters of categories bought together (taste)
CLUSTERS = [[0, 2, 5], [0, 3, 4, 9], [1, 2, 7], [1, 8, 10], [6, 7, 0], [11, 0, 5]]
STAGE = {"contact_created": "awareness", "order_placed": "purchase", "order_fulfilled": "purchase",
         "order_cancelled": "purchase", "refund_issued": "retention", "ticket_opened": "retention",
         "ticket_commented": "retention", "ticket_solved": "retention", "ticket_reopened": "retention",
         "csat_rating": "retention", "nps_response": "advocacy", "ces_response": "retention",
         "review_posted": "advocacy", "checkout_started": "consideration",
         "checkout_abandoned": "consideration", "email_engaged": "consideration"}


class Rows:
    """Column lists of touchpoints being generated."""

    def __init__(self) -> None:
        self.cols: dict[str, list] = {k: [] for k in (
            "cust", "t", "kind", "value", "rtype", "rscore", "rmax", "products", "attrs")}

    def add(self, cust: np.ndarray, t: np.ndarray, kind: str, value: np.ndarray | None = None,
            rating: tuple[str, np.ndarray, float] | None = None, products: list | None = None,
            attrs: list | None = None) -> None:
        n = len(cust)
        c = self.cols
        c["cust"].append(np.asarray(cust, dtype=np.int64))
        c["t"].append(np.asarray(t, dtype=float))
        c["kind"].append(np.full(n, kind, dtype=object))
        c["value"].append(np.full(n, np.nan) if value is None else np.asarray(value, dtype=float))
        if rating is None:
            c["rtype"].append(np.full(n, None, dtype=object))
            c["rscore"].append(np.full(n, np.nan))
            c["rmax"].append(np.full(n, np.nan))
        else:
            c["rtype"].append(np.full(n, rating[0], dtype=object))
            c["rscore"].append(np.asarray(rating[1], dtype=float))
            c["rmax"].append(np.full(n, rating[2]))
        prods = np.empty(n, dtype=object)
        prods[:] = products if products is not None else [[]] * n
        c["products"].append(prods)
        att = np.empty(n, dtype=object)
        att[:] = attrs if attrs is not None else [{}] * n
        c["attrs"].append(att)

    def arrays(self, end: float) -> dict[str, np.ndarray]:
        """Everything generated so far that happened by ``end``."""
        data = {k: np.concatenate(v) for k, v in self.cols.items()}
        keep = data["t"] <= end
        return {k: v[keep] for k, v in data.items()}


def generate(n_customers: int = 100_000, n_touchpoints: int = 1_000_000, seed: int = 7,
             now: datetime = NOW) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    end = now.timestamp()
    day = 86400.0
    week = 7 * day
    rows = Rows()
    cust = np.arange(n_customers)
    signup = end - rng.uniform(1, 730, n_customers) * day
    rows.add(cust, signup, "contact_created")

    # purchases: BG/NBD process from a first purchase shortly after sign-up
    buyer = rng.random(n_customers) < 0.8
    first = signup + rng.exponential(5 * day, n_customers)
    buyer &= first < end
    lam = rng.gamma(0.7, 1 / 8.0, n_customers)  # purchases per week
    drop = rng.beta(1.0, 3.0, n_customers)
    times = [first[buyer]]
    owners = [cust[buyer]]
    t = first.copy()
    alive = buyer.copy()
    for _ in range(80):
        t = t + rng.exponential(1.0, n_customers) / np.maximum(lam, 1e-9) * week
        alive &= (t < end) & (rng.random(n_customers) >= drop)
        if not alive.any():
            break
        times.append(t[alive])
        owners.append(cust[alive])
    o_cust = np.concatenate(owners)
    o_t = np.concatenate(times)
    n_orders = len(o_cust)
    order_ids = np.arange(1, n_orders + 1)
    taste = rng.integers(0, len(CLUSTERS), n_customers)
    taste2 = rng.integers(0, len(CLUSTERS), n_customers)
    spend_mean = rng.lognormal(3.5, 0.5, n_customers)
    values = np.round(rng.gamma(6.0, 1.0, n_orders) / 6.0 * spend_mean[o_cust], 2)
    n_items = rng.integers(1, 4, n_orders)
    pick2 = rng.random(n_orders) < 0.3
    checkout = rng.random(n_orders) < 0.3
    products = []
    attrs = []
    for i in range(n_orders):
        c = o_cust[i]
        cluster = CLUSTERS[taste2[c] if pick2[i] else taste[c]]
        cats = rng.choice(cluster, size=min(n_items[i], len(cluster)), replace=False)
        price = values[i] / len(cats)
        products.append([{"id": f"p-{k}-{int(order_ids[i]) % 5}", "category": CATEGORIES[k],
                          "quantity": 1, "price": f"{price:.2f}"} for k in cats])
        a = {"order_id": str(order_ids[i])}
        if checkout[i]:
            a["checkout_token"] = f"co-{order_ids[i]}"
        attrs.append(a)
    rows.add(o_cust, o_t, "order_placed", values, products=products, attrs=attrs)
    ck = checkout
    rows.add(o_cust[ck], o_t[ck] - 600, "checkout_started", values[ck],
             attrs=[{"checkout_token": f"co-{i}"} for i in order_ids[ck]])
    fate = rng.random(n_orders)
    ful = fate < 0.95
    can = (fate >= 0.95) & (fate < 0.99)
    oid_attrs = np.array([{"order_id": str(i)} for i in order_ids], dtype=object)
    rows.add(o_cust[ful], o_t[ful] + rng.uniform(0.5, 3, ful.sum()) * day, "order_fulfilled",
             attrs=list(oid_attrs[ful]))
    rows.add(o_cust[can], o_t[can] + rng.uniform(0.1, 1, can.sum()) * day, "order_cancelled",
             attrs=list(oid_attrs[can]))
    ref = ful & (rng.random(n_orders) < 0.03)
    rows.add(o_cust[ref], o_t[ref] + rng.uniform(5, 20, ref.sum()) * day, "refund_issued",
             -np.round(values[ref] * rng.choice([0.5, 1.0], ref.sum()), 2), attrs=list(oid_attrs[ref]))
    rev = rng.random(n_orders) < 0.1
    rows.add(o_cust[rev], o_t[rev] + rng.uniform(5, 30, rev.sum()) * day, "review_posted",
             rating=("csat", rng.choice([1, 2, 3, 4, 5], rev.sum(), p=[.05, .05, .15, .35, .4]), 5.0))
    # abandoned checkouts
    ab = rng.random(n_customers) < 0.25
    ab_t = signup[ab] + rng.uniform(0, 1, ab.sum()) * (end - signup[ab])
    tokens = [{"checkout_token": f"ab-{i}"} for i in range(ab.sum())]
    rows.add(cust[ab], ab_t, "checkout_started", rng.gamma(6, 8, ab.sum()), attrs=tokens)
    rows.add(cust[ab], ab_t + 3600, "checkout_abandoned", attrs=tokens)

    # tickets
    n_t = rng.poisson(0.7, n_customers)
    t_cust = np.repeat(cust, n_t)
    t_open = signup[t_cust] + rng.uniform(0, 1, len(t_cust)) * (end - signup[t_cust])
    tids = [{"ticket_id": str(i)} for i in range(len(t_cust))]
    tid_arr = np.array(tids, dtype=object)
    rows.add(t_cust, t_open, "ticket_opened", attrs=tids)
    comments = rng.poisson(0.8, len(t_cust))
    c_idx = np.repeat(np.arange(len(t_cust)), comments)
    rows.add(t_cust[c_idx], t_open[c_idx] + rng.uniform(0.1, 20, len(c_idx)) * 3600, "ticket_commented",
             attrs=[{"ticket_id": tids[i]["ticket_id"], "author": "customer"} for i in c_idx])
    solve_t = t_open + rng.exponential(30, len(t_cust)) * 3600
    solved = (rng.random(len(t_cust)) < 0.95) & (solve_t < end)
    rows.add(t_cust[solved], solve_t[solved], "ticket_solved", attrs=list(tid_arr[solved]))
    reopen = solved & (rng.random(len(t_cust)) < 0.1)
    re_t = solve_t + rng.uniform(2, 48, len(t_cust)) * 3600
    reopen &= re_t < end
    rows.add(t_cust[reopen], re_t[reopen], "ticket_reopened", attrs=list(tid_arr[reopen]))
    re_solve = reopen & (re_t + 20 * 3600 < end)
    rows.add(t_cust[re_solve], re_t[re_solve] + 20 * 3600, "ticket_solved",
             attrs=list(tid_arr[re_solve]))
    cs = solved & (rng.random(len(t_cust)) < 0.6)
    rows.add(t_cust[cs], solve_t[cs] + 7200, "csat_rating",
             rating=("csat", rng.choice([1, 2, 3, 4, 5], cs.sum(), p=[.08, .07, .15, .3, .4]), 5.0))
    ces = solved & (rng.random(len(t_cust)) < 0.2)
    rows.add(t_cust[ces], solve_t[ces] + 9000, "ces_response",
             rating=("ces", rng.integers(1, 8, ces.sum()), 7.0))
    nps = rng.random(n_customers) < 0.4
    nps_t = signup[nps] + rng.uniform(0, 1, nps.sum()) * (end - signup[nps])
    rows.add(cust[nps], nps_t, "nps_response",
             rating=("nps", rng.choice(11, nps.sum(), p=[.03] * 7 + [.1, .15, .25, .29]), 10.0))

    data = rows.arrays(end)
    n = len(data["cust"])
    if n < n_touchpoints:  # marketing-email engagement fills the rest
        extra = n_touchpoints - n
        e_cust = rng.integers(0, n_customers, extra)
        e_t = signup[e_cust] + rng.uniform(0, 1, extra) * (end - signup[e_cust])
        rows.add(e_cust, np.minimum(e_t, end), "email_engaged")
        data = rows.arrays(end)
    elif n > n_touchpoints:
        from collections import Counter
        raise ValueError(f"generated {n} touchpoints, more than the {n_touchpoints} asked for: "
                         f"{Counter(data['kind'].tolist()).most_common()}")
    return data


def _sqlite_time(ts: np.ndarray) -> list[str]:
    stamps = np.datetime_as_string((ts * 1e6).astype("datetime64[us]"), unit="us")
    return [s.replace("T", " ") for s in stamps.tolist()]


def load(engine: Engine, data: dict[str, np.ndarray], n_customers: int, *, now: datetime = NOW,
         writable_source: str = "benchcrm") -> None:
    """Write customers (each with a writable platform id), their identities and touchpoints."""
    created = now - timedelta(days=800)
    order = np.argsort(data["t"], kind="stable")
    data = {k: v[order] for k, v in data.items()}
    n = len(data["cust"])
    tp_ids = [f"tp-{i}" for i in range(n)]
    kinds = data["kind"].tolist()
    value = [None if np.isnan(v) else float(v) for v in data["value"].tolist()]
    rscore = [None if np.isnan(v) else float(v) for v in data["rscore"].tolist()]
    rmax = [None if np.isnan(v) else float(v) for v in data["rmax"].tolist()]
    products = [json.dumps(p, separators=(",", ":")) for p in data["products"].tolist()]
    attrs = [json.dumps(a, separators=(",", ":")) for a in data["attrs"].tolist()]
    cust_ids = (data["cust"] + 1).tolist()
    with db.write(engine) as conn:
        sqlite = db.is_sqlite(conn)
        idx = list(touchpoints.indexes)
        for index in idx:
            index.drop(conn)
        if sqlite:
            t_created = created.strftime("%Y-%m-%d %H:%M:%S.%f")
            t_now = now.strftime("%Y-%m-%d %H:%M:%S.%f")
            raw = conn.connection.driver_connection
            raw.executemany(
                "INSERT INTO customers (id, created_at, updated_at, email, profile_times, changed_at) "
                "VALUES (?, ?, ?, ?, '{}', ?)",
                [(i, t_created, t_created, f"c{i}@bench.example", t_now) for i in range(1, n_customers + 1)])
            raw.executemany(
                "INSERT INTO identities (customer_id, kind, source, value, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [(i, "id", writable_source, f"crm-{i}", t_created) for i in range(1, n_customers + 1)]
                + [(i, "id", SOURCE, f"shop-{i}", t_created) for i in range(1, n_customers + 1)])
            times = _sqlite_time(data["t"])
            rows = zip(tp_ids, cust_ids, cust_ids, times, kinds, [STAGE[k] for k in kinds], value,
                       data["rtype"].tolist(), rscore, rmax, products, attrs, strict=True)
            raw.executemany(
                "INSERT INTO touchpoints (source, touchpoint_id, customer_id, customer_source_id, "
                "occurred_at, kind, stage, channel, value, currency, rating_type, rating_score, "
                "rating_scale_max, products, attributes, created_at) VALUES "
                f"('{SOURCE}', ?, ?, 'shop-' || ?, ?, ?, ?, 'web', ?, 'EUR', ?, ?, ?, ?, ?, '{t_now}')",
                rows)
        else:
            conn.execute(customers.insert(), [
                {"id": i, "created_at": created, "updated_at": created, "email": f"c{i}@bench.example",
                 "profile_times": {}, "changed_at": now} for i in range(1, n_customers + 1)])
            conn.execute(identities.insert(), [
                {"customer_id": i, "kind": "id", "source": s, "value": f"{p}-{i}", "created_at": created}
                for i in range(1, n_customers + 1) for s, p in ((writable_source, "crm"), (SOURCE, "shop"))])
            from sqlalchemy import text
            conn.execute(text("SELECT setval('customers_id_seq', :n)"), {"n": n_customers})
            times = [datetime.fromtimestamp(t, UTC) for t in data["t"].tolist()]
            batch = []
            for i in range(n):
                batch.append({
                    "source": SOURCE, "touchpoint_id": tp_ids[i], "customer_id": cust_ids[i],
                    "customer_source_id": f"shop-{cust_ids[i]}", "occurred_at": times[i],
                    "kind": kinds[i], "stage": STAGE[kinds[i]], "channel": "web", "value": value[i],
                    "currency": "EUR", "rating_type": data["rtype"][i], "rating_score": rscore[i],
                    "rating_scale_max": rmax[i], "products": data["products"][i],
                    "attributes": data["attrs"][i], "created_at": now})
                if len(batch) == 20000:
                    conn.execute(touchpoints.insert(), batch)
                    batch = []
            if batch:
                conn.execute(touchpoints.insert(), batch)
        for index in idx:
            index.create(conn)
        if sqlite:
            conn.exec_driver_sql("ANALYZE")
