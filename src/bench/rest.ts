// `bench --via rest`: `moonring launch` starts N rank services; every iteration makes the same
// REST call to every rank at once (octet-stream bodies for the single-tensor ops, base64 JSON
// for the list ops and p2p) and times the batch from the first request to the last answer.
// This is what a user of the service sees: HTTP, agreement through rank 0, data plane, encoding.
import type { Subprocess } from "bun";
import { randomBytes } from "node:crypto";
import { MoonringClient, type Tensor } from "../client";
import { freePortRange, sleep } from "../util/net";
import { checkOutput, fillSend, hasOutput, viewOf } from "./pattern";
import type { BenchOp, BenchResult } from "./spec";
import type { RunConfig, Runner } from "./runner";
import { shmPoint } from "./rest-shm";
import { restPoint, restResult } from "./rest-point";

const CLI = new URL("../cli.ts", import.meta.url).pathname;

function u8(t: Tensor): Uint8Array {
  return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

export class RestRunner implements Runner {
  private proc: Subprocess<"ignore", "pipe", "pipe"> | null = null;
  private octet: MoonringClient[] = [];
  private b64: MoonringClient[] = [];
  private stderrText = "";
  private stopping = false;
  readonly label: string;

  private urls: string[] = [];
  /** The job's bearer token (this runner chose it; sharing() runners use their owner's). */
  private token = "";

  /**
   * body: tensors travel in request and response bodies (octet-stream, base64 for list ops).
   * shm: each rank's tensors live in shared host buffers this process maps (GET /buffers/:id/ipc)
   * and fills in place; a call carries only {"buffer": id} (docs/api-extensions.md).
   */
  constructor(
    private cfg: RunConfig,
    readonly mode: "body" | "shm" = cfg.restMode === "shm" ? "shm" : "body",
  ) {
    this.label = `via rest${mode === "shm" ? " on shared buffers" : ""} (launch, ${cfg.transport} transport)`;
  }

  /** Uses the world another runner started (body and shm modes timed on the same ranks). */
  static sharing(other: RestRunner, mode: "body" | "shm"): RestRunner {
    const r = new RestRunner(other.cfg, mode);
    r.owner = other;
    return r;
  }

  /** The runner whose world this one uses (set by sharing()). */
  private owner: RestRunner | null = null;

  async start(): Promise<void> {
    if (this.owner) {
      ({ urls: this.urls, octet: this.octet, b64: this.b64, token: this.token } = this.owner);
      return;
    }
    const c = this.cfg;
    const port = await freePortRange(c.nproc, c.host);
    // the job's secret, chosen here so the clients send it (a bearer compare per call, as users
    // with a token pay; launch would make one of its own otherwise)
    const token = process.env.MOONRING_TOKEN || randomBytes(32).toString("hex");
    this.token = token;
    const env: Record<string, string> = { ...(process.env as Record<string, string>), MOONRING_TRANSPORT: c.transport, MOONRING_TOKEN: token };
    if (!env.MOONRING_LOG) env.MOONRING_LOG = "warn";
    this.proc = Bun.spawn(
      [process.execPath, CLI, "launch", "--nproc", String(c.nproc), "--port", String(port), "--host", c.host, "--device", c.device],
      { stdin: "ignore", stdout: "pipe", stderr: "pipe", env },
    );
    const lines: string[] = [];
    const dec = new TextDecoder();
    void (async () => {
      for await (const chunk of this.proc!.stderr) {
        const s = dec.decode(chunk, { stream: true });
        this.stderrText += s;
        if (!this.stopping) process.stderr.write(s); // shutdown chatter is not news

      }
    })().catch(() => {});
    void (async () => {
      let buf = "";
      for await (const chunk of this.proc!.stdout) {
        buf += dec.decode(chunk, { stream: true });
        let i: number;
        while ((i = buf.indexOf("\n")) >= 0) {
          lines.push(buf.slice(0, i));
          buf = buf.slice(i + 1);
        }
      }
    })().catch(() => {});
    const until = Date.now() + 120_000;
    while (lines.filter((l) => /^rank \d+ ready /.test(l)).length < c.nproc) {
      if (this.proc.exitCode !== null) throw new Error(`launch exited (code ${this.proc.exitCode}) before the world was ready:\n${this.stderrText}`);
      if (Date.now() > until) throw new Error(`launch: world not ready after 120 s:\n${lines.join("\n")}\n${this.stderrText}`);
      await sleep(50);
    }
    const urls = Array.from({ length: c.nproc }, (_, r) => `http://${c.host}:${port + r}`);
    this.urls = urls;
    this.octet = urls.map((u) => new MoonringClient(u, { wire: "octet", token }));
    this.b64 = urls.map((u) => new MoonringClient(u, { wire: "b64", token }));
  }

  /** One REST call of rank r for the op; resolves to this rank's output as bytes (or null). */
  private call(op: BenchOp, r: number, input: Tensor, inputs: Tensor[] | null): Promise<Uint8Array | null> {
    const c = this.cfg;
    const o = { timeoutMs: c.timeoutMs };
    const oc = this.octet[r]!;
    const bc = this.b64[r]!;
    const n = c.nproc;
    const joined = (list: (Tensor | null)[] | null) => {
      if (!list) return null;
      const parts = list.map((t) => (t ? u8(t) : new Uint8Array(0)));
      const out = new Uint8Array(parts.reduce((a, p) => a + p.byteLength, 0));
      let off = 0;
      for (const p of parts) {
        out.set(p, off);
        off += p.byteLength;
      }
      return out;
    };
    switch (op) {
      case "allreduce":
        return oc.allreduce(input, c.redop, o).then(u8);
      case "reduce":
        return oc.reduce(input, c.root, c.redop, o).then((t) => (t ? u8(t) : null));
      case "broadcast":
        return oc.broadcast(input, c.root, o).then(u8);
      case "allgather":
        return oc.allgather(input, o).then(joined);
      case "gather":
        return oc.gather(input, c.root, o).then(joined);
      case "scatter":
        return bc.scatter(r === c.root ? inputs : null, c.root, o).then(u8);
      case "reduce_scatter":
        return bc.reduceScatter(inputs!, c.redop, o).then(u8);
      case "alltoall":
        return bc.alltoall(inputs!, o).then(joined);
      case "sendrecv":
        return Promise.all([bc.send(input, (r + 1) % n, o), bc.recv((r - 1 + n) % n, o)]).then(([, t]) => u8(t));
      case "barrier":
        return bc.barrier(o).then(() => null);
    }
  }

  async point(op: BenchOp, size: number): Promise<BenchResult | null> {
    if (this.mode === "shm") return shmPoint(this.cfg, this.urls, op, size, this.token);
    const c = this.cfg;
    const p = restPoint(c, op, size);
    if (!p) return null;
    const { n, isz, shape, iters, tables, ctx } = p;
    // Per-rank inputs: the single tensor (sendElems), and for list ops the same split into n blocks.
    const inputs: Tensor[] = [];
    const lists: (Tensor[] | null)[] = [];
    for (let r = 0; r < n; r++) {
      const bytes = new Uint8Array(Math.max(shape.sendElems, op === "scatter" ? shape.part : 0) * isz);
      const view = viewOf(c.dtype, bytes, shape.sendElems);
      fillSend({ ...ctx(r), op: op === "scatter" ? "allgather" : op }, view, tables); // scatter: every rank builds a list; only the root's is sent
      const single = (op === "scatter" || op === "reduce_scatter" || op === "alltoall" ? view.subarray(0, shape.part) : view) as Tensor["data"];
      inputs.push({ dtype: c.dtype, shape: [single.length], data: single });
      if (op === "scatter" || op === "reduce_scatter" || op === "alltoall") {
        lists.push(Array.from({ length: n }, (_, j) => ({ dtype: c.dtype, shape: [shape.part], data: view.subarray(j * shape.part, (j + 1) * shape.part) as Tensor["data"] })));
      } else lists.push(null);
    }
    const verify = (outs: (Uint8Array | null)[]) => {
      let w = 0;
      for (let r = 0; r < n; r++) {
        if (!hasOutput(op, r, c.root)) continue;
        const out = outs[r];
        if (!out) {
          w += shape.recvElems;
          continue;
        }
        const elems = Math.floor(out.byteLength / isz);
        if (elems < shape.recvElems) w += shape.recvElems - elems;
        // copy: the client's arrays may not be aligned for the dtype view
        const aligned = new Uint8Array(shape.recvElems * isz);
        aligned.set(out.subarray(0, Math.min(out.byteLength, aligned.byteLength)));
        w += checkOutput(ctx(r), viewOf(c.dtype, aligned, shape.recvElems), tables);
      }
      return w;
    };
    const times: number[] = [];
    const calls: number[] = [];
    let wrong: number | null = c.check === "none" ? null : 0;
    const once = async (record: boolean, checkIt: boolean) => {
      const t0 = performance.now();
      const outs = await Promise.all(
        Array.from({ length: n }, async (_, r) => {
          const out = await this.call(op, r, inputs[r]!, lists[r]!);
          if (record) calls.push((performance.now() - t0) * 1000);
          return out;
        }),
      );
      if (record) times.push((performance.now() - t0) * 1000);
      if (checkIt) wrong! += verify(outs);
    };
    for (let it = 0; it < c.warmup; it++) await once(false, false);
    for (let it = 0; it < iters; it++) await once(true, c.check === "every");
    if (c.check === "once") await once(false, true);
    return restResult(c, op, p, "body", times, calls, wrong);
  }

  async stop(): Promise<void> {
    if (this.owner) return;
    const p = this.proc;
    this.proc = null;
    if (!p) return;
    this.stopping = true;
    if (p.exitCode === null) p.kill("SIGTERM");
    const code = await Promise.race([p.exited, sleep(10_000).then(() => null)]);
    if (code === null) {
      p.kill("SIGKILL");
      await p.exited;
    }
  }
}
