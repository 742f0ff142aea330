//! GPU memory registered with the RDMA device, so peers read and write device buffers directly
//! (GPUDirect RDMA) instead of through host staging.
//!
//! Per device allocation, in this order:
//!  1. dma-buf: `cuMemGetHandleForAddressRange(DMA_BUF_FD)` over the allocation's pages, then
//!     `ibv_reg_dmabuf_mr` (rdma-core >= 34, resolved with dlsym; CUDA >= 11.7, kernel >= 5.12).
//!  2. nvidia-peermem: plain `ibv_reg_mr` on the device pointer, tried only where the module is
//!     loaded (/sys/kernel/mm/memory_peers/nv_mem, /sys/module/nvidia_peermem; as NCCL checks)
//!     or MOONRING_IB_PEERMEM=1 says to.
//!  3. neither: no registration; the op uses host staging. Said once in the log and in
//!     GET /cluster (`data_plane.verbs.gpu`).
//!
//! The cache is keyed by address range, like the host one (verbs_regcache.zig), and also by
//! the allocation's CUDA buffer id: memory freed and allocated again at the same address has a
//! new id, so a stale registration (pinning the old pages) is dropped, never reused. `forget`
//! drops a range at once (mr_cuda_free).
const std = @import("std");
const sys = @import("../sys.zig");
const abi = @import("../verbs/abi.zig");
const lib = @import("../verbs/lib.zig");
const driver = @import("../cuda/driver.zig");
const staging = @import("../cuda/staging.zig");
const verbs = @import("verbs.zig");
const regcache = @import("verbs_regcache.zig");
const Device = verbs.Device;

/// Device allocations one verbs device keeps registered.
pub const entries_max = 32;
const page_bytes: u64 = 4096;
const CU_POINTER_ATTRIBUTE_BUFFER_ID = 7;
const access = abi.access_local_write | abi.access_remote_write | abi.access_remote_read;

comptime {
    std.debug.assert(entries_max > 0 and entries_max <= 256);
}

pub const Mode = enum(u8) { none, dmabuf, peermem };

/// How this process registers GPU memory (the last outcome; for GET /cluster).
pub const Status = struct {
    mode: Mode = .none,
    text_len: usize = 0,
    text: [200]u8 = undefined,

    pub fn message(self: *const Status) []const u8 {
        return if (self.text_len == 0) "not tried (no device op over verbs yet)" else self.text[0..self.text_len];
    }
};

var status: Status = .{};
var status_mu: std.Thread.Mutex = .{};
var said_fallback = std.atomic.Value(bool).init(false);
var said_modes = std.atomic.Value(u8).init(0);
/// Bytes moved by RDMA straight between device buffers (GET /cluster; tests check it grows).
pub var direct_bytes = std.atomic.Value(u64).init(0);
/// Device allocations registered so far (GET /cluster: cache hits leave it alone).
pub var registrations = std.atomic.Value(u64).init(0);

pub fn statusCopy() Status {
    status_mu.lock();
    defer status_mu.unlock();
    return status;
}

fn setStatus(mode: Mode, comptime fmt: []const u8, args: anytype) void {
    status_mu.lock();
    defer status_mu.unlock();
    status.mode = mode;
    status.text_len = (std.fmt.bufPrint(&status.text, fmt, args) catch status.text[0..]).len;
}

pub const Handle = struct { index: u32, lkey: u32, rkey: u32, mode: Mode };

pub const Cache = struct {
    mu: std.Thread.Mutex = .{},
    entries: [entries_max]Entry = [_]Entry{.{}} ** entries_max,
    clock: u64 = 0,
    registrations: u64 = 0,

    const Entry = struct {
        start: u64 = 0,
        len: u64 = 0,
        buffer_id: u64 = 0,
        mr: ?*abi.Mr = null,
        mode: Mode = .none,
        users: u32 = 0,
        last_use: u64 = 0,
    };

    /// A registration covering [dptr, dptr + len) of device `ordinal`'s memory, held until
    /// `release`; null (why says it) when GPU memory cannot be registered.
    pub fn acquire(cache: *Cache, dev: *Device, ordinal: i32, dptr: u64, len: u64, why: *verbs.Reason) ?Handle {
        std.debug.assert(len > 0);
        const range = allocationOf(ordinal, dptr, len, why) orelse return null;
        cache.mu.lock();
        defer cache.mu.unlock();
        cache.clock += 1;
        for (&cache.entries, 0..) |*e, i| {
            if (e.mr == null or dptr < e.start or dptr + len > e.start + e.len) continue;
            if (e.buffer_id != range.buffer_id) {
                // Freed and allocated again here: the registration pins the old pages.
                if (e.users > 0) continue;
                _ = dev.api.dereg_mr(e.mr.?);
                e.* = .{};
                continue;
            }
            e.users += 1;
            e.last_use = cache.clock;
            return .{ .index = @intCast(i), .lkey = e.mr.?.lkey, .rkey = e.mr.?.rkey, .mode = e.mode };
        }
        const slot = cache.victim() orelse {
            why.set("more than {d} device buffers registered and in use", .{entries_max});
            return null;
        };
        const e = &cache.entries[slot];
        if (e.mr) |old| _ = dev.api.dereg_mr(old);
        e.* = .{};
        const mr, const mode = register(dev, ordinal, range.start, range.len, why) orelse return null;
        cache.registrations += 1;
        _ = registrations.fetchAdd(1, .monotonic);
        e.* = .{ .start = range.start, .len = range.len, .buffer_id = range.buffer_id, .mr = mr, .mode = mode, .users = 1, .last_use = cache.clock };
        return .{ .index = @intCast(slot), .lkey = mr.lkey, .rkey = mr.rkey, .mode = mode };
    }

    pub fn release(cache: *Cache, handle: Handle) void {
        cache.mu.lock();
        defer cache.mu.unlock();
        const e = &cache.entries[handle.index];
        std.debug.assert(e.users > 0);
        e.users -= 1;
    }

    /// Drops every unused registration overlapping [start, start + len): it is being freed.
    pub fn forget(cache: *Cache, dev: *Device, start: u64, len: u64) void {
        cache.mu.lock();
        defer cache.mu.unlock();
        regcache.forgetRange(&cache.entries, &dev.api, start, len);
    }

    fn victim(cache: *Cache) ?usize {
        return regcache.victimOf(&cache.entries);
    }

    pub fn clear(cache: *Cache, api: *const lib.Api) void {
        regcache.clearAll(&cache.entries, api);
    }
};

