//! Multi-rank tests of the CUDA IPC direct path (cuda_direct.zig) without a GPU: N engines as
//! threads of this process over the fake driver (cuda/fake_api.zig: "device memory" is host
//! memory and an IPC handle opens to the owner's address, which a real driver refuses within
//! one process). Every collective, several dtypes and reduce ops, roots first and last,
//! in place, uneven alltoall counts; references computed here in f64 / exactly. Plus the
//! fallbacks: ranks on different hosts, and IPC that fails (disables the path, results still
//! right through host staging). The kernels themselves are tests/gpu on a GPU machine.
const std = @import("std");
const builtin = @import("builtin");
const engine_mod = @import("../engine.zig");
const op = @import("../op.zig");
const driver = @import("../cuda/driver.zig");
const exports = @import("../cuda/exports.zig");
const fake = @import("../cuda/fake_api.zig").Fake(@import("../reduce.zig"));
const fake_driver = @import("../cuda/fake_driver.zig");
const cuda_direct = @import("cuda_direct.zig");

const Engine = engine_mod.Engine;
const Status = engine_mod.Status;
const Submit = engine_mod.Submit;
const testing = std.testing;

comptime {
    std.debug.assert(builtin.is_test);
}

const ranks_max = 4;
var cluster_counter = std.atomic.Value(u32).init(0);
var op_ids = std.atomic.Value(u64).init(1 << 40);

const World = struct {
    n: u32,
    engines: [ranks_max]*Engine = undefined,

    /// host_ids: one per rank (equal = same host). mode .auto: same-host ranks get boards, so
    /// the direct path's control rounds go over the board instead of tcp messages.
    fn init(n: u32, host_ids: []const u64, mode: engine_mod.Mode) !World {
        var world = World{ .n = n };
        var buf: [64]u8 = undefined;
        const cluster_id = try std.fmt.bufPrint(&buf, "direct-{d}-{d}", .{ std.os.linux.getpid(), cluster_counter.fetchAdd(1, .monotonic) });
        for (0..n) |r| {
            world.engines[r] = try Engine.create(testing.allocator, .{
                .rank = @intCast(r),
                .world_size_max = ranks_max,
                .cluster_id = cluster_id,
                .mode = mode,
                .host_id = host_ids[r],
            });
        }
        for (0..n) |r| for (0..n) |p| {
            if (r != p) try world.engines[r].setPeer(@intCast(p), "127.0.0.1", world.engines[p].dataPort(), host_ids[p]);
        };
        return world;
    }

    fn deinit(world: *World) void {
        for (world.engines[0..world.n]) |e| e.destroy();
    }

    fn run(world: *World, args: []const Submit) !void {
        var tickets: [ranks_max]u64 = undefined;
        for (args, 0..) |a, r| tickets[r] = try world.engines[r].submit(a);
        var failed = false;
        for (args, 0..) |_, r| {
            const status = world.engines[r].waitTicket(tickets[r]);
            if (status != Status.ok) {
                var buf: [512]u8 = undefined;
                const len = world.engines[r].opError(tickets[r], &buf);
                std.debug.print("rank {d} status {d}: {s}\n", .{ r, status, buf[0..@min(len, buf.len)] });
                failed = true;
            }
            world.engines[r].release(tickets[r]);
        }
        if (failed) return error.TestUnexpectedResult;
    }

    fn directOps(world: *const World) u64 {
        var total: u64 = 0;
        for (world.engines[0..world.n]) |e| total += e.cuda_ipc.completed.load(.acquire);
        return total;
    }
};

const install = fake_driver.install;
const uninstall = fake_driver.uninstall;

// ---- values: f64 <-> dtype bytes (inputs are small integers: exact in every dtype) ----

fn put(dtype: op.DType, bytes: []u8, i: usize, v: f64) void {
    switch (dtype) {
        .f32 => std.mem.writeInt(u32, bytes[i * 4 ..][0..4], @bitCast(@as(f32, @floatCast(v))), .little),
        .bf16 => std.mem.writeInt(u16, bytes[i * 2 ..][0..2], @intCast(@as(u32, @bitCast(@as(f32, @floatCast(v)))) >> 16), .little),
        .f16 => std.mem.writeInt(u16, bytes[i * 2 ..][0..2], @bitCast(@as(f16, @floatCast(v))), .little),
        .i32 => std.mem.writeInt(i32, bytes[i * 4 ..][0..4], @intFromFloat(v), .little),
        .i64 => std.mem.writeInt(i64, bytes[i * 8 ..][0..8], @intFromFloat(v), .little),
        .u8 => bytes[i] = @intFromFloat(v),
        else => unreachable,
    }
}

