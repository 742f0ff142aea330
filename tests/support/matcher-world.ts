// A membership of n active ranks and call descriptions, for tests of the matcher on its own.
import type { CallDesc } from "../../src/control/matcher";
import { Membership } from "../../src/control/membership";

export function world(n: number): Membership {
  const m = new Membership(n);
  for (let r = 0; r < n; r++) {
    m.upsert({ rank: r, url: `http://h:${r}`, dataHost: "h", dataPort: r, hostId: "1", pid: r, instance: String(r), state: "healthy", active: true });
  }
  m.setEpoch(1);
  return m;
}

/** An allreduce of 4 float32 by default. */
export function desc(over: Partial<CallDesc> = {}): CallDesc {
  return { op: "allreduce", group: "world", tag: null, dtype: "float32", count: 4, shape: [4], root: null, redop: "sum", timeoutMs: 10_000, ...over };
}
