// PeerClient follows a rank's 307 to the coordinator with the bearer token (fetch alone drops
// Authorization on a redirect to another origin: a restarted rank registering through a rank
// that no longer coordinates was refused 401, issue 20's compose kill test).
import { afterAll, expect, test } from "bun:test";
import { PeerClient } from "../../src/control/peers";

const coordinator = Bun.serve({
  port: 0,
  hostname: "127.0.0.1",
  fetch: async (req) => {
    if (req.headers.get("authorization") !== "Bearer job-secret") return Response.json({ error: { code: "unauthorized", message: "no token" } }, { status: 401 });
    const body = req.method === "POST" ? await req.json() : null;
    return Response.json({ at: "coordinator", path: new URL(req.url).pathname, body });
  },
});
// another origin (localhost vs 127.0.0.1): the case where fetch drops the header
const formerCoordinator = Bun.serve({
  port: 0,
  hostname: "127.0.0.1",
  fetch: (req) => Response.redirect(`http://localhost:${coordinator.port}${new URL(req.url).pathname}`, 307),
});
afterAll(() => {
  coordinator.stop(true);
  formerCoordinator.stop(true);
});

test("a POST redirected (307) to the coordinator keeps its bearer token and body", async () => {
  const peers = new PeerClient("job-secret");
  const got = await peers.post<any>(`http://127.0.0.1:${formerCoordinator.port}/internal/rendezvous/register`, { rank: 3 }, 5000, "register");
  expect(got).toEqual({ at: "coordinator", path: "/internal/rendezvous/register", body: { rank: 3 } });
});

test("a GET redirected (307) keeps its bearer token", async () => {
  const got = await new PeerClient("job-secret").get<any>(`http://127.0.0.1:${formerCoordinator.port}/internal/rendezvous/table`, 5000, "table");
  expect(got.at).toBe("coordinator");
});

test("a redirect loop ends in an error, not a hang", async () => {
  const loop = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: (req) => Response.redirect(req.url, 307) });
  try {
    await expect(new PeerClient("job-secret").get(`http://127.0.0.1:${loop.port}/x`, 5000, "loop")).rejects.toThrow();
  } finally {
    loop.stop(true);
  }
});
