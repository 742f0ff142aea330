//! Admission of an op into the engine (moved from engine.zig): submit()'s checks of the
//! collective, dtype, reduce op, group and buffers, and the claim of a free slot.
const std = @import("std");
const op = @import("op.zig");
const sys = @import("sys.zig");
const engine_mod = @import("engine.zig");
const Engine = engine_mod.Engine;
const Submit = engine_mod.Submit;
const SubmitError = Engine.SubmitError;
const SlotState = engine_mod.SlotState;
const SlotMask = engine_mod.SlotMask;
const Status = engine_mod.Status;
const Collective = engine_mod.Collective;
const DType = engine_mod.DType;
const RedOp = engine_mod.RedOp;
const ops_max = engine_mod.ops_max;
const setLastError = engine_mod.setLastError;

/// submit()'s checks; claims a slot in `state` and returns its index.
pub fn admitLocked(engine: *Engine, s: Submit, state: SlotState) SubmitError!usize {
    const kind = std.meta.intToEnum(Collective, s.kind) catch return engine.invalid("unknown collective code {d}", .{s.kind});
    const dtype = std.meta.intToEnum(DType, s.dtype) catch return engine.invalid("unknown dtype code {d}", .{s.dtype});
    const reduces = kind.reduces();
    const redop: RedOp = if (reduces)
        std.meta.intToEnum(RedOp, s.redop) catch return engine.invalid("unknown reduce op code {d}", .{s.redop})
    else
        .sum;
    if (reduces and !redop.supports(dtype.kind()))
        return engine.invalid("reduce op {s} is not defined for dtype {s}", .{ @tagName(redop), dtype.name() });
    if (s.device < -1) return engine.invalid("device {d}", .{s.device});
    if (s.timeout_ms == 0) return engine.invalid("timeout_ms must be > 0", .{});

    var group: [op.world_size_max]u32 = undefined;
    const members = try engine.groupOf(s, kind, &group);
    const n = members.size;
    const elem: u64 = dtype.bytes();
    if (s.count > submit_bytes_max / elem / n) return engine.invalid("count {d} is too large", .{s.count});
    var send_counts: [op.world_size_max]u64 = undefined;
    var recv_counts: [op.world_size_max]u64 = undefined;
    const totals: CountTotals = if (kind == .alltoall) try engine.alltoallCounts(s, elem, group[0..n], &send_counts, &recv_counts) else .{};
    try engine.checkBuffers(s, kind, s.count * elem, kind.rooted() and s.root == engine.rank, totals);

    const index = try engine.claimSlotLocked(s.op_id);
    const slot = &engine.slots[index];
    // Field by field: the slot's arrays (endpoint requests, board team, error text) are
    // large and need no reset (a struct literal rewrote ~8 KiB per op: E16).
    slot.state = state;
    slot.release_when_done = false;
    slot.cancel_requested = false;
    slot.kind = kind;
    slot.dtype = dtype;
    slot.redop = redop;
    slot.op_id = s.op_id;
    slot.board_turn +%= 1;
    slot.ep_prepared = false;
    slot.group_size = n;
    slot.group_rank = members.me;
    slot.root_group = members.root;
    slot.send = s.send;
    slot.recv = s.recv;
    slot.count = s.count;
    slot.device = s.device;
    slot.timeout_ms = s.timeout_ms;
    slot.deadline_ns = sys.deadlineNs(s.timeout_ms);
    slot.status = Status.ok;
    slot.failed_peer = -1;
    slot.error_len = 0;
    @memcpy(slot.group[0..n], group[0..n]);
    if (kind == .alltoall) {
        @memcpy(slot.send_counts[0..n], send_counts[0..n]);
        @memcpy(slot.recv_counts[0..n], recv_counts[0..n]);
    }
    return index;
}

/// The largest op one submit may describe (bytes per rank, and over the group).
const submit_bytes_max: u64 = 1 << 40;

/// alltoall: elements this rank sends and receives in all.
const CountTotals = struct { send: u64 = 0, recv: u64 = 0 };

/// The op's group from its ranks bitset (ascending global ranks into `group`), this rank's
/// place in it and the root's (0 when unrooted).
pub fn groupOf(engine: *Engine, s: Submit, kind: Collective, group: *[op.world_size_max]u32) SubmitError!struct { size: u32, me: u32, root: u32 } {
    var n: u32 = 0;
    var me: ?u32 = null;
    var root: ?u32 = null;
    const words: []const u64 = if (s.ranks) |bits| bits[0..op.rank_words_max] else (&s.ranks_mask)[0..1];
    for (words, 0..) |word, w| {
        var mask = word;
        while (mask != 0) : (mask &= mask - 1) {
            const r: u32 = @intCast(w * 64 + @ctz(mask));
            if (r >= engine.world_size_max)
                return engine.invalid("ranks has rank {d}, outside 0..{d}", .{ r, engine.world_size_max - 1 });
            if (r == engine.rank) me = n;
            if (r == s.root) root = n;
            group[n] = r;
            n += 1;
        }
    }
    if (n == 0) return engine.invalid("ranks is empty", .{});
    if (me == null) return engine.invalid("ranks does not contain this rank ({d})", .{engine.rank});
    const rooted = kind.rooted();
    if (rooted and root == null) return engine.invalid("root/peer {d} is not in ranks", .{s.root});
    if ((kind == .send or kind == .recv) and s.root == engine.rank)
        return engine.invalid("{s} to itself", .{@tagName(kind)});
    std.debug.assert(group[me.?] == engine.rank);
    return .{ .size = n, .me = me.?, .root = if (rooted) root.? else 0 };
}

