// The REST baseline of `bench --via rest`: a plain Bun HTTP server that answers every request
// with its own body (octet-stream), nothing else. `bun src/bench/echo-server.ts PORT HOST`
// prints "ready PORT" once listening; exits when stdin closes.
const [port, host] = [Number(process.argv[2] ?? 0), process.argv[3] ?? "127.0.0.1"];
const echo = Bun.serve({
  hostname: host,
  port,
  idleTimeout: 0,
  maxRequestBodySize: Number.MAX_SAFE_INTEGER,
  development: false,
  async fetch(req) {
    return new Response(await req.arrayBuffer(), { headers: { "content-type": "application/octet-stream" } });
  },
});
console.log(`ready ${echo.port}`);
process.stdin.on("close", () => process.exit(0));
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
export {};
