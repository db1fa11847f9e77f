"""Every benchmark in bench/ still imports: they run outside the suite (make bench), so a
helper moved in tests/ would otherwise break one unnoticed."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCHMARKS = sorted(
    path.stem for path in (Path(__file__).parent.parent / "bench").glob("*.py") if path.stem != "__init__"
)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_the_benchmark_imports(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The Flask-Limiter app gunicorn serves reads its Redis from the environment; nothing connects yet.
    monkeypatch.setenv("BENCH_REDIS_URL", "redis://127.0.0.1:1")
    module = importlib.import_module(f"bench.{name}")
    assert module.__doc__
