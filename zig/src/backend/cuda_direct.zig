//! The CUDA IPC direct path for device ops (mr_submit with device >= 0) among rank processes
//! of one host: every rank maps its peers' device buffers (cuda/ipc.zig) and reads or writes
//! them directly (NVLink / PCIe P2P) with the reduction kernels and cuMemcpyDtoDAsync, instead
//! of staging through host memory and the CPU algorithms. Small control messages (handles,
//! barriers) go over the board (exchangeRecords: the waiting thread is woken by
//! the peer itself) when the engine has one for the group, else over the op's `Comm`.
//!
//! Protocol of one op, every rank of the group (group ranks; messages per pair in order):
//!  1. hello: each rank sends every peer a `Hello` (IPC refs of its send and recv buffers,
//!     whether it can do IPC, which peers' handles it has opened before). When any rank can't
//!     (different hosts, host memory, IPC failed before, MOONRING_CUDA_IPC=0, in-place
//!     alltoall) every rank sees it and returns .fallback: the engine goes on with host
//!     staging over the same Comm (its messages come after the hello).
//!  2. each rank maps the peer buffers it needs (cached). Unless every pair used by this op has
//!     worked before (`verified`), one "did every open work?" round follows; a failure there
//!     disables IPC for the engine and the op falls back (nobody touched foreign memory yet).
//!  3. each rank does its part on its own stream, synchronizes it, and
//!  4. final barrier, carrying each rank's status: once it passes, every write into this
//!     rank's buffers has landed and no peer reads them any more. A rank that failed its part
//!     fails the op on every rank (EIO, naming it).
//!
//! | kind           | rank i's part (S_j / R_j: rank j's send / recv; blocks in group order) |
//! |----------------|-------------------------------------------------------------------------|
//! | allreduce      | block i of the count: R_i[b_i] = S_0[b_i] op ... op S_n-1[b_i] (one rounding, group order, avg scaled), then push R_i[b_i] into every R_j[b_i] |
//! | reduce_scatter | R_i = S_0[block i] op ... op S_n-1[block i]                             |
//! | allgather      | push S_i into every R_j[block i]                                        |
//! | alltoall       | push S_i[block for j] into R_j[block from i]                            |
//! | broadcast      | non-root: pull S_root into R_i                                          |
//! | reduce         | root: R_root = S_0 op ... op S_n-1                                      |
//! | gather         | push S_i into R_root[block i]                                           |
//! | scatter        | non-root: pull S_root[block i] into R_i                                 |
//!
//! Every element of a reduction is computed by exactly one rank, so results are identical on
//! every rank. In-place buffers (send == recv) work for all kinds but alltoall: a rank only
//! overwrites a block after it read it, and blocks other ranks read are never written during
//! the op. Groups of 2..8 ranks (mr_reduceN takes 8 sources); others use host staging.
const std = @import("std");
const transport = @import("../transport/transport.zig");
const netmod = @import("../transport/net.zig");
const op = @import("../op.zig");
const sys = @import("../sys.zig");
const driver = @import("../cuda/driver.zig");
const staging = @import("../cuda/staging.zig");
const ipc = @import("../cuda/ipc.zig");
const board_direct = @import("board_direct.zig");
const board_mod = @import("../transport/board.zig");
const plan = @import("../plan.zig");

pub const Cache = ipc.Cache;
pub const Error = transport.Error || driver.Error;
pub const Outcome = enum { done, fallback };

/// Largest group of the direct path (mr_reduceN_* sources).
pub const group_size_max = driver.reduce_sources_max;
/// Allreduce blocks start at multiples of this many bytes (16-byte vector loads).
const block_align_bytes = 256;
const hello_magic: u32 = 0x4D52_4950; // "MRIP"
const status_magic: u32 = 0x4D52_4453; // "MRDS"

comptime {
    std.debug.assert(group_size_max <= 8);
    std.debug.assert(2 * (group_size_max - 1) <= transport.requests_in_flight_max);
}

/// One device op as the engine hands it over (group order, device pointers; 0 = none).
pub const Op = struct {
    kind: op.Collective,
    dtype: op.DType,
    redop: op.RedOp,
    /// Group rank of the root.
    root: u32,
    count: u64,
    /// alltoall: element counts per group rank.
    send_counts: []const u64 = &.{},
    recv_counts: []const u64 = &.{},
    /// Global ranks of the group (ascending).
    group: []const u32,
    device: i32,
    send: u64,
    recv: u64,
    /// Every member of the group is on this rank's host (same host id).
    same_host: bool,
    /// The engine's MOONRING_CUDA_* knobs (plan.Config, read once).
    config: *const plan.CudaConfig = &plan.CudaConfig{},
};

