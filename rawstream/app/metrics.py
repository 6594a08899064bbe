"""``GET /metrics``: Prometheus text format, every name prefixed ``rawstream_``.

Two kinds of series:

* **Read at scrape time** from the server's and the engine's ``statistics()``
  (connections by state, active and queued streams, paused writers, tokens, decode
  steps, close codes labelled by :func:`close_code_label`, timeouts, shutdown drain
  time). A custom collector builds them when Prometheus asks, so the hot path pays
  nothing for them.
* **Observed as they happen**: histograms of time to first token, inter-token
  latency, and disconnect-to-cancel latency; counters of requests by endpoint and
  status. One observation per delta or per request, never per byte.

Each :class:`Metrics` has its own registry, so several servers in one process (the
test suite) do not collide.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from rawstream.engine.base import Engine
    from rawstream.server.server import Server

#: Content type of the Prometheus text exposition format 0.0.4.
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


#: The single-value series read from ``statistics()`` at scrape time:
#: (name, counter or gauge, help, which statistics, attribute).
_SCALARS: tuple[tuple[str, str, str, str, str], ...] = (
    ("rawstream_connections_accepted", "counter", "Connections accepted.",
     "server", "accepted_total"),
    ("rawstream_connections_rejected", "counter", "Connections refused over --max-connections.",
     "server", "rejected_total"),
    ("rawstream_paused_writers", "gauge",
     "Connections whose write buffer is full (client reading slowly).",
     "server", "paused_writers"),
    ("rawstream_write_stall_aborts", "counter",
     "Connections aborted by the write-stall watchdog.", "server", "stall_aborts_total"),
    ("rawstream_engine_slots", "gauge", "Engine slots.", "engine", "slots"),
    ("rawstream_engine_busy_slots", "gauge", "Slots holding a stream.", "engine", "busy_slots"),
    ("rawstream_streams_active", "gauge", "Streams being generated.",
     "engine", "active_streams"),
    ("rawstream_streams_queued", "gauge", "Streams waiting for a slot.",
     "engine", "queued_streams"),
    ("rawstream_streams_paused", "gauge",
     "Streams the engine skips because their consumer is behind.", "engine", "paused_streams"),
    ("rawstream_prompt_tokens_cached", "counter",
     "Prompt tokens not decoded: their KV was kept from the slot's previous stream.",
     "engine", "prefix_cached_tokens_total"),
    ("rawstream_decode_steps", "counter", "Engine decode steps.",
     "engine", "decode_steps_total"),
    ("rawstream_decode_seconds", "counter", "Time spent in decode steps.",
     "engine", "decode_seconds_total"),
    ("rawstream_batch_tokens", "counter",
     "Tokens over all decode steps (divide by steps for the mean batch).",
     "engine", "batch_tokens_total"),
    ("rawstream_streams_cancelled", "counter", "Streams cancelled.",
     "engine", "cancelled_total"),
)  # fmt: skip


def close_code_label(code: int) -> str:
    """The ``code`` label of a WebSocket close code: a bounded set of values.

    RFC 6455 section 7.4.2: 1000-2999 belong to the protocol (1000-1015 are
    defined or registered), "3000-3999 [...] registered with IANA" for libraries
    and frameworks, "4000-4999 [...] reserved for private use". Each protocol code
    is its own label; a peer may pick any code in the two ranges, so each range is
    one label, and anything else is ``other``.
    """
    if 1000 <= code <= 1015:
        return str(code)
    if 3000 <= code <= 3999:
        return "3000-3999"
    if 4000 <= code <= 4999:
        return "4000-4999"
    return "other"


class _StatisticsCollector(Collector):
    """Series computed from ``statistics()`` snapshots at scrape time."""

    def __init__(self, server: Server, engine: Engine) -> None:
        self.server = server
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        s = self.server.statistics()
        e = self.engine.statistics()
        sources: dict[str, object] = {"server": s, "engine": e}
        for name, kind, doc, source, attribute in _SCALARS:
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(name, doc, value=getattr(sources[source], attribute))
        conns = GaugeMetricFamily(
            "rawstream_connections", "Open connections by state.", labels=["state"]
        )
        for state, n in s.connections.items():
            conns.add_metric([state], n)
        yield conns
        timeouts = CounterMetricFamily(
            "rawstream_timeouts", "Deadlines that fired, by kind.", labels=["kind"]
        )
        for kind, n in sorted(s.timeouts_total.items()):
            timeouts.add_metric([kind], n)
        yield timeouts
        codes = CounterMetricFamily(
            "rawstream_websocket_close_codes",
            "WebSocket closes by close code (sent or received); "
            "codes a peer picks are counted by range.",
            labels=["code"],
        )
        by_label: dict[str, int] = {}
        for code, n in sorted(s.ws_close_codes_total.items()):
            label = close_code_label(code)
            by_label[label] = by_label.get(label, 0) + n
        for label, n in by_label.items():
            codes.add_metric([label], n)
        yield codes
        yield GaugeMetricFamily(
            "rawstream_shutdown_drain_seconds",
            "Duration of the last graceful shutdown (0 before any).",
            value=s.shutdown_drain_seconds or 0.0,
        )
        yield GaugeMetricFamily(
            "rawstream_engine_ready", "1 when the engine is ready.", value=e.state == "ready"
        )
        tokens = CounterMetricFamily("rawstream_tokens", "Tokens processed.", labels=["kind"])
        tokens.add_metric(["prompt"], e.prompt_tokens_total)
        tokens.add_metric(["completion"], e.completion_tokens_total)
        yield tokens


class LoopHistogram:
    """A histogram observed on the event loop's thread only: no lock, one bisect.

    ``prometheus_client.Histogram`` takes a lock per observation, which is the
    right default but a measurable cost once per delta of every stream; these
    series are only ever touched by the loop, so plain integers do.
    """

    __slots__ = ("bounds", "count", "counts", "doc", "name", "sum")

    def __init__(self, name: str, doc: str, bounds: tuple[float, ...]) -> None:
        self.name = name
        self.doc = doc
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last bucket is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose upper bound is >= it."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def family(self) -> HistogramMetricFamily:
        """The series in Prometheus form (cumulative buckets)."""
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += n
            buckets.append(("+Inf" if bound == math.inf else str(float(bound)), total))
        return HistogramMetricFamily(self.name, self.doc, buckets=buckets, sum_value=self.sum)


class _HistogramCollector(Collector):
    def __init__(self, histograms: tuple[LoopHistogram, ...]) -> None:
        self.histograms = histograms

    def collect(self) -> Iterator[Metric]:
        for histogram in self.histograms:
            yield histogram.family()


class Metrics:
    """The registry of one app and the series it observes directly."""

    def __init__(self, server: Server, engine: Engine) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StatisticsCollector(server, engine))
        self.time_to_first_token = LoopHistogram(
            "rawstream_time_to_first_token_seconds",
            "From request admission to the first generated text.",
            _LATENCY_BUCKETS,
        )
        self.inter_token = LoopHistogram(
            "rawstream_inter_token_seconds",
            "Gap between deliveries divided by the tokens they carried.",
            _TOKEN_BUCKETS,
        )
        self.cancel_latency = LoopHistogram(
            "rawstream_cancel_latency_seconds",
            "From cancellation (client gone, cancel message) to the slot being free.",
            _TOKEN_BUCKETS,
        )
        self.registry.register(
            _HistogramCollector((self.time_to_first_token, self.inter_token, self.cancel_latency))
        )
        self.requests = Counter(
            "rawstream_requests",
            "Requests answered, by endpoint and status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.overloaded = Counter(
            "rawstream_overloaded",
            "Requests refused with 503 because the wait queue was full.",
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)
