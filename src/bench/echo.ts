// The HTTP echo baseline of `bench --via rest`: one plain Bun echo server process per rank
// (src/bench/echo-server.ts); every iteration POSTs each rank's input bytes (octet-stream) to
// its server at once and reads the echo back, timed like the REST calls (first request to last
// answer). What any HTTP service on this host costs for the same bodies, with the same client.
import type { Subprocess } from "bun";
import { restPoint, restResult } from "./rest-point";
import type { BenchOp, BenchResult } from "./spec";
import type { RunConfig, Runner } from "./runner";

const SERVER = new URL("./echo-server.ts", import.meta.url).pathname;

export class EchoRunner implements Runner {
  readonly label = "plain HTTP echo (Bun.serve + fetch)";
  private procs: Subprocess<"pipe", "pipe", "inherit">[] = [];
  private urls: string[] = [];

  constructor(private cfg: RunConfig) {}

  async start(): Promise<void> {
    for (let r = 0; r < this.cfg.nproc; r++) {
      const p = Bun.spawn([process.execPath, SERVER, "0", this.cfg.host], { stdin: "pipe", stdout: "pipe", stderr: "inherit" });
      this.procs.push(p);
      const reader = p.stdout.getReader();
      let text = "";
      while (!text.includes("\n")) {
        const { value, done } = await reader.read();
        if (done) throw new Error("echo server exited before it was ready");
        text += new TextDecoder().decode(value);
      }
      reader.releaseLock();
      this.urls.push(`http://${this.cfg.host}:${text.trim().split(" ")[1]}/echo`);
    }
  }

  async point(op: BenchOp, size: number): Promise<BenchResult | null> {
    const c = this.cfg;
    const p = restPoint(c, op, size);
    if (!p) return null;
    const body = new Uint8Array(p.shape.sendElems * p.isz);
    const times: number[] = [];
    const calls: number[] = [];
    const once = async (record: boolean) => {
      const t0 = performance.now();
      await Promise.all(
        this.urls.map(async (u) => {
          const res = await fetch(u, { method: "POST", headers: { "content-type": "application/octet-stream" }, body });
          const back = await res.arrayBuffer();
          if (back.byteLength !== body.byteLength) throw new Error(`echo: sent ${body.byteLength} bytes, got ${back.byteLength}`);
          if (record) calls.push((performance.now() - t0) * 1000);
        }),
      );
      if (record) times.push((performance.now() - t0) * 1000);
    };
    for (let it = 0; it < c.warmup; it++) await once(false);
    for (let it = 0; it < p.iters; it++) await once(true);
    return restResult(c, op, p, "echo", times, calls, null);
  }

  async stop(): Promise<void> {
    for (const p of this.procs) {
      p.stdin.end();
      p.kill("SIGTERM");
    }
    await Promise.all(this.procs.map((p) => p.exited));
    this.procs = [];
  }
}
