"""A handler that kills its process mid-epoch (no clean-up, like a power cut or an OOM kill), for resume tests."""

import os

from ignite.engine import Events


class CrashAt:
    def __init__(self, iteration: int):
        self.iteration = iteration

    def attach(self, engine):
        engine.add_event_handler(Events.ITERATION_COMPLETED(once=self.iteration), lambda _: os._exit(137))