fn get(dtype: op.DType, bytes: []const u8, i: usize) f64 {
    return switch (dtype) {
        .f32 => @as(f32, @bitCast(std.mem.readInt(u32, bytes[i * 4 ..][0..4], .little))),
        .bf16 => @as(f32, @bitCast(@as(u32, std.mem.readInt(u16, bytes[i * 2 ..][0..2], .little)) << 16)),
        .f16 => @as(f16, @bitCast(std.mem.readInt(u16, bytes[i * 2 ..][0..2], .little))),
        .i32 => @floatFromInt(std.mem.readInt(i32, bytes[i * 4 ..][0..4], .little)),
        .i64 => @floatFromInt(std.mem.readInt(i64, bytes[i * 8 ..][0..8], .little)),
        .u8 => @floatFromInt(bytes[i]),
        else => unreachable,
    };
}

fn refReduce(redop: op.RedOp, values: []const f64) f64 {
    var acc = values[0];
    for (values[1..]) |x| acc = switch (redop) {
        .sum, .avg => acc + x,
        .prod => acc * x,
        .min => @min(acc, x),
        .max => @max(acc, x),
        .bxor => @floatFromInt(@as(i64, @intFromFloat(acc)) ^ @as(i64, @intFromFloat(x))),
        .band => @floatFromInt(@as(i64, @intFromFloat(acc)) & @as(i64, @intFromFloat(x))),
        .bor => @floatFromInt(@as(i64, @intFromFloat(acc)) | @as(i64, @intFromFloat(x))),
    };
    if (redop == .avg) acc /= @floatFromInt(values.len);
    return acc;
}

/// Input element k of rank r (small integers, distinct per rank).
fn input(rng_seed: u64, r: usize, k: usize, dtype: op.DType) f64 {
    var h = std.hash.Wyhash.hash(rng_seed, std.mem.asBytes(&[2]u64{ r, k }));
    h %= 17;
    const v: f64 = @as(f64, @floatFromInt(h)) - 8;
    return if (dtype == .u8) @abs(v) else v;
}

const Case = struct {
    kind: op.Collective,
    dtype: op.DType,
    redop: op.RedOp = .sum,
    n: u32,
    root: u32 = 0,
    count: u64,
    in_place: bool = false,
    /// alltoall: block from src to dst has count + 2 * src + dst elements.
    uneven: bool = false,
};

fn a2aCount(c: Case, src: usize, dst: usize) u64 {
    return if (c.uneven) c.count + 2 * src + dst else c.count;
}

