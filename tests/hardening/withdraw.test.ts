// Issue 18 item 5: a client that disconnects withdraws its undecided call. Before the fix the
// call stayed behind at rank 0 and joined the NEXT collective: the other ranks got
// [1005, 1005] instead of [6, 6] with contributors [0, 1, 2] and status 200.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Matcher, type CallDesc, type Decision } from "../../src/control/matcher";
import { sleep } from "../../src/util/net";
import { startInprocWorld, type InprocWorld } from "../support/inproc-world";
import { desc as matcherDesc, world } from "../support/matcher-world";

process.env.MOONRING_LOG ??= "warn";

/** An allreduce of 2 int32 (the data the HTTP tests send). */
const desc = (over: Partial<CallDesc> = {}): CallDesc => matcherDesc({ dtype: "int32", count: 2, shape: [2], ...over });

describe("Matcher.withdraw", () => {
  test("a withdrawn call is answered 499 and the rank's next call takes its place", () => {
    const m = new Matcher(world(3));
    const got: Decision[][] = [[], [], []];
    const stale = desc({ count: 7 });
    m.join(2, stale, (d) => got[2]!.push(d));
    const next = desc();
    m.join(2, next, (d) => got[2]!.push(d)); // a second pending call of rank 2
    m.join(0, desc(), (d) => got[0]!.push(d));
    expect(m.withdraw(2, stale)).toBe(true);
    expect(got[2]![0]).toMatchObject({ ok: false, status: 499, code: "cancelled" });
    expect(m.withdraw(2, stale)).toBe(false); // once
    m.join(1, desc(), (d) => got[1]!.push(d));
    // rank 2's second call met ranks 0 and 1's first: no mismatch (the stale call had count 7)
    for (const r of [0, 1]) expect(got[r]![0]).toMatchObject({ ok: true, seq: 1, ranks: [0, 1, 2] });
    expect(got[2]![1]).toMatchObject({ ok: true, seq: 1 });
    expect(m.pendingCount()).toBe(0);
  });

  test("withdrawing the only joiner removes the collective without a gap in seq; decided calls stay", () => {
    const m = new Matcher(world(2));
    const got: Decision[] = [];
    const lone = desc();
    m.join(1, lone, (d) => got.push(d));
    expect(m.withdraw(1, lone)).toBe(true);
    expect(m.pendingCount()).toBe(0);
    const a = desc();
    m.join(0, a, (d) => got.push(d));
    m.join(1, desc(), (d) => got.push(d));
    expect(got[1]).toMatchObject({ ok: true, seq: 1 });
    expect(m.withdraw(0, a)).toBe(false); // decided: the op runs
  });
});

describe("a real disconnect (in-process world of 3, HTTP clients)", () => {
  let w: InprocWorld;
  beforeAll(async () => {
    w = await startInprocWorld(3);
  }, 60_000);
  afterAll(async () => {
    await w?.stop();
  });

  const call = (r: number, body: unknown, signal?: AbortSignal) =>
    fetch(w.urls[r] + "/collective/allreduce", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body), signal });

  /** Waits (deadline) until rank 0's matcher shows `rank` joined (true) or not joined (false) anywhere. */
  async function joined(rank: number, want: boolean): Promise<void> {
    const until = Date.now() + 10_000;
    for (;;) {
      const has = w.services[0]!.matcher!.pending().some((p) => p.joined.includes(rank));
      if (has === want) return;
      if (Date.now() > until) throw new Error(`rank ${rank} ${want ? "never joined" : "is still joined"} at rank 0`);
      await sleep(10);
    }
  }

  for (const [who, tag] of [[2, undefined], [0, undefined], [1, "t"]] as const) {
    test(`rank ${who} ${tag ? "(tagged) " : ""}disconnects before the others call: its call is withdrawn, the next collective is exact`, async () => {
      const ac = new AbortController();
      const gone = call(who, { tensor: { dtype: "int32", shape: [2], data: [1000, 1000] }, ...(tag ? { tag } : {}) }, ac.signal).catch((e) => e as Error);
      await joined(who, true);
      ac.abort(); // the TCP connection closes
      expect(((await gone) as Error).name).toBe("AbortError");
      await joined(who, false);
      const res = await Promise.all(
        [0, 1, 2].map((r) => call(r, { tensor: { dtype: "int32", shape: [2], data: [r + 1, r + 1] }, timeout_ms: 10_000, ...(tag ? { tag } : {}) })),
      );
      for (const x of res) {
        expect(x.status).toBe(200);
        const body = (await x.json()) as { result: { data: number[] }; contributors: number[] };
        expect(body.result.data).toEqual([6, 6]);
        expect(body.contributors).toEqual([0, 1, 2]);
      }
    }, 60_000);
  }

  test("a buffer collective's client disconnects: withdrawn the same way", async () => {
    const ids: string[] = [];
    for (let r = 0; r < 3; r++) {
      const b = await fetch(w.urls[r] + "/buffers", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ dtype: "int32", shape: [1], data: [r + 1] }) });
      ids.push(((await b.json()) as { buffer: string }).buffer);
    }
    const stale = await fetch(w.urls[2] + "/buffers", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ dtype: "int32", shape: [1], data: [1000] }) });
    const staleId = ((await stale.json()) as { buffer: string }).buffer;
    const ac = new AbortController();
    const gone = call(2, { buffer: staleId }, ac.signal).catch((e) => e as Error);
    await joined(2, true);
    ac.abort();
    await gone;
    await joined(2, false);
    const res = await Promise.all([0, 1, 2].map((r) => call(r, { buffer: ids[r], timeout_ms: 10_000 })));
    for (const x of res) expect(x.status).toBe(200);
    for (let r = 0; r < 3; r++) {
      const back = (await (await fetch(`${w.urls[r]}/buffers/${ids[r]}`)).json()) as { data: number[] };
      expect(back.data).toEqual([6]);
    }
    const untouched = (await (await fetch(`${w.urls[2]}/buffers/${staleId}`)).json()) as { data: number[] };
    expect(untouched.data).toEqual([1000]);
  }, 60_000);
});
