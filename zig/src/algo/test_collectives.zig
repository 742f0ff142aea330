//! Multi-rank tests of every collective over the in-process transport (transport/mem.zig):
//! n ranks as threads, random data, results checked against references computed here
//! (f64 / exact integer folds over the ranks' inputs, never reduce.zig), and every reduction
//! checked for identical bytes on every rank. Tunings force each algorithm and tiny slices so
//! pipelining, windows and uneven last slices are exercised at small sizes.
const std = @import("std");
const transport = @import("../transport/transport.zig");
const mem = @import("../transport/mem.zig");
const op = @import("../op.zig");
const dispatch = @import("dispatch.zig");
const common = @import("common.zig");

const testing = std.testing;
const DType = op.DType;
const RedOp = op.RedOp;
const Collective = op.Collective;
const Tuning = common.Tuning;

/// Values of float inputs: `exact` keeps every partial result exact (small integers; min/max
/// take any value, NaN included), so results must match the reference exactly whatever the
/// order of reduction; `real` is uniform reals, compared with a tolerance.
const Data = enum { exact, real };

const Placement = enum {
    separate,
    /// The op's in-place form: allreduce/reduce_scatter/alltoall recv == send, broadcast root
    /// send == recv, allgather/gather send is the rank's block of recv, scatter root recv is
    /// its block of send.
    in_place,
};

const Case = struct {
    kind: Collective,
    dtype: DType = .f32,
    redop: RedOp = .sum,
    n: u32,
    root: u32 = 0,
    count: u64,
    tuning: Tuning = .{},
    data: Data = .exact,
    placement: Placement = .separate,
};

const tuning_default: Tuning = .{};
/// Many small slices (not a multiple of any element size but 1), small windows.
const tuning_pipelined: Tuning = .{ .slice_bytes = 200, .window = 3, .depth = 2, .segment_bytes = 520 };
/// Latency algorithms (recursive doubling, binomial trees) at every size.
const tuning_small: Tuning = .{ .small_bytes = std.math.maxInt(u64), .slice_bytes = 136, .window = 2 };
/// Bandwidth algorithms (rings, chains) at every size.
const tuning_large: Tuning = .{ .small_bytes = 0, .slice_bytes = 96, .window = 1, .depth = 3, .segment_bytes = 96 };

const tunings_all = [_]Tuning{ tuning_default, tuning_pipelined, tuning_small, tuning_large };

const dangling: [*]u8 = @ptrFromInt(0x10); // buffers a rank must not touch

fn isReduction(kind: Collective) bool {
    return kind == .allreduce or kind == .reduce or kind == .reduce_scatter;
}

fn isRooted(kind: Collective) bool {
    return switch (kind) {
        .reduce, .broadcast, .gather, .scatter => true,
        else => false,
    };
}

/// alltoall: elements rank `from` sends to rank `to` (uneven, zeros included).
fn alltoallCount(case: Case, from: u32, to: u32) u64 {
    if (case.count == 0) return 0;
    if (case.placement == .in_place) return (case.count + from + to) % (case.count + 1); // symmetric
    return (case.count + from * 3 + to * 5 + from * to) % (case.count + 2);
}

const RankBuffers = struct {
    send: []u8 = &.{},
    recv: []u8 = &.{},
    /// The rank's input as it was before the op (send may be overwritten in place).
    input: []u8 = &.{},
    send_counts: [op.world_size_max]u64 = undefined,
    recv_counts: [op.world_size_max]u64 = undefined,
    desc: op.OpDesc = undefined,
    result: transport.Error!void = {},
    participates: bool = true,
};

