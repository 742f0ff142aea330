// A rank process killed (SIGKILL) mid-op: the survivor's op fails with EPEER naming it, long
// before its deadline, over TCP and over shm (same host id -> shm, different -> tcp).
import { afterAll, expect, test } from "bun:test";
import { NativeDataPlane } from "../../src/native/engine";
import { NativeError } from "../../src/native/types";

const children: Bun.Subprocess[] = [];
afterAll(() => {
  for (const c of children) c.kill("SIGKILL");
});

async function readLine(reader: { read(): Promise<{ done: boolean; value?: Uint8Array }> }, state: { buf: string }): Promise<string> {
  for (;;) {
    const nl = state.buf.indexOf("\n");
    if (nl >= 0) {
      const line = state.buf.slice(0, nl);
      state.buf = state.buf.slice(nl + 1);
      return line;
    }
    const { value, done } = await reader.read();
    if (done) throw new Error("child exited early");
    state.buf += new TextDecoder().decode(value);
  }
}

for (const transport of ["tcp", "shm"] as const) {
  test(`killed peer over ${transport}: EPEER naming it, well before the deadline`, async () => {
    const cluster = `kill-${transport}-${process.pid}`;
    const plane = new NativeDataPlane({ rank: 0, worldSizeMax: 2, clusterId: cluster, listenHost: "127.0.0.1" });
    try {
      // A host id the child can't match makes both sides pick TCP.
      const advertised = transport === "shm" ? plane.hostId : plane.hostId ^ 0x5a5an;
      const child = Bun.spawn(
        [process.execPath, `${import.meta.dir}/rank-child.ts`, "1", "2", cluster, "0", String(plane.dataPort), advertised.toString()],
        { stdout: "pipe", stderr: "inherit" },
      );
      children.push(child);
      const reader = child.stdout.getReader();
      const state = { buf: "" };
      const info = JSON.parse(await readLine(reader, state)) as { port: number; hostId: string };
      const childHostId = transport === "shm" ? BigInt(info.hostId) : BigInt(info.hostId) ^ 0xa5a5n;
      plane.setPeer(1, "127.0.0.1", info.port, childHostId);
      const buf = plane.alloc(8);
      await plane.run({ kind: "allreduce", dtype: "float64", redop: "sum", opId: 1n, ranks: [0, 1], count: 1, send: buf, recv: buf, timeoutMs: 20_000 });
      expect(await readLine(reader, state)).toBe("joined");
      // The child never joins op 2; it dies while we wait for it.
      const pending = plane
        .run({ kind: "allreduce", dtype: "float64", redop: "sum", opId: 2n, ranks: [0, 1], count: 1, send: buf, recv: buf, timeoutMs: 60_000 })
        .catch((e) => e);
      await Bun.sleep(20);
      child.kill("SIGKILL");
      const err = (await pending) as NativeError;
      expect(err).toBeInstanceOf(NativeError);
      expect(err.code).toBe("EPEER");
      expect(err.failedPeer).toBe(1);
      expect(err.message).toContain("rank 0");
      expect(err.message).toContain("rank 1");
      buf.release();
    } finally {
      plane.close();
    }
  }, 40_000);
}
