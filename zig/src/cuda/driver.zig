//! The CUDA driver API, opened at run time: libcuda.so.1 via dlopen (never linked), so the
//! library loads on machines without a GPU or driver and reports "no CUDA device: <why>".
//!
//!  - `get()` initialises once (thread-safe): dlopen, dlsym of every entry point (the `_v2`
//!    names where the driver exports them), cuInit, cuDeviceGetCount. Failure is sticky.
//!  - `Driver.device(ordinal)` creates, once per device, the primary context, the module of
//!    the fatbin embedded in this library (cuda/kernels.cu) with every kernel resolved, a
//!    non-blocking stream and a small cache of pinned host buffers. Devices live as long as the
//!    process.
//!  - Every failure sets this thread's message (`lastErrorMessage()`), naming the CUDA call,
//!    the device and the driver's error name and text.
//!  - All copies and launches go to a stream (never the legacy NULL stream, which does not
//!    order with non-blocking streams); the synchronous helpers synchronize that stream.
//!
//! Tests run against a fake driver table (`Api`) on machines without a GPU.
const std = @import("std");
const builtin = @import("builtin");
const ops = @import("ops_table");
const kernels_mod = @import("kernels.zig");
const stream_mod = @import("stream.zig");

pub const DType = ops.DType;
pub const RedOp = ops.RedOp;

pub const Error = error{
    /// No driver, no device, or a bad device ordinal.
    NoDevice,
    /// Bad argument: unsupported (redop, dtype), misaligned or out-of-range pointer, ...
    InvalidArgument,
    OutOfMemory,
    /// Any other CUDA failure (the message has the driver's error).
    Cuda,
};

/// The driver library's soname; MOONRING_CUDA_DRIVER=PATH overrides it (tests, odd installs).
pub const driver_soname = "libcuda.so.1";
/// Device ordinals this library handles (a cache slot each).
pub const devices_max = 64;
/// Threads per block of every launch; cuda/kernels.cu declares __launch_bounds__(512, 2).
pub const threads_per_block = 512;
/// Blocks per SM of a grid-stride launch: the kernels' __launch_bounds__ minimum (all resident).
pub const blocks_per_sm = 2;
/// Sources one mr_reduceN_* launch takes (cuda/kernels.cu: mr::kSourcesMax).
pub const reduce_sources_max = 8;
/// Bytes of a CUDA IPC memory handle (CU_IPC_HANDLE_SIZE).
pub const ipc_handle_bytes = 64;
/// Pinned host buffers kept per device for reuse (staging), and the smallest one (bytes).
pub const pinned_cache_max = 8;
pub const pinned_bytes_min = 64 * 1024;
pub const pinned_pow2_max = 64 * 1024 * 1024;

fn pinnedSize(bytes: u64) ?u64 {
    if (bytes <= pinned_pow2_max) return std.math.ceilPowerOfTwo(u64, @max(bytes, pinned_bytes_min)) catch unreachable;
    const granule = 2 * 1024 * 1024;
    const rounded = std.math.add(u64, bytes, granule - 1) catch return null;
    return rounded / granule * granule;
}

comptime {
    std.debug.assert(devices_max <= 64);
    std.debug.assert(threads_per_block % 32 == 0 and threads_per_block <= 1024);
    std.debug.assert(@sizeOf(IpcMemHandle) == ipc_handle_bytes);
    // mr::Sources in cuda/kernels.cu: const void* ptr[8]; uint32_t count; (72 bytes, align 8)
    std.debug.assert(@sizeOf(Sources) == 72 and @alignOf(Sources) == 8);
}

// ---- driver API types (cuda.h) ------------------------------------------------------------------

pub const CUresult = c_int;
pub const CUdevice = c_int;
pub const CUdeviceptr = u64;
pub const CUcontext = *opaque {};
pub const CUmodule = *opaque {};
pub const CUfunction = *opaque {};
pub const CUstream = *opaque {};
pub const CUevent = *opaque {};
pub const IpcMemHandle = extern struct { reserved: [ipc_handle_bytes]u8 };
/// Kernel parameter of mr_reduceN_*: mr::Sources.
pub const Sources = extern struct { ptr: [reduce_sources_max]u64, count: u32 };

pub const CUDA_SUCCESS = 0;
pub const CUDA_ERROR_INVALID_VALUE = 1;
pub const CUDA_ERROR_OUT_OF_MEMORY = 2;
pub const CUDA_ERROR_NOT_INITIALIZED = 3;
pub const CUDA_ERROR_NO_DEVICE = 100;
pub const CUDA_ERROR_INVALID_DEVICE = 101;
pub const CUDA_ERROR_NOT_FOUND = 500;
pub const CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED = 704;
pub const CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16;
pub const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75;
pub const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76;
pub const CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL = 9;
pub const CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD = 1;
pub const CU_STREAM_NON_BLOCKING = 0x1;
pub const CU_EVENT_DISABLE_TIMING = 0x2;
pub const CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS = 0x1;
pub const CU_MEMHOSTALLOC_PORTABLE = 0x1;
pub const CU_MEMHOSTREGISTER_PORTABLE = 0x1;

