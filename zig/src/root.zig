//! C ABI exports of libmoonring. Every signature uses the types of the header's @cImport
//! (abi_check.zig), and abi_check.zig asserts at compile time that each export has exactly the
//! type include/moonring.h declares: the header is the one definition.
const std = @import("std");
pub const ops = @import("ops_table");
const abi = @import("abi_check.zig");
const op = @import("op.zig");
const c = abi.c;
const engine_mod = @import("engine.zig");
const sys = @import("sys.zig");
const arena = @import("transport/arena.zig");
const verbs_buffers = @import("transport/verbs.zig").buffers;
const cuda_driver = @import("cuda/driver.zig");

const Engine = engine_mod.Engine;
const Status = engine_mod.Status;

comptime {
    // Exports that live beside what they wrap.
    _ = @import("cuda/exports.zig");
    // Header <-> export signature checks.
    _ = abi;
    std.debug.assert(c.MR_WORLD_SIZE_MAX == op.world_size_max and c.MR_RANK_WORDS == op.rank_words_max);
}

pub const abi_version: u32 = 2; // 2: mr_submit's group is a bitset pointer (1,024 ranks)

fn engineOf(handle: ?*c.mr_engine) ?*Engine {
    const h = handle orelse {
        engine_mod.setLastError("engine is NULL", .{});
        return null;
    };
    return @ptrCast(@alignCast(h));
}

fn bytesOf(ptr: [*c]const u8, len: usize) ?[]const u8 {
    if (len == 0) return "";
    if (ptr == null) return null;
    return ptr[0..len];
}

// ---- library ----

pub export fn mr_abi_version() u32 {
    return abi_version;
}

pub export fn mr_last_error(buf: [*c]u8, cap: usize) usize {
    // A mr_cuda_* failure after the last engine failure wins (the engine clears the CUDA
    // message whenever it sets its own).
    const cuda_message = cuda_driver.lastErrorMessage();
    const message = if (cuda_message.len > 0) cuda_message else engine_mod.lastError();
    if (buf != null) {
        const n = @min(cap, message.len);
        @memcpy(buf[0..n], message[0..n]);
    }
    return message.len;
}

var host_id_once = std.once(computeHostId);
var host_id_value: u64 = 0;
fn computeHostId() void {
    host_id_value = sys.hostId();
}

pub export fn mr_host_id() u64 {
    host_id_once.call();
    return host_id_value;
}

// ---- native-owned memory ----

pub export fn mr_alloc(bytes: u64) ?*anyopaque {
    const ptr = sys.mapAnonymous(bytes) orelse {
        engine_mod.setLastError("mr_alloc: cannot map {d} bytes", .{bytes});
        return null;
    };
    verbs_buffers.note(@intFromPtr(ptr), bytes);
    return ptr;
}

/// Host memory that same-host peers can map: board collectives read it in place instead of
/// with process_vm_readv. Freed with mr_free.
pub export fn mr_alloc_shared(bytes: u64) ?*anyopaque {
    const ptr = arena.alloc(bytes) orelse {
        engine_mod.setLastError("mr_alloc_shared: cannot create a /dev/shm buffer of {d} bytes", .{bytes});
        return null;
    };
    verbs_buffers.note(@intFromPtr(ptr), bytes);
    return ptr;
}

pub export fn mr_shared_locate(ptr: ?*const anyopaque, bytes: u64, name: [*c]u8, cap: usize, offset: [*c]u64) usize {
    const p = ptr orelse return 0;
    if (name == null or offset == null) return 0;
    var name_buf: [sys.shm_name_bytes_max]u8 = undefined;
    const d = arena.describe(@intFromPtr(p), bytes, &name_buf) orelse return 0;
    if (d.name.len > cap) return 0;
    @memcpy(name[0..d.name.len], d.name);
    offset.* = d.offset;
    return d.name.len;
}

/// Binds the calling thread to CPU `cpu`; 0 on success, MR_EINVAL when it can't.
pub export fn mr_pin_thread(cpu: u32) i32 {
    if (sys.pinThread(cpu)) return Status.ok;
    engine_mod.setLastError("mr_pin_thread: cannot bind to CPU {d}", .{cpu});
    return Status.einval;
}

