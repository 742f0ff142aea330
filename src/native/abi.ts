// Generated from zig/include/moonring.h by src/native/header.ts (bun src/native/header.ts --write).
// Do not edit: tests/unit/abi.test.ts fails when this file and the header differ.
import type { Pointer } from "bun:ffi";

export const MR_OK = 0;
export const MR_EINVAL = -1;
export const MR_ENOMEM = -2;
export const MR_EPEER = -3;
export const MR_ETIMEOUT = -4;
export const MR_ECANCELED = -5;
export const MR_EPROTO = -6;
export const MR_ENODEV = -7;
export const MR_EIO = -8;
export const MR_EBUSY = -9;
export const MR_WORLD_SIZE_MAX = 1024;
export const MR_RANK_WORDS = 16;
export const MR_RUN_ARG_KIND = 0;
export const MR_RUN_ARG_DTYPE = 1;
export const MR_RUN_ARG_REDOP = 2;
export const MR_RUN_ARG_OP_ID = 3;
export const MR_RUN_ARG_RANKS = 4;
export const MR_RUN_ARG_ROOT = 5;
export const MR_RUN_ARG_SEND = 6;
export const MR_RUN_ARG_RECV = 7;
export const MR_RUN_ARG_COUNT = 8;
export const MR_RUN_ARG_COUNTS = 9;
export const MR_RUN_ARG_DEVICE = 10;
export const MR_RUN_ARG_TIMEOUT_MS = 11;
export const MR_RUN_ARG_TICKET = 12;
export const MR_RUN_ARGS = 13;

/** The MR_E* status codes by name without the MR_ prefix. */
export const statusCodes = {
  EINVAL: -1,
  ENOMEM: -2,
  EPEER: -3,
  ETIMEOUT: -4,
  ECANCELED: -5,
  EPROTO: -6,
  ENODEV: -7,
  EIO: -8,
  EBUSY: -9,
} as const;
export type StatusName = keyof typeof statusCodes;

