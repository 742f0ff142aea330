// Issue 18 items 6 and 7: exact int64 or 400 (never rounded), unknown body fields are 400
// naming them (a misspelled "reduceop":"max" ran a sum), deeply nested values are 400 (not
// 500 "Maximum call stack size exceeded"). Through the Hono app and the JSON fast path.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { RankService } from "../../src/server/service";
import { startInprocWorld, type InprocWorld } from "../support/inproc-world";

process.env.MOONRING_LOG ??= "warn";

let w: InprocWorld;
let s: RankService;
beforeAll(async () => {
  w = await startInprocWorld(2);
  s = w.services[0]!;
});
afterAll(async () => {
  await w?.stop();
});

/** The same request through app.request() and over HTTP (the JSON fast path for collectives). */
async function both(path: string, text: string): Promise<{ status: number; body: any }> {
  const init = () => ({ method: "POST", headers: { "content-type": "application/json" }, body: text });
  const a = await s.app.request(path, init());
  const b = await fetch(s.url + path, init());
  const [ja, jb] = [await a.json(), await b.json()];
  expect(b.status).toBe(a.status);
  expect(jb).toEqual(ja);
  return { status: a.status, body: ja };
}

async function bad(path: string, body: unknown, contains: string): Promise<void> {
  const r = await both(path, typeof body === "string" ? body : JSON.stringify(body));
  expect(r.status).toBe(400);
  expect(r.body.error.code).toBe("invalid_request");
  expect(r.body.error.message).toContain(contains);
}

describe("int64 is exact or refused", () => {
  test("JSON numbers beyond 2^53 - 1 are 400 (JSON.parse would round them), decimal strings are exact", async () => {
    for (const text of ["9007199254740993", "-9007199254740993", "9007199254740992", "12345678901234567890", "9.2e18"]) {
      await bad("/collective/allreduce", `{"tensor":{"dtype":"int64","shape":[1],"data":[${text}]}}`, "decimal strings");
    }
    await bad("/p2p/send", `{"dst":1,"tensor":{"dtype":"int64","shape":[1],"data":[9007199254740993]}}`, "decimal strings");
    await bad("/buffers", `{"dtype":"int64","shape":[1],"data":[9007199254740993]}`, "decimal strings");
    // exact: strings of any int64, and numbers up to 2^53 - 1
    const big = 2n ** 62n + 1n; // not a float64 value
    const rs = await Promise.all(
      w.services.map((svc, r) =>
        fetch(svc.url + "/collective/allreduce", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: `{"tensor":{"dtype":"int64","shape":[3],"data":["${big + BigInt(r)}", 9007199254740991, "-9223372036854775807"]},"op":"max"}`,
        }).then((x) => x.json() as Promise<{ result: { data: string[] } }>),
      ),
    );
    for (const r of rs) expect(r.result.data).toEqual([(big + 1n).toString(), "9007199254740991", "-9223372036854775807"]);
  });
});

describe("unknown fields are 400 naming them", () => {
  const t = { dtype: "int32", shape: [1], data: [3] };
  test("collectives (both paths), tensors, p2p, buffers, membership, groups", async () => {
    await bad("/collective/allreduce", { tensor: t, reduceop: "max" }, '"reduceop"');
    await bad("/collective/allreduce", { tensor: { ...t, dtpye: "int64" } }, '"dtpye"');
    await bad("/collective/barrier", { timeout: 5 }, '"timeout"');
    await bad("/collective/alltoall", { tensors: [t, t], extra: 1 }, '"extra"');
    await bad("/collective/allreduce", { buffer: "r0b0", reduceop: "max" }, '"reduceop"');
    await bad("/p2p/send", { tensor: t, dst: 1, tga: "x" }, '"tga"');
    await bad("/p2p/recv", { src: 1, timeout: 10 }, '"timeout"');
    await bad("/buffers", { ...t, devcie: "cpu" }, '"devcie"');
    await bad("/membership/activate", { ranks: [1], force: true }, '"force"');
    await bad("/groups", { name: "g", ranks: [0, 1], ranks2: [] }, '"ranks2"');
  });
});

describe("deep nesting is 400", () => {
  const deep = "[".repeat(100_000) + "1" + "]".repeat(100_000);
  test("100k levels in data, shape, an unknown field, a tensor list", async () => {
    await bad("/collective/allreduce", `{"tensor":{"dtype":"float32","shape":[1],"data":${deep}}}`, "tensor.data[0]");
    await bad("/collective/allreduce", `{"tensor":{"dtype":"int64","shape":[1],"data":[${deep}]}}`, "tensor.data[0]");
    await bad("/collective/allreduce", `{"tensor":{"dtype":"float32","shape":${deep},"data":[1]}}`, "tensor.shape");
    await bad("/collective/allreduce", `{"x":${deep},"tensor":{"dtype":"float32","shape":[1],"data":[1]}}`, '"x"');
    await bad("/collective/alltoall", `{"tensors":${deep}}`, "tensors");
    await bad("/p2p/send", `{"dst":1,"tensor":{"dtype":"bool","shape":[1],"data":${deep}}}`, "tensor.data[0]");
    await bad("/buffers", `{"dtype":"uint8","shape":[1],"data":${deep}}`, "buffer.data[0]");
    const h = await fetch(s.url + "/health");
    expect(h.status).toBe(200);
  });
});
