// The heartbeat thread (a Worker; see liveness.ts): owns one UDP socket, sends {hb} to the
// coordinator's heartbeat socket every interval and answers every valid {hb} it receives with
// an {ack}. When a datagram from rank r arrives it stores the time in heard[r] of the shared
// array, so the main thread reads liveness that its own event loop being busy can't fake:
// a rank whose JS thread parses a 200 MiB body for 5 s still heartbeats and still answers.
// It also reports how long its own main thread has not ticked (stalled[r] on the receiver).
import { createHmac, timingSafeEqual } from "node:crypto";

declare const self: Worker;

interface Init {
  t: "init";
  rank: number;
  instance: string;
  /** Key of the datagram MAC: the job token, else the cluster id (then only a sanity check). */
  key: string;
  sab: SharedArrayBuffer;
  worldSizeMax: number;
  intervalMs: number;
  host: string;
}

interface Target {
  t: "target";
  host: string | null;
  port: number;
}

const MAC_HEX = 32;
const PACKET_BYTES_MAX = 512;

let cfg: Init | null = null;
let heard: Float64Array;
let stalled: Float64Array;
let mainTick: Float64Array;
let target: { host: string; port: number } | null = null;
let socket: import("bun").udp.Socket<"buffer"> | null = null;
let timer: ReturnType<typeof setInterval> | null = null;

const now = (): number => performance.timeOrigin + performance.now();

function mac(payload: string): string {
  return createHmac("sha256", cfg!.key).update(payload).digest("hex").slice(0, MAC_HEX);
}

function packet(kind: "hb" | "ack"): string {
  const stall = Math.max(0, Math.round(now() - mainTick[0]! - cfg!.intervalMs));
  const payload = JSON.stringify({ k: kind, r: cfg!.rank, i: cfg!.instance, s: stall });
  return `${payload}\n${mac(payload)}`;
}

function parse(buf: Buffer): { k: string; r: number; s: number } | null {
  if (buf.length > PACKET_BYTES_MAX) return null;
  const text = buf.toString();
  const nl = text.lastIndexOf("\n");
  if (nl < 0) return null;
  const payload = text.slice(0, nl);
  const got = Buffer.from(text.slice(nl + 1));
  const want = Buffer.from(mac(payload));
  if (got.length !== want.length || !timingSafeEqual(got, want)) return null;
  try {
    const m = JSON.parse(payload) as { k: string; r: number; s: number };
    if (!Number.isInteger(m.r) || m.r < 0 || m.r >= cfg!.worldSizeMax) return null;
    return m;
  } catch {
    return null;
  }
}

function send(kind: "hb" | "ack", port: number, host: string): void {
  try {
    socket?.send(packet(kind), port, host);
  } catch {
    // an unresolvable host or a full buffer: the next interval tries again
  }
}

async function init(m: Init): Promise<void> {
  cfg = m;
  const w = m.worldSizeMax;
  heard = new Float64Array(m.sab, 0, w);
  stalled = new Float64Array(m.sab, w * 8, w);
  mainTick = new Float64Array(m.sab, 2 * w * 8, 1);
  const sock = await Bun.udpSocket({
    hostname: m.host,
    port: 0,
    socket: {
      data(_s, buf, port, addr) {
        const msg = parse(buf as Buffer);
        if (!msg) return;
        heard[msg.r] = now();
        stalled[msg.r] = Number.isFinite(msg.s) ? msg.s : 0;
        if (msg.k === "hb") send("ack", port, addr);
      },
      // ICMP "port unreachable" from a dead peer surfaces here: not this thread's problem
      error() {},
    },
  });
  timer = setInterval(() => {
    if (target) send("hb", target.port, target.host);
  }, m.intervalMs);
  socket = sock;
  postMessage({ t: "ready", port: sock.port });
}

// Nothing may end this thread (a dead thread would read as this rank being dead).
self.addEventListener("error", (e) => e.preventDefault());
process.on("uncaughtException", () => {});

self.onmessage = (e: MessageEvent) => {
  const m = e.data as Init | Target | { t: "stop" };
  if (m.t === "init") void init(m).catch((err: Error) => postMessage({ t: "error", message: err.message }));
  else if (m.t === "target") {
    target = m.host === null ? null : { host: m.host, port: m.port };
    if (target) send("hb", target.port, target.host);
  } else if (m.t === "stop") {
    if (timer) clearInterval(timer);
    socket?.close();
    socket = null;
    postMessage({ t: "stopped" });
  }
};