/** The library's functions, typed from their C prototypes. */
export interface NativeSymbols {
  /** uint32_t mr_abi_version(void); */
  mr_abi_version(): number;
  /** size_t mr_last_error(uint8_t *buf, size_t cap); */
  mr_last_error(buf: number | ArrayBufferView | null, cap: number | bigint): number | bigint;
  /** uint64_t mr_host_id(void); */
  mr_host_id(): number | bigint;
  /** void *mr_alloc(uint64_t bytes); */
  mr_alloc(bytes: number | bigint): Pointer | null;
  /** void *mr_alloc_shared(uint64_t bytes); */
  mr_alloc_shared(bytes: number | bigint): Pointer | null;
  /** size_t mr_shared_locate(const void *ptr, uint64_t bytes, uint8_t *name, size_t cap, uint64_t *offset); */
  mr_shared_locate(ptr: number | ArrayBufferView | null, bytes: number | bigint, name: number | ArrayBufferView | null, cap: number | bigint, offset: number | ArrayBufferView | null): number | bigint;
  /** void mr_free(void *ptr, uint64_t bytes); */
  mr_free(ptr: number | ArrayBufferView | null, bytes: number | bigint): void;
  /** int32_t mr_pin_thread(uint32_t cpu); */
  mr_pin_thread(cpu: number): number;
  /** mr_engine *mr_engine_create(uint32_t rank, uint32_t world_size_max, const uint8_t *cluster_id, size_t cluster_id_len, const uint8_t *token, size_t token_len, const uint8_t *listen_host, size_t listen_host_len, uint16_t listen_port); */
  mr_engine_create(rank: number, world_size_max: number, cluster_id: number | ArrayBufferView | null, cluster_id_len: number | bigint, token: number | ArrayBufferView | null, token_len: number | bigint, listen_host: number | ArrayBufferView | null, listen_host_len: number | bigint, listen_port: number): Pointer | null;
  /** uint16_t mr_engine_data_port(mr_engine *engine); */
  mr_engine_data_port(engine: number | ArrayBufferView | null): number;
  /** int32_t mr_engine_set_peer(mr_engine *engine, uint32_t rank, const uint8_t *host, size_t host_len, uint16_t port, uint64_t host_id); */
  mr_engine_set_peer(engine: number | ArrayBufferView | null, rank: number, host: number | ArrayBufferView | null, host_len: number | bigint, port: number, host_id: number | bigint): number;
  /** int32_t mr_engine_peer_down(mr_engine *engine, uint32_t rank); */
  mr_engine_peer_down(engine: number | ArrayBufferView | null, rank: number): number;
  /** size_t mr_engine_links(mr_engine *engine, uint8_t *buf, size_t cap); */
  mr_engine_links(engine: number | ArrayBufferView | null, buf: number | ArrayBufferView | null, cap: number | bigint): number | bigint;
  /** void mr_engine_destroy(mr_engine *engine); */
  mr_engine_destroy(engine: number | ArrayBufferView | null): void;
  /** uint32_t mr_engine_traffic(mr_engine *engine, uint64_t *out, uint32_t cap); */
  mr_engine_traffic(engine: number | ArrayBufferView | null, out: number | ArrayBufferView | null, cap: number): number;
  /** size_t mr_link_kind_name(uint32_t kind, uint8_t *buf, size_t cap); */
  mr_link_kind_name(kind: number, buf: number | ArrayBufferView | null, cap: number | bigint): number | bigint;
  /** int64_t mr_submit(mr_engine *engine, uint32_t kind, uint32_t dtype, uint32_t redop, uint64_t op_id, const uint64_t *ranks, uint32_t root, const void *send, void *recv, uint64_t count, const uint64_t *counts, int32_t device, uint32_t timeout_ms); */
  mr_submit(engine: number | ArrayBufferView | null, kind: number, dtype: number, redop: number, op_id: number | bigint, ranks: number | ArrayBufferView | null, root: number, send: number | ArrayBufferView | null, recv: number | ArrayBufferView | null, count: number | bigint, counts: number | ArrayBufferView | null, device: number, timeout_ms: number): number | bigint;
  /** int64_t mr_start(mr_engine *engine, uint32_t kind, uint32_t dtype, uint32_t redop, uint64_t op_id, const uint64_t *ranks, uint32_t root, const void *send, void *recv, uint64_t count, const uint64_t *counts, int32_t device, uint32_t timeout_ms); */
  mr_start(engine: number | ArrayBufferView | null, kind: number, dtype: number, redop: number, op_id: number | bigint, ranks: number | ArrayBufferView | null, root: number, send: number | ArrayBufferView | null, recv: number | ArrayBufferView | null, count: number | bigint, counts: number | ArrayBufferView | null, device: number, timeout_ms: number): number | bigint;
  /** int64_t mr_run(mr_engine *engine, uint32_t kind, uint32_t dtype, uint32_t redop, uint64_t op_id, const uint64_t *ranks, uint32_t root, const void *send, void *recv, uint64_t count, const uint64_t *counts, int32_t device, uint32_t timeout_ms); */
  mr_run(engine: number | ArrayBufferView | null, kind: number, dtype: number, redop: number, op_id: number | bigint, ranks: number | ArrayBufferView | null, root: number, send: number | ArrayBufferView | null, recv: number | ArrayBufferView | null, count: number | bigint, counts: number | ArrayBufferView | null, device: number, timeout_ms: number): number | bigint;
  /** int32_t mr_run_packed(mr_engine *engine, uint64_t *args); */
  mr_run_packed(engine: number | ArrayBufferView | null, args: number | ArrayBufferView | null): number;
  /** int32_t mr_run_bind(mr_engine *engine, const uint64_t *cell); */
  mr_run_bind(engine: number | ArrayBufferView | null, cell: number | ArrayBufferView | null): number;
  /** int32_t mr_run_bound(void); */
  mr_run_bound(): number;
  /** int32_t mr_op_status(mr_engine *engine, uint64_t ticket); */
  mr_op_status(engine: number | ArrayBufferView | null, ticket: number | bigint): number;
  /** int32_t mr_poll(mr_engine *engine, uint64_t *tickets_out, int32_t *status_out, uint32_t max); */
  mr_poll(engine: number | ArrayBufferView | null, tickets_out: number | ArrayBufferView | null, status_out: number | ArrayBufferView | null, max: number): number;
  /** int32_t mr_wait(mr_engine *engine, uint32_t timeout_ms); */
  mr_wait(engine: number | ArrayBufferView | null, timeout_ms: number): number;
  /** size_t mr_op_error(mr_engine *engine, uint64_t ticket, uint8_t *buf, size_t cap); */
  mr_op_error(engine: number | ArrayBufferView | null, ticket: number | bigint, buf: number | ArrayBufferView | null, cap: number | bigint): number | bigint;
  /** int32_t mr_op_failed_peer(mr_engine *engine, uint64_t ticket); */
  mr_op_failed_peer(engine: number | ArrayBufferView | null, ticket: number | bigint): number;
  /** int32_t mr_cancel(mr_engine *engine, uint64_t ticket); */
  mr_cancel(engine: number | ArrayBufferView | null, ticket: number | bigint): number;
  /** void mr_release(mr_engine *engine, uint64_t ticket); */
  mr_release(engine: number | ArrayBufferView | null, ticket: number | bigint): void;
  /** int32_t mr_cuda_device_count(void); */
  mr_cuda_device_count(): number;
  /** uint64_t mr_cuda_alloc(int32_t device, uint64_t bytes); */
  mr_cuda_alloc(device: number, bytes: number | bigint): number | bigint;
  /** int32_t mr_cuda_free(int32_t device, uint64_t dptr); */
  mr_cuda_free(device: number, dptr: number | bigint): number;
  /** int32_t mr_cuda_copy_to_device(int32_t device, uint64_t dptr, const void *src, uint64_t bytes); */
  mr_cuda_copy_to_device(device: number, dptr: number | bigint, src: number | ArrayBufferView | null, bytes: number | bigint): number;
  /** int32_t mr_cuda_copy_to_host(int32_t device, void *dst, uint64_t dptr, uint64_t bytes); */
  mr_cuda_copy_to_host(device: number, dst: number | ArrayBufferView | null, dptr: number | bigint, bytes: number | bigint): number;
  /** int32_t mr_cuda_ipc_handle(int32_t device, uint64_t dptr, uint8_t *handle_out); */
  mr_cuda_ipc_handle(device: number, dptr: number | bigint, handle_out: number | ArrayBufferView | null): number;
  /** int32_t mr_cuda_reduce(int32_t device, uint32_t redop, uint32_t dtype, uint64_t dst, uint64_t src, uint64_t count); */
  mr_cuda_reduce(device: number, redop: number, dtype: number, dst: number | bigint, src: number | bigint, count: number | bigint): number;
}
