// The control link from a rank to rank 0 (the coordinator): one persistent WebSocket that
// carries agreement requests/decisions and rank-0 pushes (membership views). Metadata only:
// tensor bytes never travel here. WebSocket because a loopback round trip costs ~20 us where
// an HTTP fetch costs ~130 us, and the 8-byte allreduce budget is 200 us end to end.
//
// Liveness: both ends send {t:"hb"} every heartbeat interval; any message counts as a sign of
// life, and so do the answers of rank 0's heartbeat thread (control/liveness.ts), which a busy
// event loop on either side does not delay. A link that closes is reconnected (requests stay
// pending and are sent again on the new link, new ones wait in a bounded outbox) for as long as
// rank 0's heartbeat thread still
// answers, or one heartbeat timeout when it doesn't: only then is rank 0 lost and onDown fires.
import { Logger } from "../util/log";
import { sleep } from "../util/net";
import type { Liveness } from "./liveness";

export type LinkMessage = Record<string, unknown> & { t: string };

interface PendingRequest {
  resolve: (v: LinkMessage) => void;
  reject: (e: Error) => void;
  /** performance.now() deadline; one sweeper timer checks them all (no timer per request). */
  deadline: number;
  timeoutMs: number;
  /** The request as sent: sent again on a reconnected link (the hub answers a repeat once). */
  text: string;
}

/** Close code rank 0 uses for a rank it removed from the world. */
export const CLOSE_REMOVED = 4002;
/** Close code of a new process at the coordinator's address: the coordinator this link followed is gone. */
export const CLOSE_REPLACED = 4004;
/** How long one attempt to open the link may take. */
const OPEN_TIMEOUT_MS = 5000;
/** Messages kept while the link reconnects. */
const OUTBOX_MAX = 1024;
/** Request ids, unique in this process (across its links): the hub knows a repeat by its id. */
let nextRequestId = 1;

export class LinkClosedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "LinkClosedError";
  }
}

export class CoordinatorLink {
  private ws: WebSocket | null = null;
  private pending = new Map<number, PendingRequest>();
  private closing = false;
  private connectedOnce = false;
  private sweeper: ReturnType<typeof setInterval> | null = null;
  private heartbeat: ReturnType<typeof setInterval> | null = null;
  private lastHeardMs = 0;
  private reconnecting = false;
  /** Requests made while reconnecting (ids); sent with the pending ones on reconnect. */
  private outbox: number[] = [];
  private heartbeatTimeoutMs = 0;
  /** The link reconnected after a close (the service re-acknowledges its view). */
  onReconnect: () => void = () => {};
  /** Set once rank 0 is declared lost (link closed after it was up, or heartbeat timeout). */
  lost = false;
  lostReason: string | null = null;
  onPush: (msg: LinkMessage) => void = () => {};
  /** Rank 0 is lost (called once); clean = rank 0 closed the link itself (shutting down). */
  onDown: (why: string, clean: boolean) => void = () => {};

  constructor(
    private wsUrl: string,
    private rank: number,
    private instance: string,
    private token: string | undefined,
    private log: Logger,
    private liveness: Liveness,
    /** The rank at the other end (its heartbeat thread's answers count as signs of life). */
    private coordinatorRank = 0,
    /** The coordinator's process (its instance): a restarted process at its address refuses the link. */
    private coordinatorInstance = "",
  ) {}

