// Liveness that a busy event loop can't fake (issue 18 item 4). A rank's main thread may be
// busy for seconds (a 200 MiB JSON body, a 256 MiB base64 tensor): heartbeats sent and judged
// on that thread made healthy ranks look dead. Here a Worker (liveness-worker.ts) owns a UDP
// socket: every rank's worker heartbeats the coordinator's worker, which answers each one; the
// time of the last datagram from each rank lands in a SharedArrayBuffer the main thread reads
// (the coordinator: "when did rank r last heartbeat?"; a rank: "when did the coordinator last
// answer?"). The control link's own messages still count too (see coordinator.ts, link.ts).
import { WORLD_SIZE_MAX } from "../limits";

export interface LivenessOptions {
  rank: number;
  instance: string;
  /** MAC key of the datagrams: the job token when there is one, else the cluster id. */
  key: string;
  /** Bind address of the UDP socket (the service's bind host). */
  host: string;
  intervalMs: number;
}

/** How long the worker has to come up before the service starts without it. */
const START_TIMEOUT_MS = 5000;

export class Liveness {
  private heard: Float64Array;
  private stalled: Float64Array;
  private mainTick: Float64Array;
  private ticker: ReturnType<typeof setInterval> | null = null;

  private constructor(
    private worker: Worker | null,
    sab: SharedArrayBuffer,
    /** The UDP port of this rank's heartbeat socket (0: none). */
    readonly port: number,
  ) {
    const w = WORLD_SIZE_MAX;
    this.heard = new Float64Array(sab, 0, w);
    this.stalled = new Float64Array(sab, w * 8, w);
    this.mainTick = new Float64Array(sab, 2 * w * 8, 1);
  }

  /** A liveness without a heartbeat thread (in-process test worlds): every rank reads as never heard. */
  static none(): Liveness {
    return new Liveness(null, new SharedArrayBuffer((2 * WORLD_SIZE_MAX + 1) * 8), 0);
  }

  static async start(opts: LivenessOptions): Promise<Liveness> {
    const sab = new SharedArrayBuffer((2 * WORLD_SIZE_MAX + 1) * 8);
    const worker = new Worker(new URL("./liveness-worker.ts", import.meta.url).href);
    const port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the heartbeat thread did not start within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
      worker.onmessage = (e: MessageEvent) => {
        const m = e.data as { t: string; port?: number; message?: string };
        if (m.t === "ready") {
          clearTimeout(timer);
          resolve(m.port!);
        } else if (m.t === "error") {
          clearTimeout(timer);
          reject(new Error(`heartbeat thread: ${m.message}`));
        }
      };
      worker.postMessage({ t: "init", ...opts, sab, worldSizeMax: WORLD_SIZE_MAX });
    }).catch((e: Error) => {
      worker.terminate();
      throw e;
    });
    worker.unref();
    const live = new Liveness(worker, sab, port);
    live.mainTick[0] = now();
    live.ticker = setInterval(() => {
      live.mainTick[0] = now();
    }, opts.intervalMs);
    live.ticker.unref?.();
    return live;
  }

  /** Heartbeats go to this socket (the coordinator's); null host: to nobody (this rank coordinates). */
  target(host: string | null, port: number): void {
    try {
      this.worker?.postMessage({ t: "target", host: port > 0 ? host : null, port });
    } catch {
      // the thread is gone (stopping)
    }
  }

  /** Milliseconds since a heartbeat datagram from `rank` arrived (Infinity: never). */
  silentMs(rank: number): number {
    const t = this.heard[rank]!;
    return t === 0 ? Infinity : now() - t;
  }

  /** How long `rank`'s main thread had not ticked when it last heartbeat (ms; informational). */
  stalledMs(rank: number): number {
    return this.stalled[rank]!;
  }

  /** Forgets what was heard from `rank` (its slot got a new process). */
  forget(rank: number): void {
    this.heard[rank] = 0;
    this.stalled[rank] = 0;
  }

  get running(): boolean {
    return this.worker !== null;
  }

  stop(): void {
    if (this.ticker) clearInterval(this.ticker);
    this.ticker = null;
    const w = this.worker;
    this.worker = null;
    if (!w) return;
    w.postMessage({ t: "stop" });
    // the worker closes its socket on "stop"; terminate soon after in case it can't answer
    setTimeout(() => w.terminate(), 200).unref?.();
  }
}

function now(): number {
  return performance.timeOrigin + performance.now();
}
