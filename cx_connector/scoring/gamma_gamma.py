"""The Gamma-Gamma spend model (Fader, Hardie & Lee 2005; Colombo & Jiang 1999).

"RFM and CLV: Using Iso-Value Curves for Customer Base Analysis", Journal of
Marketing Research 42(4); the estimation note is
http://brucehardie.com/notes/025/gamma_gamma.pdf.

A customer's purchase values are gamma(p, nu) around their own mean; ``nu`` is
gamma(q, gamma) across customers. It is fitted on repeat buyers (``x`` repeat
purchases with mean value ``m``, the first purchase excluded as in the published
CDNOW analysis) and gives each customer's expected value of a future purchase,
shrunk from their own mean towards the population mean.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import digamma, gammaln

from cx_connector.errors import FitError


@dataclass(frozen=True)
class GammaGammaParams:
    p: float
    q: float
    gamma: float
    log_likelihood: float
    #: repeat buyers the model was fitted on
    customers: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GammaGammaParams:
        return cls(**{k: data[k] for k in ("p", "q", "gamma", "log_likelihood", "customers")})

    @property
    def population_mean(self) -> float:
        """E[purchase value] of a customer we know nothing about: p * gamma / (q - 1)."""
        return self.p * self.gamma / (self.q - 1)


def log_likelihood(p: float, q: float, g: float, x: Any, m: Any) -> np.ndarray:
    """Per-customer log-likelihood of mean value ``m`` over ``x`` purchases (x > 0, m > 0)."""
    x = np.asarray(x, dtype=float)
    m = np.asarray(m, dtype=float)
    px = p * x
    return (gammaln(px + q) - gammaln(px) - gammaln(q) + q * np.log(g)
            + (px - 1) * np.log(m) + px * np.log(x) - (px + q) * np.log(g + m * x))


def _objective(logp: np.ndarray, x: np.ndarray, m: np.ndarray, w: np.ndarray,
               ln_m: np.ndarray, ln_x: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean negative log-likelihood and its gradient in log-parameters."""
    p, q, g = np.exp(logp)
    px = p * x
    ln_gmx = np.log(g + m * x)
    ll = (gammaln(px + q) - gammaln(px) - gammaln(q) + q * np.log(g)
          + (px - 1) * ln_m + px * ln_x - (px + q) * ln_gmx)
    dig = digamma(px + q)
    d_p = x * (dig - digamma(px) + ln_m + ln_x - ln_gmx)
    d_q = dig - digamma(q) + np.log(g) - ln_gmx
    d_g = q / g - (px + q) / (g + m * x)
    n = w.sum()
    grad = np.array([(w * d_p).sum() * p, (w * d_q).sum() * q, (w * d_g).sum() * g])
    return -float((w * ll).sum()) / n, -grad / n


def fit(x: Any, m: Any, *, start: GammaGammaParams | None = None) -> GammaGammaParams:
    """Maximum-likelihood parameters from repeat buyers; raises :class:`FitError`.

    L-BFGS-B with the analytic gradient over log-parameters (``start``: a previous
    fit to start from); Nelder-Mead when that does not converge.
    """
    x = np.asarray(x, dtype=float)
    m = np.asarray(m, dtype=float)
    keep = (x > 0) & (m > 0) & np.isfinite(m)
    x, m = x[keep], m[keep]
    if len(x) == 0:
        raise FitError("no repeat buyers with a positive purchase value to fit the spend model on")
    rows, w = np.unique(np.column_stack([x, m]), axis=0, return_counts=True)
    x, m, w = rows[:, 0], rows[:, 1], w.astype(float)
    args = (x, m, w, np.log(m), np.log(x))
    starts = [np.log([1.0, 2.0, max(float(np.mean(m)), 1e-3)])]
    if start is not None:
        starts.insert(0, np.log([start.p, start.q, start.gamma]))
    best, message = None, ""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for s in starts:
            res = minimize(_objective, s, args=args, jac=True, method="L-BFGS-B",
                           bounds=[(-20.0, 20.0)] * 3,
                           options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-10})
            message = str(res.message)
            if res.success and np.isfinite(res.fun) and np.all(np.abs(res.x) < 19.9):
                best = res
                break
        if best is None:
            res = minimize(lambda v: _objective(v, *args)[0], starts[-1], method="Nelder-Mead",
                           options={"maxiter": 20000, "xatol": 1e-10, "fatol": 1e-13})
            message = str(res.message)
            if res.success and np.isfinite(res.fun):
                best = res
    if best is None:
        raise FitError(f"the spend-model fit did not converge ({message})")
    p, q, g = (float(v) for v in np.exp(best.x))
    if not all(np.isfinite([p, q, g])) or np.any(np.abs(best.x) >= 19.9):
        raise FitError("the spend-model fit ran to an extreme parameter value")
    if q <= 1:
        raise FitError(f"the spend model's q = {q:.3g} is not above 1, so expected spend is undefined")
    return GammaGammaParams(p=p, q=q, gamma=g, log_likelihood=-float(best.fun) * float(w.sum()),
                            customers=int(w.sum()))


def expected_spend(params: GammaGammaParams, x: Any, m: Any) -> np.ndarray:
    """E[value of a purchase | x repeat purchases of mean m]; the population mean when x = 0."""
    x = np.asarray(x, dtype=float)
    m = np.asarray(m, dtype=float)
    p, q, g = params.p, params.q, params.gamma
    with np.errstate(invalid="ignore"):
        own = p * (g + x * np.where(x > 0, m, 0.0)) / (p * x + q - 1)
    return np.where(x > 0, own, params.population_mean)