fn runCase(world: *World, c: Case, seed: u64) !void {
    const n = c.n;
    const es = c.dtype.bytes();
    var send_elems: [ranks_max]u64 = undefined;
    var recv_elems: [ranks_max]u64 = undefined;
    var counts: [ranks_max][2 * ranks_max]u64 = undefined;
    for (0..n) |r| {
        const is_root = r == c.root;
        send_elems[r], recv_elems[r] = switch (c.kind) {
            .allreduce => .{ c.count, c.count },
            .reduce => .{ c.count, if (is_root) c.count else 0 },
            .broadcast => .{ 0, c.count },
            .allgather => .{ c.count, c.count * n },
            .gather => .{ c.count, if (is_root) c.count * n else 0 },
            .scatter => .{ if (is_root) c.count * n else 0, c.count },
            .reduce_scatter => .{ c.count * n, c.count },
            .alltoall => blk: {
                var s: u64 = 0;
                var t: u64 = 0;
                @memset(&counts[r], 0);
                for (0..n) |j| {
                    counts[r][j] = a2aCount(c, r, j);
                    counts[r][ranks_max + j] = a2aCount(c, j, r);
                    s += counts[r][j];
                    t += counts[r][ranks_max + j];
                }
                break :blk .{ s, t };
            },
            else => unreachable,
        };
        if (c.kind == .broadcast and is_root) send_elems[r] = c.count;
    }
    // Device buffers (the fake's host memory), inputs written through the exports.
    var send_ptr: [ranks_max]u64 = [_]u64{0} ** ranks_max;
    var recv_ptr: [ranks_max]u64 = [_]u64{0} ** ranks_max;
    defer for (0..n) |r| {
        if (send_ptr[r] != 0 and send_ptr[r] != recv_ptr[r]) _ = exports.mr_cuda_free(0, send_ptr[r]);
        if (recv_ptr[r] != 0) _ = exports.mr_cuda_free(0, recv_ptr[r]);
    };
    var inputs: [ranks_max][]u8 = undefined;
    for (0..n) |r| {
        inputs[r] = try testing.allocator.alloc(u8, @max(send_elems[r], 1) * es);
        for (0..send_elems[r]) |k| put(c.dtype, inputs[r], k, input(seed, r, k, c.dtype));
    }
    defer for (0..n) |r| testing.allocator.free(inputs[r]);
    for (0..n) |r| {
        const bcast_root = c.kind == .broadcast and r == c.root;
        if (recv_elems[r] > 0) {
            recv_ptr[r] = exports.mr_cuda_alloc(@intCast(r % 2), recv_elems[r] * es);
            try testing.expect(recv_ptr[r] != 0);
        }
        if ((c.in_place or bcast_root) and recv_ptr[r] != 0) {
            send_ptr[r] = recv_ptr[r];
        } else if (send_elems[r] > 0) {
            send_ptr[r] = exports.mr_cuda_alloc(@intCast(r % 2), send_elems[r] * es);
            try testing.expect(send_ptr[r] != 0);
        }
        if (send_elems[r] > 0) try testing.expectEqual(@as(i32, 0), exports.mr_cuda_copy_to_device(@intCast(r % 2), send_ptr[r], inputs[r].ptr, send_elems[r] * es));
    }
    var args: [ranks_max]Submit = undefined;
    const id = op_ids.fetchAdd(1, .monotonic);
    for (0..n) |r| args[r] = .{
        .kind = @intFromEnum(c.kind),
        .dtype = @intFromEnum(c.dtype),
        .redop = @intFromEnum(c.redop),
        .op_id = id,
        .ranks_mask = (@as(u64, 1) << @intCast(n)) - 1,
        .root = c.root,
        .send = if (send_ptr[r] != 0 and !(c.kind == .broadcast and r != c.root)) @ptrFromInt(send_ptr[r]) else null,
        .recv = if (recv_ptr[r] != 0) @ptrFromInt(recv_ptr[r]) else null,
        .count = c.count,
        .counts = if (c.kind == .alltoall) &counts[r] else null,
        // Ranks alternate between the fake's two devices.
        .device = @intCast(r % 2),
        .timeout_ms = 20_000,
    };
    try world.run(args[0..n]);

    // Check every rank's recv against the reference.
    var column: [ranks_max]f64 = undefined;
    for (0..n) |r| {
        if (recv_elems[r] == 0) continue;
        const out = try testing.allocator.alloc(u8, recv_elems[r] * es);
        defer testing.allocator.free(out);
        try testing.expectEqual(@as(i32, 0), exports.mr_cuda_copy_to_host(@intCast(r % 2), out.ptr, recv_ptr[r], recv_elems[r] * es));
        for (0..recv_elems[r]) |k| {
            const expected: f64 = switch (c.kind) {
                .allreduce, .reduce => blk: {
                    for (0..n) |j| column[j] = input(seed, j, k, c.dtype);
                    break :blk refReduce(c.redop, column[0..n]);
                },
                .reduce_scatter => blk: {
                    for (0..n) |j| column[j] = input(seed, j, r * c.count + k, c.dtype);
                    break :blk refReduce(c.redop, column[0..n]);
                },
                .broadcast => input(seed, c.root, k, c.dtype),
                .allgather, .gather => input(seed, k / c.count, k % c.count, c.dtype),
                .scatter => input(seed, c.root, r * c.count + k, c.dtype),
                .alltoall => blk: {
                    // Which block (source j) element k of r's recv is in, and where in j's send.
                    var j: usize = 0;
                    var offset: u64 = 0;
                    while (k >= offset + a2aCount(c, j, r)) : (j += 1) offset += a2aCount(c, j, r);
                    var src_offset: u64 = 0;
                    for (0..r) |d| src_offset += a2aCount(c, j, d);
                    break :blk input(seed, j, src_offset + (k - offset), c.dtype);
                },
                else => unreachable,
            };
            const actual = get(c.dtype, out, k);
            const tolerance: f64 = if (c.redop == .avg) 1e-2 * @max(1, @abs(expected)) else 0;
            if (@abs(actual - expected) > tolerance) {
                std.debug.print("{s} {s} {s} n={d} root={d} count={d} in_place={}: rank {d} element {d}: expected {d}, got {d}\n", .{
                    @tagName(c.kind), @tagName(c.dtype), @tagName(c.redop), n, c.root, c.count, c.in_place, r, k, expected, actual,
                });
                return error.TestUnexpectedResult;
            }
        }
    }
}

