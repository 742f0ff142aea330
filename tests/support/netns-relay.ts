// Test-only HTTP relay for rank services inside a network namespace: run it in the namespace
// (`ip netns exec NS bun tests/support/netns-relay.ts SOCKET`); it listens on a unix socket
// (a filesystem path, reachable from the test's own namespace) and forwards each request to
// http://<x-target header><path>. Lets a test talk to ranks whose addresses exist only inside
// their namespace. Prints "ready" once listening; exits when stdin closes.
const socket = process.argv[2];
if (!socket) {
  process.stderr.write("usage: netns-relay.ts SOCKET\n");
  process.exit(64);
}
const server = Bun.serve({
  unix: socket,
  async fetch(req) {
    const target = req.headers.get("x-target");
    if (!target) return Response.json({ error: { code: "invalid_request", message: "relay: x-target header missing" } }, { status: 400 });
    const u = new URL(req.url);
    const headers = new Headers(req.headers);
    headers.delete("x-target");
    headers.delete("host");
    try {
      const res = await fetch(`http://${target}${u.pathname}${u.search}`, {
        method: req.method,
        headers,
        body: req.method === "GET" || req.method === "HEAD" ? undefined : await req.arrayBuffer(),
      });
      return new Response(await res.arrayBuffer(), { status: res.status, headers: res.headers });
    } catch (e) {
      return Response.json({ error: { code: "relay_unreachable", message: `relay: ${target}: ${(e as Error).message}` } }, { status: 599 });
    }
  },
});
process.stdout.write("ready\n");
process.stdin.on("close", () => {
  server.stop(true);
  process.exit(0);
});
process.stdin.resume();