/// Whether the op takes part in the protocol at all. Every rank of an op decides the same
/// (kind, group size and count are agreed), so no message is exchanged when it doesn't.
pub fn applies(o: Op) bool {
    if (o.device < 0) return false;
    return plan.cudaDirectRuns(.{ .kind = o.kind, .bytes = o.count * o.dtype.bytes(), .ranks = @intCast(o.group.len), .same_host = o.same_host, .boards_live = false, .device = true });
}

/// True when every rank of `group` is on this process's host (the host ids set_peer gave).
pub fn sameHost(net: *netmod.Net, group: []const u32) bool {
    return net.sameHost(group);
}

const Hello = extern struct {
    magic: u32 = hello_magic,
    flags: u32 = 0,
    /// Global ranks whose handles the sender has opened before.
    verified: u64 = 0,
    send: ipc.Ref = .{},
    recv: ipc.Ref = .{},
    /// alltoall: where the block from the receiver goes in the sender's recv (bytes) and its
    /// length.
    block_offset: u64 = 0,
    block_bytes: u64 = 0,

    const flag_ipc_ok: u32 = 1;
    const flag_in_place: u32 = 2;
};

const StatusMsg = extern struct {
    magic: u32 = status_magic,
    ok: u32 = 1,
    reserved: u64 = 0,
};

/// Why this rank can't take the direct path (log lines, once per engine each).
const Reason = enum(u5) { other_host, env, disabled, export_failed, peer_refused, open_failed, in_place_alltoall };

fn say(cache: *Cache, rank: u32, reason: Reason, detail: []const u8) void {
    if (!cache.firstTime(@intFromEnum(reason))) return;
    const text = switch (reason) {
        .other_host => "ranks on different hosts",
        .env => "MOONRING_CUDA_IPC=0",
        .disabled => "CUDA IPC failed earlier",
        .export_failed => "a buffer has no CUDA IPC handle",
        .peer_refused => "a peer can't use CUDA IPC",
        .open_failed => "cuIpcOpenMemHandle failed",
        .in_place_alltoall => "in-place alltoall",
    };
    sys.logLine("rank {d}: device ops use host staging, not the CUDA IPC direct path ({s}{s}{s})", .{
        rank, text, if (detail.len > 0) ": " else "", detail,
    });
}

/// Control rounds that went over the board (tests).
pub var board_rounds_for_test = std.atomic.Value(u64).init(0);

/// Where the control messages go: the board's record rounds, else messages over the Comm.
const Control = struct {
    comm: transport.Comm,
    board: ?*board_direct.Team,
    rounds: u32 = 0,

    /// Sends `mine[j]` to every peer j and receives `theirs[j]` from it.
    fn exchange(c: *Control, comptime T: type, mine: []const T, theirs: []T) transport.Error!void {
        if (c.board) |team| {
            defer c.rounds += 1;
            if (@import("builtin").is_test) _ = board_rounds_for_test.fetchAdd(1, .monotonic);
            return exchangeRecords(team, c.rounds, @sizeOf(T), std.mem.sliceAsBytes(mine), std.mem.sliceAsBytes(theirs));
        }
        return exchangeMessages(T, c.comm, mine, theirs);
    }
};

/// One all-to-all round of fixed-size records among the team, for the CUDA direct path's
/// control messages (hello, acks, final status): rank j gets `mine[j]`, `theirs[j]` is what
/// rank j gave this rank. Rounds of one op reuse this rank's entry; `round` (0..7) keeps
/// their publishes distinct.
fn exchangeRecords(t: *board_direct.Team, round: u32, record_bytes: usize, mine: []const u8, theirs: []u8) transport.Error!void {
    const n = t.size();
    std.debug.assert(round < 8);
    std.debug.assert(mine.len == record_bytes * n and theirs.len == record_bytes * n);
    std.debug.assert(record_bytes * n <= board_mod.inline_bytes_max);
    var counts: [board_mod.counts_max]u64 = undefined;
    @memset(counts[0..n], record_bytes);
    const desc = op.OpDesc{
        .kind = .alltoall,
        .dtype = .u8,
        .redop = .sum,
        .root = 0,
        .count = record_bytes,
        .send_counts = counts[0..n],
        .recv_counts = counts[0..n],
        .send = mine.ptr,
        .recv = theirs.ptr,
    };
    var round_team = t.*;
    round_team.serial = t.serial *% 8 +% round;
    round_team.lanes = false; // the control records go through the entries (device ops never take lanes)
    // Inline records, no overlap: nothing is allocated.
    return board_direct.run(&round_team, desc, std.heap.page_allocator);
}