const host_same = [_]u64{ 0x5a5a, 0x5a5a, 0x5a5a, 0x5a5a };

test "cuda direct: every collective over the fake driver, 2 and 3 ranks, roots first and last, control over tcp and the board" {
    try install();
    defer uninstall();
    for ([_]engine_mod.Mode{ .tcp, .auto }) |mode| for ([_]u32{ 2, 3 }) |n| {
        var world = try World.init(n, host_same[0..n], mode);
        const board_rounds_before = cuda_direct.board_rounds_for_test.load(.monotonic);
        defer world.deinit();
        const kinds = [_]op.Collective{ .allreduce, .reduce, .broadcast, .allgather, .gather, .scatter, .reduce_scatter, .alltoall };
        const dtypes = [_]struct { op.DType, op.RedOp }{ .{ .f32, .sum }, .{ .bf16, .max }, .{ .i32, .bxor }, .{ .f16, .sum }, .{ .f32, .avg } };
        var seed: u64 = 1;
        for (kinds) |kind| for (dtypes) |dr| for ([_]u32{ 0, n - 1 }) |root| for ([_]u64{ 1, 1000, 4099 }) |count| {
            seed += 1;
            try runCase(&world, .{ .kind = kind, .dtype = dr[0], .redop = dr[1], .n = n, .root = root, .count = count }, seed);
        };
        // In place (send == recv) and uneven alltoall blocks.
        for ([_]op.Collective{ .allreduce, .reduce }) |kind| {
            seed += 1;
            try runCase(&world, .{ .kind = kind, .dtype = .f32, .n = n, .root = n - 1, .count = 777, .in_place = true }, seed);
        }
        // Blocks of >= 2 MiB: one reduce + one push, and the allreduce pipeline (chunks on
        // two streams, MOONRING_CUDA_PIPELINE=1).
        try runCase(&world, .{ .kind = .allreduce, .dtype = .f32, .n = n, .count = 1_500_000 }, 97);
        cuda_direct.pipeline_for_test = true;
        try runCase(&world, .{ .kind = .allreduce, .dtype = .bf16, .redop = .avg, .n = n, .count = 3_000_001, .in_place = true }, 96);
        try runCase(&world, .{ .kind = .allreduce, .dtype = .f32, .n = n, .count = 1_500_000 }, 95);
        cuda_direct.pipeline_for_test = false;
        // Pushes on a stream per peer (MOONRING_CUDA_PUSH=parallel; 3+ ranks, >= 1 MiB).
        cuda_direct.parallel_push_for_test = true;
        try runCase(&world, .{ .kind = .allreduce, .dtype = .f32, .n = n, .count = 1_500_000 }, 94);
        try runCase(&world, .{ .kind = .allgather, .dtype = .f32, .n = n, .count = 300_000 }, 93);
        cuda_direct.parallel_push_for_test = false;
        try runCase(&world, .{ .kind = .alltoall, .dtype = .i32, .n = n, .count = 5, .uneven = true }, 99);
        try runCase(&world, .{ .kind = .alltoall, .dtype = .u8, .n = n, .count = 0, .uneven = true }, 98);
        try testing.expect(world.directOps() > 0);
        // Every op took the direct path (alltoall in place would not: none here).
        const ops_per_rank: u64 = kinds.len * dtypes.len * 2 * 3 + 2 + 2 + 3 + 2;
        try testing.expectEqual(ops_per_rank * n, world.directOps());
        // Hello and final status of every op (acks too, the first time): over the board in .auto.
        const board_rounds = cuda_direct.board_rounds_for_test.load(.monotonic) - board_rounds_before;
        if (mode == .auto) try testing.expect(board_rounds >= 2 * ops_per_rank * n) else try testing.expectEqual(@as(u64, 0), board_rounds);
    };
}

