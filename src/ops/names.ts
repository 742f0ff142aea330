// Generated from src/ops/table.json by src/ops/names-gen.ts (bun src/ops/names-gen.ts --write).
// Do not edit: tests/unit/abi.test.ts fails when this file and the table differ.

export type DTypeName =
  | "float16"
  | "bfloat16"
  | "float32"
  | "float64"
  | "int8"
  | "uint8"
  | "int16"
  | "int32"
  | "int64"
  | "bool";

export type RedOpName =
  | "sum"
  | "prod"
  | "min"
  | "max"
  | "avg"
  | "band"
  | "bor"
  | "bxor";

export type CollectiveName =
  | "allreduce"
  | "reduce"
  | "broadcast"
  | "allgather"
  | "gather"
  | "scatter"
  | "reduce_scatter"
  | "alltoall"
  | "barrier"
  | "send"
  | "recv";
