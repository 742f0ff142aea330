//! Device-side helpers for the engine: run a collective on device pointers (mr_submit with
//! device >= 0).
//!
//! First path (works everywhere, simplest): stage -> CPU algorithm -> unstage.
//!
//!     var mirror = try staging.HostMirror.begin(device, send_dptr, send_bytes, recv_dptr, recv_bytes);
//!     defer mirror.release();                // returns the pinned buffers to the device cache
//!     try algo.run(comm, desc_with(mirror.send, mirror.recv), scratch);   // host memory
//!     try mirror.finish();                   // recv bytes -> recv_dptr
//!
//! Faster paths (later: peers of one host with CUDA IPC): `reduce`, `reduce2`, `reduceN` run
//! the reduction kernels on device memory, `Stream` (driver.zig) enqueues copies and kernels
//! without synchronizing, `ipcHandle` / `ipcOpen` map a peer process's buffer.
//!
//! Every function here is synchronous, validates its arguments (pointer ranges inside one
//! allocation, element alignment, (redop, dtype) pairs) and on failure sets the thread's
//! message (driver.lastErrorMessage()).
const std = @import("std");
const driver = @import("driver.zig");

pub const Error = driver.Error;
pub const Device = driver.Device;
pub const Stream = driver.Stream;
pub const DType = driver.DType;
pub const RedOp = driver.RedOp;
pub const IpcMemHandle = driver.IpcMemHandle;
pub const lastErrorMessage = driver.lastErrorMessage;

/// The device of `ordinal` (its context, kernels and shared stream are set up on first use).
pub fn device(ordinal: i32) Error!*Device {
    const d = try driver.get();
    return d.device(ordinal);
}

/// Number of CUDA devices, or error.NoDevice ("no CUDA device: <why>").
pub fn deviceCount() Error!u32 {
    const d = try driver.get();
    return d.device_count;
}

/// host <- device (`host.len` bytes from dptr).
pub fn toHost(ordinal: i32, host: []u8, dptr: u64) Error!void {
    const dev = try device(ordinal);
    try dev.copyToHost(host, dptr);
}

/// device <- host (`host.len` bytes to dptr).
pub fn fromHost(ordinal: i32, dptr: u64, host: []const u8) Error!void {
    const dev = try device(ordinal);
    try dev.copyToDevice(dptr, host);
}

/// dst[i] = dst[i] op src[i] for i < count, on the device (avg reduces as sum: call
/// finalizeAvg once at the end). dst == src is allowed; other overlap is not.
pub fn reduce(ordinal: i32, redop: RedOp, dtype: DType, dst: u64, src: u64, count: u64) Error!void {
    try driver.checkPair(redop, dtype);
    const dev = try device(ordinal);
    if (count == 0) return;
    const bytes = try byteLength(dtype, count);
    try checkOperand(dev, dtype, dst, bytes, "reduce (dst)");
    try checkOperand(dev, dtype, src, bytes, "reduce (src)");
    try checkNoPartialOverlap(dst, src, bytes);
    const stream = dev.sharedStream();
    try stream.reduce(redop, dtype, dst, src, count);
    try stream.synchronize();
}

/// dst[i] = a[i] op b[i] (the ring's "reduce what arrived into a fresh buffer"). dst may equal
/// a or b.
pub fn reduce2(ordinal: i32, redop: RedOp, dtype: DType, dst: u64, a: u64, b: u64, count: u64) Error!void {
    try driver.checkPair(redop, dtype);
    const dev = try device(ordinal);
    if (count == 0) return;
    const bytes = try byteLength(dtype, count);
    try checkOperand(dev, dtype, dst, bytes, "reduce2 (dst)");
    try checkOperand(dev, dtype, a, bytes, "reduce2 (a)");
    try checkOperand(dev, dtype, b, bytes, "reduce2 (b)");
    try checkNoPartialOverlap(dst, a, bytes);
    try checkNoPartialOverlap(dst, b, bytes);
    const stream = dev.sharedStream();
    try stream.reduce2(redop, dtype, dst, a, b, count);
    try stream.synchronize();
}

