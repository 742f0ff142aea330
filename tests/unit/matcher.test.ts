// The agreement matcher (rank 0) on its own: arrival-order matching, abandonment after
// 409/504, tags, op ids.
import { describe, expect, test } from "bun:test";
import { Matcher, describeCall, type CallDesc, type Decision } from "../../src/control/matcher";
import { desc, world } from "../support/matcher-world";

function joiner(m: Matcher) {
  const got = new Map<string, Decision>();
  let k = 0;
  const join = (rank: number, d: CallDesc) => {
    const key = `${rank}#${k++}`;
    m.join(rank, d, (dec) => got.set(key, dec));
    return key;
  };
  return { got, join };
}

describe("matcher", () => {
  test("untagged calls match in arrival order per rank; op ids equal within, unique across", () => {
    const m = new Matcher(world(2));
    const { got, join } = joiner(m);
    const a0 = join(0, desc());
    const b0 = join(0, desc({ count: 8 }));
    expect(got.size).toBe(0);
    const a1 = join(1, desc());
    const b1 = join(1, desc({ count: 8 }));
    const [A0, A1, B0, B1] = [a0, a1, b0, b1].map((k) => got.get(k)!);
    expect(A0.ok && A1.ok && B0.ok && B1.ok).toBe(true);
    if (A0.ok && A1.ok && B0.ok && B1.ok) {
      expect(A0.opId).toBe(A1.opId);
      expect(B0.opId).toBe(B1.opId);
      expect(A0.opId).not.toBe(B0.opId);
      expect(A0.seq).toBe(1);
      expect(B0.seq).toBe(2);
      expect(A0.ranks).toEqual([0, 1]);
    }
    expect(m.pendingCount()).toBe(0);
  });

  test("mismatch: every member gets 409 naming each rank's call", () => {
    const m = new Matcher(world(3));
    const { got, join } = joiner(m);
    const ks = [join(0, desc()), join(1, desc({ redop: "max" })), join(2, desc({ op: "broadcast", redop: null, root: 1 }))];
    for (const k of ks) {
      const d = got.get(k)!;
      expect(d.ok).toBe(false);
      if (!d.ok) {
        expect(d.status).toBe(409);
        expect(d.message).toContain("rank 0 called allreduce(float32, count 4, op sum)");
        expect(d.message).toContain("rank 1 called allreduce(float32, count 4, op max)");
        expect(d.message).toContain("rank 2 called broadcast(float32, count 4, src 1)");
      }
    }
  });

  test("timeout: joined ranks get 504 with missing_ranks; the late rank starts a new collective", async () => {
    const m = new Matcher(world(3));
    const { got, join } = joiner(m);
    const k0 = join(0, desc({ timeoutMs: 30 }));
    const k1 = join(1, desc({ timeoutMs: 5000 }));
    // wait for both answers (a deadline, not a fixed sleep: a loaded machine fires timers late)
    for (const until = Date.now() + 10_000; !(got.has(k0) && got.has(k1)) && Date.now() < until; ) await Bun.sleep(5);
    for (const k of [k0, k1]) {
      const d = got.get(k)!;
      expect(d.ok).toBe(false);
      if (!d.ok) {
        expect(d.status).toBe(504);
        expect(d.details.missing_ranks).toEqual([2]);
      }
    }
    expect(m.pendingCount()).toBe(0);
    // rank 2 arrives late (it never joined the abandoned one) and the others call again
    const l2 = join(2, desc());
    const l0 = join(0, desc());
    const l1 = join(1, desc());
    for (const k of [l0, l1, l2]) expect(got.get(k)!.ok).toBe(true);
  });

  test("one expiry timer: collectives time out at their own deadlines, earliest first; decided ones never", async () => {
    const m = new Matcher(world(2));
    const { got, join } = joiner(m);
    const t0 = performance.now();
    const at = new Map<string, number>();
    const track = (k: string) => {
      const iv = setInterval(() => {
        if (got.has(k) && !at.has(k)) {
          at.set(k, performance.now() - t0);
          clearInterval(iv);
        }
      }, 2);
    };
    // a decided collective whose deadline (20 ms) would come first: no 504 for it
    const d0 = join(0, desc({ tag: "d", timeoutMs: 20 }));
    const d1 = join(1, desc({ tag: "d", timeoutMs: 20 }));
    const late = join(0, desc({ tag: "late", timeoutMs: 120 }));
    const early = join(0, desc({ tag: "early", timeoutMs: 60 }));
    for (const k of [late, early]) track(k);
    expect(got.get(d0)!.ok && got.get(d1)!.ok).toBe(true);
    // wait for both answers (a deadline, not a fixed sleep: a loaded machine fires timers late)
    for (const until = Date.now() + 10_000; !(at.has(early) && at.has(late)) && Date.now() < until; ) await Bun.sleep(5);
    // the order the matcher answered in (got's insertion order), not the order two 2 ms polls
    // happened to notice it: under load both polls can wake after both deadlines
    expect([...got.keys()].filter((k) => k === early || k === late)).toEqual([early, late]);
    for (const k of [late, early]) expect(got.get(k)).toMatchObject({ ok: false, status: 504, code: "timeout", details: { missing_ranks: [1] } });
    expect(at.get(early)!).toBeGreaterThanOrEqual(55);
    expect(at.get(late)!).toBeGreaterThanOrEqual(115);
    expect(m.pendingCount()).toBe(0);
  });

  test("tagged calls match by tag in any order; a reused tag queues", () => {
    const m = new Matcher(world(2));
    const { got, join } = joiner(m);
    const x0 = join(0, desc({ tag: "x" }));
    const y0 = join(0, desc({ tag: "y", count: 2 }));
    const x0b = join(0, desc({ tag: "x", count: 3 }));
    const y1 = join(1, desc({ tag: "y", count: 2 }));
    expect(got.get(y0)!.ok && got.get(y1)!.ok).toBe(true);
    expect(got.has(x0)).toBe(false);
    const x1 = join(1, desc({ tag: "x" }));
    const x1b = join(1, desc({ tag: "x", count: 3 }));
    for (const k of [x0, x1, x0b, x1b]) expect(got.get(k)!.ok).toBe(true);
    // untagged and tagged never mix
    const u0 = join(0, desc());
    const t1 = join(1, desc({ tag: "u" }));
    expect(got.has(u0) || got.has(t1)).toBe(false);
  });

  test("scatter: non-src ranks learn dtype and shape from src; alltoall gets per-receiver shapes", () => {
    const m = new Matcher(world(2));
    const { got, join } = joiner(m);
    const s0 = join(0, desc({ op: "scatter", dtype: null, count: -1, shape: null, redop: null, root: 1 }));
    join(1, desc({ op: "scatter", dtype: "int16", count: 6, shape: [2, 3], redop: null, root: 1 }));
    const d = got.get(s0)!;
    expect(d.ok && d.dtype === "int16" && JSON.stringify(d.shape) === "[2,3]").toBe(true);
    const a0 = join(0, desc({ op: "alltoall", count: -1, redop: null, shapes: [[1], [2]] }));
    const a1 = join(1, desc({ op: "alltoall", count: -1, redop: null, shapes: [[3], [4]] }));
    const A0 = got.get(a0)!;
    const A1 = got.get(a1)!;
    expect(A0.ok && JSON.stringify(A0.shapes)).toBe("[[1],[3]]");
    expect(A1.ok && JSON.stringify(A1.shapes)).toBe("[[2],[4]]");
  });

  test("dropRanks completes a collective waiting only on the dropped rank", () => {
    const m = new Matcher(world(3));
    const { got, join } = joiner(m);
    const k0 = join(0, desc());
    const k1 = join(1, desc());
    m.dropRanks([2]);
    expect(got.get(k0)!.ok && got.get(k1)!.ok).toBe(true);
    const d = got.get(k0)!;
    expect(d.ok && d.ranks).toEqual([0, 1]);
  });

  test("describeCall", () => {
    expect(describeCall(desc({ op: "gather", redop: null, root: 2, tag: "t" }))).toBe('gather(float32, count 4, dst 2, tag "t")');
    expect(describeCall(desc({ op: "barrier", dtype: null, count: -1, redop: null }))).toBe("barrier()");
  });
});
