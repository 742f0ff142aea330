//! Tests of driver.zig, staging.zig and the mr_cuda_* exports on machines without a GPU: a fake
//! driver table (`api`) whose "device memory" is host memory and whose kernel launches run the
//! CPU reductions of ../reduce.zig (an independent implementation) by kernel name. It checks
//! what a real driver would reject: launch shapes, unknown kernels, pointers outside
//! allocations, frees of unknown pointers. What it cannot check (the CUDA kernels themselves,
//! real copies, IPC between processes) is tests/gpu/*.test.ts on a GPU machine.
const std = @import("std");
const builtin = @import("builtin");
const driver = @import("driver.zig");
const staging = @import("staging.zig");
const exports = @import("exports.zig");
const cpu = @import("../reduce.zig");

comptime {
    std.debug.assert(builtin.is_test);
}

const CUresult = driver.CUresult;
const CUdeviceptr = driver.CUdeviceptr;

const allocations_max = 64;
const device_count = 2;
const sm_count = 2;

const Allocation = struct { memory: []align(256) u8, pinned: bool };

const State = struct {
    allocations: [allocations_max]?Allocation = [_]?Allocation{null} ** allocations_max,
    module_loads: u32 = 0,
    launches: u32 = 0,
    last_grid: [2]u32 = .{ 0, 0 },
    peer_enabled: bool = false,
    alloc_bytes_max: u64 = 1 << 30,
};
var state: State = .{};
var state_mutex: std.Thread.Mutex = .{};

fn find(dptr: u64) ?*Allocation {
    for (&state.allocations) |*slot| {
        if (slot.*) |*a| {
            const base = @intFromPtr(a.memory.ptr);
            if (dptr >= base and dptr < base + a.memory.len) return a;
        }
    }
    return null;
}

fn add(bytes: usize, pinned: bool) ?[*]u8 {
    const memory = std.heap.c_allocator.alignedAlloc(u8, 256, bytes) catch return null;
    for (&state.allocations) |*slot| {
        if (slot.* == null) {
            slot.* = .{ .memory = memory, .pinned = pinned };
            return memory.ptr;
        }
    }
    std.heap.c_allocator.free(memory);
    return null;
}

fn remove(ptr: u64, pinned: bool) CUresult {
    for (&state.allocations) |*slot| {
        if (slot.*) |a| if (@intFromPtr(a.memory.ptr) == ptr and a.pinned == pinned) {
            std.heap.c_allocator.free(a.memory);
            slot.* = null;
            return 0;
        };
    }
    return driver.CUDA_ERROR_INVALID_VALUE;
}

fn liveAllocations(pinned: bool) usize {
    var n: usize = 0;
    for (state.allocations) |slot| {
        if (slot) |a| if (a.pinned == pinned) {
            n += 1;
        };
    }
    return n;
}

fn bytesAt(dptr: u64, len: u64) []u8 {
    const p: [*]u8 = @ptrFromInt(dptr);
    return p[0..len];
}

// ---- the fake entry points ----

