// Tiny HTTP helpers for tests: every rank makes the same call in parallel.
export interface Reply {
  status: number;
  body: any;
}

export async function post(url: string, path: string, body: unknown, headers: Record<string, string> = {}): Promise<Reply> {
  const res = await fetch(url + path, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // keep text
  }
  return { status: res.status, body: parsed };
}

export async function get(url: string, path: string, headers: Record<string, string> = {}): Promise<Reply> {
  const res = await fetch(url + path, { headers });
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // keep text
  }
  return { status: res.status, body: parsed };
}

/** POST path on every rank at once; body(r) builds rank r's body. */
export function all(urls: string[], path: string, body: (r: number) => unknown): Promise<Reply[]> {
  return Promise.all(urls.map((u, r) => post(u, path, body(r))));
}

export function expectOk(replies: Reply[], what: string): any[] {
  replies.forEach((x, r) => {
    if (x.status !== 200) throw new Error(`${what}: rank ${r} got ${x.status}: ${JSON.stringify(x.body).slice(0, 400)}`);
  });
  return replies.map((x) => x.body);
}
