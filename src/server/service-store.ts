// An external rendezvous store's part of a rank service (serve --rendezvous etcd://...;
// control/etcd-store.ts): where a rank registers, how the coordinator publishes views to the
// store, and failover elections through it. Moved out of service.ts; functions of the service.
import type { Coordinator } from "../control/coordinator";
import type { LeaderRecord, RendezvousStore } from "../control/etcd-store";
import type { RankService, ServicePhase } from "./service";

/** How many heartbeat timeouts a rank waits for a failover candidate to take over before trying the next one. */
export const FAILOVER_CONNECT_TIMEOUTS = 3;
/** With a store: how long a rank tries to reach it at start, and one wait for a lead to change. */
const STORE_OPEN_TIMEOUT_MS = 10_000;
const STORE_WAIT_SPAN_MS = 2000;
/** How many ranks of a stored view a restarted rank 0 asks whether the world still runs. */
const STORE_PROBES_MAX = 16;

function leaderRecord(svc: RankService): LeaderRecord {
  return { rank: svc.rank, url: svc.url, instance: svc.instance, since_ms: Date.now() };
}

/**
 * Where this rank registers: rank 0 claims the lead (create-if-absent) and registers with
 * itself; every other rank, and a rank 0 that finds a live world's coordinator leading (a
 * restart), registers with the coordinator the store names (a restarted rank 0 as a joiner,
 * as the built-in rendezvous has it).
 */
export async function findCoordinatorInStore(svc: RankService, store: RendezvousStore, selfUrl: string): Promise<{ url: string; join: boolean }> {
  const c = svc.config;
  await store.open(Math.min(c.rendezvousTimeoutMs, STORE_OPEN_TIMEOUT_MS)).catch((e: Error) => {
    throw new Error(`rendezvous store ${store.description} can't be reached: ${e.message}`);
  });
  const until = performance.now() + c.rendezvousTimeoutMs;
  if (c.rank === 0 && !c.join) {
    for (;;) {
      if (performance.now() > until) throw new Error(`no live coordinator in ${store.description} and the running world's ranks did not take the lead within ${Math.round(c.rendezvousTimeoutMs / 1000)} s`);
      const held = await store.leader();
      // a lapsed lead while ranks of the last view still run: they are taking over; don't start a world beside theirs
      if (!held && (await storedWorldRuns(svc, store))) {
        await store.waitLeader(() => true, STORE_WAIT_SPAN_MS);
        continue;
      }
      const holder = held ?? (await store.claim(leaderRecord(svc), new Set()));
      if (holder.instance === svc.instance) {
        svc.becomeCoordinator(null);
        return { url: selfUrl, join: false };
      }
      if (await answersAs(svc, holder)) return { url: holder.url, join: true };
      // the previous process of this job holds the key (until its lease lapses, or a survivor takes over)
      svc.log.info(`the lead is held by rank ${holder.rank} (${holder.url}, not answering): waiting for a new coordinator or its lease to lapse`);
      await store.waitLeader((l) => l.instance !== holder.instance, STORE_WAIT_SPAN_MS);
    }
  }
  const leader = await store.waitLeader(() => true, c.rendezvousTimeoutMs);
  if (!leader) throw new Error(`no coordinator appeared in ${store.description} within ${Math.round(c.rendezvousTimeoutMs / 1000)} s`);
  followLeaderMoves(svc, store, leader);
  return { url: leader.url, join: c.join };
}

/** While this rank is in rendezvous, a new coordinator in the store redirects it there (the one it registers with died). */
function followLeaderMoves(svc: RankService, store: RendezvousStore, first: LeaderRecord): void {
  void (async () => {
    for (let known = first; (svc.phase as ServicePhase) === "rendezvous"; ) {
      const next = await store.waitLeader((l) => l.instance !== known.instance, STORE_WAIT_SPAN_MS).catch(() => null);
      if (!next || (svc.phase as ServicePhase) !== "rendezvous") continue;
      svc.log.warn(`the coordinator moved to rank ${next.rank} (${next.url}) during rendezvous: registering there`);
      svc.redirectTo = next.url;
      known = next;
    }
  })();
}

/** Whether an active rank (other than this one) of the view in the store still answers as itself. */
async function storedWorldRuns(svc: RankService, store: RendezvousStore): Promise<boolean> {
  const view = await store.readView().catch(() => null);
  const others = (view?.ranks ?? []).filter((r) => r.active && r.rank !== svc.rank).slice(0, STORE_PROBES_MAX);
  const alive = await Promise.all(others.map((r) => answersAs(svc, { rank: r.rank, url: r.url, instance: r.instance, since_ms: 0 })));
  return alive.some(Boolean);
}