/// Sends `mine[j]` to every peer j and receives `theirs[j]` from it; waits for every request
/// it posted, also on error.
pub fn exchangeMessages(comptime T: type, comm: transport.Comm, mine: []const T, theirs: []T) transport.Error!void {
    const n = comm.size;
    var reqs: [2 * group_size_max]transport.Request = undefined;
    var posted: usize = 0;
    var first_error: ?transport.Error = null;
    for (0..n) |j| {
        if (j == comm.rank) continue;
        reqs[posted] = comm.irecv(@intCast(j), std.mem.asBytes(&theirs[j])) catch |err| {
            first_error = err;
            break;
        };
        posted += 1;
    }
    if (first_error == null) for (0..n) |j| {
        if (j == comm.rank) continue;
        reqs[posted] = comm.isend(@intCast(j), std.mem.asBytes(&mine[j])) catch |err| {
            first_error = err;
            break;
        };
        posted += 1;
    };
    for (reqs[0..posted]) |req| {
        comm.wait(req) catch |err| {
            if (first_error == null) first_error = err;
        };
    }
    if (first_error) |err| return err;
}

fn bufferBytes(o: Op, me: u32) struct { u64, u64 } {
    return op.bufferBytes(o.kind, o.dtype.bytes(), o.count, o.group.len, o.root == me, o.send_counts, o.recv_counts);
}

fn prefix(counts: []const u64, j: usize) u64 {
    var total: u64 = 0;
    for (counts[0..j]) |c| total += c;
    return total;
}

const Need = enum { none, send, recv, both };

/// Which buffers of group rank j group rank i maps for this op (every rank can compute it).
fn needs(o: Op, i: u32, j: u32) Need {
    if (i == j) return .none;
    return switch (o.kind) {
        .allreduce => .both,
        .reduce_scatter => .send,
        .allgather, .alltoall => .recv,
        .broadcast, .scatter => if (i != o.root and j == o.root) .send else .none,
        .reduce => if (i == o.root) .send else .none,
        .gather => if (i != o.root and j == o.root) .recv else .none,
        else => .none, // not run here (the table's "cuda_direct")
    };
}

/// Peer buffers mapped for one op (released at the end).
const Mapped = struct {
    cache: *Cache,
    send: [group_size_max]?ipc.Mapping = [_]?ipc.Mapping{null} ** group_size_max,
    recv: [group_size_max]?ipc.Mapping = [_]?ipc.Mapping{null} ** group_size_max,

    fn address(m: *const Mapped, comptime which: enum { send, recv }, j: usize) u64 {
        const slot = if (which == .send) m.send[j] else m.recv[j];
        return if (slot) |mapping| mapping.address else 0;
    }

    fn releaseAll(m: *Mapped) void {
        for (&m.send) |*slot| if (slot.*) |mapping| {
            m.cache.release(mapping);
            slot.* = null;
        };
        for (&m.recv) |*slot| if (slot.*) |mapping| {
            m.cache.release(mapping);
            slot.* = null;
        };
    }
};

