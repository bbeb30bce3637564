"""Raw numbers: one ``Sample`` per measured run, saved as JSON; and their summaries."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One measured run of one contender."""

    measure: str
    """``launch-light``, ``launch-torchrun``, ``ready``, ``kill``, ``logs`` or ``startup``."""
    contender: str
    hosts: int
    rep: int
    values: dict[str, float | None]
    """What was measured, in seconds, MB or counts; ``None`` where it did not happen."""
    error: str | None = None
    """Why the run failed; its values are then not used."""


@dataclass
class Results:
    machine: dict[str, Any]
    config: dict[str, Any]
    samples: list[Sample] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Findings made while running: failed runs, processes left behind, load."""

    def add(self, sample: Sample) -> None:
        self.samples.append(sample)
        if sample.error:
            self.notes.append(f"{sample.measure} {sample.contender} at {sample.hosts} host(s): {sample.error}")

    def invalidate(self, index: int, reason: str) -> None:
        """Mark sample ``index`` failed after the fact (its values stay in the JSON)."""
        sample = self.samples[index]
        if not sample.error:
            self.samples[index] = replace(sample, error=reason)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "machine": self.machine,
            "config": self.config,
            "notes": self.notes,
            "samples": [asdict(s) for s in self.samples],
        }
        path.write_text(json.dumps(data, indent=1) + "\n")

    @staticmethod
    def load(path: Path) -> Results:
        data = json.loads(path.read_text())
        samples = [Sample(**s) for s in data["samples"]]
        return Results(data["machine"], data["config"], samples, data.get("notes", []))

    def host_counts(self, measure: str) -> list[int]:
        return sorted({s.hosts for s in self.samples if s.measure == measure})

    def values(self, measure: str, contender: str, hosts: int, key: str) -> list[float]:
        """Every good value of ``key`` (failed runs and ``None`` left out)."""
        found = []
        for s in self.samples:
            if (s.measure, s.contender, s.hosts) == (measure, contender, hosts) and not s.error:
                value = s.values.get(key)
                if value is not None:
                    found.append(value)
        return found

    def summary(self, measure: str, contender: str, hosts: int, key: str) -> Summary | None:
        return Summary.of(self.values(measure, contender, hosts, key))

    def failures(self, measure: str, contender: str, hosts: int) -> int:
        return sum(
            1 for s in self.samples if (s.measure, s.contender, s.hosts) == (measure, contender, hosts) and s.error
        )


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    count: int

    @staticmethod
    def of(values: list[float]) -> Summary | None:
        if not values:
            return None
        return Summary(statistics.median(values), min(values), max(values), len(values))
