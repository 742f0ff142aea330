//! Tests of driver.zig, staging.zig and the mr_cuda_* exports on machines without a GPU, over
//! the fake driver of fake_api.zig (host memory, CPU reductions). What they cannot check (the
//! CUDA kernels themselves, real copies, IPC between processes) is tests/gpu/*.test.ts on a GPU
//! machine.
const std = @import("std");
const builtin = @import("builtin");
const driver = @import("driver.zig");
const staging = @import("staging.zig");
const exports = @import("exports.zig");
const fake = @import("fake_api.zig").Fake(@import("../reduce.zig"));

const state = &fake.state;
const device_count = fake.device_count;
const sm_count = fake.sm_count;
const liveAllocations = fake.liveAllocations;

comptime {
    std.debug.assert(builtin.is_test);
}

/// Installs the fake as the process-wide driver; undo with `uninstall` (frees everything).
/// Also used by backend/cuda_direct_test.zig.
pub fn install() !void {
    fake.reset();
    _ = driver.installForTest(try driver.Driver.init(fake.api));
}

pub fn uninstall() void {
    driver.resetForTest();
    fake.reset();
}

// ---- tests ----

const testing = std.testing;
const MR_OK = exports.MR_OK;

fn expectMessage(needle: []const u8) !void {
    const message = driver.lastErrorMessage();
    if (std.mem.indexOf(u8, message, needle) == null) {
        std.debug.print("message \"{s}\" lacks \"{s}\"\n", .{ message, needle });
        return error.TestUnexpectedResult;
    }
}

const mr_cuda_device_count = exports.mr_cuda_device_count;
const mr_cuda_alloc = exports.mr_cuda_alloc;
const mr_cuda_free = exports.mr_cuda_free;
const mr_cuda_copy_to_device = exports.mr_cuda_copy_to_device;
const mr_cuda_copy_to_host = exports.mr_cuda_copy_to_host;
const mr_cuda_ipc_handle = exports.mr_cuda_ipc_handle;
const mr_cuda_reduce = exports.mr_cuda_reduce;

