// The survivor's side of tests/verbs/kill.test.ts, run with the verbs environment (bun:ffi's
// engine reads MOONRING_TRANSPORT / MOONRING_VERBS_LIB from the process environment, which a
// test can only set for a child): rank 0 here, rank 1 in tests/native/rank-child.ts. Both
// join one allreduce (the verbs link comes up); then rank 0 waits in a second one that rank 1
// never joins, rank 1 is killed (SIGKILL), and rank 0 prints how its op ended as JSON.
import { NativeDataPlane } from "../../src/native/engine";
import { NativeError } from "../../src/native/types";

const cluster = `verbs-kill-${process.pid}`;
const plane = new NativeDataPlane({ rank: 0, worldSizeMax: 2, clusterId: cluster, listenHost: "127.0.0.1" });
const child = Bun.spawn([process.execPath, `${import.meta.dir}/../native/rank-child.ts`, "1", "2", cluster, "0", String(plane.dataPort), plane.hostId.toString()], {
  stdout: "pipe",
  stderr: "inherit",
});
try {
  const reader = child.stdout.getReader();
  let buf = "";
  const line = async (): Promise<string> => {
    for (;;) {
      const nl = buf.indexOf("\n");
      if (nl >= 0) {
        const l = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        return l;
      }
      const { value, done } = await reader.read();
      if (done) throw new Error("child exited early");
      buf += new TextDecoder().decode(value);
    }
  };
  const info = JSON.parse(await line()) as { port: number; hostId: string };
  plane.setPeer(1, "127.0.0.1", info.port, BigInt(info.hostId));
  const data = plane.alloc(8);
  await plane.run({ kind: "allreduce", dtype: "float64", redop: "sum", opId: 1n, ranks: [0, 1], count: 1, send: data, recv: data, timeoutMs: 20_000 });
  if ((await line()) !== "joined") throw new Error("child did not join");
  const links = plane.links();
  const pending = plane.run({ kind: "allreduce", dtype: "float64", redop: "sum", opId: 2n, ranks: [0, 1], count: 1, send: data, recv: data, timeoutMs: 60_000 }).then(
    () => null,
    (e) => e as NativeError,
  );
  await Bun.sleep(20);
  const t0 = performance.now();
  child.kill("SIGKILL");
  const err = await pending;
  console.log(JSON.stringify({ links, error: err && { name: err.name, code: err.code, failedPeer: err.failedPeer, message: err.message }, ms: performance.now() - t0 }));
  data.release();
} finally {
  child.kill("SIGKILL");
  plane.close();
}
