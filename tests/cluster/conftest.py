"""Cluster fixtures: ``crds`` (the project's CRDs installed on the real API server) lives in
tests/conftest.py so that tests/e2e can use it too."""
