/* libmoonring C ABI: the one definition of the native interface.
 * - src/native/ffi.ts builds its bun:ffi symbol table by parsing this file.
 * - zig/src/abi_check.zig @cImport()s it and asserts every export of src/root.zig matches.
 * No structs cross the boundary: only scalars and pointers, so no struct offsets are written twice.
 * Enums (dtype, redop, collective codes) come from src/ops/table.json.
 * Conventions: int32 results are 0 on success or a negative MR_E* code; on failure the calling
 * thread's message is available from mr_last_error(). Lengths are bytes unless named *_count. */
#ifndef MOONRING_H
#define MOONRING_H
#include <stdint.h>
#include <stddef.h>

#define MR_OK 0
#define MR_EINVAL -1      /* bad argument (caller bug or bad input that slipped through) */
#define MR_ENOMEM -2
#define MR_EPEER -3       /* a peer failed or broke the connection: mr_op_failed_peer() names it */
#define MR_ETIMEOUT -4    /* deadline passed */
#define MR_ECANCELED -5
#define MR_EPROTO -6      /* bad frame / handshake */
#define MR_ENODEV -7      /* no CUDA device / driver */
#define MR_EIO -8
#define MR_EBUSY -9       /* not yet complete */

#define MR_WORLD_SIZE_MAX 1024 /* slots of a world */
#define MR_RANK_WORDS 16 /* MR_WORLD_SIZE_MAX / 64: u64 words of a group bitset (mr_submit's ranks) */

typedef struct mr_engine mr_engine;

/* ---- library ---- */
uint32_t mr_abi_version(void);
/* Copies the calling thread's last error message (no NUL) into buf; returns its full length. */
size_t mr_last_error(uint8_t *buf, size_t cap);
/* A stable id of this host (same for all processes of one host/container namespace). */
uint64_t mr_host_id(void);

/* ---- native-owned memory: stable addresses that JS views with toArrayBuffer() ---- */
void *mr_alloc(uint64_t bytes);               /* page-aligned, zeroed; NULL on failure */
/* Like mr_alloc, but in a /dev/shm file that ranks of this host map: collectives among them
 * read it in place (no process_vm_readv). Like MPI_Alloc_mem. Freed with mr_free. */
void *mr_alloc_shared(uint64_t bytes);
/* Where [ptr, ptr + bytes) of an mr_alloc_shared buffer lies, for a program of this host that
 * maps it: writes the /dev/shm file's name (no directory, no NUL) to name[0..cap) and returns
 * its length, with ptr's byte offset in the file in *offset; 0 when it lies in no such buffer. */
size_t mr_shared_locate(const void *ptr, uint64_t bytes, uint8_t *name, size_t cap, uint64_t *offset);
void mr_free(void *ptr, uint64_t bytes);
/* Binds the calling thread to one CPU (a rank that drives ops with mr_run spins on shared
 * memory; two such ranks on one CPU take turns). 0, or MR_EINVAL. */
int32_t mr_pin_thread(uint32_t cpu);

/* ---- engine: one per rank ---- */
/* Starts the data-plane listener on listen_host:listen_port (0 = any free port).
 * world_size_max: slots of the world (<= MR_WORLD_SIZE_MAX). cluster_id and token authenticate the handshake
 * (token may be empty). Returns NULL on failure. */
mr_engine *mr_engine_create(uint32_t rank, uint32_t world_size_max,
                            const uint8_t *cluster_id, size_t cluster_id_len,
                            const uint8_t *token, size_t token_len,
                            const uint8_t *listen_host, size_t listen_host_len,
                            uint16_t listen_port);
uint16_t mr_engine_data_port(mr_engine *engine);
/* Tells the engine where rank `rank` listens and which host it is on (same host id => shm).
 * May be called again after a rank rejoins (new address); resets that peer's links. */
int32_t mr_engine_set_peer(mr_engine *engine, uint32_t rank, const uint8_t *host, size_t host_len,
                           uint16_t port, uint64_t host_id);
