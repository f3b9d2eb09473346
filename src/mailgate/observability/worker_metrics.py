"""The counters of a node's worker processes, added into the node's own ``/metrics``.

Each worker has its own registry. It sends a snapshot of its counters and histograms to the node every
few seconds and once as it stops; the node adds the latest snapshot of every worker to its own values
when scraped, so a scrape sees the whole node, as it would with one process. A worker that exits has its
last snapshot kept, so the node's totals never go down when a worker is replaced; what a worker counted
after its last snapshot and before dying is lost (at most ``SNAPSHOT_SECONDS`` of it).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

SNAPSHOT_SECONDS = 5.0
_ADDITIVE = ("counter", "histogram")

Labels = tuple[tuple[str, str], ...]
# (family name, type, documentation, [(sample name, labels, value)])
Family = tuple[str, str, str, list[tuple[str, Labels, float]]]


def snapshot(registry: CollectorRegistry) -> list[Family]:
    """The additive families of ``registry``, as plain tuples (picklable, and small)."""
    families: list[Family] = []
    for family in registry.collect():
        if family.type not in _ADDITIVE:
            continue
        samples = [
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for s in family.samples
            if not s.name.endswith("_created")
        ]
        families.append((family.name, family.type, family.documentation, samples))
    return families


class WorkerMetrics:
    """The workers' snapshots, merged into a registry's own families by ``collect``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._live: dict[int, list[Family]] = {}
        self._departed: dict[tuple[str, str, Labels], float] = {}
        self._described: dict[str, tuple[str, str]] = {}  # family -> (type, documentation)

    def update(self, worker: int, families: list[Family]) -> None:
        self._live[worker] = families

    def retire(self, worker: int) -> None:
        """``worker`` is gone: its last counts stay in the node's totals."""
        for name, kind, doc, samples in self._live.pop(worker, []):
            self._described[name] = (kind, doc)
            for sample, labels, value in samples:
                key = (name, sample, labels)
                self._departed[key] = self._departed.get(key, 0.0) + value

    def _others(self) -> dict[tuple[str, str, Labels], float]:
        sums = dict(self._departed)
        for families in self._live.values():
            for name, kind, doc, samples in families:
                self._described.setdefault(name, (kind, doc))
                for sample, labels, value in samples:
                    key = (name, sample, labels)
                    sums[key] = sums.get(key, 0.0) + value
        return sums

    def collect(self) -> Iterator[Metric]:
        """The registry's families with the workers' counts added in (so: usable by ``generate_latest``)."""
        others = self._others()
        if not others:
            yield from self._registry.collect()
            return
        seen: set[str] = set()
        for family in self._registry.collect():
            seen.add(family.name)
            if family.type not in _ADDITIVE:
                yield family
                continue
            merged = Metric(family.name, family.documentation, family.type)
            present: set[tuple[str, Labels]] = set()
            for s in family.samples:
                labels = tuple(sorted(s.labels.items()))
                present.add((s.name, labels))
                extra = 0.0 if s.name.endswith("_created") else others.get((family.name, s.name, labels), 0.0)
                merged.add_sample(s.name, s.labels, s.value + extra)
            for (name, sample, labels), value in others.items():
                if name == family.name and (sample, labels) not in present:
                    merged.add_sample(sample, dict(labels), value)
            yield merged
        for name in sorted({key[0] for key in others} - seen):
            kind, doc = self._described[name]
            only = Metric(name, doc, kind)
            for (family_name, sample, labels), value in others.items():
                if family_name == name:
                    only.add_sample(sample, dict(labels), value)
            yield only