pub export fn mr_free(ptr: ?*anyopaque, bytes: u64) void {
    const p = ptr orelse return;
    // RDMA registrations of it go first (a cached one would pin pages no longer ours).
    verbs_buffers.drop(@intFromPtr(p), bytes);
    if (arena.free(@ptrCast(p))) return;
    sys.unmap(@ptrCast(p), bytes);
}

// ---- engine ----

pub export fn mr_engine_create(
    rank: u32,
    world_size_max: u32,
    cluster_id: [*c]const u8,
    cluster_id_len: usize,
    token: [*c]const u8,
    token_len: usize,
    listen_host: [*c]const u8,
    listen_host_len: usize,
    listen_port: u16,
) ?*c.mr_engine {
    const cluster = bytesOf(cluster_id, cluster_id_len) orelse {
        engine_mod.setLastError("mr_engine_create: cluster_id is NULL", .{});
        return null;
    };
    const tok = bytesOf(token, token_len) orelse {
        engine_mod.setLastError("mr_engine_create: token is NULL", .{});
        return null;
    };
    const host = bytesOf(listen_host, listen_host_len) orelse {
        engine_mod.setLastError("mr_engine_create: listen_host is NULL", .{});
        return null;
    };
    if (cluster.len > 256 or tok.len > 256) {
        engine_mod.setLastError("mr_engine_create: cluster_id and token are at most 256 bytes", .{});
        return null;
    }
    // Shared buffers of ranks killed before they freed them (the board sweeps its own files).
    arena.sweepDead();
    const engine = Engine.create(std.heap.c_allocator, .{
        .rank = rank,
        .world_size_max = world_size_max,
        .cluster_id = cluster,
        .token = tok,
        .listen_host = if (host.len == 0) "0.0.0.0" else host,
        .listen_port = listen_port,
        .mode = engine_mod.modeFromEnv(),
        .host_id = mr_host_id(),
    }) catch return null;
    return @ptrCast(engine);
}

pub export fn mr_engine_data_port(handle: ?*c.mr_engine) u16 {
    const engine = engineOf(handle) orelse return 0;
    return engine.dataPort();
}

pub export fn mr_engine_traffic(handle: ?*c.mr_engine, out: [*c]u64, cap: u32) u32 {
    const engine = engineOf(handle) orelse return 0;
    if (out == null) return 0;
    return engine.net.traffic.snapshot(out[0..cap]);
}

pub export fn mr_link_kind_name(kind: u32, buf: [*c]u8, cap: usize) usize {
    const all = @import("transport/kinds.zig").all;
    if (kind >= all.len) return 0;
    const name = all[kind].name;
    if (buf != null) @memcpy(buf[0..@min(cap, name.len)], name[0..@min(cap, name.len)]);
    return name.len;
}

pub export fn mr_engine_set_peer(handle: ?*c.mr_engine, rank: u32, host: [*c]const u8, host_len: usize, port: u16, host_id: u64) i32 {
    const engine = engineOf(handle) orelse return Status.einval;
    const h = bytesOf(host, host_len) orelse {
        engine_mod.setLastError("mr_engine_set_peer: host is NULL", .{});
        return Status.einval;
    };
    engine.setPeer(rank, h, port, host_id) catch return Status.einval;
    return Status.ok;
}

pub export fn mr_engine_peer_down(handle: ?*c.mr_engine, rank: u32) i32 {
    const engine = engineOf(handle) orelse return Status.einval;
    engine.peerDown(rank) catch return Status.einval;
    return Status.ok;
}

pub export fn mr_engine_links(handle: ?*c.mr_engine, buf: [*c]u8, cap: usize) usize {
    const engine = engineOf(handle) orelse return 0;
    if (buf == null or cap == 0) return 0;
    return engine.net.linksJson(buf[0..cap]).len;
}

pub export fn mr_engine_destroy(handle: ?*c.mr_engine) void {
    const engine = engineOf(handle) orelse return;
    engine.destroy();
}

// ---- operations ----

