"""Prometheus view of the live streams: one sample per stream per gauge, read at scrape time.

Nothing is counted here: the collector asks the hub for ``StreamState``s when /metrics is
scraped (``StreamHub.states()``, a few attribute reads per stream) and turns them into
gauges labelled by stream slug. A stream that disappears from the hub disappears from the
next scrape, with no stale label set left behind, which a ``Gauge`` kept up to date by
hand would not give for free.

    origincast_stream_live{stream}              1 while a source publishes (after its first keyframe)
    origincast_stream_viewers{stream}           WHEP viewers attached (connecting or playing)
    origincast_stream_fps{stream}               video frames/s over the last seconds
    origincast_stream_bitrate_bps{stream}       bits/s of video and audio over the last seconds
    origincast_stream_width_pixels{stream}      from the H.264 SPS (absent until one was seen)
    origincast_stream_height_pixels{stream}
    origincast_stream_uptime_seconds{stream}    since the current source went live (0 offline)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from stream.stats import StreamState

_LABELS = ["stream"]


class StreamCollector(Collector):
    """Gauges of every stream's state, from ``states()`` at each scrape."""

    def __init__(self, states: Callable[[], Iterable[StreamState]]) -> None:
        self._states = states

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        def gauge(name: str, doc: str, unit: str = "") -> GaugeMetricFamily:
            return GaugeMetricFamily(f"origincast_stream_{name}", doc, labels=_LABELS, unit=unit)

        return {
            "live": gauge("live", "1 while a source publishes into the stream, 0 while it is offline"),
            "viewers": gauge("viewers", "WHEP viewers attached to the stream"),
            "fps": gauge("fps", "Video frames per second over the last seconds"),
            "bitrate": gauge("bitrate_bps", "Bits per second (video and audio) over the last seconds"),
            "width": gauge("width", "Picture width from the H.264 SPS", "pixels"),
            "height": gauge("height", "Picture height from the H.264 SPS", "pixels"),
            "uptime": gauge("uptime", "Time since the current source went live, 0 while offline", "seconds"),
        }

    def describe(self) -> Iterator[Metric]:
        # Names only, so the registry can refuse a second collector with the same names.
        yield from self._families().values()

    def collect(self) -> Iterator[Metric]:
        f = self._families()
        for s in self._states():
            labels = [s.slug]
            f["live"].add_metric(labels, 1.0 if s.status == "live" else 0.0)
            f["viewers"].add_metric(labels, float(s.viewers))
            f["fps"].add_metric(labels, float(s.fps))
            f["bitrate"].add_metric(labels, float(s.bitrate_bps))
            if s.width is not None and s.height is not None:
                f["width"].add_metric(labels, float(s.width))
                f["height"].add_metric(labels, float(s.height))
            f["uptime"].add_metric(labels, float(s.uptime_s))
        yield from f.values()

