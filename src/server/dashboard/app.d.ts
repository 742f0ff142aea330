// app.js is served as text (imported with { type: "text" } by routes/dashboard.ts).
declare const source: string;
export default source;
