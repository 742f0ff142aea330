// A restarted rank (--rejoin auto) told to "follow" by the coordinator's recruiter while it is
// registering already (the recruiter probed it before it registered). Under load this made it
// register and follow twice: two control links of one process replaced each other at the hub
// (close 4000) over and over, and the rank's first collective never reached the matcher
// ("rank 2 did not call", tests/fault/rejoin.test.ts). Here the recruiter's message is delivered
// exactly inside the window, in process, instead of relying on load.
import { afterEach, describe, expect, test } from "bun:test";
import { RankService } from "../../src/server/service";
import { sleep } from "../../src/util/net";
import { post } from "../support/http";
import { startInprocWorld, type InprocWorld } from "../support/inproc-world";

let w: InprocWorld | null = null;
let extra: RankService | null = null;
afterEach(async () => {
  await extra?.stop();
  extra = null;
  await w?.stop();
  w = null;
});

async function until(what: string, ok: () => boolean, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}

type Window = "table" | "ready";

/**
 * Rank 2 of a 3-rank world stops; a new process of rank 2 starts (--rejoin auto, no --join) and
 * gets POST /internal/follow (the recruiter's message, naming rank 0) just before it fetches
 * the rank table ("table": registered, no control link yet) or reports ready ("ready": its
 * control link is up). Returns the follow's answer and how many control links it opened at rank 0.
 */
async function restartWithLateFollow(window: Window): Promise<{ followOk: boolean; linksOpened: number }> {
  w = await startInprocWorld(3, { rejoin: "auto", heartbeatIntervalMs: 200, heartbeatTimeoutMs: 1000 });
  const coord = w.services[0]!;
  await w.services[2]!.stop();
  w.services.pop();
  await until("rank 2 to be out of the world", () => !coord.membership.isActive(2));
  let linksOpened = 0;
  const connected = coord.hub!.onRankConnected;
  coord.hub!.onRankConnected = (r) => {
    if (r === 2) linksOpened++;
    connected(r);
  };
  const s = new RankService({ ...w.services[1]!.config, rank: 2, port: 0, rejoin: "auto", join: false });
  extra = s;
  let followOk: boolean | null = null;
  const deliver = async () => {
    if (followOk !== null) return;
    const res = await post(s.url, "/internal/follow", { url: coord.url });
    expect(res.status).toBe(200);
    followOk = res.body.ok;
  };
  const get = s.peers.get.bind(s.peers);
  const postPeer = s.peers.post.bind(s.peers);
  s.peers.get = (async (url: string, ...rest: unknown[]) => {
    if (window === "table" && url.includes("/internal/rendezvous/table")) await deliver();
    return (get as (...a: unknown[]) => Promise<unknown>)(url, ...rest);
  }) as typeof s.peers.get;
  s.peers.post = (async (url: string, ...rest: unknown[]) => {
    if (window === "ready" && url.includes("/internal/rendezvous/ready")) await deliver();
    return (postPeer as (...a: unknown[]) => Promise<unknown>)(url, ...rest);
  }) as typeof s.peers.post;
  await s.start();
  await s.whenReady();
  const urls = [coord.url, w.services[1]!.url, s.url];
  await until("rank 2 active on every rank", () => [coord, w!.services[1]!, s].every((x) => x.membership.isActive(2) && x.membership.epoch === coord.membership.epoch));
  expect(followOk).not.toBeNull();
  // three collectives in a row over all ranks, exact sums
  for (let k = 0; k < 3; k++) {
    const inputs = [1, 2, 3].map((r) => r * 10 + k);
    const res = await Promise.all(urls.map((u, r) => post(u, "/collective/allreduce", { tensor: { dtype: "int64", shape: [1], data: [inputs[r]] }, timeout_ms: 8000 })));
    for (const x of res) {
      expect(x.status).toBe(200);
      expect(x.body.contributors).toEqual([0, 1, 2]);
      expect(x.body.result.data).toEqual([String(inputs[0]! + inputs[1]! + inputs[2]!)]);
    }
  }
  expect(s.link!.connected).toBe(true);
  return { followOk: followOk!, linksOpened };
}

describe("a restarted rank told to follow while it registers (the recruiter's race)", () => {
  test("told before it fetched the table: the redirect, late once it follows rank 0, is dropped; one control link", async () => {
    const { followOk, linksOpened } = await restartWithLateFollow("table");
    expect(followOk).toBe(true); // no control link yet when it came
    expect(linksOpened).toBe(1);
  }, 60_000);

  test("told after its control link is up: the follow is refused, one control link", async () => {
    const { followOk, linksOpened } = await restartWithLateFollow("ready");
    expect(followOk).toBe(false);
    expect(linksOpened).toBe(1);
  }, 60_000);
});
