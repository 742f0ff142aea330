// Test/measurement-only rank process whose data plane moves no bytes (run() resolves at once).
// Used to measure the REST + agreement overhead of the control plane across real processes,
// independent of the native engine. Never a real service: results are wrong by design.
// Usage: bun tests/support/nullplane-serve.ts RANK WORLD_SIZE MASTER_PORT PORT
import type { DataPlane, NativeBuffer } from "../../src/native/types";
import { RankService } from "../../src/server/service";

const [rank, worldSize, masterPort, port] = process.argv.slice(2).map(Number) as [number, number, number, number];

class NullPlane implements DataPlane {
  readonly hostId = 1n;
  constructor(
    readonly rank: number,
    readonly dataPort: number,
  ) {}
  setPeer(): void {}
  peerDown(): void {}
  alloc(n: number): NativeBuffer {
    return { bytes: new Uint8Array(n), address: 0n, byteLength: n, device: -1, release() {} };
  }
  run(): Promise<void> {
    return Promise.resolve();
  }
  close(): void {}
}

const svc = new RankService({
  rank,
  worldSize,
  worldSizeMax: worldSize,
  masterHost: "127.0.0.1",
  masterPort,
  host: "127.0.0.1",
  port,
  device: "cpu",
  join: false,
  maxBodyBytes: 1 << 30,
  maxTensorBytes: 1 << 29,
  rendezvousTimeoutMs: 30_000,
  dataPlaneFactory: (o) => new NullPlane(o.rank, 50000 + o.rank),
});
await svc.start();
process.stdin.on("close", () => process.exit(0));
process.stdin.resume();
process.on("SIGTERM", () => process.exit(0));