/// dst[i] = srcs[0][i] op srcs[1][i] op ... (in this order, one rounding: give every rank the
/// same order to get identical bytes). Sources may live on peer devices or be IPC-mapped.
pub fn reduceN(ordinal: i32, redop: RedOp, dtype: DType, dst: u64, srcs: []const u64, count: u64) Error!void {
    try driver.checkPair(redop, dtype);
    const dev = try device(ordinal);
    if (count == 0) return;
    const bytes = try byteLength(dtype, count);
    try checkOperand(dev, dtype, dst, bytes, "reduceN (dst)");
    for (srcs) |src| {
        try checkOperand(dev, dtype, src, bytes, "reduceN (src)");
        try checkNoPartialOverlap(dst, src, bytes);
    }
    const stream = dev.sharedStream();
    try stream.reduceN(redop, dtype, dst, srcs, count);
    try stream.synchronize();
}

/// avg's last step: dptr[i] /= group_size in the accumulation type (float dtypes).
pub fn finalizeAvg(ordinal: i32, dtype: DType, dptr: u64, count: u64, group_size: u32) Error!void {
    if (dtype.kind() != .float) return driver.fail(error.InvalidArgument, "CUDA avg: dtype {s} is not a float dtype", .{dtype.name()});
    if (group_size == 0) return driver.fail(error.InvalidArgument, "CUDA avg: group size 0", .{});
    const dev = try device(ordinal);
    if (count == 0) return;
    try checkOperand(dev, dtype, dptr, try byteLength(dtype, count), "avg");
    const stream = dev.sharedStream();
    try stream.scale(dtype, dptr, count, @floatFromInt(group_size));
    try stream.synchronize();
}

/// Device-to-device copy of `blocks` blocks of block_bytes with strides (pack / unpack).
pub fn copyStrided(ordinal: i32, dst: u64, src: u64, block_bytes: u64, blocks: u64, dst_stride: u64, src_stride: u64) Error!void {
    const dev = try device(ordinal);
    if (block_bytes == 0 or blocks == 0) return;
    const dst_span = try span(block_bytes, blocks, dst_stride);
    const src_span = try span(block_bytes, blocks, src_stride);
    try dev.checkRange(dst, dst_span, "strided copy (dst)");
    try dev.checkRange(src, src_span, "strided copy (src)");
    if (dst < src + src_span and src < dst + dst_span) {
        return driver.fail(error.InvalidArgument, "CUDA strided copy: source and destination overlap", .{});
    }
    const stream = dev.sharedStream();
    try stream.copyStrided(dst, src, block_bytes, blocks, dst_stride, src_stride);
    try stream.synchronize();
}

pub fn ipcHandle(ordinal: i32, dptr: u64) Error!IpcMemHandle {
    const dev = try device(ordinal);
    return dev.ipcHandle(dptr);
}

/// Base and length of the allocation holding dptr (an IPC handle names the allocation: send
/// dptr - base with it).
pub fn allocationOf(ordinal: i32, dptr: u64) Error!struct { base: u64, bytes: u64 } {
    const dev = try device(ordinal);
    const range = try dev.addressRange(dptr);
    return .{ .base = range.base, .bytes = range.bytes };
}

/// Maps a peer process's allocation on this device; returns its base (add the sender's
/// offset). Fails in the process that created the handle.
pub fn ipcOpen(ordinal: i32, handle: IpcMemHandle) Error!u64 {
    const dev = try device(ordinal);
    return dev.ipcOpen(handle);
}

pub fn ipcClose(ordinal: i32, dptr: u64) Error!void {
    const dev = try device(ordinal);
    return dev.ipcClose(dptr);
}