/// Element counts of (send, recv) for `rank`, per docs/architecture.md "Native op shapes".
fn shape(case: Case, rank: u32, b: *RankBuffers) struct { send: u64, recv: u64 } {
    const c = case.count;
    const n = case.n;
    const is_root = rank == case.root;
    return switch (case.kind) {
        .allreduce => .{ .send = c, .recv = c },
        .reduce => .{ .send = c, .recv = if (is_root) c else 0 },
        .broadcast => .{ .send = if (is_root) c else 0, .recv = c },
        .allgather => .{ .send = c, .recv = c * n },
        .gather => .{ .send = c, .recv = if (is_root) c * n else 0 },
        .scatter => .{ .send = if (is_root) c * n else 0, .recv = c },
        .reduce_scatter => .{ .send = c * n, .recv = c },
        .alltoall => blk: {
            var s: u64 = 0;
            var r: u64 = 0;
            for (0..n) |j| {
                b.send_counts[j] = alltoallCount(case, rank, @intCast(j));
                b.recv_counts[j] = alltoallCount(case, @intCast(j), rank);
                s += b.send_counts[j];
                r += b.recv_counts[j];
            }
            break :blk .{ .send = s, .recv = r };
        },
        .barrier => .{ .send = 0, .recv = 0 },
        // p2p: rank 0 sends to rank root; rank root receives from rank 0.
        .send => .{ .send = if (rank == 0) c else 0, .recv = if (rank == case.root) c else 0 },
        .recv => unreachable,
    };
}

// ---- element encoding (independent of reduce.zig) ----

fn decodeFloat(dtype: DType, bytes: []const u8) f64 {
    return switch (dtype) {
        .f16 => @floatCast(@as(f16, @bitCast(std.mem.readInt(u16, bytes[0..2], .little)))),
        .bf16 => @floatCast(@as(f32, @bitCast(@as(u32, std.mem.readInt(u16, bytes[0..2], .little)) << 16))),
        .f32 => @floatCast(@as(f32, @bitCast(std.mem.readInt(u32, bytes[0..4], .little)))),
        .f64 => @bitCast(std.mem.readInt(u64, bytes[0..8], .little)),
        else => unreachable,
    };
}

/// Encodes a value that the dtype represents exactly (or truncates bf16 for random reals).
fn encodeFloat(dtype: DType, x: f64, out: []u8) void {
    switch (dtype) {
        .f16 => std.mem.writeInt(u16, out[0..2], @bitCast(@as(f16, @floatCast(x))), .little),
        .bf16 => std.mem.writeInt(u16, out[0..2], @truncate(@as(u32, @bitCast(@as(f32, @floatCast(x)))) >> 16), .little),
        .f32 => std.mem.writeInt(u32, out[0..4], @bitCast(@as(f32, @floatCast(x))), .little),
        .f64 => std.mem.writeInt(u64, out[0..8], @bitCast(x), .little),
        else => unreachable,
    }
}

fn decodeInt(dtype: DType, bytes: []const u8) i128 {
    return switch (dtype) {
        .i8 => std.mem.readInt(i8, bytes[0..1], .little),
        .u8 => bytes[0],
        .i16 => std.mem.readInt(i16, bytes[0..2], .little),
        .i32 => std.mem.readInt(i32, bytes[0..4], .little),
        .i64 => std.mem.readInt(i64, bytes[0..8], .little),
        else => unreachable,
    };
}

fn epsilon(dtype: DType) f64 {
    return switch (dtype) {
        .f16 => std.math.floatEps(f16),
        .bf16 => 1.0 / 128.0,
        .f32 => std.math.floatEps(f32),
        .f64 => std.math.floatEps(f64),
        else => unreachable,
    };
}

fn fillInput(case: Case, random: std.Random, buf: []u8) void {
    const es = case.dtype.bytes();
    switch (case.dtype.kind()) {
        .int => random.bytes(buf),
        .bool => for (buf) |*b| {
            b.* = switch (random.uintLessThan(u8, 3)) {
                0 => 0,
                1 => 1,
                else => 0x5a, // non-canonical true
            };
        },
        .float => {
            var i: usize = 0;
            while (i < buf.len) : (i += es) {
                const x: f64 = switch (case.data) {
                    .exact => switch (case.redop) {
                        .sum, .avg => @floatFromInt(random.intRangeAtMost(i32, -8, 8)),
                        .prod => @floatFromInt(random.intRangeAtMost(i32, -3, 3)),
                        // NaN now and then; +0 and -0 (equal, but not the same bytes).
                        else => switch (random.uintLessThan(u32, 50)) {
                            0 => std.math.nan(f64),
                            1, 2, 3 => if (random.boolean()) -0.0 else 0.0,
                            else => @floatFromInt(random.intRangeAtMost(i32, -1000, 1000)),
                        },
                    },
                    .real => switch (case.redop) {
                        .prod => 0.5 + random.float(f64),
                        else => random.float(f64) * 2.0 - 1.0,
                    },
                };
                encodeFloat(case.dtype, x, buf[i..][0..es]);
            }
        },
    }
}