test "cuda direct: ranks on different hosts and failing IPC fall back to host staging, same results" {
    try install();
    defer uninstall();
    {
        const hosts = [_]u64{ 1, 2 };
        var world = try World.init(2, &hosts, .tcp);
        defer world.deinit();
        try runCase(&world, .{ .kind = .allreduce, .dtype = .f32, .n = 2, .count = 3000 }, 7);
        try runCase(&world, .{ .kind = .allgather, .dtype = .i32, .n = 2, .count = 10 }, 8);
        try testing.expectEqual(@as(u64, 0), world.directOps());
    }
    {
        var world = try World.init(3, host_same[0..3], .tcp);
        defer world.deinit();
        world.engines[2].cuda_ipc.test_fail_open = true;
        // First op: the opens are not verified yet, so the ack round catches the failure and
        // every rank falls back; later ops fall back at the hello (IPC disabled on rank 2).
        try runCase(&world, .{ .kind = .allreduce, .dtype = .f32, .n = 3, .count = 5000 }, 9);
        try runCase(&world, .{ .kind = .reduce_scatter, .dtype = .bf16, .n = 3, .count = 100 }, 10);
        try testing.expectEqual(@as(u64, 0), world.directOps());
        try testing.expect(world.engines[2].cuda_ipc.disabled.load(.acquire));
    }
    {
        // Verified pairs, then a failing open: the op fails on every rank (EIO), nobody hangs.
        var world = try World.init(2, host_same[0..2], .tcp);
        defer world.deinit();
        try runCase(&world, .{ .kind = .allreduce, .dtype = .f32, .n = 2, .count = 100 }, 11);
        try testing.expectEqual(@as(u64, 2), world.directOps());
        world.engines[1].cuda_ipc.test_fail_open = true;
        try testing.expectError(error.TestUnexpectedResult, runCase(&world, .{ .kind = .allreduce, .dtype = .f32, .n = 2, .count = 200 }, 12));
        world.engines[1].cuda_ipc.test_fail_open = false;
        try runCase(&world, .{ .kind = .allreduce, .dtype = .f32, .n = 2, .count = 300 }, 13);
    }
}

test "cuda direct: mappings are cached per (peer, allocation) and dropped when the peer goes down" {
    try install();
    defer uninstall();
    var world = try World.init(2, host_same[0..2], .tcp);
    defer world.deinit();
    try runCase(&world, .{ .kind = .allgather, .dtype = .f32, .n = 2, .count = 64 }, 21);
    // runCase frees its buffers: the fake gives new allocations new handles, so each op maps
    // afresh; the old entries stay until evicted (LRU) or the peer goes.
    try testing.expect(world.engines[0].cuda_ipc.openCount() >= 1);
    try world.engines[0].peerDown(1);
    try testing.expectEqual(@as(u32, 0), world.engines[0].cuda_ipc.openCount());
}

test "cuda direct: a new peer allocation overlapping a mapped one (freed there) replaces its mapping" {
    try install();
    defer uninstall();
    const ipc = @import("../cuda/ipc.zig");
    var cache: ipc.Cache = .{};
    defer cache.deinit();
    const a = exports.mr_cuda_alloc(0, 4096);
    const b = exports.mr_cuda_alloc(0, 4096);
    defer _ = exports.mr_cuda_free(0, a);
    defer _ = exports.mr_cuda_free(0, b);
    const ref_a = try ipc.refOf(0, a, 4096);
    var ref_b = try ipc.refOf(0, b, 4096);
    try testing.expectEqual(a, ref_a.owner_base);
    cache.release(try cache.acquire(0, 1, &ref_a));
    cache.release(try cache.acquire(0, 1, &ref_b));
    try testing.expectEqual(@as(u32, 2), cache.openCount());
    // As if the peer freed a and b got a's address range: a's mapping goes.
    ref_b.owner_base = a + 100;
    const m = try cache.acquire(0, 1, &ref_b);
    try testing.expectEqual(b, m.address);
    cache.release(m);
    try testing.expectEqual(@as(u32, 2), cache.openCount()); // b (old entry) + b (new range); a closed
    // Another peer's entries are untouched by this peer's ranges.
    cache.release(try cache.acquire(0, 2, &ref_a));
    try testing.expectEqual(@as(u32, 3), cache.openCount());
}
