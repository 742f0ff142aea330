// The live dashboard (every rank serves it; rank 0's shows the whole job):
//   GET /dashboard            the page (HTML; assets below, nothing from elsewhere)
//   GET /dashboard/app.js     its script (src/server/dashboard/app.js)
//   GET /dashboard/state      one snapshot (JSON)
//   GET /dashboard/events     snapshots as Server-Sent Events: at once on every membership
//                             change, else every SNAPSHOT_INTERVAL_MS
// Same auth as the API. A browser can't put a bearer header on a page load or an EventSource,
// so GET requests may also carry the token as the moonring_token cookie, which
// GET /dashboard?token=T sets (HttpOnly, SameSite=Strict) before redirecting to /dashboard.
import type { Context, Hono } from "hono";
import { getCookie, setCookie } from "hono/cookie";
import { streamSSE } from "hono/streaming";
import appJs from "../dashboard/app.js" with { type: "text" };
import { dashboardPage } from "../dashboard/page";
import { dashboardState } from "../dashboard/state";
import type { DashboardFacade } from "./facade";

export const SNAPSHOT_INTERVAL_MS = 500;
/** An SSE stream ends after this long (the browser's EventSource reconnects by itself). */
const STREAM_MAX_MS = 10 * 60_000;
const COOKIE = "moonring_token";

/** The Authorization header a GET may stand for: its moonring_token cookie, or ?token= on /dashboard. */
export function browserCredential(c: Context): string | undefined {
  if (c.req.method !== "GET") return undefined;
  const token = getCookie(c, COOKIE) ?? (c.req.path === "/dashboard" ? c.req.query("token") : undefined);
  return token === undefined ? undefined : `Bearer ${token}`;
}

export function dashboardRoutes(app: Hono, svc: DashboardFacade): void {
  const state = dashboardState(svc);

  app.get("/dashboard", (c) => {
    const token = c.req.query("token");
    if (token !== undefined) {
      // authorized by the middleware with this token: keep it in a cookie and drop it from the URL
      setCookie(c, COOKIE, token, { httpOnly: true, sameSite: "Strict", path: "/" });
      return c.redirect("/dashboard", 303);
    }
    return c.html(dashboardPage(svc.rank));
  });

  app.get("/dashboard/app.js", (c) => c.body(appJs, 200, { "content-type": "text/javascript; charset=utf-8", "cache-control": "no-cache" }));

  app.get("/dashboard/state", (c) => c.json(state.snapshot()));

  app.get("/dashboard/events", (c) =>
    streamSSE(c, async (stream) => {
      let wake: (() => void) | null = null;
      const unsubscribe = state.subscribe(() => wake?.());
      let open = true;
      stream.onAbort(() => {
        open = false;
        wake?.();
      });
      const end = Date.now() + STREAM_MAX_MS;
      try {
        while (open && Date.now() < end && svc.phase !== "stopping") {
          await stream.writeSSE({ event: "snapshot", data: JSON.stringify(state.snapshot()) });
          await new Promise<void>((resolve) => {
            const timer = setTimeout(resolve, SNAPSHOT_INTERVAL_MS);
            wake = () => {
              clearTimeout(timer);
              resolve();
            };
          });
          wake = null;
        }
      } finally {
        unsubscribe();
      }
    }),
  );
}
