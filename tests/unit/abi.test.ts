// src/native/abi.ts (the typed symbol table and constants) is generated from moonring.h:
// regenerating it must give the committed file (else: bun src/native/header.ts --write).
import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { abiModulePath, generateAbiModule, headerPath, parsePrototypes } from "../../src/native/header";
import { MR_EPEER, MR_WORLD_SIZE_MAX, statusCodes } from "../../src/native/abi";
import { WORLD_SIZE_MAX } from "../../src/limits";
import { generateNamesModule, namesModulePath } from "../../src/ops/names-gen";

test("src/native/abi.ts is what moonring.h generates", () => {
  expect(readFileSync(abiModulePath, "utf8")).toBe(generateAbiModule(readFileSync(headerPath, "utf8")));
});

test("constants and the typed symbols follow the header", () => {
  const header = readFileSync(headerPath, "utf8");
  expect(MR_EPEER).toBe(Number(/#define MR_EPEER (-?\d+)/.exec(header)![1]));
  expect(WORLD_SIZE_MAX).toBe(MR_WORLD_SIZE_MAX);
  expect(Object.keys(statusCodes)).toContain("ETIMEOUT");
  const generated = readFileSync(abiModulePath, "utf8");
  for (const p of parsePrototypes(header)) expect(generated).toContain(`  ${p.name}(`);
  const edited = header.replace("#define MR_EPEER -3", "#define MR_EPEER -33");
  expect(generateAbiModule(edited)).toContain("EPEER: -33");
});

test("src/ops/names.ts (the table's name unions) is what table.json generates", () => {
  expect(readFileSync(namesModulePath, "utf8")).toBe(generateNamesModule());
});
