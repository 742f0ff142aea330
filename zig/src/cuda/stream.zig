//! Pinned host buffers, events and streams of a CUDA device (moved from driver.zig).
const std = @import("std");
const driver = @import("driver.zig");
const CUdeviceptr = driver.CUdeviceptr;
const CUevent = driver.CUevent;
const CUstream = driver.CUstream;
const DType = driver.DType;
const Device = driver.Device;
const Error = driver.Error;
const RedOp = driver.RedOp;
const Sources = driver.Sources;
const fail = driver.fail;
const reduce_sources_max = driver.reduce_sources_max;

pub const PinnedBuffer = struct {
    ptr: [*]u8,
    bytes: u64,

    pub fn slice(self: PinnedBuffer) []u8 {
        return self.ptr[0..self.bytes];
    }
};

pub const Event = struct {
    device: *Device,
    handle: CUevent,

    pub fn record(self: Event, stream: Stream) Error!void {
        try self.device.check(self.device.driver.api.cuEventRecord(self.handle, stream.handle), "cuEventRecord", .{});
    }
    pub fn synchronize(self: Event) Error!void {
        try self.device.check(self.device.driver.api.cuEventSynchronize(self.handle), "cuEventSynchronize", .{});
    }
    /// Milliseconds between two recorded timing events.
    pub fn elapsedMs(start: Event, end: Event) Error!f32 {
        const elapsed = start.device.driver.api.cuEventElapsedTime orelse
            return fail(error.Cuda, "CUDA cuEventElapsedTime: missing from this driver", .{});
        var ms: f32 = 0;
        try start.device.check(elapsed(&ms, start.handle, end.handle), "cuEventElapsedTime", .{});
        return ms;
    }
    pub fn destroy(self: Event) void {
        self.device.makeCurrent() catch {};
        _ = self.device.driver.api.cuEventDestroy(self.handle);
    }
};