fn submitArgs(kind: u32, dtype: u32, redop: u32, op_id: u64, ranks: [*c]const u64, root: u32, send: ?*const anyopaque, recv: ?*anyopaque, count: u64, counts: [*c]const u64, device: i32, timeout_ms: u32) engine_mod.Submit {
    return .{
        .kind = kind,
        .dtype = dtype,
        .redop = redop,
        .op_id = op_id,
        .ranks = if (ranks == null) null else @ptrCast(ranks),
        .root = root,
        .send = @ptrCast(send),
        .recv = @ptrCast(recv),
        .count = count,
        .counts = if (counts == null) null else @ptrCast(counts),
        .device = device,
        .timeout_ms = timeout_ms,
    };
}

fn submitStatus(err: engine_mod.Engine.SubmitError) i64 {
    return switch (err) {
        error.InvalidArgument => Status.einval,
        error.Busy => Status.ebusy,
    };
}

/// The three ways in for an op, one C signature (mr_submit's; moonring.h).
fn OpEntry(comptime method: fn (*Engine, engine_mod.Submit) Engine.SubmitError!u64) type {
    return struct {
        fn call(
            handle: ?*c.mr_engine,
            kind: u32,
            dtype: u32,
            redop: u32,
            op_id: u64,
            ranks: [*c]const u64,
            root: u32,
            send: ?*const anyopaque,
            recv: ?*anyopaque,
            count: u64,
            counts: [*c]const u64,
            device: i32,
            timeout_ms: u32,
        ) callconv(.c) i64 {
            const engine = engineOf(handle) orelse return Status.einval;
            const ticket = method(engine, submitArgs(kind, dtype, redop, op_id, ranks, root, send, recv, count, counts, device, timeout_ms)) catch |err| return submitStatus(err);
            return @intCast(ticket);
        }
    };
}

/// Queues the op for an engine worker.
pub const mr_submit = OpEntry(Engine.submit).call;
/// Runs a small op here when its peers have all started it, else queues it (Engine.start).
pub const mr_start = OpEntry(Engine.start).call;
/// Runs the op on the calling thread (Engine.runNow).
pub const mr_run = OpEntry(Engine.runNow).call;
comptime {
    @export(&mr_submit, .{ .name = "mr_submit" });
    @export(&mr_start, .{ .name = "mr_start" });
    @export(&mr_run, .{ .name = "mr_run" });
}

/// mr_run with its arguments in one array (moonring.h MR_RUN_ARG_*), its status returned and a
/// successful op's ticket released: one FFI crossing and no 64-bit result per op (NOTES E25).
pub export fn mr_run_packed(handle: ?*c.mr_engine, args: [*c]u64) i32 {
    const engine = engineOf(handle) orelse return Status.einval;
    if (args == null) {
        engine_mod.setLastError("mr_run_packed: args is NULL", .{});
        return Status.einval;
    }
    const a = args[0..c.MR_RUN_ARGS];
    a[c.MR_RUN_ARG_TICKET] = 0;
    if (a[c.MR_RUN_ARG_KIND] > std.math.maxInt(u32) or a[c.MR_RUN_ARG_DTYPE] > std.math.maxInt(u32) or
        a[c.MR_RUN_ARG_REDOP] > std.math.maxInt(u32) or a[c.MR_RUN_ARG_ROOT] > std.math.maxInt(u32) or
        a[c.MR_RUN_ARG_TIMEOUT_MS] > std.math.maxInt(u32))
    {
        engine_mod.setLastError("mr_run_packed: an argument is out of range", .{});
        return Status.einval;
    }
    const s = submitArgs(
        @intCast(a[c.MR_RUN_ARG_KIND]),
        @intCast(a[c.MR_RUN_ARG_DTYPE]),
        @intCast(a[c.MR_RUN_ARG_REDOP]),
        a[c.MR_RUN_ARG_OP_ID],
        @ptrFromInt(a[c.MR_RUN_ARG_RANKS]),
        @intCast(a[c.MR_RUN_ARG_ROOT]),
        @ptrFromInt(a[c.MR_RUN_ARG_SEND]),
        @ptrFromInt(a[c.MR_RUN_ARG_RECV]),
        a[c.MR_RUN_ARG_COUNT],
        @ptrFromInt(a[c.MR_RUN_ARG_COUNTS]),
        @truncate(@as(i64, @bitCast(a[c.MR_RUN_ARG_DEVICE]))),
        @intCast(a[c.MR_RUN_ARG_TIMEOUT_MS]),
    );
    const done = engine.runNowStatus(s, true) catch |err| return @intCast(submitStatus(err));
    if (done.status != Status.ok) a[c.MR_RUN_ARG_TICKET] = done.ticket;
    return done.status;
}

