// Free port ranges for launched worlds stay outside the kernel's ephemeral range, where any
// connect() or bind(0) (a data-plane listener, a rendezvous attempt) could take a port between
// the check and its rank's bind: two test worlds failed with "port ... is already in use".
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { candidatePorts, freePortRange } from "../../src/util/net";

const RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range";

describe("freePortRange", () => {
  test.skipIf(!existsSync(RANGE_FILE))("every port of 50 ranges of 4 lies outside ip_local_port_range", async () => {
    const [lo, hi] = readFileSync(RANGE_FILE, "utf8").trim().split(/\s+/).map(Number) as [number, number];
    // A machine whose ephemeral range leaves no 4 ports from 10000 up has no choice (any range).
    const room = lo - 4 >= 10000 || hi + 4 <= 65535;
    if (!room) console.warn(`ip_local_port_range ${lo}-${hi} leaves no room: only the bounds are checked`);
    for (let i = 0; i < 50; i++) {
      const base = await freePortRange(4);
      for (let p = base; p < base + 4; p++) {
        if (room) expect(p >= lo && p <= hi).toBe(false);
        expect(p).toBeGreaterThanOrEqual(10000);
        expect(p).toBeLessThanOrEqual(65535);
      }
    }
  });

  test("candidate bases: below the ephemeral range, above it when there is more room there, anywhere when it covers all", () => {
    expect(candidatePorts(4, [32768, 60999])).toEqual([10000, 32764]); // Linux's default
    expect(candidatePorts(1024, [32768, 60999])).toEqual([10000, 31744]);
    expect(candidatePorts(4, [1024, 40000])).toEqual([40001, 65532]);
    expect(candidatePorts(4, [49152, 65535])).toEqual([10000, 49148]); // IANA's dynamic range
    expect(candidatePorts(4, [1024, 65535])).toEqual([10000, 65532]);
  });
});
