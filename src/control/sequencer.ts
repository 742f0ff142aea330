// Keeps a rank's calls in arrival order: each request takes a ticket when it arrives (before
// its body is read) and, once decoded, waits for every earlier ticket before it joins a
// collective (or numbers a p2p send). A big body that is still uploading therefore can't be
// overtaken by a small call that arrived after it: "a rank's calls are taken one after another".
export interface Ticket {
  readonly n: number;
}

export class Sequencer {
  private next = 0;
  /** Every ticket below this is done. */
  private low = 0;
  private done = new Set<number>();
  private waiters = new Map<number, () => void>();

  take(): Ticket {
    return { n: this.next++ };
  }

  /** Resolves once every earlier ticket is done. */
  turn(t: Ticket): Promise<void> | null {
    if (this.low >= t.n) return null;
    return new Promise((resolve) => this.waiters.set(t.n, resolve));
  }

  /** Waits for a turn at most timeoutMs (an upload that stalls must not wedge the rank). */
  async bounded(wait: Promise<void>, timeoutMs: number): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([wait, new Promise<void>((r) => (timer = setTimeout(r, timeoutMs)))]);
    clearTimeout(timer);
  }

  /** Marks a ticket done (idempotent); wakes the next in line. */
  finish(t: Ticket): void {
    if (t.n < this.low || this.done.has(t.n)) return;
    this.done.add(t.n);
    while (this.done.has(this.low)) {
      this.done.delete(this.low);
      this.low++;
      const w = this.waiters.get(this.low);
      if (w) {
        this.waiters.delete(this.low);
        w();
      }
    }
  }
}
