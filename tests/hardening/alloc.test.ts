// Issue 18 item 1: a host buffer over 4 GiB (under the 64 GiB per-rank limit) is refused with
// 413, and the rank keeps running. Before the fix, mapping it for JS (toArrayBuffer past
// JavaScriptCore's 4 GiB ArrayBuffer limit) aborted the process: one request ended the world.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { HOST_BUFFER_BYTES_MAX } from "../../src/native/engine";
import { launchWorld, pidAlive, type LaunchedWorld } from "../support/launch-world";

let w: LaunchedWorld;
beforeAll(async () => {
  w = await launchWorld(1);
}, 90_000);
afterAll(async () => {
  await w?.stop();
});

async function post(path: string, body: unknown): Promise<{ status: number; body: any }> {
  const res = await fetch(w.urls[0] + path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  return { status: res.status, body: await res.json() };
}

test("POST /buffers past the host buffer limit: 413 naming the limit, the rank stays up", async () => {
  expect(HOST_BUFFER_BYTES_MAX).toBe(2 ** 32);
  for (const shape of [[4294967297], [65537, 65537], [2, 2 ** 31 + 1]]) {
    const r = await post("/buffers", { dtype: "uint8", shape });
    expect(r.status).toBe(413);
    expect(r.body.error.code).toBe("too_large");
    expect(r.body.error.message).toContain(`${HOST_BUFFER_BYTES_MAX} bytes`);
  }
  const wide = await post("/buffers", { dtype: "float64", shape: [2 ** 29 + 1] }); // 4 GiB + 8 bytes
  expect(wide.status).toBe(413);
  expect(pidAlive(w.pids[0]!)).toBe(true);
  const health = await fetch(w.urls[0] + "/health");
  expect(health.status).toBe(200);
  // and it still serves buffers and collectives
  const ok = await post("/buffers", { dtype: "int32", shape: [3], data: [1, 2, 3] });
  expect(ok.status).toBe(201);
  const red = await post("/collective/allreduce", { buffer: ok.body.buffer });
  expect(red.status).toBe(200);
  const back = (await (await fetch(`${w.urls[0]}/buffers/${ok.body.buffer}`)).json()) as { data: number[] };
  expect(back.data).toEqual([1, 2, 3]);
}, 30_000);
