// `bench --via native`: N worker processes (src/bench/native-worker.ts), each with its own data
// plane from src/native/engine.ts. The parent only relays peer addresses and commands; the
// time of a point is, per iteration, the slowest rank's (like mpi_bench.c's MPI_MAX), then the
// mean over iterations.
import type { Subprocess } from "bun";
import { parseLine, type ParentMsg, type PeerInfo, type WorkerMsg } from "./protocol";
import { defaultIters, itemBytes, makeResult, pointShape, type BenchResult } from "./spec";
import type { RunConfig, Runner } from "./runner";

const WORKER = new URL("./native-worker.ts", import.meta.url).pathname;

class Worker {
  private queue: WorkerMsg[] = [];
  private waiters: ((m: WorkerMsg | null) => void)[] = [];
  private closed = false;
  constructor(
    readonly rank: number,
    readonly proc: Subprocess<"pipe", "pipe", "inherit">,
  ) {
    void this.read();
  }

  private async read(): Promise<void> {
    const dec = new TextDecoder();
    let buf = "";
    try {
      for await (const chunk of this.proc.stdout) {
        buf += dec.decode(chunk, { stream: true });
        let i: number;
        while ((i = buf.indexOf("\n")) >= 0) {
          const m = parseLine<WorkerMsg>(buf.slice(0, i));
          buf = buf.slice(i + 1);
          if (!m) continue;
          const w = this.waiters.shift();
          if (w) w(m);
          else this.queue.push(m);
        }
      }
    } catch {
      // the worker went away; next() reports it
    }
    this.closed = true;
    for (const w of this.waiters.splice(0)) w(null);
  }

  next(timeoutMs: number, what: string): Promise<WorkerMsg> {
    const m = this.queue.shift();
    if (m) return Promise.resolve(m);
    if (this.closed) return Promise.reject(new Error(`bench worker rank ${this.rank} exited (code ${this.proc.exitCode}) while ${what}`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const i = this.waiters.indexOf(done);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new Error(`bench worker rank ${this.rank}: no answer within ${Math.round(timeoutMs / 1000)} s while ${what}`));
      }, timeoutMs);
      const done = (msg: WorkerMsg | null) => {
        clearTimeout(timer);
        if (msg) resolve(msg);
        else reject(new Error(`bench worker rank ${this.rank} exited (code ${this.proc.exitCode}) while ${what}`));
      };
      this.waiters.push(done);
    });
  }

  send(m: ParentMsg): void {
    try {
      this.proc.stdin.write(JSON.stringify(m) + "\n");
      this.proc.stdin.flush();
    } catch {
      // exited; next() will say so
    }
  }
}

function expect<K extends WorkerMsg["ev"]>(m: WorkerMsg, ev: K): Extract<WorkerMsg, { ev: K }> {
  if (m.ev === "error") throw new Error(m.message);
  if (m.ev !== ev) throw new Error(`bench worker rank ${m.rank}: expected ${ev}, got ${m.ev}`);
  return m as Extract<WorkerMsg, { ev: K }>;
}

export class NativeRunner implements Runner {
  private workers: Worker[] = [];
  readonly label: string;

  constructor(private cfg: RunConfig) {
    this.label = `via native (${cfg.transport} transport)`;
  }

  async start(): Promise<void> {
    const { nproc } = this.cfg;
    const env: Record<string, string> = { ...(process.env as Record<string, string>), MOONRING_TRANSPORT: this.cfg.transport };
    if (!env.MOONRING_LOG) env.MOONRING_LOG = "warn";
    // A worker awaits one op at a time and serves nothing else, so it may sleep in mr_wait for
    // the whole op (the REST service keeps the 1 ms default: it must not hold its event loop).
    // Measured on 2x H200: the waiter-Worker hop added 100-400 us to 16-256 MiB device ops.
    if (!env.MOONRING_SYNC_WAIT_MS) env.MOONRING_SYNC_WAIT_MS = "100";
    const clusterId = `moonring-bench-${process.pid}-${Date.now()}`;
    for (let r = 0; r < nproc; r++) {
      const proc = Bun.spawn([process.execPath, WORKER, String(r), String(nproc), clusterId, this.cfg.host, this.cfg.device], {
        stdin: "pipe",
        stdout: "pipe",
        stderr: "inherit",
        env,
      });
      this.workers.push(new Worker(r, proc));
    }
    const ready = await Promise.all(this.workers.map(async (w) => expect(await w.next(60_000, "starting"), "ready")));
    const peers: PeerInfo[] = ready.map((m) => ({ rank: m.rank, host: this.cfg.host, port: m.dataPort, hostId: m.hostId }));
    for (const w of this.workers) w.send({ cmd: "peers", peers });
    await Promise.all(this.workers.map(async (w) => expect(await w.next(30_000, "setting peers"), "peered")));
  }

  /** Runs the in-place form of ops that have one (runner.ts asks for it per point). */
  readonly inPlace = true;

  async point(op: RunConfig["ops"][number], size: number, inPlace = false): Promise<BenchResult | null> {
    const c = this.cfg;
    const shape = pointShape(op, size, c.nproc, itemBytes(c.dtype));
    if (op !== "barrier" && shape.count === 0) return null;
    const iters = c.iters ?? defaultIters(shape.bytes);
    const msg: ParentMsg = {
      cmd: "point",
      op,
      dtype: c.dtype,
      redop: c.redop,
      root: c.root,
      size,
      iters,
      warmup: c.warmup,
      check: c.check,
      sync: c.sync,
      timeoutMs: c.timeoutMs,
      ...(inPlace ? { inPlace: true } : {}),
    };
    for (const w of this.workers) w.send(msg);
    // Generous: iterations x the per-op timeout would be silly; a point that stalls this long is broken.
    const limit = c.timeoutMs * 2 + 60_000;
    const res = await Promise.all(this.workers.map(async (w) => expect(await w.next(limit, `running ${op} ${shape.bytes} B${inPlace ? " in place" : ""}`), "point")));
    const len = Math.min(...res.map((m) => m.timesUs.length));
    const timesUs = Array.from({ length: len }, (_, i) => Math.max(...res.map((m) => m.timesUs[i]!)));
    const wrong = res.some((m) => m.wrong === null) ? null : res.reduce((a, m) => a + m.wrong!, 0);
    return makeResult({
      op,
      shape,
      dtype: c.dtype,
      redop: c.redop,
      root: c.root,
      nranks: c.nproc,
      via: "native",
      timesUs,
      wrong,
      transport: c.transport,
      device: c.device,
    });
  }

  async stop(): Promise<void> {
    for (const w of this.workers) {
      w.send({ cmd: "exit" });
      try {
        w.proc.stdin.end();
      } catch {
        // already gone
      }
    }
    await Promise.all(
      this.workers.map(async (w) => {
        const code = await Promise.race([w.proc.exited, Bun.sleep(5000).then(() => null)]);
        if (code === null) {
          w.proc.kill("SIGKILL");
          await w.proc.exited;
        }
      }),
    );
    this.workers = [];
  }
}
