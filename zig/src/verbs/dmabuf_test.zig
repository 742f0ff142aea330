//! The test provider's dma-buf registration (GPUDirect RDMA emulation, fake_gpu.zig).
//! The checks of `ibv_reg_dmabuf_mr` need no GPU: each bad argument fails with the errno the
//! kernel gives (ib_uverbs_reg_dmabuf_mr / ib_umem_dmabuf_get). The data test needs a CUDA
//! driver: libmoonring_fakecuda.so ($MOONRING_CUDA_DRIVER, set by `zig build test-verbs`:
//! "device memory" is host memory) or a real GPU's libcuda.so.1; it skips, saying so, without.
const std = @import("std");
const abi = @import("abi.zig");
const conformance = @import("conformance_test.zig");
const testing = std.testing;
const linux = std.os.linux;

const api = conformance.api;
const page_bytes = 4096;
const access_all = abi.access_local_write | abi.access_remote_write | abi.access_remote_read;

extern "c" fn setenv(name: [*:0]const u8, value: [*:0]const u8, overwrite: c_int) c_int;
extern "c" fn unsetenv(name: [*:0]const u8) c_int;

fn errno() std.posix.E {
    return @enumFromInt(std.c._errno().*);
}

const Domain = struct {
    context: *abi.Context,
    pd: *abi.Pd,

    fn open() !Domain {
        const v = try api();
        var n: c_int = 0;
        const devices = v.get_device_list(&n) orelse return error.Verbs;
        const context = v.open_device(devices[0].?) orelse return error.Verbs;
        return .{ .context = context, .pd = v.alloc_pd(context) orelse return error.Verbs };
    }

    fn close(d: Domain) void {
        const v = api() catch unreachable;
        _ = v.dealloc_pd(d.pd);
        _ = v.close_device(d.context);
    }

    /// Registration fails with `expected`.
    fn refuses(d: Domain, expected: std.posix.E, offset: u64, length: usize, iova: u64, fd: c_int, access: c_int) !void {
        const v = try api();
        std.c._errno().* = 0;
        const mr = v.reg_dmabuf_mr.?(d.pd, offset, length, iova, fd, access);
        if (mr) |m| _ = v.dereg_mr(m);
        try testing.expect(mr == null);
        try testing.expectEqual(expected, errno());
    }
};

fn memfd(name: [*:0]const u8, size: u64) !std.posix.fd_t {
    const fd = try std.posix.memfd_create(std.mem.span(name), linux.MFD.CLOEXEC);
    try std.posix.ftruncate(fd, size);
    return fd;
}

test "MrTest.DmaBuf: bad arguments fail with the kernel's errno (no GPU needed)" {
    const d = try Domain.open();
    defer d.close();
    const fake = try memfd("moonring-fake-dmabuf", 2 * page_bytes);
    defer std.posix.close(fake);
    const plain = try memfd("not-a-buffer", 2 * page_bytes);
    defer std.posix.close(plain);
    const closed = try memfd("moonring-fake-dmabuf", page_bytes);
    std.posix.close(closed);

    try d.refuses(.INVAL, 0, page_bytes, 0, fake, abi.access_remote_write); // remote write needs local write
    try d.refuses(.INVAL, 0, 0, 0, fake, access_all); // empty
    try d.refuses(.INVAL, std.math.maxInt(u64) - 10, page_bytes, 0, fake, access_all); // offset + length overflows
    try d.refuses(.BADF, 0, page_bytes, 0, -1, access_all);
    try d.refuses(.BADF, 0, page_bytes, 0, closed, access_all);
    try d.refuses(.INVAL, 0, page_bytes, 0, plain, access_all); // an open file, not a dma-buf
    try d.refuses(.INVAL, page_bytes, 2 * page_bytes, page_bytes, fake, access_all); // past its end
    try d.refuses(.INVAL, 0, page_bytes, 100, fake, access_all); // offset / iova page offsets differ
    // Everything right but the iova is no device memory (a host stack address): EFAULT where a
    // CUDA driver loads, EOPNOTSUPP where none does.
    var host: [page_bytes]u8 align(page_bytes) = undefined;
    const iova = @intFromPtr(&host);
    const v = try api();
    std.c._errno().* = 0;
    try testing.expect(v.reg_dmabuf_mr.?(d.pd, 0, page_bytes, iova, fake, access_all) == null);
    try testing.expect(errno() == .FAULT or errno() == .OPNOTSUPP);
    // A NIC / kernel without dma-buf support.
    _ = setenv("MOONRING_FAKEVERBS_DMABUF", "0", 1);
    defer _ = unsetenv("MOONRING_FAKEVERBS_DMABUF");
    try d.refuses(.OPNOTSUPP, 0, page_bytes, 0, fake, access_all);
}

