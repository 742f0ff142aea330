// Generates src/ops/names.ts (the name unions of the op table for the type checker: TypeScript
// cannot type a JSON import's strings) from src/ops/table.json.
//   bun src/ops/names-gen.ts --write    (tests/unit/abi.test.ts fails while names.ts is stale)
import { writeFileSync } from "node:fs";
import table from "./table.json" with { type: "json" };

export const namesModulePath = new URL("./names.ts", import.meta.url).pathname;

function union(name: string, values: string[]): string {
  return `export type ${name} =\n${values.map((v) => `  | ${JSON.stringify(v)}`).join("\n")};\n`;
}

/** The text of src/ops/names.ts for the table. */
export function generateNamesModule(t: typeof table = table): string {
  return [
    "// Generated from src/ops/table.json by src/ops/names-gen.ts (bun src/ops/names-gen.ts --write).",
    "// Do not edit: tests/unit/abi.test.ts fails when this file and the table differ.",
    "",
    union("DTypeName", t.dtypes.map((d) => d.name)),
    union("RedOpName", t.redops.map((r) => r.name)),
    union("CollectiveName", t.collectives.map((c) => c.name)),
  ].join("\n");
}

if (import.meta.main && process.argv.includes("--write")) {
  writeFileSync(namesModulePath, generateNamesModule());
  console.log(`wrote ${namesModulePath}`);
}
