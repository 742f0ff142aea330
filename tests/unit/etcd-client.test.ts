// The etcd client's endpoint handling without etcd (control/etcd.ts): a closed port, a member
// answering "no leader" (gRPC UNAVAILABLE) and one that never answers are skipped for the next
// endpoint; etcd's own refusals (lease not found) are not retried; a server that is not etcd
// and a list with no live member fail with errors naming each endpoint; URL parsing.
import { afterAll, describe, expect, test } from "bun:test";
import { EtcdClient, EtcdError, EtcdUnavailable, parseEtcdUrl } from "../../src/control/etcd";
import { freePortRange } from "../../src/util/net";

const header = { cluster_id: "1", member_id: "2", revision: "7", raft_term: "1" };
const servers: ReturnType<typeof Bun.serve>[] = [];
afterAll(() => {
  for (const s of servers) s.stop(true);
});

function serve(fetch: (req: Request) => Response | Promise<Response>): string {
  const s = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch });
  servers.push(s);
  return `http://127.0.0.1:${s.port}`;
}

const good = serve(async (req) => {
  const path = new URL(req.url).pathname;
  if (path === "/v3/kv/range") return Response.json({ header, kvs: [{ key: btoa("k"), value: btoa("v1"), create_revision: "3", mod_revision: "5", version: "2" }], count: "1" });
  if (path === "/v3/lease/revoke") return Response.json({ error: "etcdserver: requested lease not found", message: "etcdserver: requested lease not found", code: 5 }, { status: 404 });
  if (path === "/v3/lease/keepalive") return new Response(JSON.stringify({ result: { header, ID: "9", TTL: "5" } }) + "\n");
  return Response.json({ header });
});
const hits = { noLeader: 0, silent: 0 };
const noLeader = serve(() => (hits.noLeader++, Response.json({ error: "etcdserver: no leader", message: "etcdserver: no leader", code: 14 }, { status: 503 })));
const silent = serve(() => (hits.silent++, new Promise<Response>(() => {})));
const notEtcd = serve(() => new Response("<html>hello</html>", { status: 404 }));

describe("EtcdClient", () => {
  test("a closed port, a member without a leader and a silent one are skipped; the answering one is kept", async () => {
    const closed = `http://127.0.0.1:${await freePortRange(1)}`;
    const c = new EtcdClient([closed, noLeader, silent, good], 300);
    const { kv, revision } = await c.get("k");
    expect(kv).toEqual({ key: "k", value: "v1", createRevision: 3, modRevision: 5, lease: "0" });
    expect(revision).toBe(7);
    expect(hits).toEqual({ noLeader: 1, silent: 1 });
    await c.get("k"); // the preferred endpoint is now the one that answered: the others are not asked again
    expect(hits).toEqual({ noLeader: 1, silent: 1 });
    expect(await c.leaseKeepAlive("9")).toBe(5);
  });

  test("etcd's own refusal is an EtcdError, not retried elsewhere", async () => {
    const c = new EtcdClient([good, noLeader], 300);
    await expect(c.call("/v3/lease/revoke", { ID: "1" })).rejects.toBeInstanceOf(EtcdError);
  });

  test("no endpoint answering: EtcdUnavailable within the deadline, naming every endpoint and its error", async () => {
    const c = new EtcdClient([noLeader, notEtcd], 300);
    const e = await c.call("/v3/kv/range", {}, 600).catch((x: Error) => x);
    expect(e).toBeInstanceOf(EtcdUnavailable);
    expect((e as Error).message).toContain(`${noLeader}: etcdserver: no leader`);
    expect((e as Error).message).toContain(`${notEtcd}: not an etcd v3 JSON gateway (HTTP 404`);
  });
});

describe("parseEtcdUrl", () => {
  test("endpoints, default port, job", () => {
    expect(parseEtcdUrl("etcd://a:1,b,[::1]:3/job-1")).toEqual({ endpoints: ["http://a:1", "http://b:2379", "http://[::1]:3"], job: "job-1" });
    expect(parseEtcdUrl("etcd://h:2379")).toEqual({ endpoints: ["http://h:2379"], job: "" });
  });
  test("bad ones say what is expected", () => {
    for (const bad of ["etcd://", "http://h:1", "etcd://h:0", "etcd://h:70000", "etcd://h:1/a/b", "etcd://h x:1"]) {
      expect(() => parseEtcdUrl(bad)).toThrow(/etcd/);
    }
  });
});