/// The CUDA driver entry points the data test uses (the fake driver or a GPU's libcuda).
const Cuda = struct {
    cuInit: *const fn (c_uint) callconv(.c) c_int,
    cuDeviceGet: *const fn (*c_int, c_int) callconv(.c) c_int,
    cuDevicePrimaryCtxRetain: *const fn (*?*anyopaque, c_int) callconv(.c) c_int,
    cuCtxSetCurrent: *const fn (?*anyopaque) callconv(.c) c_int,
    cuMemAlloc_v2: *const fn (*u64, usize) callconv(.c) c_int,
    cuMemFree_v2: *const fn (u64) callconv(.c) c_int,
    cuMemcpyHtoD_v2: *const fn (u64, *const anyopaque, usize) callconv(.c) c_int,
    cuMemcpyDtoH_v2: *const fn (*anyopaque, u64, usize) callconv(.c) c_int,
    cuMemGetHandleForAddressRange: *const fn (*c_int, u64, usize, c_int, c_ulonglong) callconv(.c) c_int,

    fn load() ?Cuda {
        const path: [*:0]const u8 = std.c.getenv("MOONRING_CUDA_DRIVER") orelse "libcuda.so.1";
        const handle = std.c.dlopen(path, .{ .NOW = true }) orelse return null;
        var c: Cuda = undefined;
        inline for (std.meta.fields(Cuda)) |field| {
            @field(c, field.name) = @ptrCast(@alignCast(std.c.dlsym(handle, field.name) orelse return null));
        }
        if (c.cuInit(0) != 0) return null;
        var device: c_int = 0;
        var context: ?*anyopaque = null;
        if (c.cuDeviceGet(&device, 0) != 0 or c.cuDevicePrimaryCtxRetain(&context, device) != 0) return null;
        if (c.cuCtxSetCurrent(context) != 0) return null;
        return c;
    }
};

const DeviceBuffer = struct {
    dptr: u64,
    mr: *abi.Mr,

    fn init(c: Cuda, pd: *abi.Pd, bytes: usize, fill: u8) !DeviceBuffer {
        var dptr: u64 = 0;
        try testing.expectEqual(@as(c_int, 0), c.cuMemAlloc_v2(&dptr, bytes));
        const host = try testing.allocator.alloc(u8, bytes);
        defer testing.allocator.free(host);
        @memset(host, fill);
        try testing.expectEqual(@as(c_int, 0), c.cuMemcpyHtoD_v2(dptr, host.ptr, bytes));
        var fd: c_int = -1;
        const exported = c.cuMemGetHandleForAddressRange(&fd, dptr, bytes, 1, 0);
        if (exported != 0) {
            _ = c.cuMemFree_v2(dptr);
            std.debug.print("skipped: this CUDA driver exports no dma-buf (CUDA error {d}; proprietary kernel module?)\n", .{exported});
            return error.SkipZigTest;
        }
        defer std.posix.close(fd); // the registration holds the dma-buf, not the descriptor
        const v = try api();
        const mr = v.reg_dmabuf_mr.?(pd, 0, bytes, dptr, fd, access_all) orelse return error.Registration;
        try testing.expectEqual(dptr, @intFromPtr(mr.addr));
        return .{ .dptr = dptr, .mr = mr };
    }

    fn deinit(b: DeviceBuffer, c: Cuda) void {
        _ = (api() catch unreachable).dereg_mr(b.mr);
        _ = c.cuMemFree_v2(b.dptr);
    }

    fn expectAll(b: DeviceBuffer, c: Cuda, bytes: usize, value: u8) !void {
        const host = try testing.allocator.alloc(u8, bytes);
        defer testing.allocator.free(host);
        try testing.expectEqual(@as(c_int, 0), c.cuMemcpyDtoH_v2(host.ptr, b.dptr, bytes));
        try conformance.expectAll(host, value);
    }
};

