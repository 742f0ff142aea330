// GET /docs: the OpenAPI document rendered as one self-contained HTML page (no scripts, fonts or
// styles from elsewhere: it works where the rank has no internet).

const esc = (s: unknown): string =>
  String(s).replace(/[&<>"']/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[ch]!);

type Json = Record<string, unknown>;

/** A schema as indented JSON whose $refs link to the components section. */
function schemaHtml(schema: unknown): string {
  const text = esc(JSON.stringify(schema, null, 2));
  return `<pre>${text.replace(/&quot;#\/components\/schemas\/([A-Za-z0-9_]+)&quot;/g, (_, n: string) => `<a href="#schema-${n}">${n}</a>`)}</pre>`;
}

function contentHtml(content: unknown): string {
  return Object.entries((content ?? {}) as Record<string, Json>)
    .map(([type, c]) => `<details><summary><code>${esc(type)}</code></summary>${schemaHtml(c.schema)}</details>`)
    .join("");
}

function operationHtml(path: string, method: string, op: Json): string {
  const id = esc(op.operationId);
  const params = (op.parameters ?? []) as Json[];
  const body = op.requestBody as Json | undefined;
  const responses = Object.entries((op.responses ?? {}) as Record<string, Json>);
  const open = Array.isArray(op.security) && op.security.length === 0;
  return `<section class="op" id="op-${id}">
<h3><span class="m ${esc(method)}">${esc(method.toUpperCase())}</span> <code>${esc(path)}</code>${open ? ' <span class="pub">no token</span>' : ""}</h3>
<p>${esc(op.summary ?? "")}</p>${op.description ? `<p class="d">${esc(op.description)}</p>` : ""}
${params.length ? `<table><tr><th>parameter</th><th>in</th><th>description</th></tr>${params.map((p) => `<tr><td><code>${esc(p.name)}</code></td><td>${esc(p.in)}</td><td>${esc(p.description ?? "")}</td></tr>`).join("")}</table>` : ""}
${body ? `<h4>request body</h4>${contentHtml(body.content)}` : ""}
<h4>responses</h4><table>${responses.map(([s, r]) => `<tr><td><b>${esc(s)}</b></td><td>${esc(r.description ?? "")}${contentHtml(r.content)}</td></tr>`).join("")}</table>
</section>`;
}

const STYLE = `body{font:14px/1.45 system-ui,sans-serif;margin:0;display:flex;color:#1d2330}
nav{width:260px;flex:none;height:100vh;overflow:auto;position:sticky;top:0;background:#f3f5f9;padding:12px;box-sizing:border-box;font-size:13px}
nav a{display:block;color:#27406b;text-decoration:none;padding:1px 0}main{padding:16px 28px;max-width:1000px}
.op{border-top:1px solid #dde2ea;padding:6px 0}.m{display:inline-block;min-width:56px;text-align:center;border-radius:4px;color:#fff;font-size:12px;padding:2px 4px}
.get{background:#2f7d4f}.post{background:#2c5da8}.put{background:#a0661b}.delete{background:#a52a2a}.pub{font-size:11px;background:#eee;padding:1px 5px;border-radius:3px}
pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:12px}table{border-collapse:collapse}td,th{border:1px solid #dde2ea;padding:3px 8px;text-align:left;vertical-align:top}.d{color:#555}`;

export function renderApiReference(doc: Json): string {
  const info = doc.info as Json;
  const paths = doc.paths as Record<string, Record<string, Json>>;
  const tags = (doc.tags ?? []) as Json[];
  const byTag = new Map<string, [string, string, Json][]>();
  for (const [path, methods] of Object.entries(paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const tag = String(((op.tags as string[]) ?? ["other"])[0]);
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag)!.push([path, method, op]);
    }
  }
  const components = ((doc.components as Json).schemas ?? {}) as Json;
  const nav = tags
    .filter((t) => byTag.has(String(t.name)))
    .map((t) => `<b>${esc(t.name)}</b>${byTag.get(String(t.name))!.map(([p, m, op]) => `<a href="#op-${esc(op.operationId)}">${esc(m.toUpperCase())} ${esc(p)}</a>`).join("")}`)
    .join("");
  const sections = tags
    .filter((t) => byTag.has(String(t.name)))
    .map((t) => `<h2 id="tag-${esc(t.name)}">${esc(t.name)}</h2><p class="d">${esc(t.description ?? "")}</p>${byTag.get(String(t.name))!.map(([p, m, op]) => operationHtml(p, m, op)).join("")}`)
    .join("");
  const schemas = Object.entries(components)
    .map(([name, s]) => `<h3 id="schema-${esc(name)}">${esc(name)}</h3>${schemaHtml(s)}`)
    .join("");
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${esc(info.title)} API reference</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>${STYLE}</style></head>
<body><nav><a href="#top"><b>${esc(info.title)}</b></a><a href="/openapi.json">openapi.json</a>${nav}<b>schemas</b>${Object.keys(components).map((n) => `<a href="#schema-${esc(n)}">${esc(n)}</a>`).join("")}</nav>
<main><h1 id="top">${esc(info.title)} <small>OpenAPI ${esc(doc.openapi)}</small></h1><p>${esc(info.description ?? "")}</p>
<p>Authentication: <code>Authorization: Bearer $MOONRING_TOKEN</code> on every route not marked <span class="pub">no token</span>.</p>
${sections}<h2>schemas</h2>${schemas}</main></body></html>`;
}