/// The driver entry points this library uses. Field names are cuda.h's API names; the symbol
/// each resolves to is in `symbol_names` (the `_v2` ABI where cuda.h #defines one).
/// Optional fields may be missing from old drivers.
pub const Api = struct {
    cuInit: *const fn (flags: c_uint) callconv(.c) CUresult,
    cuDriverGetVersion: *const fn (version: *c_int) callconv(.c) CUresult,
    cuGetErrorName: *const fn (result: CUresult, name: *?[*:0]const u8) callconv(.c) CUresult,
    cuGetErrorString: *const fn (result: CUresult, text: *?[*:0]const u8) callconv(.c) CUresult,
    cuDeviceGetCount: *const fn (count: *c_int) callconv(.c) CUresult,
    cuDeviceGet: *const fn (device: *CUdevice, ordinal: c_int) callconv(.c) CUresult,
    cuDeviceGetAttribute: *const fn (value: *c_int, attribute: c_int, device: CUdevice) callconv(.c) CUresult,
    cuDeviceGetName: *const fn (name: [*]u8, len: c_int, device: CUdevice) callconv(.c) CUresult,
    cuDeviceCanAccessPeer: *const fn (can: *c_int, device: CUdevice, peer: CUdevice) callconv(.c) CUresult,
    cuDevicePrimaryCtxRetain: *const fn (context: *?CUcontext, device: CUdevice) callconv(.c) CUresult,
    cuCtxSetCurrent: *const fn (context: ?CUcontext) callconv(.c) CUresult,
    cuCtxEnablePeerAccess: *const fn (peer: CUcontext, flags: c_uint) callconv(.c) CUresult,
    cuModuleLoadData: *const fn (module: *?CUmodule, image: *const anyopaque) callconv(.c) CUresult,
    cuModuleGetFunction: *const fn (function: *?CUfunction, module: CUmodule, name: [*:0]const u8) callconv(.c) CUresult,
    cuLaunchKernel: *const fn (
        function: CUfunction,
        grid_x: c_uint,
        grid_y: c_uint,
        grid_z: c_uint,
        block_x: c_uint,
        block_y: c_uint,
        block_z: c_uint,
        shared_bytes: c_uint,
        stream: ?CUstream,
        params: ?[*]const ?*anyopaque,
        extra: ?[*]const ?*anyopaque,
    ) callconv(.c) CUresult,
    cuMemAlloc: *const fn (dptr: *CUdeviceptr, bytes: usize) callconv(.c) CUresult,
    cuMemFree: *const fn (dptr: CUdeviceptr) callconv(.c) CUresult,
    cuMemGetAddressRange: *const fn (base: ?*CUdeviceptr, bytes: ?*usize, dptr: CUdeviceptr) callconv(.c) CUresult,
    cuMemcpyHtoDAsync: *const fn (dst: CUdeviceptr, src: *const anyopaque, bytes: usize, stream: ?CUstream) callconv(.c) CUresult,
    cuMemcpyDtoHAsync: *const fn (dst: *anyopaque, src: CUdeviceptr, bytes: usize, stream: ?CUstream) callconv(.c) CUresult,
    cuMemcpyDtoDAsync: *const fn (dst: CUdeviceptr, src: CUdeviceptr, bytes: usize, stream: ?CUstream) callconv(.c) CUresult,
    cuMemcpyPeerAsync: *const fn (
        dst: CUdeviceptr,
        dst_context: CUcontext,
        src: CUdeviceptr,
        src_context: CUcontext,
        bytes: usize,
        stream: ?CUstream,
    ) callconv(.c) CUresult,
    cuMemsetD8Async: *const fn (dst: CUdeviceptr, value: u8, count: usize, stream: ?CUstream) callconv(.c) CUresult,
    cuMemHostAlloc: *const fn (ptr: *?*anyopaque, bytes: usize, flags: c_uint) callconv(.c) CUresult,
    cuMemFreeHost: *const fn (ptr: *anyopaque) callconv(.c) CUresult,
    cuMemHostRegister: *const fn (ptr: *anyopaque, bytes: usize, flags: c_uint) callconv(.c) CUresult,
    cuMemHostUnregister: *const fn (ptr: *anyopaque) callconv(.c) CUresult,
    cuPointerGetAttribute: *const fn (data: *anyopaque, attribute: c_int, dptr: CUdeviceptr) callconv(.c) CUresult,
    /// CUDA >= 11.7: a dma-buf fd over device memory (GPU memory registered with an RDMA NIC).
    cuMemGetHandleForAddressRange: ?*const fn (handle: *anyopaque, dptr: CUdeviceptr, size: usize, handle_type: c_int, flags: c_ulonglong) callconv(.c) CUresult,
    cuStreamCreate: *const fn (stream: *?CUstream, flags: c_uint) callconv(.c) CUresult,
    cuStreamDestroy: *const fn (stream: CUstream) callconv(.c) CUresult,
    cuStreamSynchronize: *const fn (stream: ?CUstream) callconv(.c) CUresult,
    cuStreamWaitEvent: *const fn (stream: ?CUstream, event: CUevent, flags: c_uint) callconv(.c) CUresult,
    cuEventCreate: *const fn (event: *?CUevent, flags: c_uint) callconv(.c) CUresult,
    cuEventRecord: *const fn (event: CUevent, stream: ?CUstream) callconv(.c) CUresult,
    cuEventSynchronize: *const fn (event: CUevent) callconv(.c) CUresult,
    cuEventDestroy: *const fn (event: CUevent) callconv(.c) CUresult,
    cuEventElapsedTime: ?*const fn (ms: *f32, start: CUevent, end: CUevent) callconv(.c) CUresult,
    cuIpcGetMemHandle: *const fn (handle: *IpcMemHandle, dptr: CUdeviceptr) callconv(.c) CUresult,
    cuIpcOpenMemHandle: *const fn (dptr: *CUdeviceptr, handle: IpcMemHandle, flags: c_uint) callconv(.c) CUresult,
    cuIpcCloseMemHandle: *const fn (dptr: CUdeviceptr) callconv(.c) CUresult,
};

