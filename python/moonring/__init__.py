"""moonring: collectives over this process's moonring rank service.

    import moonring, numpy as np
    mr = moonring.connect()                 # RANK / MOONRING_PORT / MOONRING_URL, see connect()
    total = mr.all_reduce(np.arange(4.0))   # every rank's arrays summed

`import moonring.torch` registers the torch.distributed backend "moonring".
"""
from .client import Client, Group, OpInfo, ReduceOp, connect, resolve_url
from .dtypes import DTYPES
from .errors import (Cancelled, TooManyRequests, CollectiveMismatch, CollectiveTimeout, Conflict, InvalidRequest, MasterLost, MoonringError,
                     NotFound, NotReady, PeerFailed, ServiceUnreachable, TooLarge, Unauthorized)

__all__ = ["Client", "Group", "OpInfo", "ReduceOp", "connect", "resolve_url", "DTYPES", "MoonringError",
           "InvalidRequest", "Unauthorized", "NotFound", "Conflict", "CollectiveMismatch", "TooLarge", "NotReady",
           "PeerFailed", "MasterLost", "CollectiveTimeout", "ServiceUnreachable", "TooManyRequests", "Cancelled"]
__version__ = "0.1.0"
