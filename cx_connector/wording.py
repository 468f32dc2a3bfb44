"""Counts in words, for messages people read (the CLI's output, the reasons it prints).

"Scored 1 customers" or "1 new touchpoints" reads as carelessness to the admin who
sees it. :func:`counted` puts a count before its noun in the singular or the plural,
so every message says it the same way. It lives outside :mod:`cx_connector.cli` (and
imports nothing) because some of the messages the CLI prints are built by the modules
it calls (an outbox write's reason, a backfill that refuses to start).
"""

from __future__ import annotations


def plural(noun: str) -> str:
    """The regular English plural of ``noun``'s last word: ``raw delivery`` -> ``raw
    deliveries``, ``record write`` -> ``record writes``, ``index`` -> ``indexes``."""
    if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "i", "o", "u", ""):
        return noun[:-1] + "ies"
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    return noun + "s"


def counted(n: int, noun: str, nouns: str | None = None) -> str:
    """``n`` and ``noun`` in agreement: ``1 customer``, ``0 customers``, ``2,371 customers``.

    ``nouns``: the plural when it is not the regular one (:func:`plural`). Integers get a
    thousands separator, as in the rest of the CLI's output.
    """
    number = f"{n:,}" if isinstance(n, int) else f"{n:g}"
    return f"{number} {noun if n == 1 else (nouns or plural(noun))}"


def only_customers(n: int, what: str) -> str:
    """Too few customers to do something with: "no customer has X", "only 1 customer has
    X", "only 2,371 customers have X" (never "only 0 customers have")."""
    if n == 0:
        return f"no customer has {what}"
    return f"only {counted(n, 'customer has', 'customers have')} {what}"
