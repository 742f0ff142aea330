// `launch --unix PATH`: every rank also serves the whole API on its own Unix-domain socket
// ({rank} in PATH; without it PATH.{rank}); the TS client talks over it (base URL "unix:PATH").
// Collectives over the sockets give the same results; the socket files go with their ranks.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { MoonringClient, tensor } from "../../src/client";
import { launchWorld, type LaunchedWorld } from "../support/launch-world";

let world: LaunchedWorld;
let dir = "";
const sock = (r: number) => `${dir}/rank-${r}.sock`;

beforeAll(async () => {
  dir = mkdtempSync(`${tmpdir()}/moonring-unix-`);
  world = await launchWorld(2, { args: ["--unix", `${dir}/rank-{rank}.sock`] });
}, 120_000);

afterAll(async () => {
  await world?.stop();
  rmSync(dir, { recursive: true, force: true });
});

test("each rank listens on its socket; /health answers there", async () => {
  for (const r of [0, 1]) {
    expect(statSync(sock(r)).isSocket()).toBe(true);
    const res = await fetch("http://localhost/health", { unix: sock(r) } as RequestInit);
    const body = (await res.json()) as { rank: number; ready: boolean };
    expect(body.rank).toBe(r);
    expect(body.ready).toBe(true);
  }
});

test("collectives over the sockets (JSON and octet-stream bodies, keep-alive client)", async () => {
  const json = [0, 1].map((r) => new MoonringClient(`unix:${sock(r)}`, { wire: "b64" }));
  const octet = [0, 1].map((r) => new MoonringClient(`unix:${sock(r)}`, { wire: "octet" }));
  const x = [0, 1].map((r) => tensor("float64", [r + 0.5, 10 * r - 2, 2 ** 40 + r], [3]));
  for (let i = 0; i < 20; i++) {
    const clients = i % 2 ? json : octet;
    const out = await Promise.all([0, 1].map((r) => clients[r]!.allreduce(x[r]!, "sum")));
    for (const t of out) expect([...(t.data as Float64Array)]).toEqual([2, 6, 2 ** 41 + 1]);
  }
  const g = await Promise.all([0, 1].map((r) => json[r]!.allgather(x[r]!)));
  expect(g[1]!.map((t) => [...(t!.data as Float64Array)])).toEqual([
    [0.5, -2, 2 ** 40],
    [1.5, 8, 2 ** 40 + 1],
  ]);
});

test("bad input over a socket: the same 400 as over TCP", async () => {
  const res = await fetch("http://localhost/collective/allreduce", {
    unix: sock(0),
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ tensor: { dtype: "float99", shape: [1], data: [1] } }),
  } as RequestInit);
  expect(res.status).toBe(400);
  expect(((await res.json()) as { error: { code: string } }).error.code).toBe("invalid_request");
});

test("the socket files go with their ranks", async () => {
  await world.stop();
  for (const r of [0, 1]) expect(existsSync(sock(r))).toBe(false);
});