/// alltoall's per-peer counts in group order, checked; returns their totals.
pub fn alltoallCounts(engine: *Engine, s: Submit, elem: u64, group: []const u32, send_counts: *[op.world_size_max]u64, recv_counts: *[op.world_size_max]u64) SubmitError!CountTotals {
    const counts = s.counts orelse return engine.invalid("alltoall needs counts", .{});
    const world = engine.world_size_max;
    if (counts[engine.rank] != counts[world + engine.rank])
        return engine.invalid("alltoall send count to itself ({d}) differs from recv count from itself ({d})", .{ counts[engine.rank], counts[world + engine.rank] });
    var send_total: u64 = 0;
    var recv_total: u64 = 0;
    for (group, 0..) |g, j| {
        send_counts[j] = counts[g];
        recv_counts[j] = counts[world + g];
        if (send_counts[j] > submit_bytes_max / elem or recv_counts[j] > submit_bytes_max / elem)
            return engine.invalid("alltoall count for rank {d} is too large", .{g});
        send_total += send_counts[j];
        recv_total += recv_counts[j];
    }
    if (send_total > submit_bytes_max / elem or recv_total > submit_bytes_max / elem) return engine.invalid("alltoall counts are too large", .{});
    return .{ .send = send_total, .recv = recv_total };
}

/// The buffers this rank must pass (docs/architecture.md "Native op shapes") are there.
pub fn checkBuffers(engine: *Engine, s: Submit, kind: Collective, bytes: u64, is_root: bool, totals: CountTotals) SubmitError!void {
    const need_send, const need_recv = buffersNeeded(kind, bytes, is_root, totals);
    if (need_send and s.send == null) return engine.invalid("{s} needs a send buffer", .{@tagName(kind)});
    if (need_recv and s.recv == null) return engine.invalid("{s} needs a recv buffer", .{@tagName(kind)});
}

/// Whether this rank must pass a send and a recv buffer, from the table's native op shapes: a
/// buffer of some bytes, present on this rank (every member or the root), and for send not one
/// the table lets recv stand in for (broadcast in place).
fn buffersNeeded(kind: Collective, bytes: u64, is_root: bool, totals: CountTotals) struct { bool, bool } {
    const Side = struct {
        fn needed(shape: op.NativeShape, root_only: bool, op_bytes: u64, counted: u64, root: bool) bool {
            if (root_only and !root) return false;
            return switch (shape) {
                .none => false,
                .count, .count_n => op_bytes > 0,
                .counts => counted > 0,
            };
        }
    };
    const send = !kind.sendInRecv() and Side.needed(kind.sendShape(), kind.sendOnRootOnly(), bytes, totals.send, is_root);
    const recv = Side.needed(kind.recvShape(), kind.recvOnRootOnly(), bytes, totals.recv, is_root);
    return .{ send, recv };
}

test "buffersNeeded: the table's shapes give the engine's buffer rules" {
    const t = CountTotals{ .send = 2, .recv = 0 };
    const cases = .{
        .{ .allreduce, true, true, true },  .{ .allgather, false, true, true }, .{ .reduce_scatter, false, true, true },
        .{ .reduce, false, true, false },   .{ .reduce, true, true, true },     .{ .gather, false, true, false },
        .{ .broadcast, true, false, true }, .{ .scatter, false, false, true },  .{ .scatter, true, true, true },
        .{ .alltoall, false, true, false }, .{ .barrier, true, false, false },  .{ .send, false, true, false },
        .{ .recv, false, false, true },
    };
    inline for (cases) |c| {
        try std.testing.expectEqual(.{ c[2], c[3] }, buffersNeeded(c[0], 8, c[1], t));
        try std.testing.expectEqual(.{ false, false }, buffersNeeded(c[0], 0, c[1], .{})); // nothing to move
    }
}

/// A free slot for op `op_id` (not in flight here already), marked used, with its ticket.
pub fn claimSlotLocked(engine: *Engine, op_id: u64) SubmitError!usize {
    if (engine.stopping) return engine.invalid("engine is shutting down", .{});
    // Only the used slots are looked at (they are ~8 KiB apart: a scan of all 128 was
    // ~12% of an 8-byte op, E16).
    var used = engine.slots_used;
    while (used != 0) : (used &= used - 1) {
        const other = &engine.slots[@ctz(used)];
        std.debug.assert(other.state != .free);
        if (other.freed_unlocked.load(.acquire)) {
            engine.freeSlotLocked(other);
            continue;
        }
        if (other.op_id == op_id and (other.state == .queued or other.state == .running)) {
            return engine.invalid("op id {d} is already in flight", .{op_id});
        }
    }
    if (engine.slots_used == std.math.maxInt(SlotMask)) {
        setLastError("rank {d}: {d} ops submitted and not released", .{ engine.rank, ops_max });
        return error.Busy;
    }
    const index: usize = @ctz(~engine.slots_used);
    const slot = &engine.slots[index];
    std.debug.assert(slot.state == .free);
    engine.slots_used |= @as(SlotMask, 1) << @intCast(index);
    slot.ticket = (engine.serial << 8) | index;
    engine.serial += 1;
    return index;
}
