// A rank in its own process for tests/native/kill.test.ts:
//   bun tests/native/rank-child.ts RANK WORLD CLUSTER PEER_RANK PEER_PORT PEER_HOST_ID
// Prints {"port","hostId"} on stdout, joins one allreduce with the peer (links come up),
// prints "joined", then idles until killed.
import { NativeDataPlane } from "../../src/native/engine";

const [rank, world, cluster, peerRank, peerPort, peerHostId] = process.argv.slice(2);
const plane = new NativeDataPlane({ rank: Number(rank), worldSizeMax: Number(world), clusterId: cluster!, listenHost: "127.0.0.1" });
console.log(JSON.stringify({ port: plane.dataPort, hostId: plane.hostId.toString() }));
plane.setPeer(Number(peerRank), "127.0.0.1", Number(peerPort), BigInt(peerHostId!));
const buf = plane.alloc(8);
await plane.run({ kind: "allreduce", dtype: "float64", redop: "sum", opId: 1n, ranks: [0, 1], count: 1, send: buf, recv: buf, timeoutMs: 20_000 });
console.log("joined");
setInterval(() => {}, 1 << 30); // idle until killed
