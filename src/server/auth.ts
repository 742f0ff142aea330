// Bearer-token check for every way into a rank service (the Hono app, the JSON fast path,
// control-link WebSocket upgrades): one timing-safe compare, like the data plane's handshake.
import type { Server } from "bun";
import type { Context } from "hono";
import { timingSafeEqual } from "node:crypto";
import type { LinkData } from "../control/hub";
import { Unauthorized } from "../errors";

/** The exact Authorization header a request must carry, or null when no token is set. */
export function expectedBearer(token: string | undefined): Buffer | null {
  return token ? Buffer.from(`Bearer ${token}`) : null;
}

/**
 * Throws Unauthorized unless `header` equals `expected` (null: no token set, everything
 * passes). The compare's time does not depend on where the bytes differ; only the length
 * can show, as with any constant-time compare.
 */
export function authorize(expected: Buffer | null, header: string | null | undefined, message?: string): void {
  if (!isAuthorized(expected, header)) throw new Unauthorized(message);
}

/** authorize() without the throw (routes that answer less, not 401, to strangers: /health). */
export function isAuthorized(expected: Buffer | null, header: string | null | undefined): boolean {
  if (expected === null) return true;
  const given = Buffer.from(header ?? "");
  return given.length === expected.length && timingSafeEqual(given, expected);
}

/** The Bun server a request came through (app.fetch(req, {server})); none in app.request(). */
export function serverOf(c: Context): Pick<Server<LinkData>, "requestIP"> | undefined {
  return (c.env as { server?: Server<LinkData> } | undefined)?.server;
}
