"""What `lifecycle audit replay` found: counts, and the violations of the domain's rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lifecycle.account_terms import AccountStatus


@dataclass(frozen=True)
class Violation:
    originator_id: str
    version: int | None
    rule: str
    detail: str

    def describe(self) -> str:
        at = f" v{self.version}" if self.version is not None else ""
        return f"{self.originator_id}{at}: {self.rule}: {self.detail}"


@dataclass
class ReplayReport:
    events: int = 0
    aggregates: int = 0
    accounts: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in AccountStatus})
    email_claims: int = 0
    held_claims: int = 0
    unfolded_accounts: int = 0  # streams a violation stopped: their status is unknown
    violations: int = 0
    first: list[Violation] = field(default_factory=list)
    by_rule: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.violations == 0

    def add(self, violation: Violation, keep: int) -> None:
        self.violations += 1
        self.by_rule[violation.rule] = self.by_rule.get(violation.rule, 0) + 1
        if len(self.first) < keep:
            self.first.append(violation)

    def merge(self, other: ReplayReport, keep: int) -> None:
        """Add the report of the next range of ids (its violations follow this one's)."""
        self.events += other.events
        self.aggregates += other.aggregates
        for status, n in other.accounts.items():
            self.accounts[status] = self.accounts.get(status, 0) + n
        self.email_claims += other.email_claims
        self.held_claims += other.held_claims
        self.unfolded_accounts += other.unfolded_accounts
        self.violations += other.violations
        for rule, n in other.by_rule.items():
            self.by_rule[rule] = self.by_rule.get(rule, 0) + n
        self.first = [*self.first, *other.first][:keep]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "aggregates": self.aggregates,
            "accounts": self.accounts,
            "email_claims": self.email_claims,
            "held_claims": self.held_claims,
            "violations": self.violations,
            "violations_by_rule": self.by_rule,
            "first_violations": [v.describe() for v in self.first],
        }
