"""pytest plugin: run a pytest-asyncio test suite on tokioloop, unedited, with ``--tokioloop``.

Installed with the package (entry point ``pytest11``) and inert unless the flag is given. With
it, pytest-asyncio (1.4+) creates every test's event loop through its
``pytest_asyncio_loop_factories`` hook with ``tokioloop.new_event_loop``. The hook is
registered only when asked for, since pytest-asyncio treats any registered implementation as
the source of loop factories.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("tokioloop")
    group.addoption(
        "--tokioloop",
        action="store_true",
        default=False,
        help="run pytest-asyncio tests on tokioloop event loops",
    )


class _TokioloopFactories:
    """The pytest-asyncio hook implementation, registered by ``--tokioloop``."""

    @pytest.hookimpl(optionalhook=True)
    def pytest_asyncio_loop_factories(self, config, item):
        from . import new_event_loop

        return {"tokioloop": new_event_loop}


def pytest_configure(config):
    if config.getoption("tokioloop", default=False):
        if not config.pluginmanager.has_plugin("asyncio"):
            raise pytest.UsageError("--tokioloop needs pytest-asyncio 1.4 or newer installed")
        config.pluginmanager.register(_TokioloopFactories(), "tokioloop-loop-factories")
