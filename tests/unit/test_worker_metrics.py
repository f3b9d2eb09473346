"""Worker processes' counters added into the node's /metrics: summed per label set, kept when a worker
is replaced (totals never go down), and families only workers have are shown too."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from mailgate.observability.worker_metrics import WorkerMetrics, snapshot


def _registry() -> tuple[CollectorRegistry, Counter, Histogram]:
    registry = CollectorRegistry()
    counter = Counter("mx_messages", "messages", ["outcome"], registry=registry)
    histogram = Histogram("commit_size", "sizes", buckets=(1, 4), registry=registry)
    Gauge("role_up", "up", registry=registry).set(1)
    return registry, counter, histogram


def _value(text: str, sample: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(sample + " "))
    return float(line.rsplit(" ", 1)[1])


def test_counts_of_workers_add_to_the_nodes_and_survive_their_exit() -> None:
    node, node_counter, node_histogram = _registry()
    node_counter.labels("accepted").inc(3)
    node_histogram.observe(2)
    worker, worker_counter, worker_histogram = _registry()
    worker_counter.labels("accepted").inc(5)
    worker_counter.labels("refused").inc(1)  # a label set the node never had
    worker_histogram.observe(3)
    worker_histogram.observe(9)
    Counter("only_workers", "a family the node has not registered", registry=worker).inc(7)

    merged = WorkerMetrics(node)
    assert generate_latest(merged) == generate_latest(node)  # no worker yet: the node's own exposition
    merged.update(1, snapshot(worker))
    text = generate_latest(merged).decode()
    assert _value(text, 'mx_messages_total{outcome="accepted"}') == 8
    assert _value(text, 'mx_messages_total{outcome="refused"}') == 1
    assert _value(text, "commit_size_count") == 3 and _value(text, "commit_size_sum") == 14
    assert _value(text, 'commit_size_bucket{le="4.0"}') == 2
    assert _value(text, "only_workers_total") == 7
    assert _value(text, "role_up") == 1  # gauges are the node's alone

    merged.retire(1)  # the worker died; its replacement starts from zero
    fresh, fresh_counter, _ = _registry()
    fresh_counter.labels("accepted").inc(2)
    merged.update(1, snapshot(fresh))
    text = generate_latest(merged).decode()
    assert _value(text, 'mx_messages_total{outcome="accepted"}') == 10
    assert _value(text, 'mx_messages_total{outcome="refused"}') == 1
