"""Prefect orchestration of `uwav.stages`: the `uwav` flow and its deployments. No science here."""

from __future__ import annotations

import os
import sys

# Prefect 3.9's own name for how long a client waits for the temporary ("ephemeral") server it
# starts when no PREFECT_API_URL is set; its default of 20 s is too short on a loaded 2-core CI box.
EPHEMERAL_STARTUP_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
EPHEMERAL_STARTUP_TIMEOUT_S = 120


def tolerate_slow_prefect_start(seconds: int = EPHEMERAL_STARTUP_TIMEOUT_S) -> None:
    """Give Prefect's temporary server `seconds` to start, unless the environment already chooses.

    An explicit PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS wins. Being an environment
    variable, the default reaches every child process (`uwav run`, test children) too. A value set
    only in a Prefect profile is overridden: Prefect ranks the environment above profiles.
    """
    if EPHEMERAL_STARTUP_TIMEOUT_ENV in os.environ:
        return
    os.environ[EPHEMERAL_STARTUP_TIMEOUT_ENV] = str(seconds)
    # Prefect reads its settings once, when `prefect.context` is imported; re-read them if that
    # already happened (a caller imported prefect before flows), or the new default is ignored.
    context = sys.modules.get("prefect.context")
    if context is not None:
        context.refresh_global_settings_context()


# Before flows.pipeline imports prefect, so the first settings Prefect reads carry it.
tolerate_slow_prefect_start()
