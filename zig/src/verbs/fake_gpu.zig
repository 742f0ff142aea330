//! The test provider's GPUDirect emulation: memory regions over CUDA device memory registered
//! by dma-buf (`ibv_reg_dmabuf_mr`) or, as nvidia-peermem allows, by `ibv_reg_mr` on a device
//! pointer.
//!
//! A NIC reaches device memory by DMA through the dma-buf's pages (or the pages peermem
//! pins). A userspace provider cannot DMA, so this one moves the bytes with the CUDA driver
//! API instead (cuMemcpyHtoD / cuMemcpyDtoH at the device address the region's iova names),
//! in the process that registered the region, exactly where a NIC would place or fetch them.
//! libcuda is opened only when a device region is first registered: `$MOONRING_CUDA_DRIVER`
//! (the same library the core loads, so a fake driver's "device memory" is shared), else
//! libcuda.so.1. Timings are not a NIC's.
//!
//! Registration checks follow the kernel's (ib_uverbs_reg_dmabuf_mr, ib_umem_dmabuf_get):
//! access flags (remote write needs local write) and a zero length -> EINVAL; offset + length
//! overflowing -> EINVAL; a descriptor that is not open -> EBADF; an open file that is no
//! dma-buf -> EINVAL; a dma-buf smaller than offset + length -> EINVAL; offset and iova in
//! different places of their pages -> EINVAL. Then what only this emulation needs: the iova
//! must be device memory, [iova, iova + length) inside one allocation (EFAULT otherwise, as
//! pinning fails), and libcuda must load (EOPNOTSUPP otherwise).
const std = @import("std");
const posix = std.posix;
const abi = @import("abi.zig");

const page_bytes: u64 = 4096;
const CUresult = c_int;
const CUdeviceptr = u64;
const CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL = 9;

/// Where a device region's bytes live: the primary context of the device that owns them.
pub const Region = struct {
    context: *anyopaque,
};

const Cuda = struct {
    cuInit: *const fn (flags: c_uint) callconv(.c) CUresult,
    cuDeviceGet: *const fn (device: *c_int, ordinal: c_int) callconv(.c) CUresult,
    cuDevicePrimaryCtxRetain: *const fn (context: *?*anyopaque, device: c_int) callconv(.c) CUresult,
    cuCtxPushCurrent_v2: *const fn (context: *anyopaque) callconv(.c) CUresult,
    cuCtxPopCurrent_v2: *const fn (context: *?*anyopaque) callconv(.c) CUresult,
    cuMemGetAddressRange_v2: *const fn (base: ?*CUdeviceptr, bytes: ?*usize, dptr: CUdeviceptr) callconv(.c) CUresult,
    cuPointerGetAttribute: *const fn (data: *anyopaque, attribute: c_int, dptr: CUdeviceptr) callconv(.c) CUresult,
    cuMemcpyHtoD_v2: *const fn (dst: CUdeviceptr, src: *const anyopaque, bytes: usize) callconv(.c) CUresult,
    cuMemcpyDtoH_v2: *const fn (dst: *anyopaque, src: CUdeviceptr, bytes: usize) callconv(.c) CUresult,
};

var cuda: ?Cuda = null;
var cuda_once = std.once(loadCuda);

fn loadCuda() void {
    const path: [*:0]const u8 = std.c.getenv("MOONRING_CUDA_DRIVER") orelse "libcuda.so.1";
    const handle = std.c.dlopen(path, .{ .NOW = true }) orelse return;
    var table: Cuda = undefined;
    inline for (std.meta.fields(Cuda)) |field| {
        const symbol = std.c.dlsym(handle, field.name) orelse return;
        @field(table, field.name) = @ptrCast(@alignCast(symbol));
    }
    if (table.cuInit(0) != 0) return;
    cuda = table;
}

pub const Checked = union(enum) { region: Region, errno: posix.E };

/// The region a dma-buf registration describes, or the errno the registration fails with.
pub fn checkDmabuf(offset: u64, length: usize, iova: u64, fd: c_int, access: c_int) Checked {
    return .{ .region = checkDmabufOrErrno(offset, length, iova, fd, access) catch |err| return .{ .errno = errnoOf(err) } };
}