/// Runs the op's device part directly, or returns .fallback (on every rank alike) for host
/// staging. Errors: transport errors of the control messages, or a CUDA error (this rank's,
/// with driver.lastErrorMessage(), or a peer's: "rank R failed its part").
/// `board`: the group's boards (every rank passes one or none: the engine decides the same
/// everywhere).
pub fn run(cache: *Cache, comm: transport.Comm, board: ?*board_direct.Team, o: Op) Error!Outcome {
    if (!applies(o)) return .fallback;
    var control = Control{ .comm = comm, .board = board };
    const n: u32 = comm.size;
    const me: u32 = comm.rank;
    std.debug.assert(n == o.group.len and me < n);
    const my_rank = o.group[me];
    const es = o.dtype.bytes();
    const trace = o.config.trace;
    var t: [6]u64 = [_]u64{0} ** 6;
    if (trace) t[0] = sys.monotonicNs();
    const opens_before = cache.opens.load(.monotonic);
    const hot_ns = o.config.hot_spin_ns;
    sys.spinHotFor(hot_ns);

    // ---- 1. hello ----
    var theirs: [group_size_max]Hello = undefined;
    if (!try hello(cache, &control, o, me, &theirs)) return .fallback;
    if (trace) t[1] = sys.monotonicNs();
    // ---- 2. map the peer buffers this rank needs ----
    var mapped: Mapped = .{ .cache = cache };
    defer mapped.releaseAll();
    const local_ok = mapPeers(cache, o, me, &theirs, &mapped);
    var detail_buf: [240]u8 = undefined;
    const detail = if (local_ok) "" else copyText(&detail_buf, driver.lastErrorMessage());
    if (trace) t[2] = sys.monotonicNs();
    if (!try ackMappings(cache, &control, o, me, &theirs, local_ok, detail)) return .fallback;

    // ---- 3. this rank's part ----
    if (trace) t[3] = sys.monotonicNs();
    var part_error: ?driver.Error = null;
    if (local_ok) {
        part(cache, o, me, &theirs, &mapped, if (trace) &t[4] else null) catch |err| {
            part_error = err;
        };
    } else {
        part_error = driver.fail(error.Cuda, "{s}", .{detail});
    }
    var part_message_buf: [240]u8 = undefined;
    const part_message = if (part_error != null) copyText(&part_message_buf, driver.lastErrorMessage()) else "";

    const t_part = if (trace) sys.monotonicNs() else 0;
    sys.spinHotFor(hot_ns);
    // ---- 4. final barrier with status ----
    try finalBarrier(&control, o, me, part_error, part_message);
    _ = cache.completed.fetchAdd(1, .monotonic);
    if (trace) {
        t[5] = sys.monotonicNs();
        const us = std.time.ns_per_us;
        sys.logLine("rank {d}: cuda direct {s} n={d} {d} B: hello {d} us, map {d} us (opens {d}), ack {d} us, launch {d} us, sync {d} us, barrier {d} us", .{
            my_rank,                  @tagName(o.kind),                o.group.len,                    o.count * es,
            (t[1] - t[0]) / us,       (t[2] - t[1]) / us,              cache.opens.load(.monotonic) - opens_before,
            (t[3] - t[2]) / us,       (if (t[4] > t[3]) t[4] - t[3] else 0) / us,
            (if (t[4] > t[3]) t_part - t[4] else t_part - t[3]) / us, (t[5] - t_part) / us,
        });
    }
    return .done;
}

/// Step 1, the hello: every rank tells every peer whether it can go direct (its buffers' IPC
/// references, in place, alltoall's block places). False: the op falls back to host staging,
/// on every rank alike (said once).
fn hello(cache: *Cache, control: *Control, o: Op, me: u32, theirs: *[group_size_max]Hello) Error!bool {
    const n: u32 = @intCast(o.group.len);
    const my_rank = o.group[me];
    const es = o.dtype.bytes();
    var refusal: ?Reason = null;
    var detail_buf: [240]u8 = undefined;
    var detail: []const u8 = "";
    if (!o.same_host) refusal = .other_host;
    if (refusal == null and !o.config.ipc) refusal = .env;
    if (refusal == null and cache.disabled.load(.acquire)) refusal = .disabled;
    const send_bytes, const recv_bytes = bufferBytes(o, me);
    // A bad device or buffer fails the op here, before any message (like host staging would).
    const dev = try staging.device(o.device);
    if (o.send != 0 and send_bytes > 0) try dev.checkRange(o.send, send_bytes, "direct op (send)");
    if (o.recv != 0 and recv_bytes > 0) try dev.checkRange(o.recv, recv_bytes, "direct op (recv)");
    const in_place = o.send != 0 and o.send == o.recv;
    if (refusal == null and in_place and o.kind == .alltoall) refusal = .in_place_alltoall;
    var base: Hello = .{ .verified = cache.verified.load(.acquire) };
    if (refusal == null) {
        base.send = ipc.refOf(o.device, o.send, send_bytes) catch blk: {
            refusal = .export_failed;
            break :blk .{};
        };
        if (refusal == null) base.recv = ipc.refOf(o.device, o.recv, recv_bytes) catch blk: {
            refusal = .export_failed;
            break :blk .{};
        };
        if (refusal == .export_failed) detail = copyText(&detail_buf, driver.lastErrorMessage());
    }
    if (refusal == null) base.flags |= Hello.flag_ipc_ok;
    if (in_place) base.flags |= Hello.flag_in_place;
    var mine: [group_size_max]Hello = undefined;
    for (0..n) |j| {
        mine[j] = base;
        if (o.kind == .alltoall) {
            mine[j].block_offset = prefix(o.recv_counts, j) * es;
            mine[j].block_bytes = o.recv_counts[j] * es;
        }
    }
    mine[me].magic = hello_magic;
    theirs[me] = mine[me];
    try control.exchange(Hello, mine[0..n], theirs[0..n]);
    for (theirs[0..n]) |h| if (h.magic != hello_magic) return error.Protocol;
    if (refusal) |reason| {
        say(cache, my_rank, reason, detail);
        return false;
    }
    for (theirs[0..n]) |h| {
        if (h.flags & Hello.flag_ipc_ok == 0) {
            say(cache, my_rank, .peer_refused, "");
            return false;
        }
    }
    return true;
}

