// A rank service's HTTP listeners: Bun.serve on host:port (and on a Unix socket with serve
// --unix), the coordinator's control-link websocket, and the collectives' fast path.
import { chmodSync, rmSync } from "node:fs";
import type { Server, ServerWebSocket } from "bun";
import type { LinkData } from "../control/hub";
import { CLOSE_REPLACED } from "../control/link";
import { type ApiError, Unauthorized } from "../errors";
import { errorResponse } from "./app";
import { authorize } from "./auth";
import { handleCollective } from "./routes/collective";
import type { RankService } from "./service";

/** POST /collective/{op} with a JSON body, without Hono (see listen()). */
async function collectiveFast(svc: RankService, op: string, req: Request, server: Server<LinkData>): Promise<Response> {
  let res: Response;
  try {
    const ok = svc.isCaller(req.headers.get("authorization"), req, server);
    if (ok !== true && !(await ok)) throw new Unauthorized();
    res = await handleCollective(svc, op, req);
  } catch (e) {
    res = errorResponse(svc, e as Error, "POST", `/collective/${op}`);
  }
  svc.metrics.httpRequest("POST", "/collective/:op", res.status);
  return res;
}

/** Starts the service's listeners (the Unix socket only with config.unixPath). */
export function listen(svc: RankService): { server: Server<LinkData>; unixServer: Server<LinkData> | null } {
  const c = svc.config;
  const app = svc.app;
  const bearer = svc.bearer;
  const options = {
    // Bun's own 413 has no JSON body: let everything through and enforce the limit in body.ts
    maxRequestBodySize: Number.MAX_SAFE_INTEGER,
    development: false,
    fetch(req: Request, server: Server<LinkData>) {
      if (req.url.includes("/internal/ws")) {
        const u = new URL(req.url);
        if (u.pathname === "/internal/ws") {
          if (!svc.hub) return svc.notCoordinator();
          try {
            authorize(bearer, req.headers.get("authorization"), "bad token on control link");
          } catch (e) {
            return Response.json((e as ApiError).toJSON(), { status: 401 });
          }
          const rank = Number(u.searchParams.get("rank"));
          const instance = u.searchParams.get("instance") ?? "";
          const coordinator = u.searchParams.get("coordinator") ?? "";
          if (server.upgrade(req, { data: { rank, instance, coordinator } })) return undefined;
          return Response.json({ error: { code: "invalid_request", message: "websocket upgrade failed" } }, { status: 400 });
        }
      }
      // Fast path: collectives (JSON and octet-stream bodies) skip Hono's router, context and
      // middleware (the same auth, metrics and error mapping inline); the rest goes through the app.
      if (req.method === "POST") {
        const op = collectivePathOp(req.url);
        if (op !== null) return collectiveFast(svc, op, req, server);
      }
      return app.fetch(req, { server });
    },
    // the coordinator's hub changes hands on failover: route to the current one
    websocket: {
      open: (ws: ServerWebSocket<LinkData>) => {
        if (!svc.hub) return ws.close(4003, "not the coordinator");
        // a restarted process at the coordinator's address (a container restarted in place): the
        // coordinator the rank followed is gone, and this one is not it
        if (ws.data.coordinator && ws.data.coordinator !== svc.instance) return ws.close(CLOSE_REPLACED, "a new process: the coordinator is gone");
        svc.hub.websocket.open(ws);
      },
      message: (ws: ServerWebSocket<LinkData>, text: string | Buffer) => svc.hub?.websocket.message(ws, text),
      close: (ws: ServerWebSocket<LinkData>, code: number, reason: string) => svc.hub?.websocket.close(ws, code, reason),
    },
    error(e: Error) {
      return Response.json({ error: { code: "internal", message: String(e?.message ?? e) } }, { status: 500 });
    },
  };
  // idleTimeout 0: long collectives must not be cut (Bun's default is 10 s).
  const server = Bun.serve<LinkData>({ ...options, hostname: c.host, port: c.port, idleTimeout: 0 });
  let unixServer: Server<LinkData> | null = null;
  // The same API on a Unix-domain socket, for programs of this host (serve --unix).
  if (c.unixPath) {
    rmSync(c.unixPath, { force: true }); // a socket file left by a killed rank
    // Bun's types leave idleTimeout out for unix sockets, but it applies (10 s by default).
    const unixOptions = { ...options, unix: c.unixPath, idleTimeout: 0 };
    unixServer = Bun.serve<LinkData>(unixOptions as unknown as Parameters<typeof Bun.serve<LinkData>>[0]);
    chmodSync(c.unixPath, 0o600); // connect(2) needs write permission: this user (and root) only
  }
  return { server, unixServer };
}

/** The op of a POST /collective/{op} URL (no trailing slash, any query), else null. */
export function collectivePathOp(url: string): string | null {
  // http://host:port/collective/op[?query]: the path starts at the first "/" after "//"
  const p = url.indexOf("/", url.indexOf("//") + 2);
  if (p < 0 || !url.startsWith("/collective/", p)) return null;
  const q = url.indexOf("?", p);
  const op = url.slice(p + 12, q < 0 ? url.length : q);
  return /^[a-z_]+$/.test(op) ? op : null;
}