fn cuInit(_: c_uint) callconv(.c) CUresult {
    return 0;
}
fn cuDriverGetVersion(v: *c_int) callconv(.c) CUresult {
    v.* = 13000;
    return 0;
}
fn cuGetErrorName(r: CUresult, out: *?[*:0]const u8) callconv(.c) CUresult {
    out.* = switch (r) {
        1 => "CUDA_ERROR_INVALID_VALUE",
        2 => "CUDA_ERROR_OUT_OF_MEMORY",
        500 => "CUDA_ERROR_NOT_FOUND",
        else => return driver.CUDA_ERROR_INVALID_VALUE,
    };
    return 0;
}
fn cuGetErrorString(r: CUresult, out: *?[*:0]const u8) callconv(.c) CUresult {
    out.* = switch (r) {
        1 => "invalid argument",
        2 => "out of memory",
        500 => "named symbol not found",
        else => return driver.CUDA_ERROR_INVALID_VALUE,
    };
    return 0;
}
fn cuDeviceGetCount(n: *c_int) callconv(.c) CUresult {
    n.* = device_count;
    return 0;
}
fn cuDeviceGet(d: *driver.CUdevice, ordinal: c_int) callconv(.c) CUresult {
    if (ordinal < 0 or ordinal >= device_count) return driver.CUDA_ERROR_INVALID_DEVICE;
    d.* = ordinal;
    return 0;
}
fn cuDeviceGetAttribute(v: *c_int, attribute: c_int, _: driver.CUdevice) callconv(.c) CUresult {
    v.* = switch (attribute) {
        driver.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT => sm_count,
        driver.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR => 9,
        driver.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR => 0,
        else => return driver.CUDA_ERROR_INVALID_VALUE,
    };
    return 0;
}
fn cuDeviceGetName(out: [*]u8, len: c_int, _: driver.CUdevice) callconv(.c) CUresult {
    const name = "Fake GPU";
    std.debug.assert(len > name.len);
    @memcpy(out[0..name.len], name);
    out[name.len] = 0;
    return 0;
}
fn cuDeviceCanAccessPeer(can: *c_int, _: driver.CUdevice, _: driver.CUdevice) callconv(.c) CUresult {
    can.* = 1;
    return 0;
}
fn cuDevicePrimaryCtxRetain(ctx: *?driver.CUcontext, d: driver.CUdevice) callconv(.c) CUresult {
    ctx.* = @ptrFromInt(0x1000 + @as(usize, @intCast(d)));
    return 0;
}
fn cuCtxSetCurrent(_: ?driver.CUcontext) callconv(.c) CUresult {
    return 0;
}
fn cuCtxEnablePeerAccess(_: driver.CUcontext, _: c_uint) callconv(.c) CUresult {
    if (state.peer_enabled) return driver.CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED;
    state.peer_enabled = true;
    return 0;
}
fn cuModuleLoadData(m: *?driver.CUmodule, image: *const anyopaque) callconv(.c) CUresult {
    const bytes: [*]const u8 = @ptrCast(image);
    if (@intFromPtr(image) % 8 != 0) return driver.CUDA_ERROR_INVALID_VALUE;
    if (std.mem.readInt(u32, bytes[0..4], .little) != driver.fatbin_magic) return driver.CUDA_ERROR_INVALID_VALUE;
    state_mutex.lock();
    defer state_mutex.unlock();
    state.module_loads += 1;
    m.* = @ptrFromInt(0x2000);
    return 0;
}
fn cuModuleGetFunction(f: *?driver.CUfunction, _: driver.CUmodule, name: [*:0]const u8) callconv(.c) CUresult {
    const wanted = std.mem.span(name);
    for (driver.kernel_names, 0..) |kernel, i| {
        if (std.mem.eql(u8, kernel, wanted)) {
            f.* = @ptrFromInt(i + 1);
            return 0;
        }
    }
    return driver.CUDA_ERROR_NOT_FOUND;
}

fn param(comptime T: type, params: [*]const ?*anyopaque, i: usize) T {
    const p: *const T = @ptrCast(@alignCast(params[i].?));
    return p.*;
}