const Range = struct { start: u64, len: u64, buffer_id: u64 };

/// The page-aligned span of the allocation holding [dptr, dptr + len), and its buffer id.
fn allocationOf(ordinal: i32, dptr: u64, len: u64, why: *verbs.Reason) ?Range {
    const dev = staging.device(ordinal) catch {
        why.set("device {d}: {s}", .{ ordinal, driver.lastErrorMessage() });
        return null;
    };
    dev.checkRange(dptr, len, "verbs registration") catch {
        why.set("{s}", .{driver.lastErrorMessage()});
        return null;
    };
    var base: u64 = 0;
    var size: usize = 0;
    if (dev.driver.api.cuMemGetAddressRange(&base, &size, dptr) != driver.CUDA_SUCCESS) {
        why.set("device {d}: no allocation at 0x{x}", .{ ordinal, dptr });
        return null;
    }
    var buffer_id: u64 = 0;
    _ = dev.driver.api.cuPointerGetAttribute(&buffer_id, CU_POINTER_ATTRIBUTE_BUFFER_ID, dptr);
    const start = base & ~(page_bytes - 1);
    const end = std.mem.alignForward(u64, base + size, page_bytes);
    return .{ .start = start, .len = end - start, .buffer_id = buffer_id };
}

/// dma-buf first, then nvidia-peermem; the first success (or the first failure) is said once.
fn register(dev: *Device, ordinal: i32, start: u64, len: u64, why: *verbs.Reason) ?struct { *abi.Mr, Mode } {
    var dmabuf_why: verbs.Reason = .{};
    if (registerDmabuf(dev, ordinal, start, len, &dmabuf_why)) |mr| {
        noteMode(.dmabuf, "dma-buf (ibv_reg_dmabuf_mr) on {s}", .{dev.name()});
        return .{ mr, .dmabuf };
    }
    if (peermemLoaded()) {
        if (dev.api.reg_mr(dev.pd, @ptrFromInt(start), len, access)) |mr| {
            noteMode(.peermem, "nvidia-peermem (ibv_reg_mr on device memory) on {s}; dma-buf: {s}", .{ dev.name(), dmabuf_why.message() });
            return .{ mr, .peermem };
        }
        why.set("dma-buf: {s}; nvidia-peermem: ibv_reg_mr on device memory failed (errno {d})", .{ dmabuf_why.message(), std.c._errno().* });
    } else {
        why.set("dma-buf: {s}; nvidia-peermem: not loaded", .{dmabuf_why.message()});
    }
    if (!said_fallback.swap(true, .acq_rel)) {
        sys.logLine("GPU memory not registered with {s} ({s}); device ops across hosts use host staging", .{ dev.name(), why.message() });
    }
    setStatus(.none, "host staging: {s}", .{why.message()});
    return null;
}

fn registerDmabuf(dev: *Device, ordinal: i32, start: u64, len: u64, why: *verbs.Reason) ?*abi.Mr {
    const reg_dmabuf_mr = dev.api.reg_dmabuf_mr orelse {
        why.set("the verbs library lacks ibv_reg_dmabuf_mr (rdma-core < 34)", .{});
        return null;
    };
    const cuda_dev = staging.device(ordinal) catch return null;
    const get_handle = cuda_dev.driver.api.cuMemGetHandleForAddressRange orelse {
        why.set("the CUDA driver lacks cuMemGetHandleForAddressRange (< 11.7)", .{});
        return null;
    };
    var fd: c_int = -1;
    const result = get_handle(&fd, start, len, driver.CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD, 0);
    if (result != driver.CUDA_SUCCESS) {
        why.set("cuMemGetHandleForAddressRange failed (CUDA error {d})", .{result});
        return null;
    }
    defer sys.closeFd(fd);
    const mr = reg_dmabuf_mr(dev.pd, 0, len, start, fd, access) orelse {
        why.set("ibv_reg_dmabuf_mr failed (errno {d})", .{std.c._errno().*});
        return null;
    };
    return mr;
}

/// Said once per process and mode (a driver may export some allocations and not others).
fn noteMode(mode: Mode, comptime fmt: []const u8, args: anytype) void {
    setStatus(mode, fmt, args);
    const bit = @as(u8, 1) << @as(u3, @intCast(@intFromEnum(mode)));
    if (said_modes.fetchOr(bit, .acq_rel) & bit == 0) sys.logLine("GPU memory over verbs: " ++ fmt, args);
}

/// nvidia-peermem (or the older nv_peer_mem) is loaded, or MOONRING_IB_PEERMEM says what to do.
fn peermemLoaded() bool {
    if (sys.getenv("MOONRING_IB_PEERMEM")) |v| return v.len > 0 and v[0] == '1';
    const paths = [_][]const u8{ "/sys/kernel/mm/memory_peers/nv_mem/version", "/sys/module/nvidia_peermem/version", "/sys/module/nv_peer_mem/version" };
    for (paths) |path| {
        std.fs.accessAbsolute(path, .{}) catch continue;
        return true;
    }
    return false;
}
