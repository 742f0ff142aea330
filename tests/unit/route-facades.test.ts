// Route modules on their narrow views (src/server/routes/facade.ts): each one mounts on a bare
// Hono app with a stub that implements only its view — no rank service, no data plane, no
// rendezvous — and answers through app.request(). What the stub records is what the route asked
// of the service.
import { expect, test } from "bun:test";
import { Hono } from "hono";
import { ApiError, NotReady } from "../../src/errors";
import type { DebugFacade, InternalFacade, MembershipFacade } from "../../src/server/routes/facade";
import { debugRoutes } from "../../src/server/routes/debug";
import { internalRoutes } from "../../src/server/routes/internal";
import { membershipRoutes } from "../../src/server/routes/membership";

/** A bare app with the service's error mapping (typed errors carry their status). */
function bareApp(): Hono {
  const app = new Hono();
  app.onError((e, c) => (e instanceof ApiError ? c.json(e.toJSON(), e.status as 400) : c.json({ error: { code: "internal", message: e.message } }, 500)));
  return app;
}

const post = (body: unknown): RequestInit => ({ method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });

function membershipStub(phase: MembershipFacade["phase"]) {
  const groups: Record<string, number[]> = {};
  const sent: Record<string, unknown>[] = [];
  const active = new Set([0, 2]);
  const stub: MembershipFacade = {
    rank: 2,
    phase,
    participant: { masterLost: null },
    unavailable: () => new NotReady("rank 2 is not ready"),
    toCoordinator: async (msg) => {
      sent.push(msg);
      if (msg.t === "group") return { name: msg.name, ranks: msg.ranks };
      return { epoch: 7, active_ranks: [0, 2] };
    },
    membership: {
      defineGroup: (name, ranks) => void (groups[name] = ranks),
      allGroups: () => ({ ...groups }),
      groupDef: (name) => groups[name] ?? null,
      isActive: (r) => active.has(r),
    },
  };
  return { stub, sent, groups };
}

test("membership routes on a stub MembershipFacade: groups defined through the coordinator, 404 and 503 typed", async () => {
  const { stub, sent, groups } = membershipStub("ready");
  const app = bareApp();
  membershipRoutes(app, stub);

  const made = await app.request("/groups", post({ name: "pair", ranks: [1, 2] }));
  expect(made.status).toBe(200);
  // rank 2 is index 1 of [1, 2]; rank 1 is inactive in the stub's view
  expect(await made.json()).toEqual({ name: "pair", ranks: [1, 2], size: 2, active_ranks: [0, 1], group_rank: 1 });
  expect(sent).toEqual([{ t: "group", name: "pair", ranks: [1, 2] }]);
  expect(groups.pair).toEqual([1, 2]);

  const act = await app.request("/membership/activate", post({ ranks: [1] }));
  expect(await act.json()).toEqual({ epoch: 7, active_ranks: [0, 2] });
  expect(sent[1]).toEqual({ t: "activate", ranks: [1] });

  const missing = await app.request("/groups/none");
  expect(missing.status).toBe(404);
  expect(((await missing.json()) as { error: { code: string } }).error.code).toBe("not_found");

  const early = bareApp();
  membershipRoutes(early, membershipStub("rendezvous").stub);
  const notYet = await early.request("/groups", post({ name: "pair", ranks: [1, 2] }));
  expect(notYet.status).toBe(503);
});

test("internal routes on a stub InternalFacade: whoami, and registration sent on to the coordinator (307)", async () => {
  const offers: unknown[] = [];
  const stub: InternalFacade = {
    rank: 3,
    ready: true,
    unavailable: () => new NotReady("no"),
    instance: "i-3",
    phase: "ready",
    url: "http://h3:9000",
    isCoordinator: false,
    rendezvous: null,
    membership: { get: (r: number) => (r === 1 ? ({ url: "http://h1:9000" } as never) : undefined), coordinator: 1, epoch: 4 },
    p2p: { offer: async (o) => void offers.push(o) },
    notCoordinator: () => new Response("not", { status: 503 }),
    followWorld: () => false,
  };
  const app = bareApp();
  internalRoutes(app, stub);
  const who = await app.request("/internal/whoami");
  expect(await who.json()).toEqual({ rank: 3, instance: "i-3", pid: process.pid, phase: "ready", coordinator: 1, epoch: 4, complete: true });
  const reg = await app.request("/internal/rendezvous/register?x=1", post({}));
  expect(reg.status).toBe(307);
  expect(reg.headers.get("location")).toBe("http://h1:9000/internal/rendezvous/register?x=1");
});

test("debug routes need only a logger", async () => {
  const lines: string[] = [];
  const stub: DebugFacade = { log: { warn: (m: string) => void lines.push(m) } };
  const app = bareApp();
  debugRoutes(app, stub);
  const res = await app.request("/debug/block", post({ ms: 0 }));
  expect(await res.json()).toEqual({ ok: true, blocked_ms: 0 });
  expect(lines).toEqual(["test hook: blocking the event loop for 0 ms"]);
});