test "fake driver: exports allocate, copy, reduce and report errors" {
    try install();
    defer uninstall();
    try testing.expectEqual(@as(i32, device_count), mr_cuda_device_count());

    const count = 1000;
    var a: [count]f32 = undefined;
    var b: [count]f32 = undefined;
    for (&a, &b, 0..) |*x, *y, i| {
        x.* = @floatFromInt(i);
        y.* = @floatFromInt(2 * i + 1);
    }
    const da = mr_cuda_alloc(0, count * 4);
    const db = mr_cuda_alloc(0, count * 4);
    try testing.expect(da != 0 and db != 0);
    try testing.expectEqual(MR_OK, mr_cuda_copy_to_device(0, da, &a, count * 4));
    try testing.expectEqual(MR_OK, mr_cuda_copy_to_device(0, db, &b, count * 4));
    const sum: u32 = @intFromEnum(driver.RedOp.sum);
    const f32_code: u32 = @intFromEnum(driver.DType.f32);
    try testing.expectEqual(MR_OK, mr_cuda_reduce(0, sum, f32_code, da, db, count));
    var out: [count]f32 = undefined;
    try testing.expectEqual(MR_OK, mr_cuda_copy_to_host(0, &out, da, count * 4));
    for (out, 0..) |x, i| try testing.expectEqual(@as(f32, @floatFromInt(3 * i + 1)), x);
    // 4000 bytes = 250 vectors of 16 bytes: one block of 512 threads.
    try testing.expectEqual([2]u32{ 1, 1 }, state.last_grid);

    // Errors: each names the problem.
    const bxor: u32 = @intFromEnum(driver.RedOp.bxor);
    try testing.expectEqual(exports.MR_EINVAL, mr_cuda_reduce(0, bxor, f32_code, da, db, count));
    try expectMessage("reduce op bxor is not defined for float dtype float32");
    try testing.expectEqual(exports.MR_EINVAL, mr_cuda_reduce(0, 99, f32_code, da, db, count));
    try expectMessage("unknown reduce op code 99");
    try testing.expectEqual(exports.MR_EINVAL, mr_cuda_reduce(0, sum, 42, da, db, count));
    try expectMessage("unknown dtype code 42");
    try testing.expectEqual(exports.MR_EINVAL, mr_cuda_reduce(0, sum, f32_code, da + 2, db, 10));
    try expectMessage("is not aligned to float32");
    try testing.expectEqual(exports.MR_EINVAL, mr_cuda_reduce(0, sum, f32_code, da, db, count + 1));
    try expectMessage("overruns its allocation");
    try testing.expectEqual(exports.MR_EINVAL, mr_cuda_reduce(0, sum, f32_code, da, da + 8, 100));
    try expectMessage("partially overlap");
    try testing.expectEqual(exports.MR_EINVAL, mr_cuda_reduce(0, sum, f32_code, @intFromPtr(&a), db, count));
    try expectMessage("is not device memory (CUDA_ERROR_NOT_FOUND");
    try testing.expectEqual(exports.MR_EINVAL, mr_cuda_copy_to_device(0, da, null, 4));
    try expectMessage("src is NULL");
    try testing.expectEqual(exports.MR_ENODEV, mr_cuda_reduce(7, sum, f32_code, da, db, count));
    try expectMessage("no CUDA device 7: this process sees 2 device(s)");
    try testing.expectEqual(@as(u64, 0), mr_cuda_alloc(0, 2 << 30));
    try expectMessage("CUDA cuMemAlloc(2147483648 bytes) failed on device 0: CUDA_ERROR_OUT_OF_MEMORY (2): out of memory");
    try testing.expectEqual(exports.MR_EINVAL, mr_cuda_free(0, 0xdead0000));
    try expectMessage("cuMemFree(0xdead0000) failed on device 0: CUDA_ERROR_INVALID_VALUE");
    // A successful call clears the thread's CUDA message (mr_last_error then shows the engine's).
    try testing.expectEqual(MR_OK, mr_cuda_free(0, 0));
    try testing.expectEqual(@as(usize, 0), driver.lastErrorMessage().len);
    // Zero-length work succeeds without touching pointers.
    try testing.expectEqual(MR_OK, mr_cuda_reduce(0, sum, f32_code, 0, 0, 0));
    try testing.expectEqual(MR_OK, mr_cuda_copy_to_host(0, null, 0, 0));
    // In place (dst == src): x + x.
    try testing.expectEqual(MR_OK, mr_cuda_reduce(0, sum, f32_code, db, db, count));
    try testing.expectEqual(MR_OK, mr_cuda_copy_to_host(0, &out, db, count * 4));
    for (out, 0..) |x, i| try testing.expectEqual(@as(f32, @floatFromInt(4 * i + 2)), x);

    var handle: [64]u8 = undefined;
    try testing.expectEqual(MR_OK, mr_cuda_ipc_handle(0, da + 16, &handle));
    try testing.expectEqual(da, std.mem.readInt(u64, handle[0..8], .little));
    try testing.expectEqual(@as(u64, da), try staging.ipcOpen(1, .{ .reserved = handle }));
    const range = try staging.allocationOf(0, da + 100);
    try testing.expectEqual(da, range.base);
    try testing.expectEqual(@as(u64, count * 4), range.bytes);

    try testing.expectEqual(MR_OK, mr_cuda_free(0, da));
    try testing.expectEqual(MR_OK, mr_cuda_free(0, db));
    try testing.expectEqual(@as(usize, 0), liveAllocations(false));
}

test "fake driver: one device setup under concurrent first use" {
    try install();
    defer uninstall();
    var devices: [4]*driver.Device = undefined;
    var threads: [4]std.Thread = undefined;
    const Worker = struct {
        fn run(out: **driver.Device) void {
            out.* = staging.device(1) catch unreachable;
        }
    };
    for (&threads, &devices) |*t, *d| t.* = try std.Thread.spawn(.{}, Worker.run, .{d});
    for (threads) |t| t.join();
    for (devices) |d| try testing.expectEqual(devices[0], d);
    try testing.expectEqual(@as(u32, 1), state.module_loads);
    try testing.expectEqualStrings("Fake GPU", devices[0].name());
    try testing.expectEqual(@as(u32, sm_count), devices[0].sm_count);
    const dev0 = try staging.device(0);
    try dev0.enablePeerAccess(devices[0]);
    try dev0.enablePeerAccess(devices[0]); // already enabled: fine
    try testing.expectEqual(@as(u32, 2), state.module_loads);
}

