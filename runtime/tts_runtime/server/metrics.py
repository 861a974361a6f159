"""Prometheus metrics, one registry per app (several apps can live in one process, as in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
_RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 8.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tts_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "tts_request_duration_seconds",
            "Time from request to the last byte of the response",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_audio = Histogram(
            "tts_time_to_first_audio_seconds",
            "Time from admission to the first audio generated (streamed or whole)",
            ["streamed"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.real_time_factor = Histogram(
            "tts_real_time_factor",
            "Generation time divided by the duration of the audio generated",
            buckets=_RTF_BUCKETS,
            registry=r,
        )
        self.audio_seconds = Counter("tts_audio_generated_seconds", "Seconds of audio generated", registry=r)
        self.pieces = Counter("tts_text_pieces_generated", "Text pieces (sentences) generated", registry=r)
        self.queue_depth = Gauge("tts_queue_depth", "Requests waiting for a worker", registry=r)
        self.in_flight = Gauge("tts_in_flight", "Requests being generated now", registry=r)
        self.rejected = Counter("tts_rejected", "Requests refused before generation", ["reason"], registry=r)
        self.cancelled = Counter("tts_cancelled", "Generations stopped early", ["reason"], registry=r)
        self.model_info = Gauge(
            "tts_model_info",
            "The model version being served (value 1)",
            ["version", "engine", "device"],
            registry=r,
        )
        self.ready = Gauge("tts_ready", "1 when the server is ready to serve", registry=r)
        self.voices = Gauge(
            "tts_voices_cached", "Voices whose conditioning latents are in memory", registry=r
        )
        self.voice_latents = Counter(
            "tts_voice_latents",
            "Voice conditioning latents made ready: computed from the clips, or loaded from a file "
            "(this pod's voices directory or the shared voice store)",
            ["origin"],
            registry=r,
        )
        self.reloads = Counter("tts_reloads", "Hot reloads by result", ["result"], registry=r)
        self.load_seconds = Gauge(
            "tts_model_load_seconds",
            "Time spent loading, warming up the serving model",
            ["phase"],
            registry=r,
        )

    def set_model(self, version: str, engine: str, device: str) -> None:
        self.model_info.clear()
        self.model_info.labels(version=version, engine=engine, device=device).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
