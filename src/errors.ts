// Typed API errors: each carries its HTTP status and contract code, and renders as
// {"error": {"code", "message", ...details}}. Anything else thrown in a handler is a bug
// and becomes a 500 "internal" (never for bad input: every input check throws one of these).

export type ErrorCode =
  | "invalid_request"
  | "unauthorized"
  | "not_found"
  | "collective_mismatch"
  | "too_large"
  | "too_many_requests"
  | "cancelled"
  | "not_ready"
  | "timeout"
  | "peer_failed"
  | "master_lost"
  | "conflict"
  | "internal";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: ErrorCode,
    message: string,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
    this.name = "ApiError";
  }

  toJSON(): { error: Record<string, unknown> } {
    return { error: { code: this.code, message: this.message, ...this.details } };
  }
}

export class InvalidRequest extends ApiError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super(400, "invalid_request", message, details);
  }
}

export class Unauthorized extends ApiError {
  constructor(message = "missing or wrong bearer token (set Authorization: Bearer <MOONRING_TOKEN>)") {
    super(401, "unauthorized", message);
  }
}

export class NotFound extends ApiError {
  constructor(message: string) {
    super(404, "not_found", message);
  }
}

/** Ranks made different calls at the same point. `calls` names each rank and what it called. */
export class CollectiveMismatch extends ApiError {
  constructor(message: string, details: { calls: { rank: number; call: string }[] } & Record<string, unknown>) {
    super(409, "collective_mismatch", message, details);
  }
}

/** Rendezvous refusals (duplicate rank, world-size disagreement). */
export class Conflict extends ApiError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super(409, "conflict", message, details);
  }
}

export class TooLarge extends ApiError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super(413, "too_large", message, details);
  }
}

/** Too many calls pending on this rank (a cap, so a flood can't exhaust memory): retry later. */
export class TooManyRequests extends ApiError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super(429, "too_many_requests", message, details);
  }
}

/**
 * The client went away before its call was decided: the call was withdrawn (never joins a
 * later collective). 499 as in nginx's "client closed request"; nobody is left to read it.
 */
export class Cancelled extends ApiError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super(499, "cancelled", message, details);
  }
}

export class NotReady extends ApiError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super(503, "not_ready", message, details);
  }
}

export class Timeout extends ApiError {
  constructor(message: string, details: { missing_ranks: number[] } & Record<string, unknown>) {
    super(504, "timeout", message, details);
  }
}

/** A peer failed or broke its link while bytes were moving (data plane EPEER and the like). */
export class PeerFailed extends ApiError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super(503, "peer_failed", message, details);
  }
}

/**
 * The coordinator (rank 0) died or is unreachable: this rank cannot agree on anything any more.
 * Final for this process (docs/api-extensions.md "Rank 0").
 */
export class MasterLost extends ApiError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super(503, "master_lost", message, { failed_ranks: [0], ...details });
  }
}

export class Internal extends ApiError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super(500, "internal", message, details);
  }
}

/** Rebuilds an ApiError from its JSON form (errors relayed between rank services). */
export function apiErrorFromJSON(status: number, body: unknown): ApiError {
  const e = (body as { error?: Record<string, unknown> } | null)?.error;
  if (!e || typeof e.code !== "string") {
    return new Internal(`unexpected error response (HTTP ${status})`, { body: String(JSON.stringify(body)).slice(0, 200) });
  }
  const { code, message, ...details } = e;
  return new ApiError(status, code as ErrorCode, String(message ?? code), details);
}