/// What mr_run_bind tied the calling thread to (mr_run_bound): the engine, and the cell that
/// holds the address of the argument block to run.
threadlocal var bound_engine: ?*c.mr_engine = null;
threadlocal var bound_cell: ?*const u64 = null;

pub export fn mr_run_bind(handle: ?*c.mr_engine, cell: [*c]const u64) i32 {
    if (handle == null or cell == null) {
        bound_engine = null;
        bound_cell = null;
        return Status.ok;
    }
    if (engineOf(handle) == null) return Status.einval;
    bound_engine = handle;
    bound_cell = @ptrCast(cell);
    return Status.ok;
}

pub export fn mr_run_bound() i32 {
    const cell = bound_cell orelse {
        engine_mod.setLastError("mr_run_bound: nothing bound on this thread (mr_run_bind)", .{});
        return Status.einval;
    };
    const args: [*c]u64 = @ptrFromInt(@as(*const volatile u64, cell).*);
    return mr_run_packed(bound_engine, args);
}

pub export fn mr_op_status(handle: ?*c.mr_engine, ticket: u64) i32 {
    const engine = engineOf(handle) orelse return Status.einval;
    return engine.opStatus(ticket);
}

pub export fn mr_poll(handle: ?*c.mr_engine, tickets_out: [*c]u64, status_out: [*c]i32, max: u32) i32 {
    const engine = engineOf(handle) orelse return Status.einval;
    if (max == 0) return 0;
    if (tickets_out == null or status_out == null) {
        engine_mod.setLastError("mr_poll: NULL output array", .{});
        return Status.einval;
    }
    const n = @min(max, std.math.maxInt(i32));
    return @intCast(engine.poll(tickets_out[0..n], status_out[0..n]));
}

pub export fn mr_wait(handle: ?*c.mr_engine, timeout_ms: u32) i32 {
    const engine = engineOf(handle) orelse return Status.einval;
    return @intFromBool(engine.wait(timeout_ms));
}

pub export fn mr_op_error(handle: ?*c.mr_engine, ticket: u64, buf: [*c]u8, cap: usize) usize {
    const engine = engineOf(handle) orelse return 0;
    var local: [engine_mod.error_text_bytes_max]u8 = undefined;
    const len = engine.opError(ticket, &local);
    if (buf != null) {
        const n = @min(cap, len);
        @memcpy(buf[0..n], local[0..n]);
    }
    return len;
}

pub export fn mr_op_failed_peer(handle: ?*c.mr_engine, ticket: u64) i32 {
    const engine = engineOf(handle) orelse return -1;
    return engine.opFailedPeer(ticket);
}

pub export fn mr_cancel(handle: ?*c.mr_engine, ticket: u64) i32 {
    const engine = engineOf(handle) orelse return Status.einval;
    engine.cancel(ticket) catch return Status.einval;
    return Status.ok;
}

pub export fn mr_release(handle: ?*c.mr_engine, ticket: u64) void {
    const engine = engineOf(handle) orelse return;
    engine.release(ticket);
}

test {
    std.testing.refAllDecls(@This());
    _ = @import("sys.zig");
    _ = @import("transport/wire.zig");
    _ = @import("log_limit.zig");
    _ = @import("transport/fuzz_test.zig");
    _ = @import("transport/tcp.zig");
    _ = @import("transport/shm.zig");
    _ = @import("transport/board.zig");
    _ = @import("transport/arena.zig");
    _ = @import("transport/traffic.zig");
    _ = @import("engine_test.zig");
    _ = @import("op.zig");
}
test { _ = @import("algo/dispatch.zig"); _ = @import("reduce.zig"); }
test { _ = @import("backend/cuda_direct.zig"); }
test { _ = @import("transport/verbs_test.zig"); }