/// Checks `got` (count elements) against the reduction over ranks of inputs[r][offset..].
fn checkReduction(case: Case, inputs: []const []const u8, offset_elements: u64, got: []const u8) !void {
    const es = case.dtype.bytes();
    const count = got.len / es;
    for (0..count) |i| {
        const at = (offset_elements + i) * es;
        const g = got[i * es ..][0..es];
        switch (case.dtype.kind()) {
            .float => {
                var acc: f64 = decodeFloat(case.dtype, inputs[0][at..][0..es]);
                var magnitude: f64 = @abs(acc);
                for (inputs[1..]) |in| {
                    const x = decodeFloat(case.dtype, in[at..][0..es]);
                    magnitude += @abs(x);
                    acc = switch (case.redop) {
                        .sum, .avg => acc + x,
                        .prod => acc * x,
                        .min => if (std.math.isNan(acc) or std.math.isNan(x)) std.math.nan(f64) else @min(acc, x),
                        .max => if (std.math.isNan(acc) or std.math.isNan(x)) std.math.nan(f64) else @max(acc, x),
                        else => unreachable,
                    };
                }
                if (case.redop == .avg) {
                    acc /= @floatFromInt(case.n);
                    magnitude /= @floatFromInt(case.n);
                }
                const actual = decodeFloat(case.dtype, g);
                const ok = if (std.math.isNan(acc))
                    std.math.isNan(actual)
                else switch (case.data) {
                    // Exact partial results: only the final rounding (avg) can differ.
                    .exact => if (case.redop == .avg)
                        @abs(actual - acc) <= @abs(acc) * epsilon(case.dtype)
                    else
                        actual == acc,
                    .real => blk: {
                        const scale = if (case.redop == .prod) @abs(acc) else magnitude;
                        const tol = 2.0 * @as(f64, @floatFromInt(case.n + 1)) * epsilon(case.dtype) * scale;
                        break :blk @abs(actual - acc) <= tol;
                    },
                };
                if (!ok) {
                    std.debug.print("{s} {s} {s} n={d} count={d}: element {d} want {d} got {d}\n", .{
                        @tagName(case.kind), @tagName(case.redop), @tagName(case.dtype), case.n, case.count, i, acc, actual,
                    });
                    return error.TestUnexpectedResult;
                }
            },
            .int => {
                var acc: i128 = decodeInt(case.dtype, inputs[0][at..][0..es]);
                for (inputs[1..]) |in| {
                    const x = decodeInt(case.dtype, in[at..][0..es]);
                    acc = switch (case.redop) {
                        // Wrap each step to 64 bits (modular, so the same as wrapping at the end).
                        .sum => @as(i64, @truncate(acc +% x)),
                        .prod => @as(i64, @truncate(acc *% x)),
                        .min => @min(acc, x),
                        .max => @max(acc, x),
                        .band => acc & x,
                        .bor => acc | x,
                        .bxor => acc ^ x,
                        else => unreachable,
                    };
                }
                var want: [8]u8 = undefined;
                std.mem.writeInt(u64, &want, @truncate(@as(u128, @bitCast(acc))), .little);
                if (!std.mem.eql(u8, want[0..es], g)) {
                    std.debug.print("{s} {s} {s} n={d} count={d}: element {d} want {x} got {x}\n", .{
                        @tagName(case.kind), @tagName(case.redop), @tagName(case.dtype), case.n, case.count, i, want[0..es], g,
                    });
                    return error.TestUnexpectedResult;
                }
            },
            .bool => {
                var acc = inputs[0][at] != 0;
                for (inputs[1..]) |in| {
                    const x = in[at] != 0;
                    acc = switch (case.redop) {
                        .sum, .max, .bor => acc or x,
                        .prod, .min, .band => acc and x,
                        .bxor => acc != x,
                        else => unreachable,
                    };
                }
                if (g[0] != @intFromBool(acc)) {
                    std.debug.print("{s} {s} bool n={d}: element {d} want {} got {d}\n", .{
                        @tagName(case.kind), @tagName(case.redop), case.n, i, acc, g[0],
                    });
                    return error.TestUnexpectedResult;
                }
            },
        }
    }
}