fn cuLaunchKernel(
    f: driver.CUfunction,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shared: c_uint,
    _: ?driver.CUstream,
    params_opt: ?[*]const ?*anyopaque,
    extra: ?[*]const ?*anyopaque,
) callconv(.c) CUresult {
    if (bx != driver.threads_per_block or by != 1 or bz != 1 or gz != 1 or shared != 0 or extra != null) return driver.CUDA_ERROR_INVALID_VALUE;
    if (gx == 0 or gy == 0 or gy > 65535) return driver.CUDA_ERROR_INVALID_VALUE;
    const params = params_opt orelse return driver.CUDA_ERROR_INVALID_VALUE;
    const index = @intFromPtr(f) - 1;
    if (index >= driver.kernel_names.len) return driver.CUDA_ERROR_INVALID_VALUE;
    const name = driver.kernel_names[index];
    state.launches += 1;
    state.last_grid = .{ gx, gy };

    if (std.mem.eql(u8, name, "mr_copy_strided")) {
        const dst = param(u64, params, 0);
        const src = param(u64, params, 1);
        const block_bytes = param(u64, params, 2);
        const blocks = param(u64, params, 3);
        const dst_stride = param(u64, params, 4);
        const src_stride = param(u64, params, 5);
        for (0..blocks) |b| @memcpy(bytesAt(dst + b * dst_stride, block_bytes), bytesAt(src + b * src_stride, block_bytes));
        return 0;
    }
    if (std.mem.startsWith(u8, name, "mr_scale_")) {
        const dtype = std.meta.stringToEnum(driver.DType, name["mr_scale_".len..]).?;
        const dst = param(u64, params, 0);
        const count = param(u64, params, 1);
        const divisor = param(f64, params, 2);
        cpu.finalizeAvg(dtype, bytesAt(dst, count * dtype.bytes()), @intFromFloat(divisor));
        return 0;
    }
    const Prefix = enum { reduce, reduce2, reduceN };
    const prefix: Prefix, const rest = if (std.mem.startsWith(u8, name, "mr_reduce_"))
        .{ .reduce, name["mr_reduce_".len..] }
    else if (std.mem.startsWith(u8, name, "mr_reduce2_"))
        .{ .reduce2, name["mr_reduce2_".len..] }
    else if (std.mem.startsWith(u8, name, "mr_reduceN_"))
        .{ .reduceN, name["mr_reduceN_".len..] }
    else
        return driver.CUDA_ERROR_INVALID_VALUE;
    const split = std.mem.indexOfScalar(u8, rest, '_').?;
    const redop = std.meta.stringToEnum(driver.RedOp, rest[0..split]).?;
    const dtype = std.meta.stringToEnum(driver.DType, rest[split + 1 ..]).?;
    const dst = param(u64, params, 0);
    switch (prefix) {
        .reduce => {
            const count = param(u64, params, 2);
            const bytes = count * dtype.bytes();
            cpu.reduceInto(dtype, redop, bytesAt(dst, bytes), bytesAt(param(u64, params, 1), bytes));
        },
        .reduce2 => {
            const count = param(u64, params, 3);
            const bytes = count * dtype.bytes();
            const tmp = std.heap.c_allocator.alloc(u8, bytes) catch return driver.CUDA_ERROR_OUT_OF_MEMORY;
            defer std.heap.c_allocator.free(tmp);
            @memcpy(tmp, bytesAt(param(u64, params, 1), bytes));
            cpu.reduceInto(dtype, redop, tmp, bytesAt(param(u64, params, 2), bytes));
            @memcpy(bytesAt(dst, bytes), tmp);
        },
        .reduceN => {
            const srcs = param(driver.Sources, params, 1);
            const count = param(u64, params, 2);
            const bytes = count * dtype.bytes();
            if (srcs.count == 0 or srcs.count > driver.reduce_sources_max) return driver.CUDA_ERROR_INVALID_VALUE;
            const tmp = std.heap.c_allocator.alloc(u8, bytes) catch return driver.CUDA_ERROR_OUT_OF_MEMORY;
            defer std.heap.c_allocator.free(tmp);
            @memcpy(tmp, bytesAt(srcs.ptr[0], bytes));
            for (srcs.ptr[1..srcs.count]) |src| cpu.reduceInto(dtype, redop, tmp, bytesAt(src, bytes));
            @memcpy(bytesAt(dst, bytes), tmp);
        },
    }
    return 0;
}
fn cuMemAlloc(dptr: *CUdeviceptr, bytes: usize) callconv(.c) CUresult {
    if (bytes == 0) return driver.CUDA_ERROR_INVALID_VALUE;
    if (bytes > state.alloc_bytes_max) return driver.CUDA_ERROR_OUT_OF_MEMORY;
    const p = add(bytes, false) orelse return driver.CUDA_ERROR_OUT_OF_MEMORY;
    dptr.* = @intFromPtr(p);
    return 0;
}
fn cuMemFree(dptr: CUdeviceptr) callconv(.c) CUresult {
    return remove(dptr, false);
}
fn cuMemGetAddressRange(base: ?*CUdeviceptr, bytes: ?*usize, dptr: CUdeviceptr) callconv(.c) CUresult {
    const a = find(dptr) orelse return driver.CUDA_ERROR_NOT_FOUND;
    if (a.pinned) return driver.CUDA_ERROR_NOT_FOUND;
    if (base) |b| b.* = @intFromPtr(a.memory.ptr);
    if (bytes) |n| n.* = a.memory.len;
    return 0;
}
fn inDevice(dptr: u64, bytes: usize) bool {
    const a = find(dptr) orelse return false;
    return !a.pinned and dptr + bytes <= @intFromPtr(a.memory.ptr) + a.memory.len;
}
fn cuMemcpyHtoDAsync(dst: CUdeviceptr, src: *const anyopaque, bytes: usize, _: ?driver.CUstream) callconv(.c) CUresult {
    if (!inDevice(dst, bytes)) return driver.CUDA_ERROR_INVALID_VALUE;
    const s: [*]const u8 = @ptrCast(src);
    @memcpy(bytesAt(dst, bytes), s[0..bytes]);
    return 0;
}
fn cuMemcpyDtoHAsync(dst: *anyopaque, src: CUdeviceptr, bytes: usize, _: ?driver.CUstream) callconv(.c) CUresult {
    if (!inDevice(src, bytes)) return driver.CUDA_ERROR_INVALID_VALUE;
    const d: [*]u8 = @ptrCast(dst);
    @memcpy(d[0..bytes], bytesAt(src, bytes));
    return 0;
}
fn cuMemcpyDtoDAsync(dst: CUdeviceptr, src: CUdeviceptr, bytes: usize, _: ?driver.CUstream) callconv(.c) CUresult {
    if (!inDevice(dst, bytes) or !inDevice(src, bytes)) return driver.CUDA_ERROR_INVALID_VALUE;
    @memcpy(bytesAt(dst, bytes), bytesAt(src, bytes));
    return 0;
}
fn cuMemcpyPeerAsync(dst: CUdeviceptr, _: driver.CUcontext, src: CUdeviceptr, _: driver.CUcontext, bytes: usize, s: ?driver.CUstream) callconv(.c) CUresult {
    return cuMemcpyDtoDAsync(dst, src, bytes, s);
}
fn cuMemsetD8Async(dst: CUdeviceptr, value: u8, n: usize, _: ?driver.CUstream) callconv(.c) CUresult {
    if (!inDevice(dst, n)) return driver.CUDA_ERROR_INVALID_VALUE;
    @memset(bytesAt(dst, n), value);
    return 0;
}
fn cuMemHostAlloc(p: *?*anyopaque, bytes: usize, _: c_uint) callconv(.c) CUresult {
    p.* = add(bytes, true) orelse return driver.CUDA_ERROR_OUT_OF_MEMORY;
    return 0;
}
fn cuMemFreeHost(p: *anyopaque) callconv(.c) CUresult {
    return remove(@intFromPtr(p), true);
}
fn cuMemHostRegister(_: *anyopaque, _: usize, _: c_uint) callconv(.c) CUresult {
    return 0;
}
fn cuMemHostUnregister(_: *anyopaque) callconv(.c) CUresult {
    return 0;
}
fn cuPointerGetAttribute(_: *anyopaque, _: c_int, _: CUdeviceptr) callconv(.c) CUresult {
    return 0;
}
fn cuStreamCreate(s: *?driver.CUstream, flags: c_uint) callconv(.c) CUresult {
    if (flags != driver.CU_STREAM_NON_BLOCKING) return driver.CUDA_ERROR_INVALID_VALUE;
    s.* = @ptrFromInt(0x3000);
    return 0;
}
fn cuStreamDestroy(_: driver.CUstream) callconv(.c) CUresult {
    return 0;
}
fn cuStreamSynchronize(_: ?driver.CUstream) callconv(.c) CUresult {
    return 0;
}
fn cuStreamWaitEvent(_: ?driver.CUstream, _: driver.CUevent, _: c_uint) callconv(.c) CUresult {
    return 0;
}
fn cuEventCreate(e: *?driver.CUevent, _: c_uint) callconv(.c) CUresult {
    e.* = @ptrFromInt(0x4000);
    return 0;
}
fn cuEventRecord(_: driver.CUevent, _: ?driver.CUstream) callconv(.c) CUresult {
    return 0;
}
fn cuEventSynchronize(_: driver.CUevent) callconv(.c) CUresult {
    return 0;
}
fn cuEventDestroy(_: driver.CUevent) callconv(.c) CUresult {
    return 0;
}
fn cuIpcGetMemHandle(h: *driver.IpcMemHandle, dptr: CUdeviceptr) callconv(.c) CUresult {
    const a = find(dptr) orelse return driver.CUDA_ERROR_INVALID_VALUE;
    @memset(&h.reserved, 0xAB);
    std.mem.writeInt(u64, h.reserved[0..8], @intFromPtr(a.memory.ptr), .little);
    return 0;
}
fn cuIpcOpenMemHandle(dptr: *CUdeviceptr, h: driver.IpcMemHandle, flags: c_uint) callconv(.c) CUresult {
    if (flags != driver.CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS or h.reserved[63] != 0xAB) return driver.CUDA_ERROR_INVALID_VALUE;
    dptr.* = std.mem.readInt(u64, h.reserved[0..8], .little);
    return 0;
}
fn cuIpcCloseMemHandle(_: CUdeviceptr) callconv(.c) CUresult {
    return 0;
}