const Refused = error{ Invalid, BadFd, Fault, NoCuda };

fn errnoOf(err: Refused) posix.E {
    return switch (err) {
        error.Invalid => .INVAL,
        error.BadFd => .BADF,
        error.Fault => .FAULT,
        error.NoCuda => .OPNOTSUPP,
    };
}

fn checkDmabufOrErrno(offset: u64, length: usize, iova: u64, fd: c_int, access: c_int) Refused!Region {
    const remote_needs_local = abi.access_remote_write | abi.access_remote_atomic;
    if (access & remote_needs_local != 0 and access & abi.access_local_write == 0) return error.Invalid;
    if (length == 0) return error.Invalid;
    const end = std.math.add(u64, offset, length) catch return error.Invalid;
    if (fd < 0) return error.BadFd;
    var link_buf: [64]u8 = undefined;
    var path_buf: [64]u8 = undefined;
    const path = std.fmt.bufPrintZ(&path_buf, "/proc/self/fd/{d}", .{fd}) catch return error.BadFd;
    const target = posix.readlinkZ(path, &link_buf) catch |err| return if (err == error.FileNotFound) error.BadFd else error.Invalid;
    // A dma-buf reads "anon_inode:dmabuf" or "/dmabuf:<name>"; the fake CUDA driver's stand-in
    // is a memfd named "moonring-fake-dmabuf".
    if (std.mem.indexOf(u8, target, "dmabuf") == null) return error.Invalid;
    const size_bytes = std.os.linux.lseek(fd, 0, std.os.linux.SEEK.END);
    if (std.os.linux.E.init(size_bytes) != .SUCCESS or size_bytes < end) return error.Invalid;
    if (offset % page_bytes != iova % page_bytes) return error.Invalid;
    return deviceRegion(iova, length);
}

/// The region of `ibv_reg_mr` on a device pointer (nvidia-peermem), or null: not device memory.
pub fn peermemRegion(addr: u64, length: usize) ?Region {
    return deviceRegion(addr, length) catch null;
}

fn deviceRegion(dptr: u64, length: usize) Refused!Region {
    cuda_once.call();
    const c = cuda orelse return error.NoCuda;
    var base: CUdeviceptr = 0;
    var bytes: usize = 0;
    if (c.cuMemGetAddressRange_v2(&base, &bytes, dptr) != 0) return error.Fault;
    // Allocations are page-granular (registrations cover whole pages, as NCCL's do).
    if (dptr + length > std.mem.alignForward(u64, base + bytes, page_bytes)) return error.Fault;
    var ordinal: c_int = 0;
    if (c.cuPointerGetAttribute(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, dptr) != 0) return error.Fault;
    var device: c_int = 0;
    if (c.cuDeviceGet(&device, ordinal) != 0) return error.Fault;
    var context: ?*anyopaque = null;
    if (c.cuDevicePrimaryCtxRetain(&context, device) != 0) return error.Fault;
    return .{ .context = context orelse return error.Fault };
}

/// Host bytes -> device memory at `dptr` (the responder's write, a read response landing).
pub fn copyIn(region: Region, dptr: u64, src: []const u8) bool {
    if (src.len == 0) return true;
    const c = cuda.?;
    if (c.cuCtxPushCurrent_v2(region.context) != 0) return false;
    defer popContext(c);
    return c.cuMemcpyHtoD_v2(dptr, src.ptr, src.len) == 0;
}

/// Device memory at `dptr` -> host bytes (a request's payload, the responder's read).
pub fn copyOut(region: Region, dst: []u8, dptr: u64) bool {
    if (dst.len == 0) return true;
    const c = cuda.?;
    if (c.cuCtxPushCurrent_v2(region.context) != 0) return false;
    defer popContext(c);
    return c.cuMemcpyDtoH_v2(dst.ptr, dptr, dst.len) == 0;
}

fn popContext(c: Cuda) void {
    var previous: ?*anyopaque = null;
    _ = c.cuCtxPopCurrent_v2(&previous);
}