/** The leader the store names if it is one this rank thought lost but it answers as itself (else null). */
async function liveLostLeader(svc: RankService, store: RendezvousStore, lost: Set<string>): Promise<LeaderRecord | null> {
  const held = await store.leader();
  return held && lost.has(held.instance) && (await answersAs(svc, held)) ? held : null;
}

/** Whether the process a leader record names answers at its URL (it is that instance). */
async function answersAs(svc: RankService, l: LeaderRecord): Promise<boolean> {
  try {
    const who = await svc.peers.get<{ instance: string }>(`${l.url}/internal/whoami`, svc.heartbeatTimeoutMs, "whoami");
    return who.instance === l.instance;
  } catch {
    return false;
  }
}

/** The coordinator writes each epoch's view to the store; a store naming another leader deposes it. */
export function leadInStore(svc: RankService, store: RendezvousStore, co: Coordinator): void {
  const rz = svc.rendezvous!;
  const publish = () => {
    if (svc.coordinator === co && rz.isComplete) store.publishView(svc.membership.view());
  };
  svc.membership.onChange(publish);
  const completed = rz.onComplete;
  rz.onComplete = () => {
    completed();
    publish();
  };
  publish();
  store.onDeposed = (holder) => {
    if (svc.coordinator !== co) return;
    co.stop();
    svc.hub?.closeAll();
    svc.loseCoordinatorForGood(`deposed: ${holder ? `rank ${holder.rank} leads in ${store.description}` : "the lead lapsed"} (this process was cut off or stalled)`);
  };
}

/**
 * Failover with a store: the survivor the heartbeats elect (the lowest active rank not lost)
 * takes the lead in the store by a compare-and-swap on the lost coordinator's record; the
 * others wait for the store to name a coordinator that is not lost and follow it. A candidate
 * that does not take the lead in time is passed over; the store, not a guess, says who leads.
 */
export async function electInStore(svc: RankService, store: RendezvousStore, record: { resumedAt: number | null; coordinator: number | null }, lost: number[], why: string): Promise<void> {
  const gone = new Set(lost);
  const lostInstances = () => new Set([...gone].map((r) => svc.membership.get(r)?.instance ?? ""));
  const waitMs = FAILOVER_CONNECT_TIMEOUTS * svc.heartbeatTimeoutMs;
  const until = performance.now() + svc.config.rendezvousTimeoutMs;
  while ((svc.phase as ServicePhase) !== "stopping") {
    if (performance.now() > until) return svc.loseCoordinatorForGood(`${why}; no coordinator could be agreed in ${store.description} within ${Math.round(svc.config.rendezvousTimeoutMs / 1000)} s`);
    const candidate = svc.membership.activeRanks().find((r) => !gone.has(r));
    if (candidate === undefined) return svc.loseCoordinatorForGood(`${why}; no active rank is left to take over`);
    let holder: LeaderRecord | null;
    try {
      // A coordinator that still answers as itself was not lost (this rank alone missed its
      // heartbeats): follow it again rather than take the lead from it or pass others over.
      const alive = await liveLostLeader(svc, store, lostInstances());
      if (alive) holder = alive;
      else if (candidate === svc.rank) holder = await store.claim(leaderRecord(svc), lostInstances());
      else holder = (await store.waitLeader((l) => !lostInstances().has(l.instance), waitMs)) ?? (await liveLostLeader(svc, store, lostInstances()));
    } catch (e) {
      if (performance.now() > until) return svc.loseCoordinatorForGood(`${why}; ${store.description}: ${(e as Error).message}`);
      svc.log.warn(`failover: ${(e as Error).message}; trying again`);
      continue;
    }
    if (!holder) {
      svc.log.warn(`rank ${candidate} did not take the lead in ${store.description} within ${waitMs} ms; passing it over`);
      gone.add(candidate);
      continue;
    }
    if (holder.instance === svc.instance) {
      const stored = await store.readView().catch(() => null);
      const ours = stored?.ranks.some((r) => r.rank === svc.rank && r.instance === svc.instance);
      if (stored && ours && stored.epoch > svc.membership.epoch) svc.membership.applyView(stored);
      svc.becomeCoordinator({ lost: [...gone], why });
    } else {
      try {
        await svc.follow(holder.rank, waitMs);
        svc.log.warn(`following rank ${holder.rank}, the coordinator named by ${store.description}`);
      } catch (e) {
        svc.log.warn(`rank ${holder.rank} leads in the store but can't be reached: ${(e as Error).message}`);
        gone.add(holder.rank);
        continue;
      }
    }
    record.resumedAt = performance.now();
    record.coordinator = holder.rank;
    return;
  }
}
