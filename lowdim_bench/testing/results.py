"""What a conformance check returns: its verdict, what it expected and what it saw."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CheckResult:
    """One check on one plugin. `skipped` holds the reason when the check does not apply."""

    check: str
    subject: str
    passed: bool
    expected: str = ""
    seen: str = ""
    skipped: str | None = None

    @property
    def failed(self) -> bool:
        return not self.passed and self.skipped is None

    def __str__(self) -> str:
        if self.skipped is not None:
            return f"[skip] {self.subject}: {self.check}: {self.skipped}"
        if self.passed:
            return f"[ok]   {self.subject}: {self.check}" + (f" ({self.seen})" if self.seen else "")
        return f"[FAIL] {self.subject}: {self.check}\n    expected: {self.expected}\n    seen:     {self.seen}"


class ConformanceError(AssertionError):
    """Raised by the assert_* helpers; `results` holds every check that ran."""

    def __init__(self, results: list[CheckResult]) -> None:
        self.results = results
        failed = [r for r in results if r.failed]
        super().__init__(f"{len(failed)} conformance check(s) failed:\n" + "\n".join(str(r) for r in failed))


def passed(check: str, subject: str, seen: str = "") -> CheckResult:
    return CheckResult(check, subject, True, seen=seen)


def failed(check: str, subject: str, expected: str, seen: str) -> CheckResult:
    return CheckResult(check, subject, False, expected=expected, seen=seen)


def skipped(check: str, subject: str, reason: str) -> CheckResult:
    return CheckResult(check, subject, False, skipped=reason)


def raise_on_failure(results: list[CheckResult]) -> list[CheckResult]:
    if any(r.failed for r in results):
        raise ConformanceError(results)
    return results
