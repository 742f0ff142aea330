// kill -9 of a rank in the middle of a large allreduce (its bytes moving over the data plane):
// every survivor answers without it before the op's deadline (no 504) — completed among the
// survivors (contributors say who, failed_ranks names the dead rank) or failed as
// peer_failed naming it (the data plane's EPEER) — and the survivors then go on among
// themselves. Shared by the verbs tests across network namespaces (tests/verbs/netns.test.ts,
// tests/netns/collectives.test.ts).
import { expect } from "bun:test";
import { sleep } from "../../src/util/net";
import { get, post } from "./http";

interface Answer {
  status: number;
  contributors: number[];
  failedRanks: number[];
  values: Float32Array | null;
  error: any;
}

/** An allreduce of `count` float32 with binary bodies (no JSON/base64 cost: the time is the data plane's). */
async function allreduceBinary(url: string, fill: number, count: number): Promise<Answer> {
  try {
    const res = await fetch(`${url}/collective/allreduce?dtype=float32&shape=${count}&timeout_ms=30000`, {
      method: "POST",
      headers: { "content-type": "application/octet-stream" },
      body: new Uint8Array(new Float32Array(count).fill(fill).buffer),
    });
    const list = (h: string) => (res.headers.get(h) || "").split(",").filter((x) => x !== "").map(Number);
    if (res.status !== 200) return { status: res.status, contributors: [], failedRanks: [], values: null, error: ((await res.json()) as any).error };
    return { status: 200, contributors: list("x-moonring-contributors"), failedRanks: list("x-moonring-failed-ranks"), values: new Float32Array(await res.arrayBuffer()), error: null };
  } catch (e) {
    return { status: 0, contributors: [], failedRanks: [], values: null, error: { message: String(e) } };
  }
}

/** moonring_collective_reissues_total of the coordinator (the lowest live rank). */
async function reissues(url: string): Promise<number> {
  const line = (await (await fetch(`${url}/metrics`)).text()).split("\n").find((l) => l.startsWith("moonring_collective_reissues_total"));
  return Number(line?.split(" ").pop() ?? NaN);
}

/** Bytes the other ranks' data planes have received from `victim` (GET /metrics). */
async function bytesFrom(urls: string[], victim: number): Promise<number> {
  const texts = await Promise.all(urls.map((u, r) => (r === victim ? "" : fetch(`${u}/metrics`).then((x) => x.text()))));
  let sum = 0;
  for (const t of texts) {
    for (const l of t.split("\n")) if (l.startsWith("moonring_dataplane_bytes_total{") && l.includes(`peer="${victim}"`) && l.includes('direction="rx"')) sum += Number(l.split(" ").pop());
  }
  return sum;
}

export async function killMidAllreduce(urls: string[], victim: number, what: string): Promise<void> {
  const n = urls.length;
  const ranks = [...Array(n).keys()];
  const survivors = ranks.filter((r) => r !== victim);
  const count = 16 << 20; // float32: 64 MiB per rank, many ring steps
  // One whole run first (links up, and its time for the log).
  const w0 = performance.now();
  for (const x of await Promise.all(ranks.map((r) => allreduceBinary(urls[r]!, r + 1, count)))) {
    expect({ status: x.status, error: x.error }).toEqual({ status: 200, error: null });
    expect([x.values![0], x.values![count - 1]]).toEqual([(n * (n + 1)) / 2, (n * (n + 1)) / 2]);
  }
  const wholeMs = performance.now() - w0;
  const pid = (await get(urls[victim]!, "/health")).body.pid as number;
  const before = await bytesFrom(urls, victim);
  const reissuesBefore = await reissues(urls[survivors[0]!]!);
  const t0 = performance.now();
  let done = false;
  const pending = Promise.all(ranks.map((r) => allreduceBinary(urls[r]!, r + 1, count))).finally(() => (done = true));
  // Mid-transfer: once the survivors got some of this op's bytes from the victim, not all.
  let moved = 0;
  while (!done && moved < 1 << 20) {
    await sleep(2);
    moved = (await bytesFrom(urls, victim)) - before;
  }
  const midOp = !done;
  process.kill(pid, "SIGKILL");
  const killedMs = performance.now() - t0;
  const res = await pending;
  const answeredMs = performance.now() - t0;
  const said = survivors.map((r) => {
    const x = res[r]!;
    return `rank ${r}: ${x.status} ${x.status === 200 ? `contributors ${x.contributors}` : `${x.error?.code} ${x.error?.native_code} ${String(x.error?.message).slice(0, 140)}`}`;
  });
  const when = !midOp ? "after the op had finished (too late to land mid-op)" : `${killedMs.toFixed(0)} ms in, ${(moved / 2 ** 20).toFixed(1)} MiB from it received`;
  console.log(`${what}: kill -9 rank ${victim} ${when} (a whole 64 MiB allreduce took ${wholeMs.toFixed(0)} ms); survivors answered after ${answeredMs.toFixed(0)} ms: ${said.join("; ")}`);
  for (const r of survivors) {
    const x = res[r]!;
    if (x.status === 200) {
      // Finished among the survivors (sent again without the dead rank) or before it died.
      const want = x.contributors.reduce((a, c) => a + c + 1, 0);
      expect({ first: x.values![0], last: x.values![count - 1] }).toEqual({ first: want, last: want });
      if (!x.contributors.includes(victim)) expect(x.failedRanks).toContain(victim);
    } else {
      // Failed naming the dead rank (the data plane's EPEER), before the op's deadline.
      expect({ status: x.status, code: x.error?.code }).toEqual({ status: 503, code: "peer_failed" });
      expect(x.error.message).toContain(`rank ${victim}`);
    }
  }
  // Answered without the victim after its bytes had started to move: the survivors' data
  // plane failed naming it (EPEER) and the coordinator re-issued the op among them.
  if (midOp && survivors.some((r) => res[r]!.status === 200 && !res[r]!.contributors.includes(victim))) {
    expect(await reissues(urls[survivors[0]!]!)).toBeGreaterThan(reissuesBefore);
  }
  // The survivors go on among themselves once the dead rank is out of the membership.
  const until = Date.now() + 20_000;
  while ((await get(urls[survivors[0]!]!, "/cluster")).body.active_ranks[victim] !== 0) {
    if (Date.now() > until) throw new Error(`rank ${victim} still active 20 s after it was killed`);
    await sleep(50);
  }
  const small = await Promise.all(survivors.map((r) => post(urls[r]!, "/collective/allreduce", { tensor: { dtype: "int32", shape: [2], data: [r + 1, 10] }, timeout_ms: 20_000 })));
  const want = [survivors.reduce((a, r) => a + r + 1, 0), 10 * survivors.length];
  for (const x of small) {
    expect({ status: x.status, body: x.status === 200 ? "ok" : x.body }).toEqual({ status: 200, body: "ok" });
    expect(x.body.contributors).toEqual(survivors);
    expect(x.body.result.data).toEqual(want);
  }
}
