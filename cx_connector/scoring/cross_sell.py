"""Cross-sell: item-to-item co-occurrence over all customers' purchases.

Items are categories (or products, ``scoring.cross_sell.by``). Co-occurrence is
counted per customer: "customers who bought i also bought j", over everything
they bought (cancelled orders excluded). For a pair bought together by at least
``min_support`` customers:

* confidence(i -> j) = buyers of both / buyers of i (how many i-buyers also bought j);
* lift(i -> j) = confidence / (buyers of j / all buyers): how much likelier j is
  for an i-buyer than for anyone; only rules with lift above 1 are kept, the
  ``top_k`` strongest per item.

A customer's recommendation (``cx_next_best_product``) is the item not bought yet
with the strongest rule from anything they bought (highest lift, then confidence,
then support). Without such a rule (new customers, rare items) it is the most
popular item not bought yet, and its strength is its base rate (buyers of j /
all buyers). ``cx_cross_sell_score`` = retention probability x strength
(confidence of the rule), 0-100: the propensity to buy another category soon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse

from cx_connector.scoring.features import Features
from cx_connector.scoring.settings import CrossSellSettings

#: popular items tried as the fallback recommendation
POPULAR = 50


@dataclass(frozen=True)
class CrossSellModel:
    by: str
    #: customers who bought at least one item
    customers: int
    keys: tuple[str, ...]
    labels: tuple[str, ...]
    #: customers who bought each item
    buyers: np.ndarray
    #: rules, sorted strongest first: from, to, customers who bought both, confidence, lift
    src: np.ndarray
    dst: np.ndarray
    support: np.ndarray
    confidence: np.ndarray
    lift: np.ndarray
    min_support: int = 5

    def to_json(self) -> dict[str, Any]:
        return {"by": self.by, "customers": self.customers, "min_support": self.min_support,
                "items": [[k, lab, int(b)] for k, lab, b in zip(self.keys, self.labels, self.buyers.tolist(),
                                                                strict=True)],
                "rules": [[int(a), int(b), int(s), round(float(c), 6), round(float(li), 6)]
                          for a, b, s, c, li in zip(self.src, self.dst, self.support, self.confidence,
                                                    self.lift, strict=True)]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CrossSellModel:
        items = data.get("items") or []
        rules = np.asarray(data.get("rules") or np.zeros((0, 5)), dtype=float).reshape(-1, 5)
        return cls(by=data["by"], customers=int(data["customers"]),
                   min_support=int(data.get("min_support", 5)),
                   keys=tuple(i[0] for i in items), labels=tuple(i[1] for i in items),
                   buyers=np.asarray([i[2] for i in items], dtype=float),
                   src=rules[:, 0].astype(np.int64), dst=rules[:, 1].astype(np.int64),
                   support=rules[:, 2].astype(np.int64), confidence=rules[:, 3], lift=rules[:, 4])

    def summary(self) -> dict[str, Any]:
        return {"by": self.by, "customers": self.customers, "items": len(self.keys),
                "rules": len(self.src), "min_support": self.min_support}


def fit(f: Features, s: CrossSellSettings) -> CrossSellModel:
    """Co-occurrence rules over everyone in ``f`` (a full pass)."""
    n_items = len(f.item_keys)
    buyers_of = np.unique(f.item_idx)
    n = len(buyers_of)
    empty = np.zeros(0, dtype=np.int64)
    if n == 0:
        return CrossSellModel(by=s.by, customers=0, keys=(), labels=(), buyers=np.zeros(0), src=empty,
                              dst=empty, support=empty, confidence=np.zeros(0), lift=np.zeros(0),
                              min_support=s.min_support)
    row = np.searchsorted(buyers_of, f.item_idx)
    b = sparse.csr_matrix((np.ones(len(row)), (row, f.item_code)), shape=(n, n_items))
    buyers = np.asarray(b.sum(axis=0)).ravel()
    co = (b.T @ b).tocoo()
    i, j, both = co.row.astype(np.int64), co.col.astype(np.int64), co.data
    keep = (i != j) & (both >= s.min_support)
    i, j, both = i[keep], j[keep], both[keep]
    confidence = both / buyers[i]
    lift = confidence / (buyers[j] / n)
    keep = lift > 1.0
    i, j, both, confidence, lift = i[keep], j[keep], both[keep], confidence[keep], lift[keep]
    labels = np.asarray(f.item_labels, dtype=object)
    # strongest first: lift, confidence, support, then the label (a stable, readable tie-break)
    order = np.lexsort((labels[j] if len(j) else j, -both, -confidence, -lift))
    i, j, both, confidence, lift = i[order], j[order], both[order], confidence[order], lift[order]
    # top_k per source item
    by_src = np.argsort(i, kind="stable")
    rank = np.empty(len(i), dtype=np.int64)
    starts = np.searchsorted(i[by_src], i[by_src], side="left")
    rank[by_src] = np.arange(len(i)) - starts
    keep = rank < s.top_k
    return CrossSellModel(by=s.by, customers=n, keys=tuple(f.item_keys), labels=tuple(f.item_labels),
                          buyers=buyers, src=i[keep], dst=j[keep], support=both[keep].astype(np.int64),
                          confidence=confidence[keep], lift=lift[keep], min_support=s.min_support)


@dataclass
class Recommendations:
    """Per customer: recommended item (-1: none), the rule's source item (-1: popularity
    fallback), support, confidence (or base rate) and lift; ``bought`` items known."""

    item: np.ndarray
    source: np.ndarray
    support: np.ndarray
    strength: np.ndarray
    lift: np.ndarray
    bought: np.ndarray


def recommend(model: CrossSellModel, f: Features) -> Recommendations:
    n = f.n
    out = Recommendations(item=np.full(n, -1, dtype=np.int64), source=np.full(n, -1, dtype=np.int64),
                          support=np.zeros(n, dtype=np.int64), strength=np.full(n, np.nan),
                          lift=np.full(n, np.nan), bought=np.zeros(n, dtype=np.int64))
    if model.customers == 0:
        return out
    # the customers' items, in the model's numbering (items the model never saw are unknown)
    index = {k: i for i, k in enumerate(model.keys)}
    mapping = np.array([index.get(k, -1) for k in f.item_keys], dtype=np.int64)
    cust = f.item_idx
    item = mapping[f.item_code] if len(f.item_code) else np.zeros(0, dtype=np.int64)
    out.bought = np.bincount(cust, minlength=n)
    known = item >= 0
    cust, item = cust[known], item[known]
    width = len(model.keys) + 1
    owned = np.unique(cust * width + item)

    # rules from what each customer bought, expanded to candidates
    rank_of = np.arange(len(model.src), dtype=np.int64)  # rules are sorted strongest first
    by_src = np.argsort(model.src, kind="stable")
    src_sorted = model.src[by_src]
    lo = np.searchsorted(src_sorted, item, side="left")
    hi = np.searchsorted(src_sorted, item, side="right")
    count = hi - lo
    if count.sum():
        cand_cust = np.repeat(cust, count)
        offsets = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        cand_rule = by_src[np.repeat(lo, count) + offsets]
        cand_item = model.dst[cand_rule]
        new = ~np.isin(cand_cust * width + cand_item, owned)
        cand_cust, cand_rule = cand_cust[new], cand_rule[new]
        best = np.full(n, len(rank_of), dtype=np.int64)
        np.minimum.at(best, cand_cust, rank_of[cand_rule])
        has = best < len(rank_of)
        rule = best[has]
        out.item[has] = model.dst[rule]
        out.source[has] = model.src[rule]
        out.support[has] = model.support[rule]
        out.strength[has] = model.confidence[rule]
        out.lift[has] = model.lift[rule]
    # popularity fallback: the most bought item the customer does not have yet
    popular = np.lexsort((np.asarray(model.labels, dtype=object), -model.buyers))[:POPULAR]
    todo = out.item < 0
    for j in popular.tolist():
        if not todo.any():
            break
        have = np.zeros(n, dtype=bool)
        have[cust[item == j]] = True
        take = todo & ~have
        out.item[take] = j
        out.strength[take] = model.buyers[j] / model.customers
        todo &= ~take
    return out
