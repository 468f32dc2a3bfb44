"""Scoring: retention, cross-sell and CX scores per customer (see the scoring issue)."""
