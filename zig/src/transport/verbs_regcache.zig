//! The verbs registration cache and the buffer table it consults (split from verbs.zig).
const std = @import("std");
const abi = @import("../verbs/abi.zig");
const lib = @import("../verbs/lib.zig");
const verbs = @import("verbs.zig");
const Device = verbs.Device;
const cache_entries_max = verbs.cache_entries_max;

/// Memory regions registered for zero-copy, keyed by address range: a lookup that falls inside
/// a cached region reuses it; a miss registers the page-aligned range, evicting the least
/// recently used region nobody holds. (NCCL / UCX keep such a cache: registering costs
/// a system call and page pinning, far too much per message.)
pub const RegCache = struct {
    mu: std.Thread.Mutex = .{},
    entries: [cache_entries_max]Entry = [_]Entry{.{}} ** cache_entries_max,
    clock: u64 = 0,
    hits: u64 = 0,
    misses: u64 = 0,

    const Entry = struct {
        start: usize = 0,
        len: usize = 0,
        mr: ?*abi.Mr = null,
        users: u32 = 0,
        last_use: u64 = 0,
    };

    /// `index` null: a registration of its own, deregistered on release.
    pub const Handle = struct { index: ?u32, mr: *abi.Mr, lkey: u32, rkey: u32 };

    /// A registration covering [addr, addr + len), held until `release`. Only memory that
    /// stays mapped until mr_free tells us (buffers.contains) is cached: a registration pins
    /// the pages it was made on, and memory unmapped and mapped again at the same address
    /// would leave a cached one pointing at the old pages. Other memory is registered per use.
    pub fn acquire(cache: *RegCache, dev: *Device, addr: usize, len: usize) ?Handle {
        std.debug.assert(len > 0);
        const page: usize = 4096;
        const start = addr & ~(page - 1);
        const end = std.mem.alignForward(usize, addr + len, page);
        const access = abi.access_local_write | abi.access_remote_write | abi.access_remote_read;
        if (!buffers.contains(start, end - start)) {
            const mr = dev.api.reg_mr(dev.pd, @ptrFromInt(start), end - start, access) orelse return null;
            return .{ .index = null, .mr = mr, .lkey = mr.lkey, .rkey = mr.rkey };
        }
        cache.mu.lock();
        defer cache.mu.unlock();
        cache.clock += 1;
        for (&cache.entries, 0..) |*e, i| {
            if (e.mr != null and addr >= e.start and addr + len <= e.start + e.len) {
                e.users += 1;
                e.last_use = cache.clock;
                cache.hits += 1;
                return .{ .index = @intCast(i), .mr = e.mr.?, .lkey = e.mr.?.lkey, .rkey = e.mr.?.rkey };
            }
        }
        cache.misses += 1;
        const slot = cache.victim() orelse return null;
        const e = &cache.entries[slot];
        if (e.mr) |old| _ = dev.api.dereg_mr(old);
        e.* = .{};
        const mr = dev.api.reg_mr(dev.pd, @ptrFromInt(start), end - start, access) orelse return null;
        e.* = .{ .start = start, .len = end - start, .mr = mr, .users = 1, .last_use = cache.clock };
        return .{ .index = @intCast(slot), .mr = mr, .lkey = mr.lkey, .rkey = mr.rkey };
    }

    pub fn release(cache: *RegCache, dev: *Device, handle: Handle) void {
        const index = handle.index orelse {
            _ = dev.api.dereg_mr(handle.mr);
            return;
        };
        cache.mu.lock();
        defer cache.mu.unlock();
        const e = &cache.entries[index];
        std.debug.assert(e.users > 0);
        e.users -= 1;
    }

    /// Drops every unused region overlapping [addr, addr + len): its memory is being unmapped.
    pub fn forget(cache: *RegCache, dev: *Device, addr: usize, len: usize) void {
        cache.mu.lock();
        defer cache.mu.unlock();
        forgetRange(&cache.entries, &dev.api, addr, len);
    }

    fn victim(cache: *RegCache) ?usize {
        return victimOf(&cache.entries);
    }

    pub fn clear(cache: *RegCache, api: *const lib.Api) void {
        clearAll(&cache.entries, api);
    }
};

