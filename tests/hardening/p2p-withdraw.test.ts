// A p2p recv whose client disconnects is withdrawn. Before, it stayed posted at the rank and took
// the next message from src: the client's next recv then got the message after it (or timed out).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sleep } from "../../src/util/net";
import { startInprocWorld, type InprocWorld } from "../support/inproc-world";

process.env.MOONRING_LOG ??= "warn";

let w: InprocWorld;
beforeAll(async () => {
  w = await startInprocWorld(2);
}, 60_000);
afterAll(async () => {
  await w?.stop();
});

const call = (r: number, path: string, body: unknown, signal?: AbortSignal) =>
  fetch(w.urls[r] + path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body), signal });

/** Waits (deadline) until rank 1 has `n` recvs from rank 0 with `tag` posted, per its /debug/recent. */
async function recvsPosted(tag: string, n: number): Promise<void> {
  const until = Date.now() + 10_000;
  for (;;) {
    const d = (await (await fetch(`${w.urls[1]}/debug/recent?limit=1`)).json()) as { p2p: { recvs: { src: number; tag: string; waiting: number }[] } };
    const waiting = d.p2p.recvs.find((x) => x.src === 0 && x.tag === tag)?.waiting ?? 0;
    if (waiting === n) return;
    if (Date.now() > until) throw new Error(`rank 1 has ${waiting} recvs posted with tag ${JSON.stringify(tag)}, not ${n}`);
    await sleep(10);
  }
}

describe("p2p recv: a client that disconnects", () => {
  for (const [how, tag] of [["JSON", "j"], ["into a buffer", "b"]] as const) {
    test(`${how}: its recv is withdrawn; the next message goes to the next recv`, async () => {
      const buffer =
        how === "into a buffer"
          ? ((await (await call(1, "/buffers", { dtype: "int32", shape: [1], data: [0] })).json()) as { buffer: string }).buffer
          : null;
      const recvBody = buffer ? { buffer, src: 0, tag } : { src: 0, tag };
      const ac = new AbortController();
      const gone = call(1, "/p2p/recv", recvBody, ac.signal).catch((e) => e as Error);
      await recvsPosted(tag, 1);
      ac.abort(); // the TCP connection closes
      expect(((await gone) as Error).name).toBe("AbortError");
      await recvsPosted(tag, 0);
      const [sent, got] = await Promise.all([
        call(0, "/p2p/send", { tensor: { dtype: "int32", shape: [1], data: [42] }, dst: 1, tag, timeout_ms: 10_000 }),
        call(1, "/p2p/recv", { ...recvBody, timeout_ms: 10_000 }),
      ]);
      expect(sent.status).toBe(200);
      expect(got.status).toBe(200);
      if (buffer) {
        const back = (await (await fetch(`${w.urls[1]}/buffers/${buffer}`)).json()) as { data: number[] };
        expect(back.data).toEqual([42]);
      } else {
        expect(((await got.json()) as { result: { data: number[] } }).result.data).toEqual([42]);
      }
    }, 60_000);
  }
});
