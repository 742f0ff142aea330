// Elastic membership and groups (docs/api-extensions.md "Membership and failures", "Groups"):
//   POST /membership/activate   {"ranks":[...]}  admit ranks waiting in "awaiting"
//   POST /membership/deactivate {"ranks":[...]}  remove ranks gracefully (state "left")
//     both answer {"epoch", "active_ranks"} once every active rank applied the new view
//   POST /groups {"name", "ranks"}   define a named group (idempotent; any rank may call it)
//   GET  /groups, GET /groups/:name
// Every change is made by rank 0 (control/coordinator.ts); other ranks forward over their link.
import type { Hono } from "hono";
import { NotFound, NotReady } from "../../errors";
import { readJson } from "../body";
import { groupSchema, membershipChangeSchema, parseOrThrow } from "../schemas";
import type { MembershipFacade } from "./facade";

function requireConnected(svc: MembershipFacade): void {
  if (svc.participant?.masterLost) throw svc.unavailable();
  if (svc.phase !== "ready") throw new NotReady(`rank ${svc.rank} has not completed rendezvous`);
}

function describeGroup(svc: MembershipFacade, name: string, ranks: number[]): Record<string, unknown> {
  const m = svc.membership;
  const me = ranks.indexOf(svc.rank);
  return {
    name,
    ranks,
    size: ranks.length,
    active_ranks: ranks.map((r) => (m.isActive(r) ? 1 : 0)),
    group_rank: me >= 0 ? me : null,
  };
}

export function membershipRoutes(app: Hono, svc: MembershipFacade): void {
  for (const action of ["activate", "deactivate"] as const) {
    app.post(`/membership/${action}`, async (c) => {
      requireConnected(svc);
      const body = parseOrThrow(membershipChangeSchema, await readJson(c, 1 << 20));
      const answer = await svc.toCoordinator({ t: action, ranks: body.ranks });
      return c.json({ epoch: answer.epoch, active_ranks: answer.active_ranks });
    });
  }

  app.post("/groups", async (c) => {
    requireConnected(svc);
    const body = parseOrThrow(groupSchema, await readJson(c, 1 << 20));
    const answer = await svc.toCoordinator({ t: "group", name: body.name, ranks: body.ranks });
    const ranks = answer.ranks as number[];
    // Known here at once (rank 0 pushes it to every rank too).
    svc.membership.defineGroup(String(answer.name), ranks);
    return c.json(describeGroup(svc, String(answer.name), ranks));
  });

  app.get("/groups", (c) => {
    const groups = Object.entries(svc.membership.allGroups()).map(([name, ranks]) => describeGroup(svc, name, ranks));
    return c.json({ groups });
  });

  app.get("/groups/:name", (c) => {
    const name = c.req.param("name");
    const ranks = svc.membership.groupDef(name);
    if (!ranks) throw new NotFound(`no group ${JSON.stringify(name)} (define it with POST /groups)`);
    return c.json(describeGroup(svc, name, ranks));
  });
}