/// Step 2: maps the peer buffers this rank needs (needs()). False when one could not be opened
/// or a peer gave none (driver.lastErrorMessage() says why).
fn mapPeers(cache: *Cache, o: Op, me: u32, theirs: *const [group_size_max]Hello, mapped: *Mapped) bool {
    const n: u32 = @intCast(o.group.len);
    var local_ok = true;
    for (0..n) |jj| {
        const j: u32 = @intCast(jj);
        const need = needs(o, me, j);
        if (need == .none) continue;
        const peer = o.group[j];
        const h = &theirs[j];
        if ((need == .send or need == .both) and h.send.present()) {
            mapped.send[j] = cache.acquire(o.device, peer, &h.send) catch {
                local_ok = false;
                break;
            };
        }
        if ((need == .recv or need == .both) and h.recv.present()) {
            mapped.recv[j] = cache.acquire(o.device, peer, &h.recv) catch {
                local_ok = false;
                break;
            };
        }
        // Only alltoall peers may lack a buffer (nothing to receive).
        const missing_send = (need == .send or need == .both) and !h.send.present();
        const missing_recv = (need == .recv or need == .both) and !h.recv.present() and o.kind != .alltoall;
        if (missing_send or missing_recv) {
            driver.fail(error.InvalidArgument, "rank {d} gave no device {s} buffer", .{ peer, if (missing_send) "send" else "recv" }) catch {};
            local_ok = false;
            break;
        }
    }
    return local_ok;
}

/// Step 2b: when some mapping is new to some rank, every rank says whether its mappings opened;
/// a refusal anywhere falls back on every rank (and turns the direct path off here). True: go on.
fn ackMappings(cache: *Cache, control: *Control, o: Op, me: u32, theirs: *const [group_size_max]Hello, local_ok: bool, detail: []const u8) Error!bool {
    const n: u32 = @intCast(o.group.len);
    var needs_ack = false;
    for (0..n) |i| for (0..n) |j| {
        if (needs(o, @intCast(i), @intCast(j)) == .none) continue;
        const bit = ipc.Cache.verifiedBit(o.group[j]);
        if (bit == 0 or theirs[i].verified & bit == 0) needs_ack = true;
    };
    if (needs_ack) {
        var acks_mine: [group_size_max]StatusMsg = undefined;
        var acks: [group_size_max]StatusMsg = undefined;
        for (acks_mine[0..n]) |*a| a.* = .{ .ok = @intFromBool(local_ok) };
        acks[me] = acks_mine[me];
        try control.exchange(StatusMsg, acks_mine[0..n], acks[0..n]);
        var all_ok = true;
        for (acks[0..n]) |a| {
            if (a.magic != status_magic) return error.Protocol;
            if (a.ok == 0) all_ok = false;
        }
        if (!all_ok) {
            cache.disabled.store(true, .release);
            say(cache, o.group[me], if (local_ok) .peer_refused else .open_failed, detail);
            return false;
        }
    }
    return true;
}

/// Step 4: every rank tells every peer whether its part succeeded; this rank's error, else the
/// first peer's, fails the op on every rank.
fn finalBarrier(control: *Control, o: Op, me: u32, part_error: ?driver.Error, part_message: []const u8) Error!void {
    const n: u32 = @intCast(o.group.len);
    var done_mine: [group_size_max]StatusMsg = undefined;
    var done: [group_size_max]StatusMsg = undefined;
    for (done_mine[0..n]) |*d| d.* = .{ .ok = @intFromBool(part_error == null) };
    done[me] = done_mine[me];
    try control.exchange(StatusMsg, done_mine[0..n], done[0..n]);
    if (part_error) |err| return driver.fail(err, "rank {d}: CUDA IPC direct {s}: {s}", .{ o.group[me], @tagName(o.kind), part_message });
    for (done[0..n], 0..) |d, j| {
        if (d.magic != status_magic) return error.Protocol;
        if (d.ok == 0) return driver.fail(error.Cuda, "rank {d} failed its part of the CUDA IPC direct {s} (see its log)", .{ o.group[j], @tagName(o.kind) });
    }
}

