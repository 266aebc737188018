"""The fake OpenAI-compatible server (see `server.py`)."""

from batchrunner.fake.in_process import InProcessBatches
from batchrunner.fake.server import FakeConfig, FakeServer, run_in_thread, serve_forever

__all__ = ["FakeConfig", "FakeServer", "InProcessBatches", "run_in_thread", "serve_forever"]
