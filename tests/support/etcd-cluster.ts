// Real etcd servers for tests (Debian's etcd-server, installed by scripts/apt-tools.sh when
// absent): an N-member cluster on free loopback ports with temp data dirs, its leader, kill -9
// of a member, and moonring ranks started with `serve --rendezvous etcd://...`. stop() ends
// every process started here and removes the data dirs.
import type { Subprocess } from "bun";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePortRange, sleep } from "../../src/util/net";
import { CLI, collect, ROOT } from "./launch-world";

/** Null when etcd is on PATH (installed now if need be), else why it is not. */
export function etcdMissing(): string | null {
  const r = spawnSync("sh", [join(ROOT, "scripts/apt-tools.sh"), "etcd", "etcd-server"], { encoding: "utf8", timeout: 600_000 });
  if (r.status !== 0) return `etcd could not be installed (Debian etcd-server; apt-get as root or passwordless sudo needed): ${r.stderr.trim().slice(-300)}`;
  return null;
}

interface Member {
  name: string;
  clientUrl: string;
  proc: Subprocess<"ignore", "pipe", "pipe">;
  log: () => string;
}

export class EtcdCluster {
  private constructor(
    readonly members: Member[],
    private readonly dir: string,
  ) {}

  static async start(n: number): Promise<EtcdCluster> {
    const base = await freePortRange(2 * n);
    const dir = mkdtempSync(join(tmpdir(), "moonring-etcd-"));
    const peer = (i: number) => `http://127.0.0.1:${base + 2 * i + 1}`;
    const initial = Array.from({ length: n }, (_, i) => `m${i}=${peer(i)}`).join(",");
    const token = `moonring-test-${crypto.randomUUID()}`;
    const members = Array.from({ length: n }, (_, i): Member => {
      const clientUrl = `http://127.0.0.1:${base + 2 * i}`;
      const proc = Bun.spawn(
        ["etcd", "--name", `m${i}`, "--data-dir", join(dir, `m${i}`), "--listen-client-urls", clientUrl, "--advertise-client-urls", clientUrl,
          "--listen-peer-urls", peer(i), "--initial-advertise-peer-urls", peer(i), "--initial-cluster", initial,
          "--initial-cluster-token", token, "--initial-cluster-state", "new", "--log-level", "warn"],
        { stdin: "ignore", stdout: "pipe", stderr: "pipe" },
      );
      const lines: string[] = [];
      const err = collect(proc.stderr, lines);
      collect(proc.stdout, []);
      return { name: `m${i}`, clientUrl, proc, log: err.text };
    });
    const c = new EtcdCluster(members, dir);
    try {
      await c.waitLeader(30_000);
    } catch (e) {
      await c.stop();
      throw e;
    }
    return c;
  }

  /** etcd://host:port,... of every member, with /job. */
  url(job: string): string {
    return `etcd://${this.members.map((m) => m.clientUrl.replace("http://", "")).join(",")}/${job}`;
  }

  alive(): Member[] {
    return this.members.filter((m) => m.proc.exitCode === null && m.proc.signalCode === null);
  }

  /** Index of the member that leads the raft group now (asked of the live members), once one does. */
  async waitLeader(timeoutMs = 20_000): Promise<number> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      for (const m of this.alive()) {
        try {
          const s = (await (await fetch(`${m.clientUrl}/v3/maintenance/status`, { method: "POST", body: "{}", signal: AbortSignal.timeout(1000) })).json()) as any;
          if (s.leader && s.leader !== "0") {
            const i = await this.memberIndex(s.leader);
            if (i >= 0 && this.alive().includes(this.members[i]!)) return i;
          }
        } catch {
          // not up yet
        }
      }
      if (Date.now() > until) throw new Error(`no etcd leader within ${timeoutMs} ms; logs:\n${this.members.map((m) => `${m.name}: ${m.log().slice(-600)}`).join("\n")}`);
      await sleep(100);
    }
  }

  private async memberIndex(id: string): Promise<number> {
    for (const m of this.alive()) {
      try {
        const r = (await (await fetch(`${m.clientUrl}/v3/cluster/member/list`, { method: "POST", body: "{}", signal: AbortSignal.timeout(1000) })).json()) as any;
        const hit = (r.members as any[]).find((x) => x.ID === id);
        if (hit) return this.members.findIndex((mm) => mm.name === hit.name);
      } catch {
        // try the next member
      }
    }
    return -1;
  }

  /**
   * SIGKILL, then waits until the process is gone: until then alive() still lists it (a member
   * in a disk sync dies only when the sync returns), and waitLeader() could name it from a
   * survivor that has not noticed yet (etcd.test.ts saw the killed leader "elected" again once).
   */
  async kill9(i: number): Promise<void> {
    this.members[i]!.proc.kill("SIGKILL");
    await this.members[i]!.proc.exited;
  }

  /** A key's value (UTF-8) read from any live member, or null. */
  async get(key: string): Promise<string | null> {
    for (const m of this.alive()) {
      try {
        const r = (await (await fetch(`${m.clientUrl}/v3/kv/range`, { method: "POST", body: JSON.stringify({ key: Buffer.from(key).toString("base64") }), signal: AbortSignal.timeout(2000) })).json()) as any;
        const v = r.kvs?.[0]?.value;
        return v ? Buffer.from(v, "base64").toString("utf8") : null;
      } catch {
        // try the next member
      }
    }
    throw new Error("no etcd member answered");
  }

  async stop(): Promise<void> {
    for (const m of this.members) if (m.proc.exitCode === null && m.proc.signalCode === null) m.proc.kill("SIGKILL");
    await Promise.all(this.members.map((m) => m.proc.exited));
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export interface EtcdRank {
  rank: number;
  url: string;
  proc: Subprocess<"ignore", "pipe", "pipe">;
  stderr: () => string;
}

/** `serve --rank R --rendezvous <etcd>` on `port` (no --master: the ranks find each other in etcd). */
export function serveWithEtcd(rank: number, worldSize: number, port: number, rendezvous: string, extra: string[] = []): EtcdRank {
  const env: Record<string, string> = { ...(process.env as Record<string, string>), MOONRING_LOG: process.env.MOONRING_LOG ?? "warn" };
  for (const k of ["RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "MOONRING_TOKEN", "MOONRING_RENDEZVOUS"]) delete env[k];
  const proc = Bun.spawn([process.execPath, CLI, "serve", "--rank", String(rank), "--world-size", String(worldSize), "--port", String(port), "--rendezvous", rendezvous, ...extra], {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    env,
  });
  const err = collect(proc.stderr, []);
  collect(proc.stdout, []);
  return { rank, url: `http://127.0.0.1:${port}`, proc, stderr: err.text };
}
