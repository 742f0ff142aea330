//! C ABI exports for CUDA: the mr_cuda_* functions of zig/include/moonring.h, over driver.zig
//! (libcuda.so.1 opened at run time) and staging.zig. Results are 0 / a negative MR_E* code;
//! on failure the calling thread's message is driver.lastErrorMessage() (mr_last_error() shows
//! it while it is non-empty). Every mr_cuda_* call clears it first, so a stale CUDA message
//! never hides a later engine error; the engine should call driver.clearError() when it sets
//! its own message.
//!
//! mr_cuda_reduce with redop avg reduces as sum (one step of a collective); the division by
//! the group size is staging.finalizeAvg, applied once at the end.
const std = @import("std");
const driver = @import("driver.zig");
const staging = @import("staging.zig");
const verbs_buffers = @import("../transport/verbs_regcache.zig").buffers;
const c = @import("../abi_check.zig").c;
const ops = @import("ops_table");

/// MR_E* codes of moonring.h (their one definition).
pub const MR_OK: i32 = c.MR_OK;
pub const MR_EINVAL: i32 = c.MR_EINVAL;
pub const MR_ENOMEM: i32 = c.MR_ENOMEM;
pub const MR_ENODEV: i32 = c.MR_ENODEV;
pub const MR_EIO: i32 = c.MR_EIO;

/// The thread's message of the last failed mr_cuda_* call.
pub const lastErrorMessage = driver.lastErrorMessage;

pub fn code(err: driver.Error) i32 {
    return switch (err) {
        error.NoDevice => MR_ENODEV,
        error.InvalidArgument => MR_EINVAL,
        error.OutOfMemory => MR_ENOMEM,
        error.Cuda => MR_EIO,
    };
}

/// MR_OK if `device` is usable (for calls with nothing to do), else its error code.
fn deviceStatus(device: i32) i32 {
    _ = staging.device(device) catch |err| return code(err);
    return MR_OK;
}

fn result(outcome: driver.Error!void) i32 {
    outcome catch |err| return code(err);
    return MR_OK;
}

pub export fn mr_cuda_device_count() i32 {
    driver.clearError();
    const count = staging.deviceCount() catch return 0;
    return @intCast(@min(count, driver.devices_max));
}

pub export fn mr_cuda_alloc(device: i32, bytes: u64) u64 {
    driver.clearError();
    const dev = staging.device(device) catch return 0;
    return dev.alloc(bytes) catch 0;
}

pub export fn mr_cuda_free(device: i32, dptr: u64) i32 {
    driver.clearError();
    verbs_buffers.dropDeviceMemory(dptr);
    const dev = staging.device(device) catch |err| return code(err);
    return result(dev.free(dptr));
}

pub export fn mr_cuda_copy_to_device(device: i32, dptr: u64, src: ?*const anyopaque, bytes: u64) i32 {
    driver.clearError();
    if (bytes == 0) return deviceStatus(device);
    const p = src orelse return code(driver.fail(error.InvalidArgument, "mr_cuda_copy_to_device: src is NULL ({d} bytes)", .{bytes}));
    const host: [*]const u8 = @ptrCast(p);
    return result(staging.fromHost(device, dptr, host[0..bytes]));
}

pub export fn mr_cuda_copy_to_host(device: i32, dst: ?*anyopaque, dptr: u64, bytes: u64) i32 {
    driver.clearError();
    if (bytes == 0) return deviceStatus(device);
    const p = dst orelse return code(driver.fail(error.InvalidArgument, "mr_cuda_copy_to_host: dst is NULL ({d} bytes)", .{bytes}));
    const host: [*]u8 = @ptrCast(p);
    return result(staging.toHost(device, host[0..bytes], dptr));
}

pub export fn mr_cuda_ipc_handle(device: i32, dptr: u64, handle_out: [*c]u8) i32 {
    driver.clearError();
    if (handle_out == null) return code(driver.fail(error.InvalidArgument, "mr_cuda_ipc_handle: handle_out is NULL", .{}));
    const handle = staging.ipcHandle(device, dptr) catch |err| return code(err);
    @memcpy(handle_out[0..driver.ipc_handle_bytes], &handle.reserved);
    return MR_OK;
}

pub export fn mr_cuda_reduce(device: i32, redop: u32, dtype: u32, dst: u64, src: u64, count: u64) i32 {
    driver.clearError();
    const op = std.meta.intToEnum(ops.RedOp, redop) catch
        return code(driver.fail(error.InvalidArgument, "mr_cuda_reduce: unknown reduce op code {d}", .{redop}));
    const dt = std.meta.intToEnum(ops.DType, dtype) catch
        return code(driver.fail(error.InvalidArgument, "mr_cuda_reduce: unknown dtype code {d}", .{dtype}));
    return result(staging.reduce(device, op, dt, dst, src, count));
}

test {
    _ = driver;
    _ = staging;
    _ = @import("fake_driver.zig");
}

const testing = std.testing;

test "mr_cuda_device_count: 0 and 'no CUDA device: ...' without a GPU" {
    const count = mr_cuda_device_count();
    if (count == 0) {
        try testing.expect(std.mem.startsWith(u8, lastErrorMessage(), "no CUDA device: "));
        // Every entry point fails cleanly with MR_ENODEV and the same message.
        try testing.expectEqual(@as(u64, 0), mr_cuda_alloc(0, 1024));
        try testing.expect(std.mem.startsWith(u8, lastErrorMessage(), "no CUDA device: "));
        var host = [_]u8{0} ** 16;
        try testing.expectEqual(MR_ENODEV, mr_cuda_copy_to_device(0, 0x1000, &host, host.len));
        try testing.expectEqual(MR_ENODEV, mr_cuda_copy_to_host(0, &host, 0x1000, host.len));
        try testing.expectEqual(MR_ENODEV, mr_cuda_reduce(0, 0, 2, 0x1000, 0x2000, 4));
        try testing.expectEqual(MR_ENODEV, mr_cuda_free(0, 0x1000));
        var handle: [64]u8 = undefined;
        try testing.expectEqual(MR_ENODEV, mr_cuda_ipc_handle(0, 0x1000, &handle));
        try testing.expect(std.mem.startsWith(u8, lastErrorMessage(), "no CUDA device: "));
    } else {
        // A machine with a GPU: the driver works.
        try testing.expect(count > 0);
        const dptr = mr_cuda_alloc(0, 4096);
        try testing.expect(dptr != 0);
        try testing.expectEqual(MR_OK, mr_cuda_free(0, dptr));
    }
}