const Shared = struct {
    world: *mem.World,
    case: Case,
    ranks: []RankBuffers,
    barrier_entered: std.atomic.Value(u32) = std.atomic.Value(u32).init(0),
    barrier_violations: std.atomic.Value(u32) = std.atomic.Value(u32).init(0),
};

fn rankMain(shared: *Shared, rank: u32) void {
    const b = &shared.ranks[rank];
    if (shared.case.kind == .barrier) _ = shared.barrier_entered.fetchAdd(1, .seq_cst);
    b.result = dispatch.runTuned(shared.world.comm(rank), b.desc, testing.allocator, shared.case.tuning);
    if (shared.case.kind == .barrier and shared.barrier_entered.load(.seq_cst) != shared.case.n) {
        _ = shared.barrier_violations.fetchAdd(1, .seq_cst);
    }
}

fn seedOf(case: Case) u64 {
    var h = std.hash.Wyhash.init(0x6d6f6f6e);
    h.update(std.mem.asBytes(&case.kind));
    h.update(std.mem.asBytes(&case.dtype));
    h.update(std.mem.asBytes(&case.redop));
    h.update(std.mem.asBytes(&case.n));
    h.update(std.mem.asBytes(&case.root));
    h.update(std.mem.asBytes(&case.count));
    h.update(std.mem.asBytes(&case.data));
    return h.final();
}

/// Runs `case` on a fresh world of case.n ranks and checks every rank's result.
fn runCase(case: Case) !void {
    const allocator = testing.allocator;
    const n = case.n;
    const es = case.dtype.bytes();
    std.debug.assert(n >= 1 and n <= 8 and case.root < n);
    const world = try mem.World.init(allocator, n, .{ .timeout_ns = 60 * std.time.ns_per_s });
    defer world.deinit();
    var ranks: [8]RankBuffers = [_]RankBuffers{.{}} ** 8;
    defer for (ranks[0..n]) |b| {
        allocator.free(b.send);
        allocator.free(b.recv);
        allocator.free(b.input);
    };
    var prng = std.Random.DefaultPrng.init(seedOf(case));
    const random = prng.random();

    for (0..n) |ri| {
        const r: u32 = @intCast(ri);
        const b = &ranks[r];
        const s = shape(case, r, b);
        const send_bytes = s.send * es;
        const recv_bytes = s.recv * es;
        const kind: Collective = if (case.kind == .send and r == case.root) .recv else case.kind;
        b.participates = case.kind != .send or r == 0 or r == case.root;
        b.send = try allocator.alloc(u8, send_bytes);
        b.recv = try allocator.alloc(u8, recv_bytes);
        b.input = try allocator.alloc(u8, send_bytes);
        fillInput(case, random, b.send);
        @memcpy(b.input, b.send);
        @memset(b.recv, 0xa5); // garbage the algorithm must overwrite
        var send_ptr: [*]const u8 = if (send_bytes > 0) b.send.ptr else dangling;
        var recv_ptr: [*]u8 = if (recv_bytes > 0) b.recv.ptr else dangling;
        if (case.placement == .in_place) switch (case.kind) {
            .allreduce, .reduce_scatter, .alltoall => {
                // recv is the front of send (reduce_scatter) or all of it.
                std.debug.assert(recv_bytes <= send_bytes);
                recv_ptr = b.send.ptr;
            },
            .reduce => if (r == case.root) {
                recv_ptr = b.send.ptr;
            },
            .broadcast => if (r == case.root) {
                @memcpy(b.recv, b.send);
                send_ptr = b.recv.ptr;
            },
            .allgather => {
                @memcpy(b.recv[r * send_bytes ..][0..send_bytes], b.send);
                send_ptr = b.recv.ptr + r * send_bytes;
            },
            .gather => if (r == case.root) {
                @memcpy(b.recv[r * send_bytes ..][0..send_bytes], b.send);
                send_ptr = b.recv.ptr + r * send_bytes;
            },
            .scatter => if (r == case.root) {
                recv_ptr = b.send.ptr + r * recv_bytes;
            },
            else => {},
        };
        b.desc = .{
            .kind = kind,
            .dtype = case.dtype,
            .redop = case.redop,
            .root = if (case.kind == .send and r == case.root) 0 else case.root,
            .count = case.count,
            .send_counts = if (case.kind == .alltoall) b.send_counts[0..n] else &.{},
            .recv_counts = if (case.kind == .alltoall) b.recv_counts[0..n] else &.{},
            .send = send_ptr,
            .recv = recv_ptr,
        };
    }

    var shared: Shared = .{ .world = world, .case = case, .ranks = ranks[0..n] };
    var threads: [8]?std.Thread = [_]?std.Thread{null} ** 8;
    for (0..n) |r| {
        if (!ranks[r].participates) continue;
        threads[r] = try std.Thread.spawn(.{}, rankMain, .{ &shared, @as(u32, @intCast(r)) });
    }
    for (threads[0..n]) |t| if (t) |thread| thread.join();
    for (ranks[0..n], 0..) |b, r| {
        b.result catch |err| {
            std.debug.print("{s} n={d} root={d} count={d}: rank {d} failed: {s}\n", .{ @tagName(case.kind), n, case.root, case.count, r, @errorName(err) });
            return err;
        };
        try testing.expectEqual(@as(u32, 0), world.slotsInUse(@intCast(r)));
    }
    try checkResults(case, ranks[0..n], &shared);
}

