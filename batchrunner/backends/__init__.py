"""Where requests leave batchrunner: the two seams (base.py) and their implementations.

    base.py             RequestBackend and BatchBackend protocols, the values that cross them
    http.py             RequestBackend for OpenAI-compatible servers (pyreqwest)
    openai_batches.py   BatchBackend for OpenAI's Files and Batch API (the openai SDK)

The fake server's in-process twin is fake/in_process.py. Backends never import the ledger.
"""

from batchrunner.backends.base import (
    BatchBackend,
    BatchProblem,
    RemoteBatch,
    Reply,
    RequestBackend,
    TransportFailure,
)
from batchrunner.dialects import ServerLimits
from batchrunner.errors import BackendError

__all__ = [
    "BackendError",
    "BatchBackend",
    "BatchProblem",
    "RemoteBatch",
    "Reply",
    "RequestBackend",
    "ServerLimits",
    "TransportFailure",
]
