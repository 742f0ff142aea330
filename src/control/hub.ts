// Rank 0's end of the control links: one WebSocket per other rank. Dispatches agreement
// requests to the matcher and pushes messages (membership views) to ranks.
import type { ServerWebSocket } from "bun";
import { Logger } from "../util/log";
import { encodeDecision } from "./decision-wire";
import type { CallDesc, Decision, Matcher } from "./matcher";

export interface LinkData {
  rank: number;
  instance: string;
  /** The coordinator process (instance) the rank means to reach; "" when it does not say. */
  coordinator?: string;
}

/** Answers kept per rank process for repeated joins (a rank has at most this many calls in flight across a reconnect). */
const ANSWERS_KEPT = 64;

export class CoordinatorHub {
  private sockets = new Map<number, ServerWebSocket<LinkData>>();
  /** Per rank process (rank/instance, across its reconnects): request id -> a join not decided yet (so a "withdraw" can name it). */
  private undecided = new Map<string, Map<unknown, CallDesc>>();
  /**
   * Per rank process: the answers to its last joins (request id -> wire text). A rank whose link
   * closed sends its pending requests again on the new one: a decision that went out on the old
   * link (or found no link) is sent again instead of the join joining a second time.
   */
  private answered = new Map<string, Answers>();
  /** Called when a rank's link closes (fault tolerance hooks in here). */
  onRankDisconnected: (rank: number, code: number, reason: string, instance: string) => void = () => {};
  onRankConnected: (rank: number) => void = () => {};
  /** Sees every message first (liveness); returns true when it consumed it (hb, acks, ...). */
  onMessage: (rank: number, msg: Record<string, unknown>) => boolean = () => false;
  /** Extra request kinds ({t: kind}) other modules handle on rank 0; return the answer body. */
  private handlers = new Map<string, (rank: number, msg: Record<string, unknown>) => Promise<Record<string, unknown>> | Record<string, unknown>>();

  constructor(
    private matcher: Matcher,
    private log: Logger,
  ) {}

  connectedRanks(): number[] {
    return [...this.sockets.keys()].sort((a, b) => a - b);
  }

  isConnected(rank: number): boolean {
    return this.sockets.has(rank);
  }

  /** Closes a rank's link (a rank rank 0 removed from the world). */
  disconnect(rank: number, code: number, reason: string): void {
    const ws = this.sockets.get(rank);
    if (!ws) return;
    this.sockets.delete(rank);
    try {
      ws.close(code, reason.slice(0, 120));
    } catch {
      // gone already
    }
  }

  handle(kind: string, fn: (rank: number, msg: Record<string, unknown>) => Promise<Record<string, unknown>> | Record<string, unknown>): void {
    this.handlers.set(kind, fn);
  }

