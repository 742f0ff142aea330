// Striping over several NICs (docs/verbs.md "Several NICs"): the test provider shows two
// devices (MOONRING_FAKEVERBS_DEVICES=2); each link has a queue pair on both, small messages
// go over the first, large ones are RDMA-read in one stripe per NIC. GET /cluster's
// data_plane.verbs.devices counts each NIC's bytes: both must grow, and the data must be exact.
// MOONRING_IB_HCA (NCCL syntax) picks the NICs; a NIC whose link is down fails the link (EPEER
// naming the peer), like any broken data-plane link.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { launchWorld, type LaunchedWorld } from "../support/launch-world";
import { onSystemVerbs, providerMissing, verbsEnv } from "./provider";

const missing = onSystemVerbs ? "the provider's devices are what these tests set up" : providerMissing();
if (missing) console.warn(`SKIP verbs striping: ${missing}`);

type Verbs = { detail: string; devices: { name: string; bytes: number }[] };

async function verbsOf(url: string): Promise<Verbs> {
  return ((await (await fetch(`${url}/cluster`)).json()) as any).data_plane.verbs;
}

function bytesOf(v: Verbs, name: string): number {
  return v.devices.find((d) => d.name === name)?.bytes ?? 0;
}

async function hostBuffer(url: string, values: Float32Array): Promise<string> {
  const res = await fetch(`${url}/buffers?dtype=float32&shape=${values.length}`, { method: "POST", headers: { "content-type": "application/octet-stream" }, body: new Uint8Array(values.buffer) });
  expect(res.status).toBe(201);
  return ((await res.json()) as any).buffer;
}

async function readBuffer(url: string, id: string): Promise<Float32Array> {
  const res = await fetch(`${url}/buffers/${id}`, { headers: { accept: "application/octet-stream" } });
  expect(res.status).toBe(200);
  return new Float32Array(await res.arrayBuffer());
}

