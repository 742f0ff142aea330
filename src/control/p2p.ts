// Point to point. Sender and receiver match by (src, dst, tag, per-pair sequence): the sender
// numbers its sends per (dst, tag); the receiver takes them in that order, one per recv call.
// Metadata (dtype, shape) goes over the control plane (the sender "offers" to the receiver's
// service); bytes go over the data plane (kinds "send"/"recv") with an op_id both sides derive
// from (src, dst, tag, seq), so the sender starts its native send at once and the offer's HTTP
// answer says the receiver has the data. One HTTP round trip per message.
import type { DataPlane, NativeBuffer, NativeError } from "../native/types";
import { dtypeInfo, type DTypeName } from "../ops/table";
import { Cancelled, InvalidRequest, PeerFailed, Timeout } from "../errors";
import type { P2POffer } from "./wire";
import type { Logger } from "../util/log";
import type { Metrics } from "../util/metrics";
import { toApiError } from "./collective";
import type { Membership } from "./membership";
import type { PeerClient } from "./peers";

const MASK63 = (1n << 63n) - 1n;

/**
 * op_id of a p2p message: top bit set (collective ids from rank 0 never set it). The two
 * ranks' incarnations (RankRecord.instance) are part of it: a replaced rank numbers from 0
 * again, and its messages must not look like its predecessor's (a peer drops frames of op ids
 * that finished there).
 */