/// The bytes of rank r's result (in place: where the op put it).
fn result(case: Case, b: *const RankBuffers, r: u32) []const u8 {
    const es = case.dtype.bytes();
    const r_bytes = b.recv.len;
    if (case.placement == .in_place) switch (case.kind) {
        .allreduce, .alltoall => return b.send,
        .reduce_scatter => return b.send[0 .. case.count * es],
        .reduce => if (r == case.root) return b.send,
        .scatter => if (r == case.root) return b.send[r * r_bytes ..][0..r_bytes],
        else => {},
    };
    return b.recv;
}

fn checkResults(case: Case, ranks: []RankBuffers, shared: *Shared) !void {
    const n = case.n;
    const es = case.dtype.bytes();
    const c = case.count;
    var inputs_buf: [8][]const u8 = undefined;
    for (ranks, 0..) |b, r| inputs_buf[r] = b.input;
    const inputs = inputs_buf[0..n];
    switch (case.kind) {
        .allreduce => {
            for (ranks, 0..) |*b, r| {
                const got = result(case, b, @intCast(r));
                try checkReduction(case, inputs, 0, got);
                // Identical bytes on every rank.
                try testing.expectEqualSlices(u8, result(case, &ranks[0], 0), got);
            }
        },
        .reduce => try checkReduction(case, inputs, 0, result(case, &ranks[case.root], case.root)),
        .reduce_scatter => for (ranks, 0..) |*b, r| {
            try checkReduction(case, inputs, r * c, result(case, b, @intCast(r)));
        },
        .broadcast => for (ranks) |b| try testing.expectEqualSlices(u8, inputs[case.root], b.recv),
        .allgather => for (ranks) |b| {
            for (0..n) |j| try testing.expectEqualSlices(u8, inputs[j], b.recv[j * c * es ..][0 .. c * es]);
        },
        .gather => for (0..n) |j| {
            try testing.expectEqualSlices(u8, inputs[j], ranks[case.root].recv[j * c * es ..][0 .. c * es]);
        },
        .scatter => for (ranks, 0..) |*b, r| {
            try testing.expectEqualSlices(u8, inputs[case.root][r * c * es ..][0 .. c * es], result(case, b, @intCast(r)));
        },
        .alltoall => for (ranks, 0..) |*b, r| {
            const got = result(case, b, @intCast(r));
            var at: u64 = 0;
            for (0..n) |j| {
                // Block j of rank r's result is the block rank j sent to r.
                var from_at: u64 = 0;
                for (0..r) |k| from_at += alltoallCount(case, @intCast(j), @intCast(k));
                const len = alltoallCount(case, @intCast(j), @intCast(r)) * es;
                try testing.expectEqualSlices(u8, inputs[j][from_at * es ..][0..len], got[at..][0..len]);
                at += len;
            }
            try testing.expectEqual(got.len, at);
        },
        .barrier => try testing.expectEqual(@as(u32, 0), shared.barrier_violations.load(.seq_cst)),
        .send => try testing.expectEqualSlices(u8, inputs[0], ranks[case.root].recv),
        .recv => unreachable,
    }
}