/// Symbols tried, in order, for the Api fields whose ABI name differs from the API name.
const symbol_names = .{
    .{ "cuMemAlloc", .{"cuMemAlloc_v2"} },
    .{ "cuMemFree", .{"cuMemFree_v2"} },
    .{ "cuMemGetAddressRange", .{"cuMemGetAddressRange_v2"} },
    .{ "cuMemcpyHtoDAsync", .{"cuMemcpyHtoDAsync_v2"} },
    .{ "cuMemcpyDtoHAsync", .{"cuMemcpyDtoHAsync_v2"} },
    .{ "cuMemcpyDtoDAsync", .{"cuMemcpyDtoDAsync_v2"} },
    .{ "cuMemHostRegister", .{"cuMemHostRegister_v2"} },
    .{ "cuStreamDestroy", .{"cuStreamDestroy_v2"} },
    .{ "cuEventDestroy", .{"cuEventDestroy_v2"} },
    .{ "cuEventElapsedTime", .{ "cuEventElapsedTime_v2", "cuEventElapsedTime" } },
    .{ "cuIpcOpenMemHandle", .{"cuIpcOpenMemHandle_v2"} },
};

pub fn symbolsOf(comptime field: []const u8) []const [:0]const u8 {
    inline for (symbol_names) |entry| {
        if (comptime std.mem.eql(u8, entry[0], field)) {
            comptime var names: []const [:0]const u8 = &.{};
            inline for (entry[1]) |name| names = names ++ &[_][:0]const u8{name};
            return names;
        }
    }
    return &.{field ++ ""};
}

// ---- this thread's error message ------------------------------------------------------------

const message_bytes_max = 512;
threadlocal var message_buf: [message_bytes_max]u8 = undefined;
threadlocal var message_len: usize = 0;

/// The calling thread's message of the last failure in this module (valid until the next
/// failure on this thread). For mr_last_error().
pub fn lastErrorMessage() []const u8 {
    return message_buf[0..message_len];
}

/// Sets this thread's message (truncated to message_bytes_max) and returns `err`.
pub fn fail(err: Error, comptime fmt: []const u8, args: anytype) Error {
    var stream = std.io.fixedBufferStream(&message_buf);
    stream.writer().print(fmt, args) catch {}; // NoSpaceLeft: keep the truncated text
    message_len = stream.pos;
    return err;
}

pub fn clearError() void {
    message_len = 0;
}

// ---- the driver ----------------------------------------------------------------------------

pub const Driver = struct {
    api: Api,
    /// Devices the driver reports (may exceed devices_max; ordinals past it are refused).
    device_count: u32,
    driver_version: c_int,
    mutex: std.Thread.Mutex = .{},
    devices: [devices_max]std.atomic.Value(?*Device) = [_]std.atomic.Value(?*Device){.init(null)} ** devices_max,

    /// Runs cuInit and counts devices with the entry points of `api`.
    pub fn init(api: Api) Error!Driver {
        var driver: Driver = .{ .api = api, .device_count = 0, .driver_version = 0 };
        var result = api.cuInit(0);
        if (result != CUDA_SUCCESS) {
            const name, const text = driver.errorText(result);
            return fail(error.NoDevice, "no CUDA device: cuInit failed: {s}: {s}", .{ name, text });
        }
        _ = api.cuDriverGetVersion(&driver.driver_version);
        var count: c_int = 0;
        result = api.cuDeviceGetCount(&count);
        if (result != CUDA_SUCCESS) {
            const name, const text = driver.errorText(result);
            return fail(error.NoDevice, "no CUDA device: cuDeviceGetCount failed: {s}: {s}", .{ name, text });
        }
        if (count <= 0) return fail(error.NoDevice, "no CUDA device: the driver reports 0 devices", .{});
        driver.device_count = @intCast(count);
        return driver;
    }

    /// The driver's name and text for `result` (static strings).
    pub fn errorText(self: *const Driver, result: CUresult) struct { []const u8, []const u8 } {
        var name: ?[*:0]const u8 = null;
        var text: ?[*:0]const u8 = null;
        if (self.api.cuGetErrorName(result, &name) != CUDA_SUCCESS) name = null;
        if (self.api.cuGetErrorString(result, &text) != CUDA_SUCCESS) text = null;
        return .{
            if (name) |n| std.mem.span(n) else "CUDA_ERROR_UNKNOWN_CODE",
            if (text) |t| std.mem.span(t) else "unrecognized error code",
        };
    }

    /// Maps a failed CUresult to an Error and sets the message "CUDA <what> failed on device N:
    /// NAME (code): text".
    pub fn check(self: *const Driver, result: CUresult, ordinal: i32, comptime what: []const u8, args: anytype) Error!void {
        if (result == CUDA_SUCCESS) return;
        const name, const text = self.errorText(result);
        const err: Error = switch (result) {
            CUDA_ERROR_OUT_OF_MEMORY => error.OutOfMemory,
            CUDA_ERROR_NO_DEVICE, CUDA_ERROR_INVALID_DEVICE => error.NoDevice,
            CUDA_ERROR_INVALID_VALUE => error.InvalidArgument,
            else => error.Cuda,
        };
        return fail(err, "CUDA " ++ what ++ " failed on device {d}: {s} ({d}): {s}", args ++ .{ ordinal, name, result, text });
    }

    /// The device of `ordinal`, created on first use (context, module, stream).
    pub fn device(self: *Driver, ordinal: i32) Error!*Device {
        if (ordinal < 0 or ordinal >= self.device_count or ordinal >= devices_max) {
            return fail(error.NoDevice, "no CUDA device {d}: this process sees {d} device(s)", .{
                ordinal, self.device_count,
            });
        }
        const slot = &self.devices[@intCast(ordinal)];
        if (slot.load(.acquire)) |dev| return dev;
        self.mutex.lock();
        defer self.mutex.unlock();
        if (slot.load(.acquire)) |dev| return dev;
        const dev = try std.heap.c_allocator.create(Device);
        errdefer std.heap.c_allocator.destroy(dev);
        try dev.init(self, ordinal);
        slot.store(dev, .release);
        return dev;
    }
};