/// Host copies of a device op's buffers (pinned, from the device's cache). In place
/// (send_dptr == recv_dptr) shares one host buffer, so `send` and `recv` alias like the
/// device buffers do. A zero length or null pointer means "no such buffer" (empty slice).
pub const HostMirror = struct {
    device: *Device,
    recv_dptr: u64,
    send: []u8,
    recv: []u8,
    buffers: [2]?driver.PinnedBuffer,

    /// Copies send_bytes from send_dptr to host memory.
    pub fn begin(ordinal: i32, send_dptr: u64, send_bytes: u64, recv_dptr: u64, recv_bytes: u64) Error!HostMirror {
        const dev = try device(ordinal);
        const has_send = send_dptr != 0 and send_bytes > 0;
        const has_recv = recv_dptr != 0 and recv_bytes > 0;
        if (has_send) try dev.checkRange(send_dptr, send_bytes, "staging (send)");
        if (has_recv) try dev.checkRange(recv_dptr, recv_bytes, "staging (recv)");
        var mirror: HostMirror = .{ .device = dev, .recv_dptr = if (has_recv) recv_dptr else 0, .send = &.{}, .recv = &.{}, .buffers = .{ null, null } };
        errdefer mirror.release();
        if (has_send and has_recv and send_dptr == recv_dptr) {
            const buffer = try dev.takePinned(@max(send_bytes, recv_bytes));
            mirror.buffers[0] = buffer;
            mirror.send = buffer.ptr[0..send_bytes];
            mirror.recv = buffer.ptr[0..recv_bytes];
        } else {
            if (has_send) {
                const buffer = try dev.takePinned(send_bytes);
                mirror.buffers[0] = buffer;
                mirror.send = buffer.ptr[0..send_bytes];
            }
            if (has_recv) {
                const buffer = try dev.takePinned(recv_bytes);
                mirror.buffers[1] = buffer;
                mirror.recv = buffer.ptr[0..recv_bytes];
            }
        }
        if (has_send) try dev.copyToHost(mirror.send, send_dptr);
        return mirror;
    }

    /// Copies `recv` back to recv_dptr (call once the host algorithm succeeded).
    pub fn finish(self: *HostMirror) Error!void {
        if (self.recv.len > 0) try self.device.copyToDevice(self.recv_dptr, self.recv);
    }

    /// Gives the pinned buffers back (idempotent).
    pub fn release(self: *HostMirror) void {
        for (&self.buffers) |*slot| {
            if (slot.*) |buffer| self.device.putPinned(buffer);
            slot.* = null;
        }
        self.send = &.{};
        self.recv = &.{};
    }
};

fn byteLength(dtype: DType, count: u64) Error!u64 {
    return std.math.mul(u64, count, dtype.bytes()) catch
        driver.fail(error.InvalidArgument, "CUDA: {d} elements of {s} overflow 64 bits", .{ count, dtype.name() });
}

fn span(block_bytes: u64, blocks: u64, stride: u64) Error!u64 {
    const last = std.math.mul(u64, blocks - 1, stride) catch return driver.fail(error.InvalidArgument, "CUDA strided copy: size overflows", .{});
    return std.math.add(u64, last, block_bytes) catch driver.fail(error.InvalidArgument, "CUDA strided copy: size overflows", .{});
}

fn checkOperand(dev: *Device, dtype: DType, dptr: u64, bytes: u64, comptime what: []const u8) Error!void {
    if (dptr % dtype.bytes() != 0) {
        return driver.fail(error.InvalidArgument, "CUDA " ++ what ++ " on device {d}: 0x{x} is not aligned to {s} ({d} bytes)", .{
            dev.ordinal, dptr, dtype.name(), dtype.bytes(),
        });
    }
    try dev.checkRange(dptr, bytes, what);
}

fn checkNoPartialOverlap(a: u64, b: u64, bytes: u64) Error!void {
    if (a == b) return;
    if (a < b + bytes and b < a + bytes) {
        return driver.fail(error.InvalidArgument, "CUDA reduce: buffers 0x{x} and 0x{x} partially overlap ({d} bytes)", .{ a, b, bytes });
    }
}
