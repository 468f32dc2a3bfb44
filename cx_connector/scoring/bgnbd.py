"""The BG/NBD repeat-purchase model (Fader, Hardie & Lee 2005), fitted by maximum likelihood.

"Counting Your Customers the Easy Way: An Alternative to the Pareto/NBD Model",
Marketing Science 24(2), 275-284 (http://brucehardie.com/papers/018/fader_et_al_mksc_05.pdf).

A customer buys at a Poisson rate ``lambda`` (gamma(r, alpha) across customers)
while alive, and after every purchase drops out with probability ``p`` (beta(a, b)
across customers). Each customer is summarised as ``x`` (repeat purchases: purchase
*days* after the first), ``t_x`` (time of the last purchase) and ``T`` (time since
the first purchase), in weeks. Everything here is numpy-vectorised over customers:
scoring calls it once per run, never per customer.

The fit maximises the log-likelihood over log-parameters (so they stay positive)
with L-BFGS-B and the analytic gradient, because the full pass fits over every
purchasing customer (100,000 and more) and a gradient-free search would take
seconds; Nelder-Mead from the same start is the second attempt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import betaln, digamma, gammaln, hyp2f1

from cx_connector.errors import FitError


@dataclass(frozen=True)
class BGNBDParams:
    r: float
    alpha: float
    a: float
    b: float
    #: log-likelihood of the fitting data at these parameters
    log_likelihood: float
    #: purchasing customers the model was fitted on
    customers: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BGNBDParams:
        return cls(**{k: data[k] for k in ("r", "alpha", "a", "b", "log_likelihood", "customers")})


def _arrays(*values: Any) -> list[np.ndarray]:
    return [np.asarray(v, dtype=float) for v in values]


def log_likelihood(r: float, alpha: float, a: float, b: float, x: Any, t_x: Any, T: Any) -> np.ndarray:
    """Per-customer log-likelihood (FHL 2005, eq. 6 in log form)."""
    x, t_x, T = _arrays(x, t_x, T)
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = betaln(a, b + x) - betaln(a, b)
    l3 = -(r + x) * np.log(alpha + T)
    repeat = x > 0
    l4 = np.full_like(x, -np.inf)
    xr = x[repeat]
    l4[repeat] = np.log(a) - np.log(b + xr - 1) - (r + xr) * np.log(alpha + t_x[repeat])
    return a1 + a2 + np.logaddexp(l3, l4)


def _unique_rows(*cols: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Distinct rows of the given columns and how often each occurs (lexsort, fast in 1-D)."""
    order = np.lexsort(cols[::-1])
    s = [c[order] for c in cols]
    if len(order) == 0:
        return s, np.zeros(0)
    diff = np.zeros(len(order), dtype=bool)
    diff[0] = True
    for c in s:
        diff[1:] |= c[1:] != c[:-1]
    starts = np.flatnonzero(diff)
    counts = np.diff(np.append(starts, len(order)))
    return [c[starts] for c in s], counts.astype(float)