// The process-wide driver: set up once by get().
const InitState = enum(u8) { pending, ready, failed };
var global_state = std.atomic.Value(InitState).init(.pending);
var global_mutex: std.Thread.Mutex = .{};
var global_driver: Driver = undefined;
var global_failure_buf: [message_bytes_max]u8 = undefined;
var global_failure_len: usize = 0;

/// The process-wide driver; error.NoDevice (message "no CUDA device: <why>") without one.
pub fn get() Error!*Driver {
    switch (global_state.load(.acquire)) {
        .ready => return &global_driver,
        .failed => return failSticky(),
        .pending => {},
    }
    global_mutex.lock();
    defer global_mutex.unlock();
    switch (global_state.load(.acquire)) {
        .ready => return &global_driver,
        .failed => return failSticky(),
        .pending => {},
    }
    if (load()) |driver| {
        global_driver = driver;
        global_state.store(.ready, .release);
        return &global_driver;
    } else |_| {
        const message = lastErrorMessage();
        @memcpy(global_failure_buf[0..message.len], message);
        global_failure_len = message.len;
        global_state.store(.failed, .release);
        return error.NoDevice;
    }
}

/// Tests: makes `driver` (built on a fake Api) the process-wide driver.
pub fn installForTest(driver: Driver) *Driver {
    comptime std.debug.assert(builtin.is_test);
    global_mutex.lock();
    defer global_mutex.unlock();
    global_driver = driver;
    global_state.store(.ready, .release);
    return &global_driver;
}

/// Tests: forgets the process-wide driver (and frees its devices) so get() loads again.
pub fn resetForTest() void {
    comptime std.debug.assert(builtin.is_test);
    global_mutex.lock();
    defer global_mutex.unlock();
    if (global_state.load(.acquire) == .ready) {
        for (&global_driver.devices) |*slot| {
            if (slot.load(.acquire)) |dev| {
                for (&dev.pinned_cache) |*cached| {
                    if (cached.*) |buffer| dev.freePinned(buffer);
                    cached.* = null;
                }
                std.heap.c_allocator.destroy(dev);
                slot.store(null, .release);
            }
        }
    }
    global_state.store(.pending, .release);
}

fn failSticky() Error {
    return fail(error.NoDevice, "{s}", .{global_failure_buf[0..global_failure_len]});
}

/// dlopen + dlsym + cuInit.
fn load() Error!Driver {
    var path_buf: [256]u8 = undefined;
    const path: [:0]const u8 = if (std.posix.getenv("MOONRING_CUDA_DRIVER")) |p|
        std.fmt.bufPrintZ(&path_buf, "{s}", .{p}) catch return fail(error.NoDevice, "no CUDA device: MOONRING_CUDA_DRIVER is too long", .{})
    else
        driver_soname;
    const lib = std.c.dlopen(path.ptr, .{ .NOW = true }) orelse {
        const why: []const u8 = if (std.c.dlerror()) |e| std.mem.span(e) else "dlopen failed";
        return fail(error.NoDevice, "no CUDA device: cannot load the CUDA driver {s} ({s})", .{ path, why });
    };
    // Never dlclose: function pointers and contexts live as long as the process.
    const api = try resolve(lib, path);
    return Driver.init(api);
}

fn resolve(lib: *anyopaque, path: []const u8) Error!Api {
    @setEvalBranchQuota(10_000);
    var api: Api = undefined;
    inline for (std.meta.fields(Api)) |field| {
        const names = comptime symbolsOf(field.name);
        var symbol: ?*anyopaque = null;
        inline for (names) |name| {
            if (symbol == null) symbol = std.c.dlsym(lib, name);
        }
        if (@typeInfo(field.type) == .optional) {
            @field(api, field.name) = if (symbol) |s| @ptrCast(@alignCast(s)) else null;
        } else {
            const s = symbol orelse
                return fail(error.NoDevice, "no CUDA device: the driver {s} lacks {s} (too old for CUDA 13.0?)", .{ path, names[0] });
            @field(api, field.name) = @ptrCast(@alignCast(s));
        }
    }
    return api;
}

// ---- kernels: kernels.zig ----

