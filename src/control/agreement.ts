// A rank's side of agreement: sends its CallDesc to the matcher on rank 0 (in-process on
// rank 0 itself, over the control link elsewhere) and turns the decision into a GoDecision
// or a typed error (409 mismatch, 504 timeout, ...), identical on every member.
import { ApiError, Cancelled, CollectiveMismatch, InvalidRequest, MasterLost, NotReady, PeerFailed, Timeout } from "../errors";
import { decodeDecision } from "./decision-wire";
import type { CoordinatorLink } from "./link";
import type { CallDesc, Decision, GoDecision, Matcher } from "./matcher";

/** How long past timeout_ms a rank waits for rank 0's verdict before giving up on rank 0. */
const COORDINATOR_GRACE_MS = 5_000;

export class Agreement {
  constructor(
    private rank: number,
    private matcher: Matcher | null,
    private link: CoordinatorLink | null,
  ) {}

  /**
   * Joins `desc`; once `signal` aborts (the HTTP client went away), the call is withdrawn if it
   * was not decided yet (it then rejects with 499 cancelled) instead of staying behind to join
   * a later collective with stale values.
   */
  join(desc: CallDesc, signal?: AbortSignal): Promise<GoDecision> {
    if (signal?.aborted) return Promise.reject(cancelledBeforeJoin(this.rank, desc));
    if (!signal) return this.send(desc, null);
    let withdraw = (): void => {};
    const onAbort = () => withdraw();
    signal.addEventListener("abort", onAbort, { once: true });
    return this.send(desc, (w) => (withdraw = w)).finally(() => signal.removeEventListener("abort", onAbort));
  }

  /** Sends the join; `armWithdraw` receives the function that takes it back. */
  private send(desc: CallDesc, armWithdraw: ((w: () => void) => void) | null): Promise<GoDecision> {
    if (this.matcher) {
      const matcher = this.matcher;
      armWithdraw?.(() => matcher.withdraw(this.rank, desc));
      return new Promise((resolve, reject) => {
        // Rank 0's own copy of a decision is delivered on the next macrotask, not as a promise
        // reaction: Bun holds (corks) the decision's messages to the other members until the
        // socket handler or request handler that made it returns, and microtasks run before
        // that; resolving here would run rank 0's whole call (down to its HTTP response) before
        // the other ranks even hear "go".
        matcher.join(this.rank, desc, (d) => setImmediate(settle, d, resolve, reject));
      });
    }
    const link = this.link!;
    const body = { t: "join", d: desc, id: 0 };
    const answer = link.request(body, desc.timeoutMs + COORDINATOR_GRACE_MS); // sets body.id
    armWithdraw?.(() => link.send({ t: "withdraw", id: body.id }));
    return answer.then(
      (msg) => {
        const d = decodeDecision(msg.d);
        if (d.ok) return d;
        throw decisionError(d);
      },
      (e: Error) => {
        const why = `rank ${this.rank}: ${desc.op} could not reach the coordinator: ${e.message}`;
        if (link.lost) throw new MasterLost(`${why} — the coordinator is lost and no other took over within the call's timeout`);
        throw new PeerFailed(why, { failed_ranks: [0] });
      },
    );
  }
}

function settle(d: Decision, resolve: (d: GoDecision) => void, reject: (e: Error) => void): void {
  if (d.ok) resolve(d);
  else reject(decisionError(d));
}

function decisionError(d: Exclude<Decision, GoDecision>): ApiError {
  switch (d.code) {
    case "collective_mismatch":
      return new CollectiveMismatch(d.message, d.details as { calls: { rank: number; call: string }[] });
    case "timeout":
      return new Timeout(d.message, d.details as { missing_ranks: number[] });
    case "invalid_request":
      return new InvalidRequest(d.message, d.details);
    case "not_ready":
      return new NotReady(d.message, d.details);
    case "peer_failed":
      return new PeerFailed(d.message, d.details);
    case "cancelled":
      return new Cancelled(d.message, d.details);
  }
}

function cancelledBeforeJoin(rank: number, desc: CallDesc): Cancelled {
  return new Cancelled(`rank ${rank}: ${desc.op} not joined: its client disconnected first`);
}