fn copyText(buf: []u8, text: []const u8) []const u8 {
    const len = @min(buf.len, text.len);
    @memcpy(buf[0..len], text[0..len]);
    return buf[0..len];
}

/// Element range [begin, end) of allreduce block j of n.
fn blockRange(count: u64, es: u64, n: u32, j: u32) struct { u64, u64 } {
    const align_elems = @max(1, block_align_bytes / es);
    const per = std.math.divCeil(u64, std.math.divCeil(u64, count, n) catch unreachable, align_elems) catch unreachable;
    const chunk = per * align_elems;
    const begin = @min(count, chunk * j);
    const end = @min(count, begin + chunk);
    return .{ begin, end };
}

/// Tests: pipeline allreduce blocks whatever MOONRING_CUDA_PIPELINE says.
pub var pipeline_for_test = false;

/// Chunks of an allreduce block of `bytes` with MOONRING_CUDA_PIPELINE=1 (`enabled`): 1 below
/// 2 MiB, else one per MiB up to 8. Off by default: on 2 H200s (NV18) it measured slower than
/// one reduce then one push (allreduce 64 MiB: 158 vs 265 GB/s busbw, 256 MiB: 283 vs 308).
fn pipelineChunks(bytes: u64, enabled: bool) u64 {
    if (!pipeline_for_test and !enabled) return 1;
    return std.math.clamp(bytes >> 20, 1, 8);
}

/// Element range of chunk k of [begin, end) in `chunks` (chunks start 256-byte aligned).
fn chunkRange(begin: u64, end: u64, es: u64, chunks: u64, k: u64) struct { u64, u64 } {
    const align_elems = @max(1, block_align_bytes / es);
    const per = std.math.divCeil(u64, std.math.divCeil(u64, end - begin, chunks) catch unreachable, align_elems) catch unreachable;
    const c_begin = @min(end, begin + per * align_elems * k);
    return .{ c_begin, @min(end, c_begin + per * align_elems) };
}

/// dst = srcs[0] op ... op srcs[k-1] (group order), then / n for avg.
fn reduceInto(stream: driver.Stream, o: Op, dst: u64, srcs: []const u64, count: u64) driver.Error!void {
    if (count == 0) return;
    if (srcs.len == 2) {
        try stream.reduce2(o.redop, o.dtype, dst, srcs[0], srcs[1], count);
    } else {
        try stream.reduceN(o.redop, o.dtype, dst, srcs, count);
    }
    if (o.redop == .avg) try stream.scale(o.dtype, dst, count, @floatFromInt(srcs.len));
}

/// MOONRING_CUDA_PUSH=parallel (`enabled`): pushes to the peers each on a stream of its own
/// (forked from the op's stream by an event), so the copies to different peers run side by
/// side instead of one after another on one stream. Pushes below parallel_push_min_bytes stay
/// on one stream.
fn parallelPush(enabled: bool) bool {
    return parallel_push_for_test or enabled;
}
const parallel_push_min_bytes = 1 << 20;
/// Tests: parallel pushes whatever MOONRING_CUDA_PUSH says.
pub var parallel_push_for_test = false;

/// Streams of parallel pushes, one per peer, each ordered after the work queued on `main`
/// before fork(). Every stream is synchronized before the op's part returns (finish / deinit).
const Fanout = struct {
    cache: *Cache,
    ordinal: i32,
    event: ?driver.Event = null,
    streams: [group_size_max]?driver.Stream = [_]?driver.Stream{null} ** group_size_max,

    fn fork(f: *Fanout, main: driver.Stream) driver.Error!void {
        const event = try main.device.createEvent(false);
        f.event = event;
        try event.record(main);
    }

    fn streamFor(f: *Fanout, j: usize) driver.Error!driver.Stream {
        if (f.streams[j]) |stream| return stream;
        const stream = try f.cache.takeStream(f.ordinal);
        f.streams[j] = stream;
        try stream.waitEvent(f.event.?);
        return stream;
    }

    fn finish(f: *Fanout) driver.Error!void {
        for (f.streams) |slot| if (slot) |stream| try stream.synchronize();
    }

    /// Synchronizes (an error path may have left work queued) and gives the streams back.
    fn deinit(f: *Fanout) void {
        for (&f.streams) |*slot| if (slot.*) |stream| {
            stream.synchronize() catch {};
            f.cache.putStream(stream);
            slot.* = null;
        };
        if (f.event) |event| event.destroy();
        f.event = null;
    }
};

