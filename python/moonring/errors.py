"""Typed exceptions carrying the rank service's REST error ({"error": {code, message, ...}})."""
from __future__ import annotations

from typing import Any, Dict, List, Optional


class MoonringError(Exception):
    """An error answered by a rank service. `status` is the HTTP status, `code` the contract's
    error code, `details` every other field of the error object."""

    def __init__(self, message: str, *, status: int = 0, code: str = "error", details: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.details: Dict[str, Any] = dict(details or {})

    def __str__(self) -> str:
        return f"{self.message} ({self.status} {self.code})" if self.status else self.message


class InvalidRequest(MoonringError, ValueError):
    """400 invalid_request: bad dtype/op/root/list length, avg on integers, ..."""


class Unauthorized(MoonringError, PermissionError):
    """401: MOONRING_TOKEN is set on the service and the bearer token is missing or wrong."""


class NotFound(MoonringError, LookupError):
    """404: no such route or buffer."""


class Conflict(MoonringError):
    """409 conflict: a group name defined with other ranks, a duplicate rank at rendezvous."""


class CollectiveMismatch(MoonringError):
    """409 collective_mismatch: ranks made different calls at the same point.
    `calls` lists {"rank", "call"} per rank, `ranks` the ranks named."""

    @property
    def calls(self) -> List[Dict[str, Any]]:
        return list(self.details.get("calls") or [])

    @property
    def ranks(self) -> List[int]:
        return [int(c["rank"]) for c in self.calls if "rank" in c]

    @property
    def seq(self) -> Optional[int]:
        return self.details.get("seq")


class TooLarge(MoonringError):
    """413 too_large: a body or tensor over the service's limit."""


class TooManyRequests(MoonringError):
    """429 too_many_requests: the rank already holds its limit of pending calls; retry later."""


class Cancelled(MoonringError):
    """499 cancelled: the call was withdrawn (its client disconnected before it was decided)."""


class NotReady(MoonringError):
    """503 not_ready: rendezvous not complete, this rank awaiting activation, or removed."""


class PeerFailed(MoonringError):
    """503 peer_failed: a peer the call needed (a root, a p2p peer) failed. `failed_ranks`."""

    @property
    def failed_ranks(self) -> List[int]:
        return list(self.details.get("failed_ranks") or [])


class MasterLost(PeerFailed):
    """503 master_lost: rank 0, the coordinator, is lost; restart the world."""


class CollectiveTimeout(MoonringError, TimeoutError):
    """504 timeout: not every rank arrived within timeout_ms. `missing_ranks` did not."""

    @property
    def missing_ranks(self) -> List[int]:
        return list(self.details.get("missing_ranks") or [])

    @property
    def joined_ranks(self) -> List[int]:
        return list(self.details.get("joined_ranks") or [])


class ServiceUnreachable(MoonringError, ConnectionError):
    """The rank service could not be reached (refused, reset, closed mid-answer)."""


_BY_CODE = {
    "invalid_request": InvalidRequest,
    "unauthorized": Unauthorized,
    "not_found": NotFound,
    "conflict": Conflict,
    "collective_mismatch": CollectiveMismatch,
    "too_large": TooLarge,
    "not_ready": NotReady,
    "too_many_requests": TooManyRequests,
    "cancelled": Cancelled,
    "peer_failed": PeerFailed,
    "master_lost": MasterLost,
    "timeout": CollectiveTimeout,
}
_BY_STATUS = {400: InvalidRequest, 401: Unauthorized, 404: NotFound, 409: Conflict, 413: TooLarge, 429: TooManyRequests, 499: Cancelled, 503: NotReady, 504: CollectiveTimeout}


def error_from_response(status: int, body: bytes) -> MoonringError:
    """Builds the typed exception for a non-2xx answer."""
    import json

    code, message, details = "error", "", {}
    try:
        err = json.loads(body.decode("utf-8"))["error"]
        code = str(err.get("code", "error"))
        message = str(err.get("message", ""))
        details = {k: v for k, v in err.items() if k not in ("code", "message")}
        # the contract nests some fields under "details"; flatten them for attribute access
        if isinstance(details.get("details"), dict):
            details = {**details.pop("details"), **details}
    except Exception:
        message = body[:500].decode("utf-8", "replace") or f"HTTP {status}"
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status) or MoonringError
    return cls(message or f"HTTP {status}", status=status, code=code, details=details)
