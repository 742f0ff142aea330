// Elastic membership over real rank processes: growth 3 -> 4 (Mooncake's test_extension,
// test_extension_p2p_*, test_extension_with_subgroups), a graceful leave and re-admission
// (manual evict: POST /membership/deactivate, /activate), and named groups (POST /groups)
// that survive a member's death. Every process started here is ended here.
import { afterEach, describe, expect, test } from "bun:test";
import { cluster, expectOk, get, Harness, i32, kill9, post, randInts, sumOver, waitHealth, waitJoined, waitState } from "../support/fault";

const h = new Harness();
afterEach(() => h.cleanup());

describe("elastic membership", () => {
  test("test_extension: launch --nproc 3 --max-world-size 4, a new rank joins slot 3 while collectives go on, activate, then 4-rank collectives, p2p both ways, groups that span the joiner", async () => {
    const w = await h.launch(3, ["--max-world-size", "4"]);
    const urls3 = w.urls;
    // groups defined with their eventual members (rank 3 joins later): a = [0, 3], c = all
    for (const [name, ranks] of [["a", [0, 3]], ["c", [0, 1, 2, 3]]] as const) {
      for (const b of expectOk(await Promise.all(urls3.map((u) => post(u, "/groups", { name, ranks }))), `define ${name}`)) {
        expect(b).toMatchObject({ name, ranks, size: ranks.length });
      }
    }
    const base = expectOk(await Promise.all(urls3.map((u, r) => post(u, "/collective/allreduce", { tensor: i32([r + 1]) }))), "baseline");
    for (const b of base) {
      expect(b.result.data).toEqual([1 + 2 + 3]);
      expect(b.active_ranks).toEqual([1, 1, 1, 0]);
    }
    const pre = expectOk(await Promise.all(urls3.map((u, r) => post(u, "/collective/allgather", { tensor: i32([r + 1]), group: "c" }))), "group c before");
    for (const b of pre) {
      expect(b.result.map((t: any) => t?.data ?? null)).toEqual([[1], [2], [3], null]);
      expect(b.active_ranks).toEqual([1, 1, 1, 0]);
    }
    expect((await post(urls3[0]!, "/collective/allreduce", { tensor: i32([1]), group: "a" })).body.result.data).toEqual([1]);

    const j = h.join(w, 3, 4);
    // ongoing collectives among the 3 while the joiner registers (Mooncake simulates ongoing ops)
    let rounds = 0;
    for (;;) {
      const res = expectOk(await Promise.all(urls3.map((u, r) => post(u, "/collective/allreduce", { tensor: i32([r + 1]) }))), "ongoing");
      for (const b of res) expect(b.result.data).toEqual([6]);
      rounds++;
      const c = await cluster(urls3[0]!);
      if (c.ranks.length === 4 && c.ranks[3].state === "awaiting") break;
      if (rounds > 2000) throw new Error("joiner never registered");
    }
    const waiting = await get(j.url, "/health");
    expect(waiting.status).toBe(503);
    expect(waiting.body).toMatchObject({ state: "awaiting", ready: false });
    const early = await post(j.url, "/collective/barrier", {});
    expect(early.status).toBe(503);
    expect(early.body.error.code).toBe("not_ready");

    const a = await post(urls3[1]!, "/membership/activate", { ranks: [3] });
    expect(a.status).toBe(200);
    expect(a.body.active_ranks).toEqual([1, 1, 1, 1]);
    await waitHealth(j.url, "healthy");
    const urls = [...urls3, j.url];
    for (const u of urls) expect((await cluster(u)).epoch).toBeGreaterThanOrEqual(a.body.epoch);
    for (const b of expectOk(await Promise.all(urls.map((u, r) => post(u, "/collective/allreduce", { tensor: i32([r + 1]) }))), "after extension")) {
      expect(b.result.data).toEqual([10]);
      expect(b.contributors).toEqual([0, 1, 2, 3]);
    }
    const lists = urls.map(() => urls.map(() => randInts(2)));
    const a2a = expectOk(await Promise.all(urls.map((u, r) => post(u, "/collective/alltoall", { tensors: lists[r]!.map((x) => i32(x)) }))), "alltoall");
    a2a.forEach((b, r) => {
      for (let src = 0; src < 4; src++) expect(b.result[src].data).toEqual(lists[src]![r]);
    });
    // p2p joiner -> primary and primary -> joiner (Mooncake test_extension_p2p_*)
    for (const [src, dst] of [[3, 2], [2, 3]] as const) {
      const payload = randInts(16);
      const [s, r] = await Promise.all([
        post(urls[src]!, "/p2p/send", { tensor: i32(payload), dst }),
        post(urls[dst]!, "/p2p/recv", { src }),
      ]);
      expect(s.status).toBe(200);
      expect(r.body.result.data).toEqual(payload);
    }
    // groups now include the joiner
    const post4 = expectOk(await Promise.all(urls.map((u, r) => post(u, "/collective/allreduce", { tensor: i32([r + 1]), group: "c" }))), "group c after");
    for (const b of post4) expect(b.result.data).toEqual([10]);
    const ga = expectOk(await Promise.all([0, 3].map((r) => post(urls[r]!, "/collective/allreduce", { tensor: i32([r + 1]), group: "a" }))), "group a after");
    for (const b of ga) {
      expect(b.result.data).toEqual([1 + 4]);
      expect(b.active_ranks).toEqual([1, 1]);
      expect(b.group).toEqual({ name: "a", ranks: [0, 3] });
    }
  }, 90_000);

  test("manual evict: deactivate removes a rank gracefully (state left), a collective waiting for it completes without it, activate re-admits it", async () => {
    const w = await h.launch(4);
    const u = w.urls;
    const inputs = [0, 1, 2, 3].map(() => randInts(3));
    // ranks 0, 1, 3 wait in an allreduce that rank 2 never joins; rank 2 is then deactivated
    const pending = Promise.all([0, 1, 3].map((r) => post(u[r]!, "/collective/allreduce", { tensor: i32(inputs[r]!), timeout_ms: 20_000 })));
    await waitJoined(u[0]!, [0, 1, 3]);
    const d = await post(u[3]!, "/membership/deactivate", { ranks: [2] });
    expect(d.status).toBe(200);
    expect(d.body.active_ranks).toEqual([1, 1, 0, 1]);
    for (const x of u) expect((await cluster(x)).epoch).toBeGreaterThanOrEqual(d.body.epoch);
    for (const b of expectOk(await pending, "allreduce during deactivate")) {
      expect(b.contributors).toEqual([0, 1, 3]);
      expect(b.failed_ranks).toEqual([]); // it left; it did not fail
      expect(b.result.data).toEqual(sumOver(inputs, [0, 1, 3]));
    }
    const health = await get(u[2]!, "/health");
    expect(health.status).toBe(503);
    expect(health.body).toMatchObject({ state: "left", status: "left", ready: false });
    const refused = await post(u[2]!, "/collective/allreduce", { tensor: i32([1]) });
    expect(refused.status).toBe(503);
    expect(refused.body.error.code).toBe("not_ready");
    expect(refused.body.error.message).toContain("left");
    expect((await cluster(u[0]!)).ranks[2]).toMatchObject({ state: "left", active: false });
    // rank 0 is the coordinator: it can't leave
    const r0 = await post(u[1]!, "/membership/deactivate", { ranks: [0] });
    expect(r0.status).toBe(400);
    expect(r0.body.error.message).toContain("coordinator");
    // deactivating a rank that already left changes nothing
    const again = await post(u[0]!, "/membership/deactivate", { ranks: [2] });
    expect(again.body).toEqual(d.body);
    // re-admit it (its process still runs)
    const a = await post(u[0]!, "/membership/activate", { ranks: [2] });
    expect(a.status).toBe(200);
    expect(a.body.active_ranks).toEqual([1, 1, 1, 1]);
    await waitHealth(u[2]!, "healthy");
    for (const b of expectOk(await Promise.all(u.map((x, r) => post(x, "/collective/allreduce", { tensor: i32(inputs[r]!) }))), "after re-admission")) {
      expect(b.result.data).toEqual(sumOver(inputs, [0, 1, 2, 3]));
    }
  }, 60_000);

  test("groups: group-local roots and lists, non-members refused, conflicting definitions refused; a member's death shrinks the group and it goes on", async () => {
    const w = await h.launch(4);
    const u = w.urls;
    const G = [1, 2, 3];
    // every member defines it; a non-member may too (idempotent, same ranks)
    for (const b of expectOk(await Promise.all([0, 1, 2, 3].map((r) => post(u[r]!, "/groups", { name: "g", ranks: [3, 2, 1] }))), "define g")) {
      expect(b).toMatchObject({ name: "g", ranks: G, size: 3 });
    }
    expect((await post(u[1]!, "/groups", { name: "g", ranks: [1, 2, 3] })).body.group_rank).toBe(0);
    const conflict = await post(u[2]!, "/groups", { name: "g", ranks: [0, 1] });
    expect(conflict.status).toBe(409);
    expect(conflict.body.error.code).toBe("conflict");
    expect((await post(u[2]!, "/groups", { name: "world", ranks: [0, 1] })).status).toBe(400);
    expect((await get(u[0]!, "/groups/g")).body).toMatchObject({ ranks: G, active_ranks: [1, 1, 1], group_rank: null });

    const inputs = [0, 1, 2, 3].map(() => randInts(3));
    const inG = (path: string, body: (r: number) => Record<string, unknown>) => Promise.all(G.map((r) => post(u[r]!, path, { ...body(r), group: "g" })));
    for (const b of expectOk(await inG("/collective/allreduce", (r) => ({ tensor: i32(inputs[r]!) })), "g allreduce")) {
      expect(b.result.data).toEqual(sumOver(inputs, G));
      expect(b.contributors).toEqual([0, 1, 2]); // group ranks
      expect(b.active_ranks).toEqual([1, 1, 1]);
      expect(b.group).toEqual({ name: "g", ranks: G });
    }
    for (const b of expectOk(await inG("/collective/allgather", (r) => ({ tensor: i32(inputs[r]!) })), "g allgather")) {
      expect(b.result.map((t: any) => t.data)).toEqual(G.map((r) => inputs[r]));
    }
    // src/dst are group ranks: src 2 is global rank 3, dst 0 is global rank 1
    for (const b of expectOk(await inG("/collective/broadcast", (r) => ({ tensor: i32(inputs[r]!), src: 2 })), "g broadcast")) expect(b.result.data).toEqual(inputs[3]);
    const g = expectOk(await inG("/collective/gather", (r) => ({ tensor: i32(inputs[r]!), dst: 0 })), "g gather");
    expect(g[0].result.map((t: any) => t.data)).toEqual(G.map((r) => inputs[r]));
    expect(g[1].result).toBeNull();
    const lists = [0, 1, 2, 3].map(() => [0, 1, 2].map(() => randInts(2)));
    const rs = expectOk(await inG("/collective/reduce_scatter", (r) => ({ tensors: lists[r]!.map((x) => i32(x)) })), "g reduce_scatter");
    rs.forEach((b, i) => expect(b.result.data).toEqual([0, 1].map((k) => G.reduce((a, c) => a + lists[c]![i]![k]!, 0))));
    // a non-member can't call it
    const outsider = await post(u[0]!, "/collective/allreduce", { tensor: i32([1]), group: "g" });
    expect(outsider.status).toBe(400);
    expect(outsider.body.error.message).toContain("not a member of group");
    const range = await post(u[1]!, "/collective/broadcast", { tensor: i32([1]), group: "g", src: 3 });
    expect(range.status).toBe(400);
    expect(range.body.error.message).toContain("out of range for group");

    // group rank 1 (global 2) dies while the other members wait in a group allreduce
    const pending = Promise.all([1, 3].map((r) => post(u[r]!, "/collective/allreduce", { tensor: i32(inputs[r]!), group: "g", timeout_ms: 20_000 })));
    await waitJoined(u[0]!, [1, 3]);
    kill9(w.pids[2]!);
    for (const b of expectOk(await pending, "g allreduce with a member killed")) {
      expect(b.contributors).toEqual([0, 2]);
      expect(b.failed_ranks).toEqual([1]);
      expect(b.active_ranks).toEqual([1, 0, 1]);
      expect(b.result.data).toEqual(sumOver(inputs, [1, 3]));
    }
    await waitState([u[0]!, u[1]!, u[3]!], 2, "failed");
    for (const b of expectOk(await Promise.all([1, 3].map((r) => post(u[r]!, "/collective/allgather", { tensor: i32(inputs[r]!), group: "g" }))), "g allgather after")) {
      expect(b.result.map((t: any) => t?.data ?? null)).toEqual([inputs[1], null, inputs[3]]);
    }
    const deadRoot = await post(u[1]!, "/collective/broadcast", { tensor: i32([1]), group: "g", src: 1 });
    expect(deadRoot.status).toBe(400);
    expect(deadRoot.body.error.message).toContain("src 1 (global rank 2) is not an active rank");
    expect((await get(u[3]!, "/groups/g")).body.active_ranks).toEqual([1, 0, 1]);
    // the world goes on too
    for (const b of expectOk(await Promise.all([0, 1, 3].map((r) => post(u[r]!, "/collective/allreduce", { tensor: i32(inputs[r]!) }))), "world after")) {
      expect(b.result.data).toEqual(sumOver(inputs, [0, 1, 3]));
    }
  }, 60_000);
});
