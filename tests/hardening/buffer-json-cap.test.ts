// GET /buffers/:id as JSON is built whole on the event loop: past the JSON body limit
// (max_body_bytes) it is refused with 413 too_large naming the limit and the binary form, which
// still answers the exact bytes; small buffers still answer their exact values as JSON.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { startInprocWorld, type InprocWorld } from "../support/inproc-world";

process.env.MOONRING_LOG ??= "warn";

const LIMIT_BYTES = 4096;

describe("GET /buffers/:id JSON cap", () => {
  let w: InprocWorld;
  beforeAll(async () => {
    w = await startInprocWorld(1, { maxBodyBytes: LIMIT_BYTES });
  }, 60_000);
  afterAll(async () => {
    await w?.stop();
  });

  /** A float32 buffer made from raw bytes (its JSON creation body would itself be over the limit). */
  async function createFloat32(values: number[]): Promise<string> {
    const bytes = new Uint8Array(new Float32Array(values).buffer);
    const r = await fetch(`${w.urls[0]}/buffers?dtype=float32&shape=${values.length}`, {
      method: "POST",
      headers: { "content-type": "application/octet-stream" },
      body: bytes,
    });
    expect(r.status).toBe(201);
    return ((await r.json()) as { buffer: string }).buffer;
  }
  // i/2 - 7 is exact in float32, so the f64 reference is the exact value
  const ramp = (n: number) => Array.from({ length: n }, (_, i) => i / 2 - 7);

  test("a small buffer answers its exact values as JSON (data and b64)", async () => {
    const values = ramp(100); // worst-case JSON 100 x 25 = 2500 chars <= 4096
    const id = await createFloat32(values);
    const r = await fetch(`${w.urls[0]}/buffers/${id}`);
    expect(r.status).toBe(200);
    const got = (await r.json()) as { data: number[]; shape: number[]; dtype: string };
    expect(got.dtype).toBe("float32");
    expect(got.shape).toEqual([100]);
    expect(got.data).toEqual(values);
    const b = await fetch(`${w.urls[0]}/buffers/${id}?format=b64`);
    expect(b.status).toBe(200);
    const b64 = ((await b.json()) as { b64: string }).b64;
    expect(Array.from(new Float32Array(new Uint8Array(Buffer.from(b64, "base64")).buffer))).toEqual(values);
  });

  test("a buffer whose JSON could pass the limit is 413 naming the limit; octet-stream still answers it", async () => {
    const values = ramp(1000); // 4000 bytes: b64 5336 chars, data up to 25000 chars, both > 4096
    const id = await createFloat32(values);
    for (const query of ["", "?format=b64"]) {
      const r = await fetch(`${w.urls[0]}/buffers/${id}${query}`);
      expect(r.status).toBe(413);
      const err = (await r.json()) as { error: { code: string; message: string; limit_bytes: number; bytes: number } };
      expect(err.error.code).toBe("too_large");
      expect(err.error.message).toContain(String(LIMIT_BYTES));
      expect(err.error.message).toContain("application/octet-stream");
      expect(err.error.limit_bytes).toBe(LIMIT_BYTES);
      expect(err.error.bytes).toBe(4000);
    }
    const raw = await fetch(`${w.urls[0]}/buffers/${id}`, { headers: { accept: "application/octet-stream" } });
    expect(raw.status).toBe(200);
    expect(raw.headers.get("x-moonring-shape")).toBe("1000");
    expect(Array.from(new Float32Array(await raw.arrayBuffer()))).toEqual(values);
  });

  test("the cap is the encoded size: b64 of 3072 bytes (4096 chars) passes, 3076 bytes does not", async () => {
    const fits = await createFloat32(ramp(768)); // 4 * ceil(3072 / 3) = 4096
    const over = await createFloat32(ramp(769)); // 4 * ceil(3076 / 3) = 4104
    const ok = await fetch(`${w.urls[0]}/buffers/${fits}?format=b64`);
    expect(ok.status).toBe(200);
    expect(((await ok.json()) as { b64: string }).b64.length).toBe(4096);
    expect((await fetch(`${w.urls[0]}/buffers/${over}?format=b64`)).status).toBe(413);
  });
});