/// An ordered queue of device work. Methods enqueue without synchronizing and without range
/// checks (callers pass pointers they own or have checked); synchronize() waits.
pub const Stream = struct {
    device: *Device,
    handle: CUstream,

    pub fn destroy(self: Stream) void {
        std.debug.assert(self.handle != self.device.stream);
        self.device.makeCurrent() catch {};
        _ = self.device.driver.api.cuStreamDestroy(self.handle);
    }

    pub fn synchronize(self: Stream) Error!void {
        try self.device.check(self.device.driver.api.cuStreamSynchronize(self.handle), "cuStreamSynchronize", .{});
    }

    pub fn waitEvent(self: Stream, event: Event) Error!void {
        try self.device.check(self.device.driver.api.cuStreamWaitEvent(self.handle, event.handle, 0), "cuStreamWaitEvent", .{});
    }

    /// Host -> device; `src` must stay valid until the stream reaches the copy (pinned memory
    /// makes it asynchronous; pageable memory is staged by the driver before this returns).
    pub fn copyToDevice(self: Stream, dptr: CUdeviceptr, src: []const u8) Error!void {
        if (src.len == 0) return;
        try self.device.makeCurrent();
        try self.device.check(self.device.driver.api.cuMemcpyHtoDAsync(dptr, src.ptr, src.len, self.handle), "cuMemcpyHtoDAsync(0x{x}, {d} bytes)", .{ dptr, src.len });
    }

    pub fn copyToHost(self: Stream, dst: []u8, dptr: CUdeviceptr) Error!void {
        if (dst.len == 0) return;
        try self.device.makeCurrent();
        try self.device.check(self.device.driver.api.cuMemcpyDtoHAsync(dst.ptr, dptr, dst.len, self.handle), "cuMemcpyDtoHAsync(0x{x}, {d} bytes)", .{ dptr, dst.len });
    }

    pub fn copyDeviceToDevice(self: Stream, dst: CUdeviceptr, src: CUdeviceptr, bytes: u64) Error!void {
        if (bytes == 0) return;
        try self.device.makeCurrent();
        try self.device.check(self.device.driver.api.cuMemcpyDtoDAsync(dst, src, bytes, self.handle), "cuMemcpyDtoDAsync(0x{x} <- 0x{x}, {d} bytes)", .{ dst, src, bytes });
    }

    /// dst = dst op src (redop avg: sum; finish with scale()).
    pub fn reduce(self: Stream, redop: RedOp, dtype: DType, dst: CUdeviceptr, src: CUdeviceptr, count: u64) Error!void {
        try checkPair(redop, dtype);
        if (count == 0) return;
        const function = self.device.kernels.reduce.get(redop).get(dtype).?;
        var p_dst = dst;
        var p_src = src;
        var p_count = count;
        const params = [_]?*anyopaque{ @ptrCast(&p_dst), @ptrCast(&p_src), @ptrCast(&p_count) };
        const grid = self.device.gridFor(vectorItems(dtype, count));
        try self.device.launch(function, grid, 1, self.handle, &params, "mr_reduce_{s}_{s}, {d} elements", .{ @tagName(redop), @tagName(dtype), count });
    }

    /// dst = a op b (dst may equal a or b).
    pub fn reduce2(self: Stream, redop: RedOp, dtype: DType, dst: CUdeviceptr, a: CUdeviceptr, b: CUdeviceptr, count: u64) Error!void {
        try checkPair(redop, dtype);
        if (count == 0) return;
        const function = self.device.kernels.reduce2.get(redop).get(dtype).?;
        var p_dst = dst;
        var p_a = a;
        var p_b = b;
        var p_count = count;
        const params = [_]?*anyopaque{ @ptrCast(&p_dst), @ptrCast(&p_a), @ptrCast(&p_b), @ptrCast(&p_count) };
        const grid = self.device.gridFor(vectorItems(dtype, count));
        try self.device.launch(function, grid, 1, self.handle, &params, "mr_reduce2_{s}_{s}, {d} elements", .{ @tagName(redop), @tagName(dtype), count });
    }

    /// dst = srcs[0] op srcs[1] op ... in this order, accumulated in the accumulation type and
    /// rounded once (1 <= srcs.len <= reduce_sources_max; sources may be peer/IPC memory).
    pub fn reduceN(self: Stream, redop: RedOp, dtype: DType, dst: CUdeviceptr, srcs: []const CUdeviceptr, count: u64) Error!void {
        try checkPair(redop, dtype);
        if (srcs.len == 0 or srcs.len > reduce_sources_max) {
            return fail(error.InvalidArgument, "CUDA reduceN: {d} sources (1..{d})", .{ srcs.len, reduce_sources_max });
        }
        if (count == 0) return;
        const function = self.device.kernels.reduceN.get(redop).get(dtype).?;
        var p_dst = dst;
        var p_srcs: Sources = .{ .ptr = [_]u64{0} ** reduce_sources_max, .count = @intCast(srcs.len) };
        @memcpy(p_srcs.ptr[0..srcs.len], srcs);
        var p_count = count;
        const params = [_]?*anyopaque{ @ptrCast(&p_dst), @ptrCast(&p_srcs), @ptrCast(&p_count) };
        const grid = self.device.gridFor(count);
        try self.device.launch(function, grid, 1, self.handle, &params, "mr_reduceN_{s}_{s}, {d} elements", .{ @tagName(redop), @tagName(dtype), count });
    }

    /// dst = dst / divisor in the accumulation type (float dtypes; avg's last step).
    pub fn scale(self: Stream, dtype: DType, dst: CUdeviceptr, count: u64, divisor: f64) Error!void {
        if (dtype.kind() != .float) {
            return fail(error.InvalidArgument, "CUDA scale: dtype {s} is not a float dtype", .{dtype.name()});
        }
        if (count == 0) return;
        const function = self.device.kernels.scale.get(dtype).?;
        var p_dst = dst;
        var p_count = count;
        var p_divisor = divisor;
        const params = [_]?*anyopaque{ @ptrCast(&p_dst), @ptrCast(&p_count), @ptrCast(&p_divisor) };
        const grid = self.device.gridFor(vectorItems(dtype, count));
        try self.device.launch(function, grid, 1, self.handle, &params, "mr_scale_{s}, {d} elements", .{ @tagName(dtype), count });
    }

    /// `blocks` blocks of `block_bytes`: block i from src + i * src_stride to dst + i * dst_stride
    /// (pack: dst_stride = block_bytes; unpack: src_stride = block_bytes). No overlap.
    pub fn copyStrided(self: Stream, dst: CUdeviceptr, src: CUdeviceptr, block_bytes: u64, blocks: u64, dst_stride: u64, src_stride: u64) Error!void {
        if (block_bytes == 0 or blocks == 0) return;
        const function = self.device.kernels.copy_strided;
        var p = [_]u64{ dst, src, block_bytes, blocks, dst_stride, src_stride };
        const params = [_]?*anyopaque{ @ptrCast(&p[0]), @ptrCast(&p[1]), @ptrCast(&p[2]), @ptrCast(&p[3]), @ptrCast(&p[4]), @ptrCast(&p[5]) };
        const grid_y: u32 = @intCast(@min(blocks, 65535));
        const words = std.math.divCeil(u64, block_bytes, 16) catch unreachable;
        const total = self.device.gridFor(words * grid_y);
        const grid_x: u32 = @max(1, total / grid_y);
        try self.device.launch(function, grid_x, grid_y, self.handle, &params, "mr_copy_strided, {d} x {d} bytes", .{ blocks, block_bytes });
    }
};

/// Work items of a vectorised elementwise kernel: 16-byte vectors.
fn vectorItems(dtype: DType, count: u64) u64 {
    return std.math.divCeil(u64, count * dtype.bytes(), 16) catch unreachable;
}

/// InvalidArgument unless `redop` is defined for `dtype` (the table's kinds).
pub fn checkPair(redop: RedOp, dtype: DType) Error!void {
    if (!redop.supports(dtype.kind())) {
        return fail(error.InvalidArgument, "CUDA reduce: reduce op {s} is not defined for {s} dtype {s}", .{
            @tagName(redop), @tagName(dtype.kind()), dtype.name(),
        });
    }
}