test "MrTest.DmaBuf: RDMA write, read and send between device buffers" {
    const c = Cuda.load() orelse {
        std.debug.print("skipped: no CUDA driver (set MOONRING_CUDA_DRIVER to libmoonring_fakecuda.so, or run on a GPU machine)\n", .{});
        return error.SkipZigTest;
    };
    var p = try conformance.Pair.init(7);
    defer p.deinit();
    const bytes = 512 * page_bytes; // 2 MiB: one GPU page, so the range is page-aligned on a GPU
    const a = try DeviceBuffer.init(c, p.local.pd, bytes, 'x');
    defer a.deinit(c);
    const b = try DeviceBuffer.init(c, p.remote.pd, bytes, 'y');
    defer b.deinit(c);
    // local device -> remote device (RDMA write)
    var sge = [_]abi.Sge{.{ .addr = a.dptr, .length = bytes, .lkey = a.mr.lkey }};
    var wr = conformance.sendWr(1, &sge, abi.wr_rdma_write);
    wr.wr = .{ .rdma = .{ .remote_addr = b.dptr, .rkey = b.mr.rkey } };
    try conformance.postSendOk(&p.local, &wr);
    try testing.expectEqual(abi.WcStatus.success, (try conformance.waitCompletion(p.local.cq)).status);
    try b.expectAll(c, bytes, 'x');
    // remote device -> local host (RDMA read into a host region)
    var hsge = [_]abi.Sge{p.local.sge()};
    hsge[0].length = page_bytes;
    wr = conformance.sendWr(2, &hsge, abi.wr_rdma_read);
    wr.wr = .{ .rdma = .{ .remote_addr = b.dptr + page_bytes, .rkey = b.mr.rkey } };
    try conformance.postSendOk(&p.local, &wr);
    try testing.expectEqual(abi.WcStatus.success, (try conformance.waitCompletion(p.local.cq)).status);
    try conformance.expectAll(p.local.buffer[0..page_bytes], 'x');
    // host -> device receive (send / recv with a device sge)
    var rsge = [_]abi.Sge{.{ .addr = a.dptr, .length = bytes, .lkey = a.mr.lkey }};
    try conformance.postRecv(&p.local, 3, &rsge);
    var ssge = [_]abi.Sge{p.remote.sge()};
    ssge[0].length = page_bytes;
    wr = conformance.sendWr(4, &ssge, abi.wr_send);
    try conformance.postSendOk(&p.remote, &wr);
    try testing.expectEqual(abi.WcStatus.success, (try conformance.waitCompletion(p.remote.cq)).status);
    const r = try conformance.waitCompletion(p.local.cq);
    try testing.expectEqual(abi.WcStatus.success, r.status);
    try testing.expectEqual(@as(u32, page_bytes), r.byte_len);
    try a.expectAll(c, page_bytes, 'b');
    // out of the region's bounds: a remote access error, the device memory untouched
    wr = conformance.sendWr(5, &sge, abi.wr_rdma_write);
    wr.wr = .{ .rdma = .{ .remote_addr = b.dptr + page_bytes, .rkey = b.mr.rkey } };
    try conformance.postSendOk(&p.local, &wr);
    try testing.expectEqual(abi.WcStatus.rem_access_err, (try conformance.waitCompletion(p.local.cq)).status);
}