pub const api: driver.Api = .{
    .cuInit = cuInit,
    .cuDriverGetVersion = cuDriverGetVersion,
    .cuGetErrorName = cuGetErrorName,
    .cuGetErrorString = cuGetErrorString,
    .cuDeviceGetCount = cuDeviceGetCount,
    .cuDeviceGet = cuDeviceGet,
    .cuDeviceGetAttribute = cuDeviceGetAttribute,
    .cuDeviceGetName = cuDeviceGetName,
    .cuDeviceCanAccessPeer = cuDeviceCanAccessPeer,
    .cuDevicePrimaryCtxRetain = cuDevicePrimaryCtxRetain,
    .cuCtxSetCurrent = cuCtxSetCurrent,
    .cuCtxEnablePeerAccess = cuCtxEnablePeerAccess,
    .cuModuleLoadData = cuModuleLoadData,
    .cuModuleGetFunction = cuModuleGetFunction,
    .cuLaunchKernel = cuLaunchKernel,
    .cuMemAlloc = cuMemAlloc,
    .cuMemFree = cuMemFree,
    .cuMemGetAddressRange = cuMemGetAddressRange,
    .cuMemcpyHtoDAsync = cuMemcpyHtoDAsync,
    .cuMemcpyDtoHAsync = cuMemcpyDtoHAsync,
    .cuMemcpyDtoDAsync = cuMemcpyDtoDAsync,
    .cuMemcpyPeerAsync = cuMemcpyPeerAsync,
    .cuMemsetD8Async = cuMemsetD8Async,
    .cuMemHostAlloc = cuMemHostAlloc,
    .cuMemFreeHost = cuMemFreeHost,
    .cuMemHostRegister = cuMemHostRegister,
    .cuMemHostUnregister = cuMemHostUnregister,
    .cuPointerGetAttribute = cuPointerGetAttribute,
    .cuStreamCreate = cuStreamCreate,
    .cuStreamDestroy = cuStreamDestroy,
    .cuStreamSynchronize = cuStreamSynchronize,
    .cuStreamWaitEvent = cuStreamWaitEvent,
    .cuEventCreate = cuEventCreate,
    .cuEventRecord = cuEventRecord,
    .cuEventSynchronize = cuEventSynchronize,
    .cuEventDestroy = cuEventDestroy,
    .cuEventElapsedTime = null,
    .cuIpcGetMemHandle = cuIpcGetMemHandle,
    .cuIpcOpenMemHandle = cuIpcOpenMemHandle,
    .cuIpcCloseMemHandle = cuIpcCloseMemHandle,
};

/// Installs the fake as the process-wide driver; undo with `uninstall` (frees everything).
fn install() !void {
    state = .{};
    _ = driver.installForTest(try driver.Driver.init(api));
}

fn uninstall() void {
    driver.resetForTest();
    for (&state.allocations) |*slot| {
        if (slot.*) |a| std.heap.c_allocator.free(a.memory);
        slot.* = null;
    }
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
