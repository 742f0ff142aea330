//! The engine's direct device paths and its board glue (moved from engine.zig): CUDA IPC
//! between ranks of one host (backend/cuda_direct.zig), GPUDirect RDMA between hosts
//! (backend/verbs_direct.zig), and the board (backend/board_direct.zig) for same-host groups.
//! Free functions over *Engine; Engine keeps aliases so runSlot calls them as methods.
const std = @import("std");
const op = @import("op.zig");
const transport = @import("transport/transport.zig");
const dispatch = @import("algo/dispatch.zig");
const cuda_driver = @import("cuda/driver.zig");
const staging = @import("cuda/staging.zig");
const cuda_direct = @import("backend/cuda_direct.zig");
const verbs_direct = @import("backend/verbs_direct.zig");
const board_direct = @import("backend/board_direct.zig");
const engine_mod = @import("engine.zig");
const Engine = engine_mod.Engine;
const Slot = engine_mod.Slot;
const Status = engine_mod.Status;

pub fn cudaStatus(err: staging.Error) i32 {
    return switch (err) {
        error.NoDevice => Status.enodev,
        error.InvalidArgument => Status.einval,
        error.OutOfMemory => Status.enomem,
        error.Cuda => Status.eio,
    };
}

/// One device op as both direct backends take it (backend/cuda_direct.zig's Op; verbs_direct
/// reads the same type and ignores the alltoall counts and the CUDA knobs).
fn deviceOp(engine: *const Engine, slot: *const Slot, send: ?[*]const u8, recv: ?[*]u8, same_host: bool) cuda_direct.Op {
    const counts_len: usize = if (slot.kind == .alltoall) slot.group_size else 0;
    return .{
        .kind = slot.kind,
        .dtype = slot.dtype,
        .redop = slot.redop,
        .root = slot.root_group,
        .count = slot.count,
        .send_counts = slot.send_counts[0..counts_len],
        .recv_counts = slot.recv_counts[0..counts_len],
        .group = slot.group[0..slot.group_size],
        .device = slot.device,
        .send = if (send) |p| @intFromPtr(p) else 0,
        .recv = if (recv) |p| @intFromPtr(p) else 0,
        .same_host = same_host,
        .config = &engine.config.cuda,
    };
}

/// The CUDA IPC direct path (backend/cuda_direct.zig): ranks of one host read and write
/// each other's device buffers over NVLink. True when the op ended here (done or failed);
/// false: every rank of the op falls back to host staging over the same endpoint.
pub fn runCudaDirect(engine: *Engine, slot: *Slot, send: ?[*]const u8, recv: ?[*]u8, same_host: bool) bool {
    var team: board_direct.Team = undefined;
    const board: ?*board_direct.Team = if (same_host and engine.net.boardTeam(&slot.ep, &slot.board_team)) blk: {
        team = boardTeamOf(engine, slot);
        break :blk &team;
    } else null;
    const outcome = cuda_direct.run(&engine.cuda_ipc, slot.ep.comm(), board, deviceOp(engine, slot, send, recv, same_host)) catch |err| {
        failDirect(engine, slot, err);
        return true;
    };
    return endDirect(engine, slot, outcome);
}

/// GPUDirect RDMA between hosts (backend/verbs_direct.zig): device buffers registered with
/// the verbs device, read and written by the peers' NICs. True when the op ended here;
/// false: every rank of the op falls back to host staging over the same endpoint.
pub fn runVerbsDirect(engine: *Engine, slot: *Slot, send: ?[*]const u8, recv: ?[*]u8, same_host: bool) bool {
    const outcome = verbs_direct.run(engine.net, &slot.ep, deviceOp(engine, slot, send, recv, same_host)) catch |err| {
        failDirect(engine, slot, err);
        return true;
    };
    return endDirect(engine, slot, outcome);
}

/// After a direct path ran without error: done (the endpoint closes) or every rank falls back.
fn endDirect(engine: *Engine, slot: *Slot, outcome: cuda_direct.Outcome) bool {
    if (outcome == .fallback) return false;
    engine.net.close(&slot.ep);
    return true;
}

/// A direct device path's error ends the op: the endpoint's failure (a peer) or CUDA's.
fn failDirect(engine: *Engine, slot: *Slot, err: cuda_direct.Error) void {
    engine.net.close(&slot.ep);
    if (slot.ep.failure) |failure| {
        return engine.setSlotError(slot, Status.fromError(failure.err), failure.peer, "{s}", .{failure.message()});
    }
    const status = switch (err) {
        error.NoDevice, error.InvalidArgument, error.Cuda => |e| cudaStatus(e),
        else => |e| Status.fromError(e),
    };
    engine.setSlotError(slot, status, -1, "device {d}: {s}", .{ slot.device, if (status == Status.eio or status == Status.einval or status == Status.enodev) cuda_driver.lastErrorMessage() else @errorName(err) });
}

// ---- the board (same-host groups, backend/board_direct.zig) ----

pub fn runOnBoard(engine: *Engine, slot: *Slot, desc: op.OpDesc, scratch: std.mem.Allocator) transport.Error!void {
    try dispatch.validate(slot.group_size, slot.group_rank, desc);
    var team = boardTeamOf(engine, slot);
    return board_direct.run(&team, desc, scratch);
}

/// The op's view of the board, after net.boardTeam() filled slot.board_team.
pub fn boardTeamOf(engine: *Engine, slot: *Slot) board_direct.Team {
    const n = slot.group_size;
    const control = board_direct.Control{ .context = slot, .check = boardCheck, .fail = boardFail, .failed_peer = boardFailedPeer };
    return .{
        .me = slot.group_rank,
        .boards = slot.board_team.boards[0..n],
        .global = slot.group[0..n],
        .entry = engine.boardEntry(slot),
        .serial = slot.ticket,
        .op_id = slot.op_id,
        .departed_serials = slot.board_team.departed_serials[0..n],
        .control = control,
        .cma = engine.config.board_cma,
        .allreduce_all_bytes = engine.config.board_allreduce_all_bytes,
        .eager = engine.boardEager(slot),
        .lanes = engine.boardLanes(slot),
        .maps = &engine.net.peer_maps,
    };
}

fn boardCheck(context: *anyopaque, peer: u32, what: []const u8) ?transport.Error {
    const slot: *Slot = @ptrCast(@alignCast(context));
    const net = slot.ep.net;
    // A lane op that has to wait after all registers now: peers marked down and cancels
    // reach it from here on (and one since its start fails it here).
    if (!slot.ep.registered) net.register(&slot.ep) catch |err| {
        return net.failOp(&slot.ep, error.Protocol, -1, @errorName(err));
    };
    return net.stopCheck(&slot.ep, slot.group[peer], what);
}

fn boardFail(context: *anyopaque, err: transport.Error, peer: ?u32, message: []const u8) transport.Error {
    const slot: *Slot = @ptrCast(@alignCast(context));
    return slot.ep.net.failOp(&slot.ep, err, if (peer) |p| @intCast(slot.group[p]) else -1, message);
}

fn boardFailedPeer(context: *anyopaque) i32 {
    const slot: *Slot = @ptrCast(@alignCast(context));
    return slot.ep.net.failedPeer(&slot.ep);
}
