"""Liveness probe of the refleaks plugin (tests/reliability/refleaks.py), run by
``memsafety.py refleaks`` before the real run: ``test_leaks`` keeps one more object (and one
more reference) on every run and must be reported; ``test_clean`` must not. Not collected by the
suite (no ``test_`` file prefix); run as ``pytest -p refleaks --refleaks 2:3 refleak_probe.py``.
"""

import asyncio

_KEPT = []


def test_leaks():
    _KEPT.append(object())


def test_clean():
    kept = [object() for _ in range(100)]
    assert len(kept) == 100


def test_clean_loop():
    import tokioloop

    loop = tokioloop.new_event_loop()
    try:
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
