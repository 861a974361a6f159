"""What the tests and the benchmarks share: waiting (``waiting``), subprocesses (``processes``,
``operator_process``), manifests and custom objects (``manifests``, ``objects``, ``voicemodels``,
``convergence``), model versions, the runtime's server and CLI, datasets, admission cases, a
throttling proxy.

The tests import these as ``support.<module>`` (tests/ is on sys.path through tests/conftest.py);
the benchmarks, run from the checkout (``python -m bench``), as ``tests.support.<module>``. So the
modules here import each other relatively (``from .waiting import wait_for``), never as ``support.``.
"""