  /** Bun websocket handlers (mounted by the server for /internal/ws). */
  readonly websocket = {
    open: (ws: ServerWebSocket<LinkData>) => {
      const prev = this.sockets.get(ws.data.rank);
      if (prev && prev !== ws) {
        try {
          prev.close(4000, "replaced by a new link");
        } catch {
          // gone already
        }
      }
      this.sockets.set(ws.data.rank, ws);
      for (const key of this.undecided.keys()) if (key.startsWith(`${ws.data.rank}/`) && key !== linkKey(ws)) this.undecided.delete(key);
      for (const key of this.answered.keys()) if (key.startsWith(`${ws.data.rank}/`) && key !== linkKey(ws)) this.answered.delete(key);
      this.log.debug(`control link from rank ${ws.data.rank} open`);
      this.onRankConnected(ws.data.rank);
    },
    message: (ws: ServerWebSocket<LinkData>, text: string | Buffer) => {
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(typeof text === "string" ? text : text.toString());
      } catch {
        return;
      }
      const rank = ws.data.rank;
      const id = msg.id;
      if (this.sockets.get(rank) !== ws) return; // a replaced link
      if (this.onMessage(rank, msg)) return;
      if (msg.t === "join") {
        const desc = msg.d as CallDesc;
        const key = linkKey(ws);
        let mine = this.undecided.get(key);
        if (!mine) this.undecided.set(key, (mine = new Map()));
        if (mine.has(id)) return; // a repeat (the rank's link reconnected): it is joined already
        const kept = this.answered.get(key);
        const before = kept?.texts.get(id);
        if (before !== undefined) {
          ws.send(answerText(id, before)); // a repeat of a decided join: its answer may have been lost
          return;
        }
        if (msg.re === 1 && kept && typeof id === "number" && id <= kept.forgottenUpTo) {
          // decided so long ago that its answer is forgotten: never join it a second time
          ws.send(answerText(id, encodeDecision(lostAnswer(rank, desc))));
          return;
        }
        mine.set(id, desc);
        // The decision goes to the rank's link at decision time: a rank that reconnected
        // meanwhile still gets it (its request stays pending across the reconnect).
        this.matcher.join(rank, desc, (d: Decision) => {
          mine.delete(id);
          this.sendDecision(key, rank, id, d);
        });
        return;
      }
      if (msg.t === "withdraw") {
        // the rank's HTTP client went away: take its join back unless it was decided already
        const desc = this.undecided.get(linkKey(ws))?.get(id);
        if (desc) this.matcher.withdraw(rank, desc);
        return;
      }
      const h = this.handlers.get(msg.t as string);
      if (!h) {
        if (id !== undefined) ws.send(JSON.stringify({ t: "res", id, error: `unknown request ${String(msg.t)}` }));
        return;
      }
      Promise.resolve()
        .then(() => h(rank, msg))
        .then(
          (body) => {
            if (id !== undefined) this.sendTo(rank, { ...body, t: "res", id });
          },
          (e: Error & { status?: number; code?: string; details?: Record<string, unknown> }) => {
            if (id === undefined) return;
            this.sendTo(rank, { t: "res", id, error: e.message, status: e.status ?? 500, code: e.code ?? "internal", details: e.details ?? {} });
          },
        );
    },
    close: (ws: ServerWebSocket<LinkData>, code: number, reason: string) => {
      if (this.sockets.get(ws.data.rank) !== ws) return;
      this.sockets.delete(ws.data.rank);
      this.log.debug(`control link from rank ${ws.data.rank} closed (code ${code})`);
      this.onRankDisconnected(ws.data.rank, code, reason ?? "", ws.data.instance);
    },
  };

  /** Pushes a message to every connected rank (not to rank 0 itself). */
  broadcast(msg: Record<string, unknown>): void {
    const text = JSON.stringify(msg);
    for (const ws of this.sockets.values()) {
      try {
        ws.send(text);
      } catch {
        // link going down; its close handler reports it
      }
    }
  }

  /** A decision's wire text, encoded once for all its members (one object per collective). */
  private decisionText = new WeakMap<Decision, string>();

  /** Answers a join: {t:"res", id, d} with d in the compact wire form (decision-wire.ts); kept for a repeat. */
  private sendDecision(key: string, rank: number, id: unknown, d: Decision): boolean {
    let text = this.decisionText.get(d);
    if (text === undefined) this.decisionText.set(d, (text = encodeDecision(d)));
    let kept = this.answered.get(key);
    if (!kept) this.answered.set(key, (kept = { texts: new Map(), forgottenUpTo: 0 }));
    kept.texts.set(id, text);
    if (kept.texts.size > ANSWERS_KEPT) {
      const oldest = kept.texts.keys().next().value;
      kept.texts.delete(oldest);
      if (typeof oldest === "number") kept.forgottenUpTo = Math.max(kept.forgottenUpTo, oldest);
    }
    const ws = this.sockets.get(rank);
    if (!ws || linkKey(ws) !== key) return false; // gone, or a newer process of the rank
    try {
      ws.send(answerText(id, text));
    } catch {
      return false; // link going down; its close handler reports it
    }
    return true;
  }

  sendTo(rank: number, msg: Record<string, unknown>): boolean {
    const ws = this.sockets.get(rank);
    if (!ws) return false;
    try {
      ws.send(JSON.stringify(msg));
    } catch {
      return false; // link going down; its close handler reports it
    }
    return true;
  }

  closeAll(): void {
    for (const ws of this.sockets.values()) {
      try {
        ws.close(1001, "rank 0 shutting down");
      } catch {
        // ignore
      }
    }
    this.sockets.clear();
  }
}

interface Answers {
  /** request id -> the decision's wire text (shared by the collective's members) */
  texts: Map<unknown, string>;
  /** Every id up to this one that is not in texts was answered and forgotten (ids only grow). */
  forgottenUpTo: number;
}

function answerText(id: unknown, decision: string): string {
  return `{"t":"res","id":${JSON.stringify(id ?? null)},"d":${decision}}`;
}

function lostAnswer(rank: number, desc: CallDesc): Decision {
  return {
    ok: false,
    seq: 0,
    status: 503,
    code: "peer_failed",
    message: `rank ${rank}: the coordinator's answer to its ${desc.op} was lost with its control link and is no longer known; the call may have run without this rank's result`,
    details: { rank },
  };
}

/** A rank process's key: its requests stay pending across reconnects of its link. */
function linkKey(ws: ServerWebSocket<LinkData>): string {
  return `${ws.data.rank}/${ws.data.instance}`;
}
