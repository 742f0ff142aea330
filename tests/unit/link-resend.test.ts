// A control link that closes with requests in flight (issue: a rank's call "did not call" after
// its link broke). The link sends its pending requests again on the new link; the hub takes a
// repeated join once: a join lost with the old link joins now, and a decision lost with it is
// sent again (never joined twice). Each loss is made on purpose here, in process.
import { afterEach, describe, expect, test } from "bun:test";
import { post } from "../support/http";
import { startInprocWorld, type InprocWorld } from "../support/inproc-world";

process.env.MOONRING_LOG ??= "warn";

let w: InprocWorld | null = null;
afterEach(async () => {
  await w?.stop();
  w = null;
});

/** An allreduce over all 3 ranks: every answer 200 with the exact sum. */
async function allreduce(urls: string[], k: number): Promise<void> {
  const inputs = urls.map((_, r) => 100 * k + r + 1);
  const res = await Promise.all(urls.map((u, r) => post(u, "/collective/allreduce", { tensor: { dtype: "int64", shape: [1], data: [inputs[r]] }, timeout_ms: 8000 })));
  for (const x of res) {
    expect(x.status).toBe(200);
    expect(x.body.contributors).toEqual([0, 1, 2]);
    expect(x.body.result.data).toEqual([String(inputs.reduce((a, b) => a + b, 0))]);
  }
}

/** Makes `sock.send` close `sock` (code 4100, not a clean close: the rank reconnects) instead of sending the first message `pick` selects. */
function loseOnce(sock: { send: (t: string) => unknown; close: (code: number, reason: string) => void }, pick: (text: string) => boolean): () => boolean {
  const send = sock.send.bind(sock);
  let lost = false;
  sock.send = (text: string) => {
    if (!lost && typeof text === "string" && pick(text)) {
      lost = true;
      sock.close(4100, "test: lost with the link");
      return 0;
    }
    return send(text);
  };
  return () => lost;
}

describe("requests in flight when the control link closes", () => {
  test("a join lost with the link (never read by the hub) is sent again on the new link: the collective completes, exact", async () => {
    w = await startInprocWorld(3, { heartbeatIntervalMs: 200, heartbeatTimeoutMs: 1000 });
    await allreduce(w.urls, 0);
    const link = w.services[2]!.link as unknown as { ws: WebSocket };
    const lost = loseOnce(link.ws as never, (t) => t.includes('"t":"join"'));
    await allreduce(w.urls, 1);
    expect(lost()).toBe(true);
    await allreduce(w.urls, 2);
  }, 60_000);

  test("a decision lost with the link is sent again when the rank repeats its join; the join is not joined twice", async () => {
    w = await startInprocWorld(3, { heartbeatIntervalMs: 200, heartbeatTimeoutMs: 1000 });
    await allreduce(w.urls, 0);
    const hub = w.services[0]!.hub as unknown as { sockets: Map<number, never> };
    const lost = loseOnce(hub.sockets.get(2)!, (t) => t.startsWith('{"t":"res"'));
    await allreduce(w.urls, 1);
    expect(lost()).toBe(true);
    expect(w.services[0]!.matcher!.pendingCount()).toBe(0);
    await allreduce(w.urls, 2);
  }, 60_000);
});
