"""The serving runtime (``tts-runtime serve``): an OpenAI-compatible, streaming TTS server.

``create_app(Settings(...))`` builds the FastAPI app; the lifespan verifies the version's checksums,
runs the device preflight for the devicePolicy, loads the model and warms it up in the background.

Endpoints (all but the first two need the bearer token when one is configured):

- ``GET /healthz`` liveness; ``GET /readyz`` 200 only once checksums, preflight and warm-up passed
- ``GET /info`` version, engine, device, torch/CUDA, preflight report, limits, last reload
- ``POST /v1/audio/speech`` OpenAI's speech API (+ ``stream``, ``language``, XTTS sampling fields);
  audio is streamed as generated unless ``"stream": false``; ``stream_format: "sse"`` sends events
- ``POST /v1/audio/stream`` native low-latency stream, one sentence-sized piece at a time
- ``GET /v1/models``; ``GET|POST /v1/audio/voices``; ``GET|DELETE /v1/audio/voices/{name}``
- ``GET /metrics`` Prometheus; ``POST /admin/reload {"version": ...}`` hot reload; ``GET /`` web page

Module map: ``settings`` (limits), ``engine`` (loading, generation), ``scheduler`` (concurrency,
queue, deadlines), ``audio`` (encoders/decoder), ``voices`` (voice store), ``device`` (preflight),
``state`` (one server's state, reload), ``api_*`` (routes), ``auth``, ``middleware``, ``metrics``.
"""

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]