// Shared by the registration caches (this one, verbs_gpu.Cache): `entries` is an array of
// structs with start, len, mr, users and last_use.

/// An empty entry, else the least recently used one nobody holds.
pub fn victimOf(entries: anytype) ?usize {
    var best: ?usize = null;
    for (entries, 0..) |e, i| {
        if (e.mr == null) return i;
        if (e.users > 0) continue;
        if (best == null or e.last_use < entries[best.?].last_use) best = i;
    }
    return best;
}

/// Deregisters every unused entry overlapping [start, start + len).
pub fn forgetRange(entries: anytype, api: *const lib.Api, start: u64, len: u64) void {
    for (entries) |*e| {
        if (e.mr == null or e.users > 0) continue;
        if (start < e.start + e.len and e.start < start + len) {
            _ = api.dereg_mr(e.mr.?);
            e.* = .{};
        }
    }
}

pub fn clearAll(entries: anytype, api: *const lib.Api) void {
    for (entries) |*e| {
        if (e.mr) |mr| _ = api.dereg_mr(mr);
        e.* = .{};
    }
}

/// The host buffers mr_alloc / mr_alloc_shared handed out and mr_free has not taken back yet
/// (process-wide): the memory the registration cache may keep registered. mr_free drops a
/// buffer's cached registrations on every open device before unmapping it.
pub const buffers = struct {
    const max = 1024;
    var mu: std.Thread.Mutex = .{};
    const Range = struct { start: usize = 0, len: usize = 0 };
    var ranges: [max]Range = [_]Range{.{}} ** max;
    var devices: [16]?*Device = [_]?*Device{null} ** 16;

    pub fn note(ptr: usize, len: usize) void {
        mu.lock();
        defer mu.unlock();
        for (&ranges) |*r| if (r.len == 0) {
            r.* = .{ .start = ptr, .len = len };
            return;
        };
        // Full: that buffer simply registers per use.
    }

    pub fn drop(ptr: usize, len: usize) void {
        mu.lock();
        defer mu.unlock();
        for (&ranges) |*r| if (r.start == ptr and r.len != 0) {
            r.* = .{};
        };
        for (devices) |maybe| if (maybe) |dev| dev.cache.forget(dev, ptr, len);
    }

    /// mr_cuda_free: the device allocation at `dptr` goes; its GPU registrations go first
    /// (a dma-buf registration would keep the freed memory alive until evicted).
    pub fn dropDeviceMemory(dptr: u64) void {
        mu.lock();
        defer mu.unlock();
        for (devices) |maybe| if (maybe) |dev| dev.gpu_cache.forget(dev, dptr, 1);
    }

    pub fn contains(start: usize, len: usize) bool {
        mu.lock();
        defer mu.unlock();
        for (ranges) |r| if (r.len != 0 and start >= r.start and start + len <= std.mem.alignForward(usize, r.start + r.len, 4096)) return true;
        return false;
    }

    pub fn addDevice(dev: *Device) void {
        mu.lock();
        defer mu.unlock();
        for (&devices) |*slot| if (slot.* == null) {
            slot.* = dev;
            return;
        };
    }

    /// The open devices' names and byte counters (GET /cluster), at most out.len of them.
    pub fn deviceBytes(out: []DeviceBytes) usize {
        mu.lock();
        defer mu.unlock();
        var n: usize = 0;
        for (devices) |maybe| if (maybe) |dev| {
            if (n == out.len) break;
            out[n] = .{ .dev = dev, .bytes = dev.bytes.load(.monotonic) };
            n += 1;
        };
        return n;
    }

    pub const DeviceBytes = struct { dev: *Device, bytes: u64 };

    pub fn removeDevice(dev: *Device) void {
        mu.lock();
        defer mu.unlock();
        for (&devices) |*slot| if (slot.* == dev) {
            slot.* = null;
        };
    }
};
