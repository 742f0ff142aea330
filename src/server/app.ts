// The Hono app of a rank service: auth, error mapping, routes. Every error is
// {"error": {"code", "message", ...details}}; anything not an ApiError is a bug (500, logged).
import { Hono } from "hono";
import { jsonResponse } from "./body";
import { ApiError, NotFound, Unauthorized } from "../errors";
import { serverOf } from "./auth";
import { buffersRoutes } from "./routes/buffers";
import { collectiveRoutes } from "./routes/collective";
import { browserCredential, dashboardRoutes } from "./routes/dashboard";
import { debugRoutes, testHooksEnabled } from "./routes/debug";
import { internalRoutes } from "./routes/internal";
import { introspectionRoutes } from "./routes/introspection";
import { membershipRoutes } from "./routes/membership";
import { p2pRoutes } from "./routes/p2p";
import type { AppFacade } from "./routes/facade";

/** Maps a thrown error to its JSON response (Hono's onError and service.ts's fast path). */
export function errorResponse(svc: AppFacade, err: Error, method: string, path: string): Response {
  if (err instanceof ApiError) {
    svc.metrics.error(err.code);
    return jsonResponse(err.toJSON(), err.status);
  }
  svc.metrics.error("internal");
  svc.log.error(`${method} ${path}: ${err.stack ?? err}`);
  return jsonResponse({ error: { code: "internal", message: `rank ${svc.rank}: internal error: ${err.message}` } }, 500);
}

/** Probes answer without the bearer token (kubelet and Docker HEALTHCHECK carry none). */
export const PUBLIC_PATHS: ReadonlySet<string> = new Set(["/health", "/livez"]);

export function createApp(svc: AppFacade) {
  const app = new Hono();

  app.use("*", async (c, next) => {
    try {
      if (!PUBLIC_PATHS.has(c.req.path)) {
        const ok = svc.isCaller(c.req.header("authorization") ?? browserCredential(c), c.req.raw, serverOf(c));
        if (ok !== true && !(await ok)) throw new Unauthorized();
      }
      await next();
    } catch (e) {
      svc.metrics.httpRequest(c.req.method, "unmatched", e instanceof ApiError ? e.status : 500);
      throw e;
    }
    // the matched route's pattern (bounded label values); "*" is this middleware: no route matched
    const route = c.req.routePath;
    svc.metrics.httpRequest(c.req.method, route === "*" || route === "/*" ? "unmatched" : route, c.res.status);
  });

  app.onError((err, c) => errorResponse(svc, err, c.req.method, c.req.path));

  app.notFound((c) => {
    const e = new NotFound(`no route ${c.req.method} ${c.req.path} (see GET /openapi.json)`);
    svc.metrics.error(e.code);
    return c.json(e.toJSON(), 404);
  });

  introspectionRoutes(app, svc);
  collectiveRoutes(app, svc);
  p2pRoutes(app, svc);
  membershipRoutes(app, svc); // elastic membership and groups
  buffersRoutes(app, svc); // device buffers (docs/api-extensions.md)
  internalRoutes(app, svc);
  dashboardRoutes(app, svc); // the live dashboard (browser)
  if (testHooksEnabled()) debugRoutes(app, svc);
  return app;
}