// ---------------------------------------------------------------------------------------------

const kinds_all = [_]Collective{ .allreduce, .reduce, .broadcast, .allgather, .gather, .scatter, .reduce_scatter, .alltoall, .barrier, .send };

/// (dtype, redop) pairs the world-size x root x size x tuning matrix cycles through.
const reduction_mix = [_]struct { DType, RedOp }{
    .{ .f32, .sum }, .{ .i64, .prod }, .{ .bf16, .max }, .{ .f16, .avg },
    .{ .bool, .bxor }, .{ .u8, .min }, .{ .f64, .sum }, .{ .i16, .band },
};

fn sizesFor(n: u32) [5]u64 {
    return .{ 0, 1, 7, n - 1, 1000 };
}

test "every collective x world sizes 1..5 x roots 0 and last x sizes x tunings" {
    var cases: u32 = 0;
    for (kinds_all) |kind| {
        for (1..6) |ni| {
            const n: u32 = @intCast(ni);
            if (kind == .send and n == 1) continue; // no peer
            const roots = [2]u32{ if (kind == .send) 1 else 0, n - 1 };
            const root_count: usize = if (isRooted(kind) or kind == .send) (if (roots[0] == roots[1]) 1 else 2) else 1;
            for (roots[0..root_count]) |root| {
                for (sizesFor(n), 0..) |count, size_index| {
                    for (tunings_all, 0..) |tuning, tuning_index| {
                        const pick = (size_index + tuning_index + n) % reduction_mix.len;
                        const dtype: DType, const redop: RedOp = if (isReduction(kind))
                            reduction_mix[pick]
                        else
                            .{ if (count % 2 == 0) .bf16 else .i8, .sum };
                        try runCase(.{ .kind = kind, .dtype = dtype, .redop = redop, .n = n, .root = root, .count = count, .tuning = tuning });
                        cases += 1;
                    }
                }
            }
        }
    }
    try testing.expect(cases > 1000);
}

test "every collective at 100003 elements, default and pipelined tunings" {
    for (kinds_all) |kind| {
        for ([_]u32{ 1, 2, 3, 4, 5 }) |n| {
            if (kind == .send and n == 1) continue;
            const roots = [2]u32{ if (kind == .send) 1 else 0, n - 1 };
            const root_count: usize = if (isRooted(kind) or kind == .send) (if (roots[0] == roots[1]) 1 else 2) else 1;
            for (roots[0..root_count]) |root| {
                for ([_]Tuning{ tuning_default, .{ .slice_bytes = 40000, .window = 4, .segment_bytes = 100000 } }) |tuning| {
                    const dtype: DType, const redop: RedOp = if (isReduction(kind)) .{ .f32, .sum } else .{ .f64, .sum };
                    try runCase(.{ .kind = kind, .dtype = dtype, .redop = redop, .n = n, .root = root, .count = 100003, .tuning = tuning });
                }
            }
        }
    }
}

test "allreduce: every (redop, dtype) pair of the table at n = 3, both algorithms" {
    var pairs: u32 = 0;
    inline for (std.meta.fields(DType)) |df| {
        const dtype: DType = @enumFromInt(df.value);
        inline for (std.meta.fields(RedOp)) |rf| {
            const redop: RedOp = @enumFromInt(rf.value);
            if (redop.supports(dtype.kind())) {
                pairs += 1;
                for ([_]u64{ 0, 1, 7, 1000 }) |count| {
                    for ([_]Tuning{ tuning_small, tuning_large, tuning_pipelined }) |tuning| {
                        try runCase(.{ .kind = .allreduce, .dtype = dtype, .redop = redop, .n = 3, .count = count, .tuning = tuning });
                    }
                }
                // reduce and reduce_scatter share the reductions: one size each, last root.
                for ([_]Tuning{ tuning_small, tuning_large }) |tuning| {
                    try runCase(.{ .kind = .reduce, .dtype = dtype, .redop = redop, .n = 3, .root = 2, .count = 77, .tuning = tuning });
                }
                try runCase(.{ .kind = .reduce_scatter, .dtype = dtype, .redop = redop, .n = 3, .count = 77, .tuning = tuning_pipelined });
            }
        }
    }
    try testing.expectEqual(@as(u32, 62), pairs);
}