  get connected(): boolean {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  /** Connects (retrying with back-off until deadlineMs passes). */
  async connect(deadlineMs = 60_000): Promise<void> {
    const until = Date.now() + deadlineMs;
    let delay = 50;
    for (let attempt = 1; ; attempt++) {
      try {
        await this.open();
        this.connectedOnce = true;
        return;
      } catch (e) {
        if (this.closing) throw new LinkClosedError("link closed");
        if (Date.now() + delay > until) {
          throw new Error(`rank ${this.rank}: could not open the control link to rank 0 at ${this.wsUrl}: ${(e as Error).message}`);
        }
        if (attempt === 1 || attempt % 10 === 0) {
          this.log.warn(`control link to rank 0 (${this.wsUrl}) failed (attempt ${attempt}): ${(e as Error).message}; retrying in ${delay} ms`);
        }
        await sleep(delay);
        delay = Math.min(delay * 2, 1000);
      }
    }
  }

  private open(): Promise<void> {
    return new Promise((resolve, reject) => {
      const headers: Record<string, string> = {};
      if (this.token) headers.authorization = `Bearer ${this.token}`;
      const expect = this.coordinatorInstance ? `&coordinator=${encodeURIComponent(this.coordinatorInstance)}` : "";
      const url = `${this.wsUrl}?rank=${this.rank}&instance=${encodeURIComponent(this.instance)}${expect}`;
      const ws = new (WebSocket as unknown as new (u: string, o: unknown) => WebSocket)(url, { headers });
      let opened = false;
      // a blackholed address never answers the SYN: give up on this attempt, not on the link
      const timer = setTimeout(() => {
        if (opened) return;
        reject(new Error(`no answer within ${OPEN_TIMEOUT_MS} ms`));
        try {
          ws.close();
        } catch {
          // not open
        }
      }, OPEN_TIMEOUT_MS);
      ws.onopen = () => {
        clearTimeout(timer);
        if (this.closing) {
          // retired or closed while this attempt was under way: it must not come back to life
          reject(new LinkClosedError("link closed"));
          try {
            ws.close(1000, "closed");
          } catch {
            // not open
          }
          return;
        }
        opened = true;
        this.ws = ws;
        this.lastHeardMs = performance.now();
        resolve();
      };
      ws.onerror = () => {
        if (!opened) reject(new Error("connection failed"));
      };
      ws.onclose = (ev) => {
        if (!opened) {
          reject(new Error(`closed before open (code ${ev.code}${ev.reason ? `: ${ev.reason}` : ""})`));
          return;
        }
        if (this.ws !== ws) return; // a link this one replaced
        this.ws = null;
        const why = `control link to rank 0 closed (code ${ev.code}${ev.reason ? `: ${ev.reason}` : ""})`;
        if (this.closing) {
          this.failPending(why);
          return;
        }
        const clean = ev.code === 1000 || ev.code === 1001;
        if (ev.code === CLOSE_REPLACED) {
          // the coordinator's container restarted in place: its heartbeat port answers again,
          // but the process this rank followed (and its matcher) is gone: fail over now
          this.log.warn(`rank ${this.coordinatorRank}'s address answers with a new process: ${ev.reason}`);
          this.failPending(why);
          this.declareLost(why);
          return;
        }
        if (clean || ev.code === CLOSE_REMOVED) {
          // rank 0 shut down, or it removed this rank: nothing to reconnect to
          if (clean) this.log.info(`rank 0 closed the control link (code ${ev.code}: shutting down?)`);
          else this.log.warn(`rank 0 closed the control link: ${ev.reason}`);
          this.failPending(why);
          this.declareLost(why, clean);
          return;
        }
        this.log.warn(`control link to rank 0 lost (code ${ev.code}); reconnecting`);
        void this.reconnect(why);
      };
      ws.onmessage = (ev) => this.onMessage(ev.data as string);
    });
  }

  /**
   * Reconnects after the link closed: retries while rank 0's heartbeat thread answers, and
   * for one heartbeat timeout past its last answer (or past the close without one).
   */
  private async reconnect(why: string): Promise<void> {
    if (this.reconnecting) return;
    this.reconnecting = true;
    const closedAt = performance.now();
    const timeoutMs = this.heartbeatTimeoutMs || 2000;
    let delay = 50;
    try {
      for (let attempt = 1; !this.closing; attempt++) {
        try {
          await this.open();
          this.log.info(`control link to rank 0 reconnected (attempt ${attempt})`);
          this.resendPending();
          this.onReconnect();
          return;
        } catch (e) {
          const silent = Math.min(performance.now() - closedAt, this.liveness.silentMs(this.coordinatorRank));
          if (silent > timeoutMs) {
            this.failPending(why);
            this.declareLost(`${why}; reconnecting failed for ${Math.round(performance.now() - closedAt)} ms (${(e as Error).message}) and its heartbeat is silent`);
            return;
          }
          await sleep(delay);
          delay = Math.min(delay * 2, 500);
        }
      }
    } finally {
      this.reconnecting = false;
    }
  }

  /**
   * A request sent on a link that closed may never have been read there, and its answer may
   * have been lost with the link: every pending request goes again, in order, on the new link.
   * The hub takes a repeated id once (a join it holds stays one join; a decided one is answered
   * again).
   */
  private resendPending(): void {
    const ws = this.ws;
    this.outbox.length = 0;
    for (const [, p] of this.pending) {
      try {
        ws?.send(`{"re":1,${p.text.slice(1)}`); // "re": a repeat (see the hub)
      } catch {
        return; // closed again: its close handler reconnects and this runs again
      }
    }
  }

  /**
   * Starts the heartbeat: sends {t:"hb"} every intervalMs; declares rank 0 lost after timeoutMs
   * without any message from it. A stall of this process's own event loop (a huge JSON body)
   * is not blamed on rank 0: the silence is measured from the end of the stall.
   */
  startHeartbeat(intervalMs: number, timeoutMs: number): void {
    if (this.heartbeat) return;
    this.heartbeatTimeoutMs = timeoutMs;
    let lastTick = performance.now();
    this.lastHeardMs = lastTick;
    this.heartbeat = setInterval(() => {
      const now = performance.now();
      const gap = now - lastTick;
      lastTick = now;
      if (gap > intervalMs * 2 + 250) this.lastHeardMs = Math.max(this.lastHeardMs, now - intervalMs);
      this.send({ t: "hb" });
      const silent = Math.min(now - this.lastHeardMs, this.liveness.silentMs(this.coordinatorRank));
      if (silent > timeoutMs && this.ws) {
        this.log.warn(`rank 0 silent for ${Math.round(silent)} ms (heartbeat timeout ${timeoutMs} ms): coordinator lost`);
        this.declareLost(`no heartbeat from rank 0 for ${Math.round(silent)} ms (timeout ${timeoutMs} ms)`);
      }
    }, intervalMs);
    this.heartbeat.unref?.();
  }

  /** Rank 0 is gone for this process: fail everything pending, never reconnect, tell onDown. */
  declareLost(why: string, clean = false): void {
    if (this.lost) return;
    this.lost = true;
    this.lostReason = why;
    this.closing = true;
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = null;
    this.failPending(`coordinator (rank 0) lost: ${why}`);
    const ws = this.ws;
    this.ws = null;
    try {
      ws?.close(4001, "coordinator lost");
    } catch {
      // already closed
    }
    try {
      this.onDown(why, clean);
    } catch (e) {
      this.log.error(`control link: onDown failed: ${(e as Error).stack}`);
    }
  }

  private onMessage(text: string): void {
    this.lastHeardMs = performance.now();
    let msg: LinkMessage;
    try {
      msg = JSON.parse(text);
    } catch {
      this.log.warn(`control link: bad message from rank 0: ${text.slice(0, 100)}`);
      return;
    }
    const id = msg.id as number | undefined;
    if (id !== undefined && msg.t === "res") {
      const p = this.pending.get(id);
      if (!p) return;
      this.pending.delete(id);
      p.resolve(msg);
      return;
    }
    try {
      this.onPush(msg);
    } catch (e) {
      this.log.error(`control link: push handler failed: ${(e as Error).stack}`);
    }
  }

  /** Sends a request and resolves with rank 0's {t:"res", id, ...} answer. */
  request(body: Record<string, unknown>, timeoutMs: number): Promise<LinkMessage> {
    const ws = this.ws;
    const open = ws !== null && ws.readyState === WebSocket.OPEN;
    if (!open && !(this.reconnecting && this.outbox.length < OUTBOX_MAX)) {
      return Promise.reject(new LinkClosedError(`no control link to rank 0 (${this.connectedOnce ? "lost" : "not connected yet"})`));
    }
    const id = nextRequestId++;
    if (!this.sweeper) this.startSweeper();
    return new Promise((resolve, reject) => {
      body.id = id;
      const text = JSON.stringify(body);
      this.pending.set(id, { resolve, reject, deadline: performance.now() + timeoutMs, timeoutMs, text });
      if (open) ws.send(text);
      else this.outbox.push(id);
    });
  }

  private startSweeper(): void {
    this.sweeper = setInterval(() => {
      const now = performance.now();
      for (const [id, p] of this.pending) {
        if (p.deadline > now) continue;
        this.pending.delete(id);
        p.reject(new LinkClosedError(`rank 0 did not answer within ${p.timeoutMs} ms`));
      }
    }, 250);
    this.sweeper.unref?.();
  }

  /** Fire-and-forget message to rank 0. */
  send(body: Record<string, unknown>): boolean {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(body));
    return true;
  }

  private failPending(why: string): void {
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      p.reject(new LinkClosedError(why));
    }
  }

  /**
   * Closes a link this process replaced with a newer one to the same coordinator: no "bye"
   * (the rank stays), no onDown (the coordinator is not lost), no reconnect.
   */
  retire(why: string): void {
    this.closing = true;
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = null;
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = null;
    this.failPending(why);
    const ws = this.ws;
    this.ws = null;
    try {
      ws?.close(1000, "replaced");
    } catch {
      // already closed
    }
  }

  /** Graceful close: tells rank 0 this rank is leaving (it marks the slot "left", not "failed"). */
  close(): void {
    if (!this.lost) this.send({ t: "bye" });
    this.closing = true;
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = null;
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = null;
    this.failPending("control link closed");
    try {
      this.ws?.close(1000, "bye");
    } catch {
      // already closed
    }
    this.ws = null;
  }
}
