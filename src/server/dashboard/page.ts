// The dashboard page: markup and styles inline, the script from /dashboard/app.js (same origin):
// nothing is fetched from elsewhere, so it works where the job has no internet.
export function dashboardPage(rank: number): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>moonring · rank ${rank}</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><link rel="icon" href="data:,">
<style>
body{font:13px/1.4 system-ui,sans-serif;margin:0;background:#f4f6fa;color:#1c2230}
header{display:flex;gap:18px;align-items:baseline;padding:10px 18px;background:#1c2a45;color:#fff}
header h1{font-size:17px;margin:0}header .kv b{font-weight:600}#conn{margin-left:auto;font-size:12px}
#conn.live{color:#7fe3a0}#conn.down{color:#ff9d8a}
main{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:14px;padding:14px 18px}
section{background:#fff;border:1px solid #dde2ea;border-radius:6px;padding:10px 12px;min-width:0}
section.wide{grid-column:1/-1}h2{font-size:14px;margin:0 0 8px}
#ranks{display:flex;flex-wrap:wrap;gap:8px}.rank{border-radius:6px;padding:6px 10px;min-width:120px;border:2px solid #999;background:#fafafa}
.rank .n{font-size:16px;font-weight:700}.rank[data-state=healthy]{border-color:#2f9e5b;background:#eefaf2}
.rank[data-state=failed]{border-color:#d0342c;background:#fdecea}.rank[data-state=left]{border-color:#888;background:#f0f0f0}
.rank[data-state=awaiting]{border-color:#d59b16;background:#fff8e6}.rank .why{color:#a12a22;font-size:12px;max-width:260px}
table{border-collapse:collapse;width:100%;font-size:12px}td,th{border-bottom:1px solid #eceff4;padding:2px 6px;text-align:left;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums}.bad{color:#c0392b}.ok{color:#2f7d4f}.muted{color:#777}
.scroll{max-height:280px;overflow:auto}svg{width:100%;height:180px;background:#fcfdff;border:1px solid #eceff4}
svg text{font-size:10px;fill:#555}svg .line{fill:none;stroke-width:1.5}
</style></head>
<body>
<header><h1>moonring</h1><span class="kv">rank <b id="self">${rank}</b></span><span class="kv" id="summary">connecting…</span><span id="conn">connecting</span></header>
<main>
<section class="wide"><h2>Ranks</h2><div id="ranks"></div></section>
<section><h2>Bus bandwidth (GB/s)</h2><svg id="chart-busbw" role="img" aria-label="bus bandwidth"></svg></section>
<section><h2>Latency (ms)</h2><svg id="chart-latency" role="img" aria-label="latency"></svg></section>
<section><h2>Collectives in flight</h2><div class="scroll"><table id="inflight"></table></div></section>
<section><h2>Failures</h2><div id="failures" class="scroll"></div></section>
<section><h2>Membership events</h2><div class="scroll"><table id="events"></table></div></section>
<section><h2>Recent operations</h2><div class="scroll"><table id="recent"></table></div></section>
</main>
<script type="module" src="/dashboard/app.js"></script>
</body></html>`;
}