test "float reductions of random reals: within tolerance and bitwise identical on every rank" {
    for ([_]DType{ .f16, .bf16, .f32, .f64 }) |dtype| {
        for ([_]RedOp{ .sum, .prod, .avg }) |redop| {
            for ([_]u32{ 2, 3, 5 }) |n| {
                for ([_]Tuning{ tuning_small, tuning_large, tuning_pipelined }) |tuning| {
                    try runCase(.{ .kind = .allreduce, .dtype = dtype, .redop = redop, .n = n, .count = 517, .tuning = tuning, .data = .real });
                    try runCase(.{ .kind = .reduce_scatter, .dtype = dtype, .redop = redop, .n = n, .count = 131, .tuning = tuning, .data = .real });
                    try runCase(.{ .kind = .reduce, .dtype = dtype, .redop = redop, .n = n, .root = n - 1, .count = 131, .tuning = tuning, .data = .real });
                }
            }
        }
    }
}

test "in-place forms of every collective" {
    for ([_]Collective{ .allreduce, .reduce, .broadcast, .allgather, .gather, .scatter, .reduce_scatter, .alltoall }) |kind| {
        for ([_]u32{ 1, 2, 3, 4 }) |n| {
            for ([_]u32{ 0, n - 1 }) |root| {
                for ([_]u64{ 0, 1, 7, 300 }) |count| {
                    for (tunings_all) |tuning| {
                        const dtype: DType = if (isReduction(kind)) .i32 else .u8;
                        try runCase(.{ .kind = kind, .dtype = dtype, .n = n, .root = root, .count = count, .tuning = tuning, .placement = .in_place });
                    }
                }
            }
        }
    }
}

test "invalid descriptors fail with Protocol before any byte moves" {
    const world = try mem.World.init(testing.allocator, 2, .{ .timeout_ns = std.time.ns_per_s });
    defer world.deinit();
    var buf: [64]u8 = undefined;
    const base: op.OpDesc = .{ .kind = .allreduce, .dtype = .f32, .redop = .sum, .root = 0, .count = 4, .send = &buf, .recv = &buf };
    const comm = world.comm(0);
    var d = base;
    d.redop = .band; // not defined for floats
    try testing.expectError(error.Protocol, dispatch.run(comm, d, testing.allocator));
    d = base;
    d.dtype = .i32;
    d.redop = .avg; // float only
    try testing.expectError(error.Protocol, dispatch.run(comm, d, testing.allocator));
    d = base;
    d.kind = .reduce;
    d.root = 2;
    try testing.expectError(error.Protocol, dispatch.run(comm, d, testing.allocator));
    d = base;
    d.kind = .send;
    d.root = 0; // itself
    try testing.expectError(error.Protocol, dispatch.run(comm, d, testing.allocator));
    d = base;
    d.kind = .alltoall; // counts missing
    try testing.expectError(error.Protocol, dispatch.run(comm, d, testing.allocator));
    d = base;
    d.count = std.math.maxInt(u64) / 2;
    try testing.expectError(error.Protocol, dispatch.run(comm, d, testing.allocator));
    try testing.expectEqual(@as(u32, 0), world.slotsInUse(0));
}

// ---- failures ----

const FailureRun = struct {
    world: *mem.World,
    descs: []op.OpDesc,
    results: []transport.Error!void,
    tuning: Tuning,
};

fn failureRankMain(run: *FailureRun, rank: u32) void {
    run.results[rank] = dispatch.runTuned(run.world.comm(rank), run.descs[rank], testing.allocator, run.tuning);
}