test "fake driver: grids are capped at blocks_per_sm per SM and grid-stride the rest" {
    try install();
    defer uninstall();
    const dev = try staging.device(0);
    const count: u64 = 1 << 20; // 4 MiB of f32: 262144 vectors
    const d = try dev.alloc(count * 4);
    defer dev.free(d) catch unreachable;
    try dev.memset(d, 0, count * 4);
    try staging.reduce(0, .max, .f32, d, d, count);
    try testing.expectEqual([2]u32{ sm_count * driver.blocks_per_sm, 1 }, state.last_grid);
    try testing.expectEqual(@as(u32, 1), dev.gridFor(0));
    try testing.expectEqual(@as(u32, 1), dev.gridFor(driver.threads_per_block));
    try testing.expectEqual(@as(u32, 2), dev.gridFor(driver.threads_per_block + 1));
}

test "fake driver: staging mirrors, reduce2 / reduceN / avg / strided copy" {
    try install();
    defer uninstall();
    const dev = try staging.device(0);
    const count = 64;
    const bytes = count * 8;
    const x = try dev.alloc(bytes);
    const y = try dev.alloc(bytes);
    const z = try dev.alloc(bytes);
    defer for ([_]u64{ x, y, z }) |p| dev.free(p) catch unreachable;
    var host: [count]i64 = undefined;
    for (&host, 0..) |*v, i| v.* = @intCast(i);
    try staging.fromHost(0, x, std.mem.sliceAsBytes(&host));
    for (&host, 0..) |*v, i| v.* = -3 * @as(i64, @intCast(i));
    try staging.fromHost(0, y, std.mem.sliceAsBytes(&host));

    // In place: one host buffer; the algorithm's result goes back to the same pointer.
    {
        var mirror = try staging.HostMirror.begin(0, x, bytes, x, bytes);
        defer mirror.release();
        try testing.expectEqual(mirror.send.ptr, mirror.recv.ptr);
        const view = std.mem.bytesAsSlice(i64, mirror.recv);
        for (view, 0..) |*v, i| {
            try testing.expectEqual(@as(i64, @intCast(i)), v.*);
            v.* *= 10;
        }
        try mirror.finish();
    }
    try testing.expectEqual(@as(usize, 1), liveAllocations(true)); // cached, not freed
    // Separate send / recv, reusing the cached pinned buffer.
    {
        var mirror = try staging.HostMirror.begin(0, y, bytes, z, bytes);
        defer mirror.release();
        try testing.expect(mirror.send.ptr != mirror.recv.ptr);
        @memcpy(mirror.recv, mirror.send);
        try mirror.finish();
    }
    try testing.expectEqual(@as(usize, 2), liveAllocations(true));

    try staging.reduce2(0, .sum, .i64, z, x, y, count); // 10 i - 3 i
    try staging.toHost(0, std.mem.sliceAsBytes(&host), z);
    for (host, 0..) |v, i| try testing.expectEqual(7 * @as(i64, @intCast(i)), v);
    try staging.reduceN(0, .max, .i64, z, &.{ y, x, z }, count); // max(-3i, 10i, 7i)
    try staging.toHost(0, std.mem.sliceAsBytes(&host), z);
    for (host, 0..) |v, i| try testing.expectEqual(10 * @as(i64, @intCast(i)), v);
    try testing.expectError(error.InvalidArgument, staging.reduceN(0, .max, .i64, z, &([_]u64{x} ** 9), count));
    try testing.expectError(error.InvalidArgument, staging.finalizeAvg(0, .i64, z, count, 2));

    var floats: [count]f64 = undefined;
    for (&floats, 0..) |*v, i| v.* = @floatFromInt(3 * i);
    try staging.fromHost(0, x, std.mem.sliceAsBytes(&floats));
    try staging.finalizeAvg(0, .f64, x, count, 3);
    try staging.toHost(0, std.mem.sliceAsBytes(&floats), x);
    for (floats, 0..) |v, i| try testing.expectEqual(@as(f64, @floatFromInt(i)), v);

    // Pack 4 blocks of 8 bytes from a stride of 16 (x) into y, then unpack into z.
    try staging.copyStrided(0, y, x, 8, 4, 8, 16);
    try staging.copyStrided(0, z + 8, y, 8, 4, 16, 8);
    var packed_back: [8]f64 = undefined;
    try staging.toHost(0, std.mem.sliceAsBytes(&packed_back), z);
    for (0..4) |i| try testing.expectEqual(@as(f64, @floatFromInt(2 * i)), packed_back[2 * i + 1]);
    try testing.expectError(error.InvalidArgument, staging.copyStrided(0, x + 8, x, 8, 4, 16, 16));
}