fn copy(stream: driver.Stream, kernel: bool, dst: u64, src: u64, bytes: u64) driver.Error!void {
    if (bytes == 0 or dst == src) return;
    if (kernel) {
        try stream.copyStrided(dst, src, bytes, 1, bytes, bytes);
    } else {
        try stream.copyDeviceToDevice(dst, src, bytes);
    }
}

/// `launched`: set to the time the work is queued, before the stream is synchronized (trace).
fn part(cache: *Cache, o: Op, me: u32, theirs: *const [group_size_max]Hello, mapped: *const Mapped, launched: ?*u64) driver.Error!void {
    const n: u32 = @intCast(o.group.len);
    const es = o.dtype.bytes();
    const stream = try cache.takeStream(o.device);
    defer cache.putStream(stream);
    const kernel_copy = o.config.copy_kernel;
    // Rank j's buffers as this rank addresses them (own: local; peers: mapped; 0: not needed).
    var send: [group_size_max]u64 = undefined;
    var recv: [group_size_max]u64 = undefined;
    for (0..n) |j| {
        send[j] = mapped.address(.send, j);
        recv[j] = mapped.address(.recv, j);
    }
    send[me] = o.send;
    recv[me] = o.recv;
    switch (o.kind) {
        .allreduce => try allreducePart(cache, o, me, stream, send[0..n], recv[0..n]),
        .reduce_scatter => {
            var srcs: [group_size_max]u64 = undefined;
            for (0..n) |j| srcs[j] = send[j] + me * o.count * es;
            try reduceInto(stream, o, o.recv, srcs[0..n], o.count);
        },
        .reduce => if (me == o.root) {
            try reduceInto(stream, o, o.recv, send[0..n], o.count);
        },
        .allgather => {
            const bytes = o.count * es;
            var fanout: Fanout = .{ .cache = cache, .ordinal = o.device };
            defer fanout.deinit();
            const fan = n > 2 and bytes >= parallel_push_min_bytes and parallelPush(o.config.push_parallel);
            if (fan) try fanout.fork(stream);
            // Peers in turn from me + 1 (no incast on one rank), this rank's own block last.
            for (1..n + 1) |k| {
                const j = (me + k) % n;
                const s = if (fan and j != me) try fanout.streamFor(j) else stream;
                try copy(s, kernel_copy, recv[j] + me * bytes, o.send, bytes);
            }
            if (fan) try fanout.finish();
        },
        .gather => {
            const bytes = o.count * es;
            try copy(stream, kernel_copy, recv[o.root] + me * bytes, o.send, bytes);
        },
        .broadcast => if (me != o.root) {
            try copy(stream, kernel_copy, o.recv, send[o.root], o.count * es);
        },
        .scatter => {
            const bytes = o.count * es;
            try copy(stream, kernel_copy, o.recv, send[o.root] + me * bytes, bytes);
        },
        .alltoall => try alltoallPart(o, me, stream, theirs, recv[0..n]),
        else => unreachable, // plan.cudaDirectRuns: only the collectives the table marks "cuda_direct"
    }
    if (launched) |p| p.* = sys.monotonicNs();
    try stream.synchronize();
}

/// allreduce's part: this rank reduces its block of every rank's send (in chunks with
/// MOONRING_CUDA_PIPELINE=1) and pushes it into every rank's recv.
fn allreducePart(cache: *Cache, o: Op, me: u32, stream: driver.Stream, send: []const u64, recv: []const u64) driver.Error!void {
    const n: u32 = @intCast(o.group.len);
    const es = o.dtype.bytes();
    const kernel_copy = o.config.copy_kernel;
    const begin, const end = blockRange(o.count, es, n, me);
    if (end > begin) {
        // MOONRING_CUDA_PIPELINE=1: reduce chunk k (stream) while chunk k-1 is pushed
        // (a second stream, ordered by an event). Default: one reduce, then one push.
        const chunks = pipelineChunks((end - begin) * es, o.config.pipeline);
        const push_stream = if (chunks > 1) try cache.takeStream(o.device) else stream;
        defer if (chunks > 1) cache.putStream(push_stream);
        const event = if (chunks > 1) try stream.device.createEvent(false) else null;
        defer if (event) |e| e.destroy();
        for (0..chunks) |k| {
            const c_begin, const c_end = chunkRange(begin, end, es, chunks, k);
            if (c_end == c_begin) continue;
            var srcs: [group_size_max]u64 = undefined;
            for (0..n) |j| srcs[j] = send[j] + c_begin * es;
            const dst = o.recv + c_begin * es;
            try reduceInto(stream, o, dst, srcs[0..n], c_end - c_begin);
            if (event) |e| {
                // cuStreamWaitEvent waits for the record made just before it.
                try e.record(stream);
                try push_stream.waitEvent(e);
            }
            const push_bytes = (c_end - c_begin) * es;
            var fanout: Fanout = .{ .cache = cache, .ordinal = o.device };
            defer fanout.deinit();
            const fan = chunks == 1 and n > 2 and push_bytes >= parallel_push_min_bytes and parallelPush(o.config.push_parallel);
            if (fan) try fanout.fork(stream);
            // Peers in turn from me + 1: at any moment each rank pushes into a
            // different peer (all ranks starting at rank 0 would all write into it).
            for (1..n) |step| {
                const j = (me + step) % n;
                const s = if (fan) try fanout.streamFor(j) else push_stream;
                try copy(s, kernel_copy, recv[j] + c_begin * es, dst, push_bytes);
            }
            if (fan) try fanout.finish();
        }
        if (chunks > 1) try push_stream.synchronize();
    }
}

