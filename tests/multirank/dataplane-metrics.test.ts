// moonring_dataplane_bytes_total{transport, peer, direction}: the native links' byte counters
// (mr_engine_traffic) on real launched ranks. What rank a sent to rank b is what b received from
// a, per link kind; an allreduce of B bytes moves at least B... bytes each way between 2 ranks.
import { describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { parseExposition } from "../support/exposition";
import { launchWorld, ROOT } from "../support/launch-world";

const haveLib = existsSync(process.env.MOONRING_LIB || `${ROOT}zig/zig-out/lib/libmoonring.so`);

async function traffic(url: string): Promise<Map<string, number>> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const out = new Map<string, number>();
  for (const s of parseExposition(text).samples) {
    if (s.name === "moonring_dataplane_bytes_total") out.set(`${s.labels.transport}/${s.labels.peer}/${s.labels.direction}`, s.value);
  }
  return out;
}

describe.skipIf(!haveLib)("data-plane bytes by transport and peer", () => {
  for (const transport of ["tcp", "shm"] as const) {
    test(`${transport}: tx of one rank = rx of the other, and at least the tensor's bytes`, async () => {
      // MOONRING_BOARD_BYTES_MAX=0: same-host ops over the links, not the shared board
      const w = await launchWorld(2, { env: { MOONRING_TRANSPORT: transport, MOONRING_BOARD_BYTES_MAX: "0" } });
      try {
        const n = 1 << 16; // 256 KiB of float32
        const body = (r: number) => JSON.stringify({ tensor: { dtype: "float32", shape: [n], b64: Buffer.from(new Float32Array(n).fill(r + 1).buffer).toString("base64") } });
        for (let i = 0; i < 3; i++) {
          const answers = await Promise.all(w.urls.map((u, r) => fetch(`${u}/collective/allreduce`, { method: "POST", body: body(r) })));
          expect(answers.map((a) => a.status)).toEqual([200, 200]);
        }
        const [t0, t1] = await Promise.all(w.urls.map(traffic));
        const tx01 = t0!.get(`${transport}/1/tx`) ?? 0;
        const rx10 = t1!.get(`${transport}/0/rx`) ?? 0;
        const tx10 = t1!.get(`${transport}/0/tx`) ?? 0;
        const rx01 = t0!.get(`${transport}/1/rx`) ?? 0;
        expect(tx01).toBe(rx10);
        expect(tx10).toBe(rx01);
        // a 2-rank allreduce sends each peer at least half the tensor per call (reduce-scatter part)
        expect(tx01).toBeGreaterThanOrEqual((3 * n * 4) / 2);
        expect(tx10).toBeGreaterThanOrEqual((3 * n * 4) / 2);
        // only this kind moved bytes
        for (const k of [...t0!.keys(), ...t1!.keys()]) expect(k.startsWith(`${transport}/`)).toBe(true);
      } finally {
        await w.stop();
      }
    }, 90_000);
  }
});