class _Data:
    """The fitting data, compressed: one-time buyers by T; repeat buyers by (x, t_x, T)."""

    def __init__(self, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> None:
        once = x == 0
        (self.T0,), self.w0 = _unique_rows(T[once])
        (x1, self.t1, self.T1), self.w1 = _unique_rows(x[~once], t_x[~once], T[~once])
        self.xu, self.xi = np.unique(x1, return_inverse=True)
        self.x1 = x1
        self.n = float(self.w0.sum() + self.w1.sum())


def _objective(logp: np.ndarray, d: _Data) -> tuple[float, np.ndarray]:
    """Mean negative log-likelihood and its gradient in log-parameters.

    One-time buyers contribute ``r ln alpha - r ln(alpha + T)`` only; for repeat
    buyers the gamma-function terms depend on x alone and are evaluated once per
    distinct x.
    """
    r, alpha, a, b = np.exp(logp)
    ln_alpha = np.log(alpha)
    # one-time buyers
    log_a0 = np.log(alpha + d.T0)
    ll = float(d.w0 @ (r * ln_alpha - r * log_a0))
    g_r = float(d.w0 @ (ln_alpha - log_a0))
    g_alpha = float(d.w0 @ (r / alpha - r / (alpha + d.T0)))
    g_a = g_b = 0.0
    if len(d.x1):
        xu, xi, x, w = d.xu, d.xi, d.x1, d.w1
        a12 = (gammaln(r + xu) - gammaln(r) + betaln(a, b + xu) - betaln(a, b))[xi]
        d_r_a1 = (digamma(r + xu) - digamma(r))[xi]
        d_a_a2 = (digamma(a + b) - digamma(a + b + xu))[xi]
        d_b_a2 = (digamma(b + xu) - digamma(a + b + xu) - digamma(b) + digamma(a + b))[xi]
        lb = np.log(b + xu - 1)[xi]
        rx = r + x
        log_aT = np.log(alpha + d.T1)
        log_atx = np.log(alpha + d.t1)
        l3 = -rx * log_aT
        l4 = np.log(a) - lb - rx * log_atx
        mix = np.logaddexp(l3, l4)
        ll += float(w @ (a12 + r * ln_alpha + mix))
        wt4 = np.exp(l4 - mix)  # share of the "dropped out after the last purchase" term
        wt3 = 1.0 - wt4
        g_r += float(w @ (d_r_a1 + ln_alpha - wt3 * log_aT - wt4 * log_atx))
        g_alpha += float(w @ (r / alpha - wt3 * rx / (alpha + d.T1) - wt4 * rx / (alpha + d.t1)))
        g_a = float(w @ (d_a_a2 + wt4 / a))
        g_b = float(w @ (d_b_a2 - wt4 / np.exp(lb)))
    grad = np.array([g_r * r, g_alpha * alpha, g_a * a, g_b * b])
    return -ll / d.n, -grad / d.n


def fit(x: Any, t_x: Any, T: Any, *, start: BGNBDParams | None = None) -> BGNBDParams:
    """Maximum-likelihood BG/NBD parameters; raises :class:`FitError` when it cannot.

    ``start``: the previous fit, as a warm start (the daily refit then needs only a
    few iterations); the default start is tried when it does not converge.
    """
    x, t_x, T = _arrays(x, t_x, T)
    if len(x) == 0:
        raise FitError("no purchasing customers to fit on")
    if not (x > 0).any():
        raise FitError("nobody has bought twice yet, so the repeat-purchase rate cannot be estimated")
    if (T <= 0).all():
        raise FitError("every purchaser bought for the first time today; there is no history yet")
    data = _Data(x, t_x, T)
    starts = [np.log([1.0, max(float(np.mean(T)), 1e-3), 1.0, 1.0])]
    if start is not None:
        starts.insert(0, np.log([start.r, start.alpha, start.a, start.b]))
    best, message = None, ""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for s in starts:
            res = minimize(_objective, s, args=(data,), jac=True, method="L-BFGS-B",
                           bounds=[(-15.0, 15.0)] * 4,
                           options={"maxiter": 2000, "ftol": 1e-14, "gtol": 1e-9})
            message = str(res.message)
            if res.success and np.isfinite(res.fun) and np.all(np.abs(res.x) < 14.9):
                best = res
                break
        if best is None:
            res = minimize(lambda p: _objective(p, data)[0], starts[-1], method="Nelder-Mead",
                           options={"maxiter": 10000, "xatol": 1e-9, "fatol": 1e-12})
            message = str(res.message)
            if res.success and np.isfinite(res.fun):
                best = res
    if best is None:
        raise FitError(f"the likelihood maximisation did not converge ({message})")
    r, alpha, a, b = (float(v) for v in np.exp(best.x))
    if not all(np.isfinite([r, alpha, a, b])) or np.any(np.abs(best.x) >= 14.9):
        raise FitError("the fit ran to an extreme parameter value (the data do not identify the model)")
    return BGNBDParams(r=r, alpha=alpha, a=a, b=b, log_likelihood=-float(best.fun) * data.n,
                       customers=int(data.n))


def p_alive(p: BGNBDParams, x: Any, t_x: Any, T: Any) -> np.ndarray:
    """P(still alive | x, t_x, T) (FHL 2005, eq. 11). 1 for every one-time buyer."""
    x, t_x, T = _arrays(x, t_x, T)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = np.where(x > 0, (p.a / np.maximum(p.b + x - 1, 1e-300))
                         * np.exp((p.r + x) * (np.log(p.alpha + T) - np.log(p.alpha + t_x))), 0.0)
    return 1.0 / (1.0 + ratio)


def expected_purchases(p: BGNBDParams, t: float, x: Any, t_x: Any, T: Any) -> np.ndarray:
    """E[purchases in (T, T+t] | x, t_x, T] (FHL 2005, eq. 10)."""
    x, t_x, T = _arrays(x, t_x, T)
    r, alpha, a, b = p.r, p.alpha, p.a, p.b
    z = t / (alpha + T + t)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        head = (a + b + x - 1) / (a - 1)
        body = 1 - np.exp((r + x) * (np.log(alpha + T) - np.log(alpha + T + t))) * hyp2f1(
            r + x, b + x, a + b + x - 1, z)
        out = head * body * p_alive(p, x, t_x, T)
    return np.where(np.isfinite(out), np.maximum(out, 0.0), 0.0)


def prob_purchase_within(p: BGNBDParams, h: float, x: Any, t_x: Any, T: Any) -> np.ndarray:
    """P(at least one purchase in the next ``h`` weeks | x, t_x, T).

    Under BG/NBD a customer drops out only right after a purchase, so one alive now
    is alive until the next purchase: P(alive) times P(a Poisson-gamma buyer with
    the posterior rate gamma(r + x, alpha + T) buys within h) =
    P(alive) x (1 - ((alpha + T) / (alpha + T + h)) ** (r + x)).
    """
    x, t_x, T = _arrays(x, t_x, T)
    buy = 1.0 - np.exp((p.r + x) * (np.log(p.alpha + T) - np.log(p.alpha + T + h)))
    return p_alive(p, x, t_x, T) * buy