export function p2pOpId(src: number, dst: number, tag: string, seq: number, incarnations = ""): bigint {
  // FNV-1a 64 over "src>dst\0tag\0seq\0incarnations"
  let h = 0xcbf29ce484222325n;
  const s = `${src}>${dst}\u0000${tag}\u0000${seq}${incarnations ? `\u0000${incarnations}` : ""}`;
  for (let i = 0; i < s.length; i++) {
    h ^= BigInt(s.charCodeAt(i));
    h = (h * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return (1n << 63n) | (h & MASK63);
}

interface OfferEntry {
  offer: P2POffer;
  tomb: boolean;
  resolve: () => void;
  reject: (e: Error) => void;
  timer: ReturnType<typeof setTimeout> | null;
  deadline: number;
}

interface Waiter {
  resolve: (r: ReceivedTensor) => void;
  reject: (e: Error) => void;
  timer: ReturnType<typeof setTimeout> | null;
  deadline: number;
}

interface PairState {
  src: number;
  nextSeq: number;
  offers: Map<number, OfferEntry>;
  waiters: Waiter[];
}

export interface ReceivedTensor {
  dtype: DTypeName;
  shape: number[];
  buf: NativeBuffer;
  byteLength: number;
}

export class P2P {
  private sendSeq = new Map<string, number>();
  private pairs = new Map<string, PairState>();
  /** The incarnation (RankRecord.instance) this rank's counts with each peer belong to. */
  private incarnations = new Map<number, string>();
  /** Set when rank 0 is lost: no p2p any more. */
  private halted: string | null = null;

  constructor(
    private rank: number,
    private dataPlane: DataPlane,
    private membership: Membership,
    private peers: PeerClient,
    private metrics: Metrics,
    private log: Logger,
  ) {}

  private checkPeer(peer: number, what: string): void {
    if (peer === this.rank) throw new InvalidRequest(`${what}: rank ${this.rank} cannot exchange with itself`);
    if (peer >= this.membership.worldSize) {
      throw new InvalidRequest(`${what}: rank ${peer} is out of range (world size ${this.membership.worldSize})`);
    }
    if (!this.membership.isActive(peer)) {
      const rec = this.membership.get(peer);
      throw new PeerFailed(`${what}: rank ${peer} is not active (${rec ? `state ${rec.state}${rec.reason ? `: ${rec.reason}` : ""}` : "not registered"})`, {
        failed_ranks: [peer],
      });
    }
  }

  /**
   * A peer replaced by a new process (serve --join + activate) numbers its p2p messages from 0
   * again: forget the sequence numbers counted with its previous incarnation, both ways, and end
   * what still waits on that incarnation.
   */
  private syncIncarnation(peer: number): void {
    const instance = this.membership.get(peer)?.instance;
    if (instance === undefined) return;
    const known = this.incarnations.get(peer);
    this.incarnations.set(peer, instance);
    if (known === undefined || known === instance) return;
    for (const key of [...this.sendSeq.keys()]) if (key.startsWith(`${peer}\u0000`)) this.sendSeq.delete(key);
    for (const [key, st] of [...this.pairs]) {
      if (st.src !== peer) continue;
      this.pairs.delete(key);
      const gone = () => new PeerFailed(`p2p with rank ${peer}: it was replaced by a new process`, { failed_ranks: [peer] });
      for (const w of st.waiters) {
        if (w.timer) clearTimeout(w.timer);
        w.reject(gone());
      }
      for (const e of st.offers.values()) {
        if (e.tomb) continue;
        e.tomb = true;
        if (e.timer) clearTimeout(e.timer);
        e.reject(gone());
      }
    }
    this.log.info(`p2p: rank ${peer} is a new process (instance ${instance}); sequence numbers with it start over`);
  }

  /** Both ends' incarnations, as both of them see them once the pair is active. */
  private incarnationsOf(src: number, dst: number): string {
    return `${this.membership.get(src)?.instance ?? ""}>${this.membership.get(dst)?.instance ?? ""}`;
  }

  /**
   * The view changed (or rank 0 is lost): receives waiting for a peer that is no longer active,
   * and offers from it, end now with 503 peer_failed instead of waiting for their timeout.
   */
  onView(): void {
    for (const peer of [...this.incarnations.keys()]) this.syncIncarnation(peer);
    const meOk = this.halted === null && this.membership.isActive(this.rank);
    for (const st of this.pairs.values()) {
      if (meOk && this.membership.isActive(st.src)) continue;
      const rec = this.membership.get(st.src);
      const why = !meOk
        ? `rank ${this.rank} can no longer take part (${this.halted ?? `state ${this.membership.get(this.rank)?.state ?? "inactive"}`})`
        : `rank ${st.src} is no longer active (state ${rec?.state ?? "unknown"}${rec?.reason ? `: ${rec.reason}` : ""})`;
      for (const w of st.waiters.splice(0)) {
        if (w.timer) clearTimeout(w.timer);
        w.reject(new PeerFailed(`p2p recv from rank ${st.src}: ${why}`, { failed_ranks: [st.src] }));
      }
      for (const e of st.offers.values()) {
        if (e.tomb) continue;
        e.tomb = true;
        if (e.timer) clearTimeout(e.timer);
        e.reject(new PeerFailed(`p2p offer from rank ${st.src}: ${why}`, { failed_ranks: [st.src] }));
      }
    }
  }

  /** Rank 0 is lost: every p2p call ends (see onView). */
  halt(why: string): void {
    this.halted = why;
    this.onView();
  }

  /**
   * What waits here now, for GET /debug/recent (at most `limit` entries each): per (dst, tag)
   * the next send's sequence number (sends are numbered as they arrive, in order), per
   * (src, tag) the offers that arrived and wait for a recv, and the recvs that wait for an offer.
   */
  pending(limit = 100): {
    sends: { dst: number; tag: string; next_seq: number }[];
    offers: { src: number; tag: string; seq: number }[];
    recvs: { src: number; tag: string; waiting: number }[];
  } {
    const sends = [...this.sendSeq].slice(0, limit).map(([key, next]) => {
      const [dst, tag] = key.split("\u0000") as [string, string];
      return { dst: Number(dst), tag, next_seq: next };
    });
    const offers: { src: number; tag: string; seq: number }[] = [];
    const recvs: { src: number; tag: string; waiting: number }[] = [];
    for (const [key, st] of this.pairs) {
      const tag = key.slice(key.indexOf("\u0000") + 1);
      for (const [seq, e] of st.offers) if (!e.tomb && offers.length < limit) offers.push({ src: st.src, tag, seq });
      if (st.waiters.length > 0 && recvs.length < limit) recvs.push({ src: st.src, tag, waiting: st.waiters.length });
    }
    return { sends, offers, recvs };
  }

  /** /p2p/send: resolves once the receiver has the data. */
  async send(dst: number, tag: string, dtype: DTypeName, shape: number[], buf: NativeBuffer, timeoutMs: number): Promise<void> {
    this.checkPeer(dst, "p2p send");
    this.syncIncarnation(dst);
    const key = `${dst}\u0000${tag}`;
    const seq = this.sendSeq.get(key) ?? 0;
    this.sendSeq.set(key, seq + 1);
    const count = shape.reduce((a, b) => a * b, 1);
    const opId = p2pOpId(this.rank, dst, tag, seq, this.incarnationsOf(this.rank, dst));
    const ranks = this.rank < dst ? [this.rank, dst] : [dst, this.rank];
    const nativeSend =
      count > 0
        ? this.dataPlane.run({ kind: "send", dtype, opId, ranks, root: dst, count, send: buf, timeoutMs })
        : Promise.resolve();
    nativeSend.catch(() => {}); // observed below; avoid an unhandled rejection if the offer fails first
    const url = `${this.membership.get(dst)!.url}/internal/p2p/offer`;
    const offer: P2POffer = { src: this.rank, tag, seq, dtype, shape, timeout_ms: timeoutMs };
    const offered = this.peers.post(url, offer, timeoutMs + 5000, `rank ${this.rank}: p2p send to rank ${dst}`);
    offered.catch(() => {}); // observed below
    // The offer's answer comes first (it orders this rank's sends to dst), except when the
    // receiver is marked down: then the native send fails at once with EPEER and so does this,
    // even while the offer's HTTP answer hangs (a partition).
    const peerDown = nativeSend.then(
      () => new Promise<never>(() => {}),
      (e) => ((e as NativeError).code === "EPEER" ? Promise.reject(e) : new Promise<never>(() => {})),
    );
    try {
      await Promise.race([offered, peerDown]);
      await nativeSend;
    } catch (e) {
      throw toApiError(e, this.rank, `p2p send to rank ${dst}`, null);
    }
  }

  private pair(src: number, tag: string): PairState {
    const key = `${src}\u0000${tag}`;
    let st = this.pairs.get(key);
    if (!st) {
      st = { src, nextSeq: 0, offers: new Map(), waiters: [] };
      this.pairs.set(key, st);
    }
    return st;
  }

  /** /internal/p2p/offer (from the sender's service): resolves when this rank has the bytes. */
  offer(o: P2POffer): Promise<void> {
    if (!this.membership.get(o.src)) throw new InvalidRequest(`p2p offer from unknown rank ${o.src}`);
    if (!this.membership.isActive(o.src)) throw new PeerFailed(`p2p offer from rank ${o.src}, which is not active`, { failed_ranks: [o.src] });
    this.syncIncarnation(o.src);
    const st = this.pair(o.src, o.tag);
    if (o.seq < st.nextSeq || st.offers.has(o.seq)) {
      throw new InvalidRequest(`p2p offer from rank ${o.src} tag ${JSON.stringify(o.tag)} seq ${o.seq} is a duplicate`);
    }
    return new Promise<void>((resolve, reject) => {
      const e: OfferEntry = { offer: o, tomb: false, resolve, reject, timer: null, deadline: performance.now() + o.timeout_ms };
      e.timer = setTimeout(() => {
        e.timer = null;
        if (e.tomb) return;
        e.tomb = true; // the receiver skips this seq: the sender gave up on it
        reject(
          new Timeout(
            `p2p: rank ${this.rank} did not call recv(src ${o.src}${o.tag ? `, tag ${JSON.stringify(o.tag)}` : ""}) within ${o.timeout_ms} ms`,
            { missing_ranks: [this.rank] },
          ),
        );
        this.match(o.src, o.tag);
      }, o.timeout_ms);
      st.offers.set(o.seq, e);
      this.match(o.src, o.tag);
    });
  }

  /**
   * /p2p/recv. Once `signal` aborts (the HTTP client went away) a recv that no send has met yet
   * is withdrawn (499 cancelled): left behind, it took the next message from src, meant for the
   * client's next recv. One that met its send already completes (the message goes nowhere).
   */
  recv(src: number, tag: string, timeoutMs: number, signal?: AbortSignal): Promise<ReceivedTensor> {
    this.checkPeer(src, "p2p recv");
    this.syncIncarnation(src);
    const what = `p2p recv(src ${src}${tag ? `, tag ${JSON.stringify(tag)}` : ""})`;
    if (signal?.aborted) return Promise.reject(new Cancelled(`rank ${this.rank}: ${what} not posted: its client disconnected first`));
    const st = this.pair(src, tag);
    return new Promise<ReceivedTensor>((resolve, reject) => {
      const withdraw = () => {
        const i = st.waiters.indexOf(w);
        if (i < 0) return; // met its send already
        st.waiters.splice(i, 1);
        if (w.timer) clearTimeout(w.timer);
        reject(new Cancelled(`rank ${this.rank}: ${what} was withdrawn: its client disconnected before a send came`));
      };
      const settled = () => signal?.removeEventListener("abort", withdraw);
      const w: Waiter = {
        resolve: (r) => (settled(), resolve(r)),
        reject: (e) => (settled(), reject(e)),
        timer: null,
        deadline: performance.now() + timeoutMs,
      };
      signal?.addEventListener("abort", withdraw, { once: true });
      w.timer = setTimeout(() => {
        w.timer = null;
        const i = st.waiters.indexOf(w);
        if (i >= 0) st.waiters.splice(i, 1);
        w.reject(
          new Timeout(
            `p2p: rank ${this.rank} got no send from rank ${src}${tag ? ` (tag ${JSON.stringify(tag)})` : ""} within ${timeoutMs} ms`,
            { missing_ranks: [src] },
          ),
        );
      }, timeoutMs);
      st.waiters.push(w);
      this.match(src, tag);
    });
  }

  private match(src: number, tag: string): void {
    const st = this.pair(src, tag);
    for (let guard = 0; guard < 1_000_000; guard++) {
      const e = st.offers.get(st.nextSeq);
      if (!e) return;
      if (e.tomb) {
        st.offers.delete(st.nextSeq);
        st.nextSeq++;
        continue;
      }
      const w = st.waiters.shift();
      if (!w) return;
      st.offers.delete(st.nextSeq);
      const seq = st.nextSeq++;
      if (e.timer) clearTimeout(e.timer);
      if (w.timer) clearTimeout(w.timer);
      e.tomb = true;
      void this.receive(src, tag, seq, e, w);
    }
  }

  private async receive(src: number, tag: string, seq: number, e: OfferEntry, w: Waiter): Promise<void> {
    const { dtype, shape } = e.offer;
    const count = shape.reduce((a, b) => a * b, 1);
    const bytes = count * dtypeInfo(dtype).bytes;
    let buf: NativeBuffer | null = null;
    try {
      buf = this.dataPlane.alloc(Math.max(bytes, 1));
      if (count > 0) {
        const ranks = this.rank < src ? [this.rank, src] : [src, this.rank];
        const timeoutMs = Math.max(1000, Math.round(Math.min(e.deadline, w.deadline) - performance.now()));
        await this.dataPlane.run({ kind: "recv", dtype, opId: p2pOpId(src, this.rank, tag, seq, this.incarnationsOf(src, this.rank)), ranks, root: src, count, recv: buf, timeoutMs });
      }
      e.resolve();
      w.resolve({ dtype, shape, buf, byteLength: bytes });
    } catch (err) {
      buf?.release();
      const api = toApiError(err, this.rank, `p2p recv from rank ${src}`, null);
      this.log.warn(api.message);
      e.reject(api);
      w.reject(api);
    }
  }
}