const FailureMode = union(enum) {
    /// The rank crashes when posting its request number `after_posts`.
    killed: u32,
    /// The rank never joins the op and is reported dead.
    absent_reported,
    /// The rank never joins and nobody says so: the others reach the deadline.
    absent_silent,
};

/// Runs `kind` on n ranks where rank `victim` fails per `mode`; every other rank must return
/// PeerFailed or Timeout (never hang, never succeed with a missing contribution where the op
/// needs it).
fn runFailure(kind: Collective, n: u32, victim: u32, mode: FailureMode, tuning: Tuning) !void {
    const allocator = testing.allocator;
    const timeout_ns: u64 = switch (mode) {
        .absent_silent => 50 * std.time.ns_per_ms,
        else => 20 * std.time.ns_per_s, // failures propagate without waiting for the deadline
    };
    const world = try mem.World.init(allocator, n, .{
        .timeout_ns = timeout_ns,
        .kill = switch (mode) {
            .killed => |after| .{ .rank = victim, .after_posts = after },
            else => null,
        },
    });
    defer world.deinit();
    const count: u64 = 5000;
    const buf = try allocator.alloc(u8, n * (count * n * 4) * 2);
    defer allocator.free(buf);
    @memset(buf, 1);
    var descs: [8]op.OpDesc = undefined;
    var results: [8]transport.Error!void = undefined;
    var counts: [8]u64 = [_]u64{count} ** 8;
    for (0..n) |r| {
        const region = buf[r * count * n * 4 * 2 ..][0 .. count * n * 4 * 2];
        descs[r] = .{
            .kind = kind,
            .dtype = .f32,
            .redop = .sum,
            .root = 0,
            .count = count,
            .send_counts = counts[0..n],
            .recv_counts = counts[0..n],
            .send = region.ptr,
            .recv = region.ptr + count * n * 4,
        };
        results[r] = {};
    }
    var run: FailureRun = .{ .world = world, .descs = descs[0..n], .results = results[0..n], .tuning = tuning };
    if (mode == .absent_reported) world.failRank(victim);
    var threads: [8]?std.Thread = [_]?std.Thread{null} ** 8;
    for (0..n) |r| {
        if (r == victim and mode != .killed) continue;
        threads[r] = try std.Thread.spawn(.{}, failureRankMain, .{ &run, @as(u32, @intCast(r)) });
    }
    for (threads[0..n]) |t| if (t) |thread| thread.join();
    var failed: u32 = 0;
    for (0..n) |r| {
        if (r == victim) continue;
        if (results[r]) |_| {} else |err| {
            if (err != error.PeerFailed and err != error.Timeout) {
                std.debug.print("{s}: rank {d} returned {s}\n", .{ @tagName(kind), r, @errorName(err) });
                return error.TestUnexpectedResult;
            }
            failed += 1;
        }
        try testing.expectEqual(@as(u32, 0), world.slotsInUse(@intCast(r)));
    }
    const victim_died = switch (mode) {
        .killed => if (results[victim]) |_| false else |_| true,
        else => true,
    };
    // A rank that finished its part before the victim died may succeed; someone must not.
    if (victim_died) try testing.expect(failed >= 1) else try testing.expectEqual(@as(u32, 0), failed);
}

test "a peer failing mid-op makes the others return PeerFailed or Timeout, not hang" {
    const kinds = [_]Collective{ .allreduce, .reduce, .broadcast, .allgather, .gather, .scatter, .reduce_scatter, .alltoall, .barrier };
    for (kinds) |kind| {
        for ([_]Tuning{ tuning_default, tuning_small, .{ .small_bytes = 0, .slice_bytes = 4000 } }) |tuning| {
            for ([_]u32{ 0, 1, 3, 17 }) |after_posts| {
                try runFailure(kind, 4, 2, .{ .killed = after_posts }, tuning);
            }
            try runFailure(kind, 4, 0, .{ .killed = 2 }, tuning);
            try runFailure(kind, 3, 1, .absent_reported, tuning);
        }
        try runFailure(kind, 3, 2, .absent_silent, tuning_default);
    }
}

test {
    _ = mem; // the transport's own tests
}