/// alltoall's part: this rank writes its block for rank j into j's recv, where j's hello said.
fn alltoallPart(o: Op, me: u32, stream: driver.Stream, theirs: *const [group_size_max]Hello, recv: []const u64) driver.Error!void {
    const n: u32 = @intCast(o.group.len);
    const es = o.dtype.bytes();
    const kernel_copy = o.config.copy_kernel;
    // Peers in turn from me + 1 (no incast on one rank), this rank's own block last.
    for (1..n + 1) |k| {
        const j = (me + k) % n;
        const bytes = o.send_counts[j] * es;
        const src = o.send + prefix(o.send_counts, j) * es;
        if (j == me) {
            try copy(stream, kernel_copy, o.recv + prefix(o.recv_counts, j) * es, src, bytes);
            continue;
        }
        const h = &theirs[j];
        if (h.block_bytes != bytes) {
            return driver.fail(error.InvalidArgument, "alltoall: {d} bytes for rank {d}, which expects {d}", .{ bytes, o.group[j], h.block_bytes });
        }
        if (bytes == 0) continue;
        if (recv[j] == 0) return driver.fail(error.InvalidArgument, "alltoall: rank {d} has no recv buffer for {d} bytes", .{ o.group[j], bytes });
        try copy(stream, kernel_copy, recv[j] + h.block_offset, src, bytes);
    }
}

test {
    _ = @import("cuda_direct_test.zig");
}

test "cuda direct: allreduce blocks tile the count, aligned" {
    for ([_]u64{ 1, 7, 64, 1000, 1 << 20, (1 << 20) + 3 }) |count| {
        for ([_]u32{ 2, 3, 8 }) |n| {
            var next: u64 = 0;
            for (0..n) |j| {
                const begin, const end = blockRange(count, 4, n, @intCast(j));
                try std.testing.expectEqual(next, begin);
                try std.testing.expect(begin % 64 == 0 or begin == count);
                next = end;
            }
            try std.testing.expectEqual(count, next);
        }
    }
}

test "cuda direct: pipeline chunks tile a block" {
    pipeline_for_test = true;
    defer pipeline_for_test = false;
    try std.testing.expectEqual(@as(u64, 1), pipelineChunks(1 << 20, true));
    try std.testing.expectEqual(@as(u64, 2), pipelineChunks(2 << 20, true));
    try std.testing.expectEqual(@as(u64, 8), pipelineChunks(128 << 20, true));
    for ([_][2]u64{ .{ 0, 1000 }, .{ 64, 1 << 20 }, .{ 1 << 19, (1 << 20) + 5 } }) |range| {
        for ([_]u64{ 1, 2, 3, 8 }) |chunks| {
            var next = range[0];
            for (0..chunks) |k| {
                const b, const e = chunkRange(range[0], range[1], 4, chunks, k);
                try std.testing.expectEqual(next, b);
                next = e;
            }
            try std.testing.expectEqual(range[1], next);
        }
    }
}

test "cuda direct: every rank computes the same mapping needs" {
    const group = [_]u32{ 0, 2, 5 };
    const o: Op = .{ .kind = .broadcast, .dtype = .f32, .redop = .sum, .root = 1, .count = 4, .group = &group, .device = 0, .send = 0, .recv = 0, .same_host = true };
    try std.testing.expectEqual(Need.send, needs(o, 0, 1));
    try std.testing.expectEqual(Need.none, needs(o, 1, 0));
    try std.testing.expectEqual(Need.none, needs(o, 0, 2));
    try std.testing.expect(applies(o));
    var one = o;
    one.count = 0;
    try std.testing.expect(!applies(one));
}