/* Marks a peer down: its links close, ops waiting on it fail with MR_EPEER at once. */
int32_t mr_engine_peer_down(mr_engine *engine, uint32_t rank);
/* This rank's data-plane links as JSON (GET /cluster): {"rank","verbs":{"usable","detail"},
 * "links":[{"peer","transport"}]}; returns the bytes written (truncated to cap). */
size_t mr_engine_links(mr_engine *engine, uint8_t *buf, size_t cap);
/* Stops threads, closes links, removes shm segments. In-flight ops complete with MR_ECANCELED. */
void mr_engine_destroy(mr_engine *engine);
/* Data-plane bytes per peer and link kind since the engine started (metrics): writes up to
 * cap / 4 records (peer, kind, tx_bytes, rx_bytes) into out, one per pair that moved bytes;
 * returns how many. Board ops (same-host collectives on the shared board) are not links and
 * are not counted here. */
uint32_t mr_engine_traffic(mr_engine *engine, uint64_t *out, uint32_t cap);
/* The name of link kind `kind` (the index mr_engine_traffic reports: "tcp", "shm"); copies at
 * most cap bytes into buf and returns the name's length; 0 for no such kind. */
size_t mr_link_kind_name(uint32_t kind, uint8_t *buf, size_t cap);

/* ---- operations ---- */
/* Submits one collective or p2p op; returns a ticket > 0, or a negative MR_E* code.
 *  kind: collective code (allreduce .. recv). op_id: identical on every participant
 *  (agreed by the control plane; for p2p derived from (src, dst, tag, seq)); frames carry it.
 *  ranks: the group, a bitset of MR_RANK_WORDS u64 words: bit r%64 of ranks[r/64] set = global
 *  rank r participates (group order = ascending rank).
 *  root: global rank (reduce dst, broadcast/scatter src, gather dst); peer for send/recv.
 *  count: elements per rank (see README "Native op shapes"); counts: alltoall only,
 *  2*world_size_max u64 elements: send counts per global rank, then recv counts per global rank.
 *  send/recv: host pointers (device pointers when device >= 0). recv may equal send (in place).
 *  device: -1 for host memory, else the CUDA device ordinal the pointers live on.
 *  timeout_ms: deadline from submission. */
int64_t mr_submit(mr_engine *engine, uint32_t kind, uint32_t dtype, uint32_t redop, uint64_t op_id,
                  const uint64_t *ranks, uint32_t root, const void *send, void *recv, uint64_t count,
                  const uint64_t *counts, int32_t device, uint32_t timeout_ms);
/* mr_submit, except that a small same-host op whose peers have all started it already runs on
 * the calling thread (it finishes without waiting: a few microseconds). Returns the ticket;
 * when mr_op_status(ticket) is not MR_EBUSY the op is complete and mr_poll won't report it. */
int64_t mr_start(mr_engine *engine, uint32_t kind, uint32_t dtype, uint32_t redop, uint64_t op_id,
                 const uint64_t *ranks, uint32_t root, const void *send, void *recv, uint64_t count,
                 const uint64_t *counts, int32_t device, uint32_t timeout_ms);
/* Runs the op of mr_submit's arguments on the calling thread and returns when it is done:
 * a ticket > 0 (status: mr_op_status; not reported by mr_poll; mr_release it), or a negative
 * MR_E* code when the op was refused. For embedders that await each op (no hand-off to an
 * engine thread and back). Not concurrently with mr_engine_destroy. */
int64_t mr_run(mr_engine *engine, uint32_t kind, uint32_t dtype, uint32_t redop, uint64_t op_id,
               const uint64_t *ranks, uint32_t root, const void *send, void *recv, uint64_t count,
               const uint64_t *counts, int32_t device, uint32_t timeout_ms);
/* mr_run for callers whose per-call argument conversion costs more than a small op (bun:ffi:
 * ~0.1 us per argument-heavy call): the arguments in args[0..MR_RUN_ARGS) at the MR_RUN_ARG_*
 * indexes (pointers and the device as u64), the op run on the calling thread. Returns MR_OK
 * (nothing to release), or a negative MR_E* code: args[MR_RUN_ARG_TICKET] is then 0 when the op
 * was refused (mr_last_error), else the failed op's ticket (mr_op_error, mr_release it). */
