// Issue 18 item 2 (control-plane half): secure by default. `launch` without MOONRING_TOKEN gives
// its job a fresh secret: a process that does not know it can neither complete the data-plane
// handshake (before: anyone local joined as "rank 1" with the guessable cluster id) nor call the
// REST API as another user; this user's own processes (who could read it from the ranks'
// environment anyway) call REST without it. `serve` without a token says so, loudly when other
// hosts can reach it, at start and in /health.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePortRange, sleep } from "../../src/util/net";
import { CLI, ROOT, collect, launchWorld, type LaunchedWorld } from "../support/launch-world";

process.env.MOONRING_LOG ??= "warn";
const canSwitchUser = process.getuid?.() === 0 && Bun.which("setpriv") !== null && Bun.which("curl") !== null;

describe("launch without MOONRING_TOKEN", () => {
  let w: LaunchedWorld;
  beforeAll(async () => {
    w = await launchWorld(2); // launch-world removes MOONRING_TOKEN from the launcher's environment
  }, 90_000);
  afterAll(async () => {
    await w?.stop();
  });
  const tokenFile = () => join(process.env.XDG_RUNTIME_DIR || tmpdir(), `moonring-${process.getuid!()}`, `launch-${w.port}.token`);
  const allreduce = (headers: Record<string, string> = {}) =>
    Promise.all(
      w.urls.map((u, r) =>
        fetch(u + "/collective/allreduce", { method: "POST", headers, body: JSON.stringify({ tensor: { dtype: "int32", shape: [1], data: [r + 1] } }) }).then(
          async (x) => [x.status, ((await x.json()) as { result?: { data: number[] } }).result?.data] as const,
        ),
      ),
    );

  test("a per-job secret: in a file only this user reads; this user's local processes need none", async () => {
    const file = tokenFile();
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const token = readFileSync(file, "utf8").trim();
    expect(token).toMatch(/^[0-9a-f]{64}$/);
    expect(w.stderrText()).toContain(file);
    expect(readFileSync(file.replace(`launch-${w.port}.`, `launch-${w.port + 1}.`), "utf8").trim()).toBe(token); // one per rank port
    const health = (await (await fetch(w.urls[0] + "/health")).json()) as { auth: string; pid: number };
    expect(health.auth).toBe("token+local-user");
    expect(health.pid).toBe(w.pids[0]!);
    expect(await allreduce()).toEqual([[200, [3]], [200, [3]]]);
    expect(await allreduce({ authorization: `Bearer ${token}` })).toEqual([[200, [3]], [200, [3]]]);
  });

  test("a process without the secret can't join the data plane, and the world is unharmed", async () => {
    const dataPort = ((await (await fetch(w.urls[0] + "/health")).json()) as { data_port: number }).data_port;
    for (const guess of ["", "0".repeat(64)]) {
      // as rank 1, with no token and with a wrong one
      const p = Bun.spawn([process.execPath, `${ROOT}tests/support/impostor.ts`, String(dataPort), String(w.port), "1", "2", guess], { stdout: "pipe", stderr: "pipe" });
      const out = JSON.parse((await new Response(p.stdout).text()).trim().split("\n").pop()!) as { code: string; message: string };
      await p.exited;
      expect(out.code).toBe("EPEER");
      expect(out.message).toContain("handshake rejected");
    }
    expect(await allreduce()).toEqual([[200, [3]], [200, [3]]]);
    const cluster = (await (await fetch(w.urls[0] + "/cluster")).json()) as { ranks: { state: string }[] };
    expect(cluster.ranks.map((r) => r.state)).toEqual(["healthy", "healthy"]);
  }, 60_000);

  test.skipIf(!canSwitchUser)("another user: 401 on REST, readiness only on /health; with the secret it is let in", async () => {
    const asNobody = (...args: string[]) => {
      const r = Bun.spawnSync(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "curl", "-s", "-m", "10", ...args]);
      return r.stdout.toString();
    };
    const body = JSON.stringify({ tensor: { dtype: "int32", shape: [1], data: [1] } });
    const refused = JSON.parse(asNobody("-X", "POST", "-d", body, w.urls[0] + "/collective/allreduce")) as { error: { code: string } };
    expect(refused.error.code).toBe("unauthorized");
    expect(JSON.parse(asNobody(w.urls[1] + "/cluster")).error.code).toBe("unauthorized");
    expect(JSON.parse(asNobody(w.urls[0] + "/health"))).toEqual({ status: "ok", ready: true, state: "healthy" });
    const token = readFileSync(tokenFile(), "utf8").trim();
    const cluster = JSON.parse(asNobody("-H", `Authorization: Bearer ${token}`, w.urls[0] + "/cluster")) as { world_size: number };
    expect(cluster.world_size).toBe(2);
  }, 60_000);
});

test("serve without a token where other hosts reach it: a loud warning at start and in /health", async () => {
  const port = await freePortRange(1, "0.0.0.0");
  const env: Record<string, string> = { ...(process.env as Record<string, string>), MOONRING_LOG: "warn" };
  delete env.MOONRING_TOKEN;
  const p = Bun.spawn([process.execPath, CLI, "serve", "--rank", "0", "--world-size", "1", "--port", String(port), "--host", "0.0.0.0"], { stdin: "ignore", stdout: "pipe", stderr: "pipe", env });
  const err = collect(p.stderr, []);
  try {
    const until = Date.now() + 30_000;
    let health: { auth?: string; security_warning?: string } | null = null;
    while (!health?.auth && Date.now() < until) {
      health = await fetch(`http://127.0.0.1:${port}/health`).then((r) => r.json() as Promise<typeof health>).catch(() => null);
      await sleep(50);
    }
    expect(health?.auth).toBe("none");
    expect(health?.security_warning).toContain("no MOONRING_TOKEN while serving on 0.0.0.0");
    expect(err.text()).toContain("SECURITY WARNING");
  } finally {
    p.kill("SIGTERM");
    await p.exited;
  }
}, 60_000);