pub const Kernels = kernels_mod.Kernels;
pub const kernel_names = kernels_mod.kernel_names;
pub const fatbin = kernels_mod.fatbin;
pub const fatbin_magic = kernels_mod.fatbin_magic;
const redop_values = kernels_mod.redop_values;
const dtype_values = kernels_mod.dtype_values;

// ---- devices ---------------------------------------------------------------------------------

pub const Device = struct {
    driver: *Driver,
    ordinal: i32,
    handle: CUdevice,
    context: CUcontext,
    module: CUmodule,
    /// The device's shared stream (non-blocking) for the synchronous helpers.
    stream: CUstream,
    sm_count: u32,
    compute_capability: [2]u32,
    name_buf: [128]u8,
    name_len: usize,
    kernels: Kernels,
    pinned_mutex: std.Thread.Mutex = .{},
    pinned_cache: [pinned_cache_max]?PinnedBuffer = [_]?PinnedBuffer{null} ** pinned_cache_max,

    fn init(self: *Device, driver: *Driver, ordinal: i32) Error!void {
        const api = &driver.api;
        self.* = .{
            .driver = driver,
            .ordinal = ordinal,
            .handle = 0,
            .context = undefined,
            .module = undefined,
            .stream = undefined,
            .sm_count = 0,
            .compute_capability = .{ 0, 0 },
            .name_buf = undefined,
            .name_len = 0,
            .kernels = undefined,
        };
        try driver.check(api.cuDeviceGet(&self.handle, ordinal), ordinal, "cuDeviceGet", .{});
        var ctx: ?CUcontext = null;
        try driver.check(api.cuDevicePrimaryCtxRetain(&ctx, self.handle), ordinal, "cuDevicePrimaryCtxRetain", .{});
        self.context = ctx orelse return fail(error.Cuda, "CUDA cuDevicePrimaryCtxRetain returned no context on device {d}", .{ordinal});
        try driver.check(api.cuCtxSetCurrent(self.context), ordinal, "cuCtxSetCurrent", .{});

        var value: c_int = 0;
        try driver.check(api.cuDeviceGetAttribute(&value, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, self.handle), ordinal, "cuDeviceGetAttribute(MULTIPROCESSOR_COUNT)", .{});
        self.sm_count = @intCast(@max(value, 1));
        try driver.check(api.cuDeviceGetAttribute(&value, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, self.handle), ordinal, "cuDeviceGetAttribute(COMPUTE_CAPABILITY_MAJOR)", .{});
        self.compute_capability[0] = @intCast(@max(value, 0));
        try driver.check(api.cuDeviceGetAttribute(&value, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, self.handle), ordinal, "cuDeviceGetAttribute(COMPUTE_CAPABILITY_MINOR)", .{});
        self.compute_capability[1] = @intCast(@max(value, 0));
        @memset(&self.name_buf, 0);
        if (api.cuDeviceGetName(&self.name_buf, self.name_buf.len - 1, self.handle) == CUDA_SUCCESS) {
            self.name_len = std.mem.indexOfScalar(u8, &self.name_buf, 0) orelse self.name_buf.len;
        }

        try self.loadModule();
        var stream: ?CUstream = null;
        try driver.check(api.cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), ordinal, "cuStreamCreate", .{});
        self.stream = stream orelse return fail(error.Cuda, "CUDA cuStreamCreate returned no stream on device {d}", .{ordinal});
    }

    fn loadModule(self: *Device) Error!void {
        const driver = self.driver;
        const api = &driver.api;
        if (fatbin.len < 16 or std.mem.readInt(u32, fatbin[0..4], .little) != fatbin_magic) {
            return fail(error.Cuda, "CUDA kernels: the embedded fatbin is not a fatbin (rebuild with zig build)", .{});
        }
        // The driver reads the image in place: give it an 8-byte (here: 64-byte) aligned copy.
        const image = std.heap.c_allocator.alignedAlloc(u8, 64, fatbin.len) catch
            return fail(error.OutOfMemory, "CUDA kernels: out of memory copying the fatbin ({d} bytes)", .{fatbin.len});
        defer std.heap.c_allocator.free(image);
        @memcpy(image, fatbin);
        var module: ?CUmodule = null;
        try driver.check(api.cuModuleLoadData(&module, image.ptr), self.ordinal, "cuModuleLoadData (fatbin for sm_80/sm_90, PTX compute_90; device is sm_{d}{d})", .{
            self.compute_capability[0], self.compute_capability[1],
        });
        self.module = module orelse return fail(error.Cuda, "CUDA cuModuleLoadData returned no module on device {d}", .{self.ordinal});

        @setEvalBranchQuota(100_000);
        const empty = std.enums.EnumArray(DType, ?CUfunction).initFill(null);
        self.kernels.reduce = .initFill(empty);
        self.kernels.reduce2 = .initFill(empty);
        self.kernels.reduceN = .initFill(empty);
        self.kernels.scale = .initFill(null);
        inline for (redop_values) |r| inline for (dtype_values) |d| if (comptime r.supports(d.kind())) {
            const suffix = @tagName(r) ++ "_" ++ @tagName(d);
            self.kernels.reduce.getPtr(r).set(d, try self.kernel("mr_reduce_" ++ suffix));
            self.kernels.reduce2.getPtr(r).set(d, try self.kernel("mr_reduce2_" ++ suffix));
            self.kernels.reduceN.getPtr(r).set(d, try self.kernel("mr_reduceN_" ++ suffix));
        };
        inline for (dtype_values) |d| if (comptime d.kind() == .float) {
            self.kernels.scale.set(d, try self.kernel("mr_scale_" ++ @tagName(d)));
        };
        self.kernels.copy_strided = try self.kernel("mr_copy_strided");
    }

    fn kernel(self: *Device, kernel_name: [:0]const u8) Error!CUfunction {
        var f: ?CUfunction = null;
        try self.driver.check(self.driver.api.cuModuleGetFunction(&f, self.module, kernel_name.ptr), self.ordinal, "cuModuleGetFunction({s}) (kernel missing from cuda/kernels.cu?)", .{kernel_name});
        return f orelse return fail(error.Cuda, "CUDA cuModuleGetFunction({s}) returned no function on device {d}", .{ kernel_name, self.ordinal });
    }

    pub fn name(self: *const Device) []const u8 {
        return self.name_buf[0..self.name_len];
    }

    /// Makes this device's context current on the calling thread (cheap; every entry calls it).
    pub fn makeCurrent(self: *Device) Error!void {
        try self.driver.check(self.driver.api.cuCtxSetCurrent(self.context), self.ordinal, "cuCtxSetCurrent", .{});
    }

    pub fn check(self: *Device, result: CUresult, comptime what: []const u8, args: anytype) Error!void {
        return self.driver.check(result, self.ordinal, what, args);
    }

    // ---- memory ----

    pub fn alloc(self: *Device, bytes: u64) Error!CUdeviceptr {
        if (bytes == 0) return fail(error.InvalidArgument, "CUDA alloc on device {d}: 0 bytes", .{self.ordinal});
        try self.makeCurrent();
        var dptr: CUdeviceptr = 0;
        try self.check(self.driver.api.cuMemAlloc(&dptr, bytes), "cuMemAlloc({d} bytes)", .{bytes});
        std.debug.assert(dptr != 0);
        return dptr;
    }

    pub fn free(self: *Device, dptr: CUdeviceptr) Error!void {
        if (dptr == 0) return;
        try self.makeCurrent();
        try self.check(self.driver.api.cuMemFree(dptr), "cuMemFree(0x{x})", .{dptr});
    }

    /// The allocation holding dptr: its base and length (e.g. to send the offset of dptr along
    /// with its IPC handle, which names the whole allocation).
    pub fn addressRange(self: *Device, dptr: CUdeviceptr) Error!struct { base: CUdeviceptr, bytes: u64 } {
        try self.makeCurrent();
        var base: CUdeviceptr = 0;
        var size: usize = 0;
        try self.check(self.driver.api.cuMemGetAddressRange(&base, &size, dptr), "cuMemGetAddressRange(0x{x})", .{dptr});
        return .{ .base = base, .bytes = size };
    }

    /// Fails with InvalidArgument unless [dptr, dptr + bytes) lies within one device
    /// allocation (cuMemAlloc, cudaMalloc, IPC-opened, ...) visible to this process. Guards the
    /// kernels from faulting (a fault poisons the context for the whole process).
    pub fn checkRange(self: *Device, dptr: CUdeviceptr, bytes: u64, comptime what: []const u8) Error!void {
        if (dptr == 0) return fail(error.InvalidArgument, "CUDA {s} on device {d}: null device pointer", .{ what, self.ordinal });
        try self.makeCurrent();
        var base: CUdeviceptr = 0;
        var size: usize = 0;
        const result = self.driver.api.cuMemGetAddressRange(&base, &size, dptr);
        if (result != CUDA_SUCCESS) {
            const name_, const text = self.driver.errorText(result);
            return fail(error.InvalidArgument, "CUDA {s} on device {d}: 0x{x} is not device memory ({s}: {s})", .{
                what, self.ordinal, dptr, name_, text,
            });
        }
        const end = std.math.add(u64, dptr, bytes) catch std.math.maxInt(u64);
        if (end > base + size) {
            return fail(error.InvalidArgument, "CUDA {s} on device {d}: [0x{x}, +{d} bytes) overruns its allocation [0x{x}, +{d} bytes)", .{
                what, self.ordinal, dptr, bytes, base, size,
            });
        }
    }

    pub fn copyToDevice(self: *Device, dptr: CUdeviceptr, src: []const u8) Error!void {
        if (src.len == 0) return;
        try self.checkRange(dptr, src.len, "copy to device");
        try self.check(self.driver.api.cuMemcpyHtoDAsync(dptr, src.ptr, src.len, self.stream), "cuMemcpyHtoDAsync(0x{x}, {d} bytes)", .{ dptr, src.len });
        try self.synchronize();
    }

    pub fn copyToHost(self: *Device, dst: []u8, dptr: CUdeviceptr) Error!void {
        if (dst.len == 0) return;
        try self.checkRange(dptr, dst.len, "copy to host");
        try self.check(self.driver.api.cuMemcpyDtoHAsync(dst.ptr, dptr, dst.len, self.stream), "cuMemcpyDtoHAsync(0x{x}, {d} bytes)", .{ dptr, dst.len });
        try self.synchronize();
    }

    pub fn copyDeviceToDevice(self: *Device, dst: CUdeviceptr, src: CUdeviceptr, bytes: u64) Error!void {
        if (bytes == 0) return;
        try self.checkRange(dst, bytes, "device copy (dst)");
        try self.checkRange(src, bytes, "device copy (src)");
        try self.check(self.driver.api.cuMemcpyDtoDAsync(dst, src, bytes, self.stream), "cuMemcpyDtoDAsync(0x{x} <- 0x{x}, {d} bytes)", .{ dst, src, bytes });
        try self.synchronize();
    }

    /// dst (on this device) <- src on device `src_device`, through NVLink/PCIe peer copy.
    pub fn copyFromPeer(self: *Device, dst: CUdeviceptr, src_device: *Device, src: CUdeviceptr, bytes: u64) Error!void {
        if (bytes == 0) return;
        try self.checkRange(dst, bytes, "peer copy (dst)");
        try src_device.checkRange(src, bytes, "peer copy (src)");
        try self.makeCurrent();
        try self.check(self.driver.api.cuMemcpyPeerAsync(dst, self.context, src, src_device.context, bytes, self.stream), "cuMemcpyPeerAsync(0x{x} <- device {d} 0x{x}, {d} bytes)", .{ dst, src_device.ordinal, src, bytes });
        try self.synchronize();
    }

    pub fn memset(self: *Device, dptr: CUdeviceptr, value: u8, bytes: u64) Error!void {
        if (bytes == 0) return;
        try self.checkRange(dptr, bytes, "memset");
        try self.check(self.driver.api.cuMemsetD8Async(dptr, value, bytes, self.stream), "cuMemsetD8Async(0x{x}, {d} bytes)", .{ dptr, bytes });
        try self.synchronize();
    }

    pub fn synchronize(self: *Device) Error!void {
        try self.check(self.driver.api.cuStreamSynchronize(self.stream), "cuStreamSynchronize", .{});
    }

    // ---- pinned host memory ----

    /// Page-locked host memory usable by every context (cuMemHostAlloc PORTABLE).
    pub fn allocPinned(self: *Device, bytes: u64) Error!PinnedBuffer {
        std.debug.assert(bytes > 0);
        try self.makeCurrent();
        var ptr: ?*anyopaque = null;
        try self.check(self.driver.api.cuMemHostAlloc(&ptr, bytes, CU_MEMHOSTALLOC_PORTABLE), "cuMemHostAlloc({d} bytes)", .{bytes});
        const p = ptr orelse return fail(error.OutOfMemory, "CUDA cuMemHostAlloc({d} bytes) returned NULL on device {d}", .{ bytes, self.ordinal });
        return .{ .ptr = @ptrCast(p), .bytes = bytes };
    }

    pub fn freePinned(self: *Device, buffer: PinnedBuffer) void {
        self.makeCurrent() catch {};
        _ = self.driver.api.cuMemFreeHost(buffer.ptr);
    }

    /// A pinned buffer of at least `bytes` from the device's cache when one fits (at most twice
    /// as large), else a new one: sizes round up to a power of two >= pinned_bytes_min, above
    /// pinned_pow2_max to a multiple of 2 MiB. Give it back with putPinned.
    pub fn takePinned(self: *Device, bytes: u64) Error!PinnedBuffer {
        const want = pinnedSize(bytes) orelse
            return fail(error.InvalidArgument, "CUDA pinned buffer of {d} bytes is too large", .{bytes});
        {
            self.pinned_mutex.lock();
            defer self.pinned_mutex.unlock();
            for (&self.pinned_cache) |*slot| {
                if (slot.*) |buffer| if (buffer.bytes >= want and buffer.bytes / 2 <= want) {
                    slot.* = null;
                    return buffer;
                };
            }
        }
        return self.allocPinned(want);
    }

    /// Returns a buffer of takePinned to the cache (freeing the oldest kind if full).
    pub fn putPinned(self: *Device, buffer: PinnedBuffer) void {
        var evicted: ?PinnedBuffer = buffer;
        {
            self.pinned_mutex.lock();
            defer self.pinned_mutex.unlock();
            for (&self.pinned_cache) |*slot| {
                if (slot.* == null) {
                    slot.* = buffer;
                    evicted = null;
                    break;
                }
            }
            if (evicted != null) {
                // Full: keep the new buffer, free the smallest cached one if smaller.
                var smallest: usize = 0;
                for (self.pinned_cache, 0..) |slot, i| {
                    if (slot.?.bytes < self.pinned_cache[smallest].?.bytes) smallest = i;
                }
                if (self.pinned_cache[smallest].?.bytes < buffer.bytes) {
                    evicted = self.pinned_cache[smallest];
                    self.pinned_cache[smallest] = buffer;
                }
            }
        }
        if (evicted) |b| self.freePinned(b);
    }

    /// Page-locks existing host memory (cuMemHostRegister PORTABLE) for fast async copies.
    pub fn registerHost(self: *Device, bytes: []u8) Error!void {
        std.debug.assert(bytes.len > 0);
        try self.makeCurrent();
        try self.check(self.driver.api.cuMemHostRegister(bytes.ptr, bytes.len, CU_MEMHOSTREGISTER_PORTABLE), "cuMemHostRegister({d} bytes)", .{bytes.len});
    }

    pub fn unregisterHost(self: *Device, bytes: []u8) Error!void {
        try self.makeCurrent();
        try self.check(self.driver.api.cuMemHostUnregister(bytes.ptr), "cuMemHostUnregister", .{});
    }

    // ---- IPC and peers ----

    /// The IPC handle of the allocation holding dptr (send it to another process of this host).
    pub fn ipcHandle(self: *Device, dptr: CUdeviceptr) Error!IpcMemHandle {
        try self.checkRange(dptr, 0, "IPC handle");
        var handle: IpcMemHandle = undefined;
        try self.check(self.driver.api.cuIpcGetMemHandle(&handle, dptr), "cuIpcGetMemHandle(0x{x})", .{dptr});
        return handle;
    }

    /// Maps another process's allocation (its base address; add the sender's offset). Opening a
    /// handle in the process that created it fails (CUDA_ERROR_INVALID_CONTEXT).
    pub fn ipcOpen(self: *Device, handle: IpcMemHandle) Error!CUdeviceptr {
        try self.makeCurrent();
        var dptr: CUdeviceptr = 0;
        try self.check(self.driver.api.cuIpcOpenMemHandle(&dptr, handle, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS), "cuIpcOpenMemHandle", .{});
        return dptr;
    }

    pub fn ipcClose(self: *Device, dptr: CUdeviceptr) Error!void {
        try self.makeCurrent();
        try self.check(self.driver.api.cuIpcCloseMemHandle(dptr), "cuIpcCloseMemHandle(0x{x})", .{dptr});
    }

    pub fn canAccessPeer(self: *Device, peer: *Device) Error!bool {
        var can: c_int = 0;
        try self.check(self.driver.api.cuDeviceCanAccessPeer(&can, self.handle, peer.handle), "cuDeviceCanAccessPeer(device {d})", .{peer.ordinal});
        return can != 0;
    }

    /// Lets kernels and copies of this device reach `peer`'s memory (idempotent).
    pub fn enablePeerAccess(self: *Device, peer: *Device) Error!void {
        if (peer == self) return;
        if (!try self.canAccessPeer(peer)) {
            return fail(error.InvalidArgument, "CUDA device {d} cannot access device {d} (no P2P path)", .{ self.ordinal, peer.ordinal });
        }
        try self.makeCurrent();
        const result = self.driver.api.cuCtxEnablePeerAccess(peer.context, 0);
        if (result == CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED) return;
        try self.check(result, "cuCtxEnablePeerAccess(device {d})", .{peer.ordinal});
    }

    // ---- streams, events ----

    pub fn createStream(self: *Device) Error!Stream {
        try self.makeCurrent();
        var stream: ?CUstream = null;
        try self.check(self.driver.api.cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), "cuStreamCreate", .{});
        return .{ .device = self, .handle = stream.? };
    }

    /// The device's shared stream (do not destroy it).
    pub fn sharedStream(self: *Device) Stream {
        return .{ .device = self, .handle = self.stream };
    }

    pub fn createEvent(self: *Device, timing: bool) Error!Event {
        try self.makeCurrent();
        var event: ?CUevent = null;
        try self.check(self.driver.api.cuEventCreate(&event, if (timing) 0 else CU_EVENT_DISABLE_TIMING), "cuEventCreate", .{});
        return .{ .device = self, .handle = event.? };
    }

    // ---- kernel launches ----

    /// Grid of a grid-stride launch over `items` work items (one per thread and loop trip).
    pub fn gridFor(self: *const Device, items: u64) u32 {
        const wanted = std.math.divCeil(u64, @max(items, 1), threads_per_block) catch unreachable;
        const cap: u64 = @as(u64, self.sm_count) * blocks_per_sm;
        return @intCast(@max(1, @min(wanted, cap)));
    }

    pub fn launch(self: *Device, kernel_fn: CUfunction, grid_x: u32, grid_y: u32, stream: CUstream, params: []const ?*anyopaque, comptime what: []const u8, args: anytype) Error!void {
        std.debug.assert(grid_x > 0 and grid_y > 0 and grid_y <= 65535);
        try self.makeCurrent();
        try self.check(self.driver.api.cuLaunchKernel(kernel_fn, grid_x, grid_y, 1, threads_per_block, 1, 1, 0, stream, params.ptr, null), "cuLaunchKernel(" ++ what ++ ")", args);
    }
};

// ---- pinned buffers, events, streams: stream.zig ----

pub const Event = stream_mod.Event;
pub const PinnedBuffer = stream_mod.PinnedBuffer;
pub const Stream = stream_mod.Stream;
pub const checkPair = stream_mod.checkPair;

// ---- tests (no GPU needed) ---------------------------------------------------------------------

const testing = std.testing;

test "symbols: _v2 names where cuda.h defines them" {
    try testing.expectEqualStrings("cuMemAlloc_v2", symbolsOf("cuMemAlloc")[0]);
    try testing.expectEqualStrings("cuIpcOpenMemHandle_v2", symbolsOf("cuIpcOpenMemHandle")[0]);
    try testing.expectEqual(@as(usize, 2), symbolsOf("cuEventElapsedTime").len);
    try testing.expectEqualStrings("cuInit", symbolsOf("cuInit")[0]);
}

test "fail() truncates long messages" {
    const long = "x" ** (message_bytes_max + 10);
    try testing.expectError(error.Cuda, @as(Error!void, fail(error.Cuda, "{s}", .{long})));
    try testing.expectEqual(@as(usize, message_bytes_max), lastErrorMessage().len);
    clearError();
    try testing.expectEqual(@as(usize, 0), lastErrorMessage().len);
}
