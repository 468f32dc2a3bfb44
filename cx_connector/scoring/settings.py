"""The ``scoring:`` section of the configuration file.

Placeholder until the scoring capability lands: the section exists and rejects
unknown keys, so a typo is reported rather than ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from marshmallow import RAISE, Schema, post_load


@dataclass(frozen=True)
class ScoringSettings:
    pass


class ScoringSettingsSchema(Schema):
    class Meta:
        unknown = RAISE

    @post_load
    def _make(self, data: dict, **_: Any) -> ScoringSettings:
        return ScoringSettings(**data)