async function post(url: string, path: string, body: unknown): Promise<{ status: number; body: any }> {
  const res = await fetch(`${url}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  return { status: res.status, body: await res.json() };
}

const count = 4 << 20; // float32: 16 MiB
const pattern = (r: number) => new Float32Array(count).map((_, i) => ((i * 7 + r) % 100_003) - 50_000);

/** 16 MiB from rank 0 to rank 1 (p2p), then an allreduce of 16 MiB: values exact. */
async function bigOps(urls: string[]): Promise<void> {
  const src = pattern(0);
  const [a, b] = await Promise.all([hostBuffer(urls[0]!, src), hostBuffer(urls[1]!, new Float32Array(count))]);
  const [sent, got] = await Promise.all([post(urls[0]!, "/p2p/send", { buffer: a, dst: 1 }), post(urls[1]!, "/p2p/recv", { buffer: b, src: 0 })]);
  expect([sent.status, got.status]).toEqual([200, 200]);
  const recv = await readBuffer(urls[1]!, b);
  for (let i = 0; i < count; i += 997) if (recv[i] !== src[i]) throw new Error(`p2p element ${i}: ${recv[i]} != ${src[i]}`);
  expect(recv[count - 1]).toBe(src[count - 1]!);
  const ids = await Promise.all(urls.map((u, r) => hostBuffer(u, pattern(r))));
  const answers = await Promise.all(urls.map((u, r) => post(u, "/collective/allreduce", { buffer: ids[r], op: "sum" })));
  for (const x of answers) expect(x.status).toBe(200);
  for (let r = 0; r < urls.length; r++) {
    const v = await readBuffer(urls[r]!, ids[r]!);
    for (let i = 0; i < count; i += 1009) {
      const want = urls.reduce((acc, _, j) => acc + (((i * 7 + j) % 100_003) - 50_000), 0);
      if (v[i] !== want) throw new Error(`allreduce rank ${r} element ${i}: ${v[i]} != ${want}`);
    }
  }
  for (let r = 0; r < urls.length; r++) for (const id of [ids[r]!, r === 0 ? a : b]) await fetch(`${urls[r]}/buffers/${id}`, { method: "DELETE" });
}

describe.skipIf(missing !== null)("verbs striping over two NICs", () => {
  let world: LaunchedWorld;
  beforeAll(async () => {
    world = await launchWorld(2, { env: { ...verbsEnv(), MOONRING_FAKEVERBS_DEVICES: "2" } });
  }, 60_000);
  afterAll(async () => {
    await world?.stop();
  });

  test("large messages go over both NICs, data exact; small ones stay on the first", async () => {
    const urls = world.urls;
    for (const u of urls) expect((await verbsOf(u)).detail).toContain("striping over moonring_fake1");
    // A small allreduce: eager frames over the first NIC only.
    const small0 = await Promise.all(urls.map(verbsOf));
    const smalls = await Promise.all(urls.map((u, r) => post(u, "/collective/allreduce", { tensor: { dtype: "float32", shape: [4], data: [r, r, r, r] } })));
    for (const s of smalls) expect(s.body.result.data).toEqual([1, 1, 1, 1]);
    const small1 = await Promise.all(urls.map(verbsOf));
    for (let r = 0; r < 2; r++) expect(bytesOf(small1[r]!, "moonring_fake1")).toBe(bytesOf(small0[r]!, "moonring_fake1"));
    const before = small1;
    await bigOps(urls);
    const after = await Promise.all(urls.map(verbsOf));
    // The p2p receiver read the 16 MiB in two stripes: each NIC at least a third of it.
    for (const name of ["moonring_fake0", "moonring_fake1"]) expect(bytesOf(after[1]!, name) - bytesOf(before[1]!, name)).toBeGreaterThan((16 << 20) / 3);
    // The allreduce striped on rank 0 too.
    expect(bytesOf(after[0]!, "moonring_fake1")).toBeGreaterThan(bytesOf(before[0]!, "moonring_fake1"));
  }, 120_000);
});

describe.skipIf(missing !== null)("verbs NIC selection and a failing NIC", () => {
  for (const [hca, used, striped] of [
    ["=moonring_fake1", "moonring_fake1", false],
    ["^moonring_fake0", "moonring_fake1", false],
    ["moonring_fake0,moonring_fake1", "moonring_fake0", true],
  ] as const) {
    test(`MOONRING_IB_HCA=${hca}: ${used}${striped ? " + striping" : " only"}`, async () => {
      const world = await launchWorld(2, { env: { ...verbsEnv(), MOONRING_FAKEVERBS_DEVICES: "2", MOONRING_IB_HCA: hca } });
      try {
        const v = await verbsOf(world.urls[0]!);
        expect(v.detail.startsWith(`${used} port 1`)).toBe(true);
        expect(v.detail.includes("striping")).toBe(striped);
        expect(v.devices.map((d) => d.name).sort()).toEqual(striped ? ["moonring_fake0", "moonring_fake1"] : [used]);
        await bigOps(world.urls);
      } finally {
        await world.stop();
      }
    }, 120_000);
  }

  test("the second NIC's link is down: the large op fails with EPEER naming the peer and the NIC is logged", async () => {
    const world = await launchWorld(2, { env: { ...verbsEnv(), MOONRING_FAKEVERBS_DEVICES: "2", MOONRING_FAKEVERBS_FAIL_DEVICE: "moonring_fake1" } });
    try {
      const urls = world.urls;
      const src = pattern(0);
      const [a, b] = await Promise.all([hostBuffer(urls[0]!, src), hostBuffer(urls[1]!, new Float32Array(count))]);
      const [sent, got] = await Promise.all([post(urls[0]!, "/p2p/send", { buffer: a, dst: 1, timeout_ms: 20_000 }), post(urls[1]!, "/p2p/recv", { buffer: b, src: 0, timeout_ms: 20_000 })]);
      expect(got.status).toBeGreaterThanOrEqual(400);
      expect(JSON.stringify(got.body)).toContain("EPEER");
      expect(JSON.stringify(got.body)).toContain("rank 0");
      expect(sent.status).toBeGreaterThanOrEqual(400);
      expect(world.stderrText()).toContain("RDMA read over moonring_fake1 toward rank 0 failed: transport retry counter exceeded");
      // What follows is the control plane's partition policy (a data-plane link broke while
      // the control link stayed up): the rank that is not the coordinator leaves the world.
    } finally {
      await world.stop();
    }
  }, 120_000);
});
