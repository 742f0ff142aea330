//! A fake CUDA driver: "device memory" is host memory and kernel launches run the CPU
//! reductions of ../reduce.zig (an independent implementation) by kernel name. It checks what
//! a real driver would reject: launch shapes, unknown kernels, pointers outside allocations,
//! frees of unknown pointers. Used by the Zig tests (fake_driver.zig, as an `Api` table) and
//! built as a stand-in libcuda.so.1 (fake_libcuda.zig, scripts/gpu/fake-check.sh) so the GPU
//! test suite can run end to end without a GPU. It cannot check the CUDA kernels themselves.
//! `cpu` is zig/src/reduce.zig (passed in: the shared-library build imports it as a module).
const std = @import("std");
const driver = @import("driver.zig");

pub fn Fake(comptime cpu: type) type {
    return struct {
        const CUresult = driver.CUresult;
        const CUdeviceptr = driver.CUdeviceptr;

        const allocations_max = 256;
        pub const device_count = 2;
        pub const sm_count = 2;

        /// Page-aligned and page-padded like real device allocations, so a dma-buf over the
        /// pages of an allocation (cuMemGetHandleForAddressRange) stays inside it.
        const Allocation = struct {
            memory: []align(page_bytes) u8,
            pinned: bool,
            /// CU_POINTER_ATTRIBUTE_BUFFER_ID: never reused, unlike addresses.
            id: u64 = 0,

            fn pages(a: Allocation) []align(page_bytes) u8 {
                return a.memory.ptr[0..std.mem.alignForward(usize, @max(a.memory.len, 1), page_bytes)];
            }
        };
        const page_bytes = 4096;

        pub const State = struct {
            allocations: [allocations_max]?Allocation = [_]?Allocation{null} ** allocations_max,
            module_loads: u32 = 0,
            launches: u32 = 0,
            last_grid: [2]u32 = .{ 0, 0 },
            peer_enabled: bool = false,
            alloc_bytes_max: u64 = 1 << 30,
            ids: u64 = 0,
        };
        pub var state: State = .{};
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
            state_mutex.lock();
            defer state_mutex.unlock();
            const padded = std.heap.c_allocator.alignedAlloc(u8, page_bytes, std.mem.alignForward(usize, @max(bytes, 1), page_bytes)) catch return null;
            for (&state.allocations) |*slot| {
                if (slot.* == null) {
                    state.ids += 1;
                    slot.* = .{ .memory = padded[0..bytes], .pinned = pinned, .id = state.ids };
                    return padded.ptr;
                }
            }
            std.heap.c_allocator.free(padded);
            return null;
        }

        /// Frees every allocation (tests).
        pub fn reset() void {
            for (&state.allocations) |*slot| {
                if (slot.*) |a| std.heap.c_allocator.free(a.pages());
                slot.* = null;
            }
            state = .{};
        }

        fn remove(ptr: u64, pinned: bool) CUresult {
            state_mutex.lock();
            defer state_mutex.unlock();
            for (&state.allocations) |*slot| {
                if (slot.*) |a| if (@intFromPtr(a.memory.ptr) == ptr and a.pinned == pinned) {
                    std.heap.c_allocator.free(a.pages());
                    slot.* = null;
                    return 0;
                };
            }
            return driver.CUDA_ERROR_INVALID_VALUE;
        }

        pub fn liveAllocations(pinned: bool) usize {
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
                    if (dtype == .f16 or dtype == .bf16) {
                        // The kernel accumulates in f32 and rounds once.
                        const acc = std.heap.c_allocator.alloc(f32, count) catch return driver.CUDA_ERROR_OUT_OF_MEMORY;
                        defer std.heap.c_allocator.free(acc);
                        const next = std.heap.c_allocator.alloc(f32, count) catch return driver.CUDA_ERROR_OUT_OF_MEMORY;
                        defer std.heap.c_allocator.free(next);
                        widen(dtype, acc, srcs.ptr[0]);
                        for (srcs.ptr[1..srcs.count]) |src| {
                            widen(dtype, next, src);
                            cpu.reduceInto(.f32, redop, std.mem.sliceAsBytes(acc), std.mem.sliceAsBytes(next));
                        }
                        narrow(dtype, dst, acc);
                        return 0;
                    }
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
        fn cuPointerGetAttribute(data: *anyopaque, attribute: c_int, dptr: CUdeviceptr) callconv(.c) CUresult {
            const buffer_id = 7;
            if (attribute != driver.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL and attribute != buffer_id) return 0;
            const a = find(dptr) orelse return driver.CUDA_ERROR_INVALID_VALUE;
            if (a.pinned) return driver.CUDA_ERROR_INVALID_VALUE;
            if (attribute == buffer_id) {
                const id: *align(1) u64 = @ptrCast(data);
                id.* = a.id;
                return 0;
            }
            const ordinal: *align(1) c_int = @ptrCast(data);
            ordinal.* = 0;
            return 0;
        }
        /// A dma-buf stand-in: a memfd as large as the range, named so the test verbs provider
        /// knows it (it reaches the bytes at the registered iova through this driver).
        fn cuMemGetHandleForAddressRange(handle: *anyopaque, dptr: CUdeviceptr, size: usize, handle_type: c_int, flags: c_ulonglong) callconv(.c) CUresult {
            if (handle_type != driver.CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD or flags != 0) return driver.CUDA_ERROR_INVALID_VALUE;
            if (dptr % page_bytes != 0 or size % page_bytes != 0 or size == 0) return driver.CUDA_ERROR_INVALID_VALUE;
            const a = find(dptr) orelse return driver.CUDA_ERROR_INVALID_VALUE;
            if (a.pinned or dptr + size > @intFromPtr(a.memory.ptr) + a.pages().len) return driver.CUDA_ERROR_INVALID_VALUE;
            const fd = std.posix.memfd_create("moonring-fake-dmabuf", std.os.linux.MFD.CLOEXEC) catch return driver.CUDA_ERROR_OUT_OF_MEMORY;
            std.posix.ftruncate(fd, size) catch {
                std.posix.close(fd);
                return driver.CUDA_ERROR_OUT_OF_MEMORY;
            };
            const out: *c_int = @ptrCast(@alignCast(handle));
            out.* = fd;
            return 0;
        }
        fn cuCtxPushCurrent(_: driver.CUcontext) callconv(.c) CUresult {
            return 0;
        }
        fn cuCtxPopCurrent(out: *?driver.CUcontext) callconv(.c) CUresult {
            out.* = null;
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
            std.mem.writeInt(i32, h.reserved[8..12], std.os.linux.getpid(), .little);
            return 0;
        }
        /// "Device memory" is this process's heap: a handle opens only in the process that made
        /// it (the other way round from a real driver), so rank processes over the fake fall
        /// back to host staging instead of reading a foreign address.
        fn cuIpcOpenMemHandle(dptr: *CUdeviceptr, h: driver.IpcMemHandle, flags: c_uint) callconv(.c) CUresult {
            if (flags != driver.CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS or h.reserved[63] != 0xAB) return driver.CUDA_ERROR_INVALID_VALUE;
            if (std.mem.readInt(i32, h.reserved[8..12], .little) != std.os.linux.getpid()) return driver.CUDA_ERROR_INVALID_VALUE;
            dptr.* = std.mem.readInt(u64, h.reserved[0..8], .little);
            return 0;
        }
        fn cuIpcCloseMemHandle(_: CUdeviceptr) callconv(.c) CUresult {
            return 0;
        }

        fn widen(dtype: driver.DType, out: []f32, src: u64) void {
            const p: [*]align(1) const u16 = @ptrFromInt(src);
            for (out, 0..) |*x, i| x.* = switch (dtype) {
                .f16 => @floatCast(@as(f16, @bitCast(p[i]))),
                .bf16 => @bitCast(@as(u32, p[i]) << 16),
                else => unreachable,
            };
        }

        fn narrow(dtype: driver.DType, dst: u64, values: []const f32) void {
            const p: [*]align(1) u16 = @ptrFromInt(dst);
            for (values, 0..) |x, i| p[i] = switch (dtype) {
                .f16 => @bitCast(@as(f16, @floatCast(x))),
                .bf16 => blk: {
                    const bits: u32 = @bitCast(x);
                    if (std.math.isNan(x)) break :blk @truncate((bits >> 16) | 0x40);
                    break :blk @truncate((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
                },
                else => unreachable,
            };
        }

        // Entry points the GPU tests' own binding (tests/gpu/cuda.ts) uses beyond driver.Api.
        fn cuCtxSynchronize() callconv(.c) CUresult {
            return 0;
        }
        fn cuMemcpyHtoD(dst: CUdeviceptr, src: *const anyopaque, bytes: usize) callconv(.c) CUresult {
            return cuMemcpyHtoDAsync(dst, src, bytes, null);
        }
        fn cuMemcpyDtoH(dst: *anyopaque, src: CUdeviceptr, bytes: usize) callconv(.c) CUresult {
            return cuMemcpyDtoHAsync(dst, src, bytes, null);
        }
        fn cuMemsetD8(dst: CUdeviceptr, value: c_uint, n: usize) callconv(.c) CUresult {
            return cuMemsetD8Async(dst, @truncate(value), n, null);
        }
        fn cuEventElapsedTime(ms: *f32, _: driver.CUevent, _: driver.CUevent) callconv(.c) CUresult {
            ms.* = 1.0;
            return 0;
        }

        /// (symbol, function) pairs exported by fake_libcuda.zig besides the Api table.
        pub const extra_symbols = .{
            .{ "cuCtxSynchronize", &cuCtxSynchronize },
            .{ "cuCtxPushCurrent_v2", &cuCtxPushCurrent },
            .{ "cuCtxPopCurrent_v2", &cuCtxPopCurrent },
            .{ "cuMemcpyHtoD_v2", &cuMemcpyHtoD },
            .{ "cuMemcpyDtoH_v2", &cuMemcpyDtoH },
            .{ "cuMemsetD8_v2", &cuMemsetD8 },
            .{ "cuEventElapsedTime_v2", &cuEventElapsedTime },
        };

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
            .cuMemGetHandleForAddressRange = cuMemGetHandleForAddressRange,
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
    };
}