int32_t mr_run_packed(mr_engine *engine, uint64_t *args);
/* mr_run_packed without arguments, for FFIs where each argument costs (bun:ffi: ~20 ns and an
 * allocation per argument, a call without any ~7 ns): mr_run_bind ties the calling thread to an
 * engine and a cell, a u64 that holds the address of the argument block to run (the caller
 * rewrites it between calls); mr_run_bound then runs mr_run_packed(engine, *cell). NULL engine
 * or cell unbinds (mr_run_bound: MR_EINVAL). Unbind before mr_engine_destroy. */
int32_t mr_run_bind(mr_engine *engine, const uint64_t *cell);
int32_t mr_run_bound(void);
#define MR_RUN_ARG_KIND 0
#define MR_RUN_ARG_DTYPE 1
#define MR_RUN_ARG_REDOP 2
#define MR_RUN_ARG_OP_ID 3
#define MR_RUN_ARG_RANKS 4
#define MR_RUN_ARG_ROOT 5
#define MR_RUN_ARG_SEND 6
#define MR_RUN_ARG_RECV 7
#define MR_RUN_ARG_COUNT 8
#define MR_RUN_ARG_COUNTS 9
#define MR_RUN_ARG_DEVICE 10
#define MR_RUN_ARG_TIMEOUT_MS 11
#define MR_RUN_ARG_TICKET 12
#define MR_RUN_ARGS 13
/* Status of a completed ticket (MR_OK or MR_E*); MR_EBUSY while it runs. */
int32_t mr_op_status(mr_engine *engine, uint64_t ticket);
/* Drains up to max completions: tickets_out[i] finished with status_out[i] (MR_OK or MR_E*).
 * Never blocks; returns the number written. */
int32_t mr_poll(mr_engine *engine, uint64_t *tickets_out, int32_t *status_out, uint32_t max);
/* Blocks up to timeout_ms until a completion is queued (for a Worker); returns 1 if one is, 0 if not. */
int32_t mr_wait(mr_engine *engine, uint32_t timeout_ms);
/* Error text of a completed ticket (names rank, op and peer); returns its full length. The text
 * and failed peer stay available until mr_release(). */
size_t mr_op_error(mr_engine *engine, uint64_t ticket, uint8_t *buf, size_t cap);
/* Global rank of the peer that failed the op, or -1. */
int32_t mr_op_failed_peer(mr_engine *engine, uint64_t ticket);
int32_t mr_cancel(mr_engine *engine, uint64_t ticket);
/* Forgets a completed ticket. */
void mr_release(mr_engine *engine, uint64_t ticket);

/* ---- CUDA (driver API from libcuda.so.1 opened at run time) ---- */
/* Number of CUDA devices; 0 with mr_last_error() = "no CUDA device: ..." when none / no driver. */
int32_t mr_cuda_device_count(void);
/* Device memory on device `device`; returns a device pointer as u64, 0 on failure. */
uint64_t mr_cuda_alloc(int32_t device, uint64_t bytes);
int32_t mr_cuda_free(int32_t device, uint64_t dptr);
int32_t mr_cuda_copy_to_device(int32_t device, uint64_t dptr, const void *src, uint64_t bytes);
int32_t mr_cuda_copy_to_host(int32_t device, void *dst, uint64_t dptr, uint64_t bytes);
/* Writes the 64-byte CUDA IPC memory handle of dptr's allocation into handle_out. */
int32_t mr_cuda_ipc_handle(int32_t device, uint64_t dptr, uint8_t *handle_out);
/* dst[i] = dst[i] (op) src[i] on the device, for a supported (redop, dtype) pair. */
int32_t mr_cuda_reduce(int32_t device, uint32_t redop, uint32_t dtype, uint64_t dst, uint64_t src,
                       uint64_t count);

#endif
