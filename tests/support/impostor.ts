// A process that does not know a job's secret and tries to join its data plane as rank `rank`
// (the cluster id is guessable: moonring@MASTER_HOST:MASTER_PORT): it connects to the victim's
// data port and sends it 8 bytes. Prints {"code", "message"} of the outcome as one JSON line.
// Usage: bun tests/support/impostor.ts DATA_PORT MASTER_PORT RANK WORLD_SIZE_MAX [TOKEN]
import { NativeDataPlane } from "../../src/native/engine";
import { NativeError } from "../../src/native/types";

const [dataPort, masterPort, rank, worldSizeMax, token] = process.argv.slice(2);
const plane = new NativeDataPlane({
  rank: Number(rank),
  worldSizeMax: Number(worldSizeMax),
  clusterId: `moonring@127.0.0.1:${masterPort}`,
  token: token || undefined,
  listenHost: "127.0.0.1",
});
plane.setPeer(0, "127.0.0.1", Number(dataPort), 0n); // host id 0: a TCP peer, as from another host
const buf = plane.alloc(8);
buf.bytes.set([1, 2, 3, 4, 5, 6, 7, 8]);
let out: { code: string; message: string };
try {
  await plane.run({ kind: "send", dtype: "uint8", opId: 1n, ranks: [0, Number(rank)], root: 0, count: 8, send: buf, timeoutMs: 4000 });
  out = { code: "ok", message: "sent" };
} catch (e) {
  out = { code: e instanceof NativeError ? e.code : "error", message: (e as Error).message };
}
console.log(JSON.stringify(out));
buf.release();
plane.close();
process.exit(0);
