//! Shared host buffers (mr_alloc_shared, like MPI_Alloc_mem / ncclMemAlloc): each one is its
//! own /dev/shm file, so ranks of the host can map a peer's buffer and read it with plain loads
//! instead of process_vm_readv (CMA pins pages per call and runs at ~1/4 of memcpy on
//! cache-resident sizes: bench/NOTES.md E18). The board publishes (pid, serial, offset) of a
//! contribution that lies in one; readers map it once (PeerMaps) and read it in place.
const std = @import("std");
const sys = @import("../sys.zig");

/// Shared buffers alive at once in this process.
pub const buffers_max = 256;
/// Peer buffers a reader keeps mapped.
pub const peer_maps_max = 32;

const Buffer = struct { base: usize = 0, bytes: u64 = 0, serial: u64 = 0 };

var registry_mu: std.Thread.Mutex = .{};
var registry: [buffers_max]Buffer = [_]Buffer{.{}} ** buffers_max;
var serial_next: u64 = 1;

/// File names are `moonring-arena-<pid>-<serial>`: the pid lets any later process remove the
/// files of a rank that died without freeing them (sweepDead).
pub const name_prefix = "moonring-arena-";

fn nameOf(buf: []u8, pid: i32, serial: u64) []const u8 {
    return std.fmt.bufPrint(buf, name_prefix ++ "{d}-{d}", .{ pid, serial }) catch unreachable;
}

/// A shared buffer of `bytes` (zeroed), or null (no /dev/shm space, too many buffers).
pub fn alloc(bytes: u64) ?[*]u8 {
    if (bytes == 0) return null;
    sweepDead();
    registry_mu.lock();
    defer registry_mu.unlock();
    const slot = for (&registry) |*b| {
        if (b.base == 0) break b;
    } else return null;
    const serial = serial_next;
    serial_next += 1;
    var name_buf: [64]u8 = undefined;
    const segment = sys.shmCreate(nameOf(&name_buf, sys.processId(), serial), bytes) catch return null;
    slot.* = .{ .base = @intFromPtr(segment.ptr), .bytes = segment.bytes, .serial = serial };
    return segment.ptr;
}

/// Frees a buffer of alloc(); false when `ptr` is not one.
pub fn free(ptr: [*]const u8) bool {
    registry_mu.lock();
    defer registry_mu.unlock();
    for (&registry) |*b| {
        if (b.base != @intFromPtr(ptr)) continue;
        var name_buf: [64]u8 = undefined;
        sys.shmUnlink(nameOf(&name_buf, sys.processId(), b.serial));
        sys.unmap(ptr, b.bytes);
        b.* = .{};
        return true;
    }
    return false;
}

pub const Location = struct { serial: u64, offset: u64 };

/// Where [ptr, ptr + len) lies if it is inside one shared buffer of this process.
pub fn locate(ptr: usize, len: u64) ?Location {
    if (len == 0) return null;
    registry_mu.lock();
    defer registry_mu.unlock();
    for (&registry) |*b| { // `&`: the registry is not copied (6 KiB, E68)
        if (b.base == 0 or ptr < b.base or ptr + len > b.base + b.bytes) continue;
        return .{ .serial = b.serial, .offset = ptr - b.base };
    }
    return null;
}

pub const Described = struct { name: []const u8, offset: u64, file_bytes: u64 };

/// The /dev/shm file name (written into `name_buf`), offset and file size of the shared buffer
/// holding [ptr, ptr + len), for a program of this host that maps it (GET /buffers/:id/ipc).
pub fn describe(ptr: usize, len: u64, name_buf: []u8) ?Described {
    if (len == 0) return null;
    registry_mu.lock();
    defer registry_mu.unlock();
    for (&registry) |*b| { // `&`: the registry is not copied (6 KiB, E68)
        if (b.base == 0 or ptr < b.base or ptr + len > b.base + b.bytes) continue;
        const name = std.fmt.bufPrint(name_buf, name_prefix ++ "{d}-{d}", .{ sys.processId(), b.serial }) catch return null;
        return .{ .name = name, .offset = ptr - b.base, .file_bytes = b.bytes };
    }
    return null;
}

/// Removes the files of processes that died without freeing (kill -9): once per process, at
/// the first alloc or engine start, like the board's sweep.
pub fn sweepDead() void {
    sweep_once.call();
}

var sweep_once = std.once(sweepDeadOnce);
fn sweepDeadOnce() void {
    var dir = std.fs.openDirAbsolute(sys.shm_dir, .{ .iterate = true }) catch return;
    defer dir.close();
    var it = dir.iterate();
    var entries_max: u32 = 1 << 16;
    while (entries_max > 0) : (entries_max -= 1) {
        const entry = (it.next() catch break) orelse break;
        const rest = if (std.mem.startsWith(u8, entry.name, name_prefix)) entry.name[name_prefix.len..] else continue;
        const dash = std.mem.indexOfScalar(u8, rest, '-') orelse continue;
        const pid = std.fmt.parseInt(i32, rest[0..dash], 10) catch continue;
        if (pid != sys.processId() and !sys.processAlive(pid)) dir.deleteFile(entry.name) catch {};
    }
}

/// A reader's mappings of peers' shared buffers, bounded; an entry in use is never unmapped.
pub const PeerMaps = struct {
    mu: std.Thread.Mutex = .{},
    maps: [peer_maps_max]Map = [_]Map{.{}} ** peer_maps_max,
    tick: u64 = 0,

    const Map = struct {
        pid: i32 = 0,
        serial: u64 = 0,
        segment: ?sys.Segment = null,
        refs: u32 = 0,
        last_use: u64 = 0,
    };

    pub const Mapped = struct { bytes: []u8, index: ?u32 };

    /// Maps buffer `serial` of process `pid` (cached); release() it after the op.
    pub fn acquire(pm: *PeerMaps, pid: i32, serial: u64) ?Mapped {
        pm.mu.lock();
        defer pm.mu.unlock();
        pm.tick += 1;
        for (&pm.maps, 0..) |*m, i| {
            if (m.segment == null or m.pid != pid or m.serial != serial) continue;
            m.refs += 1;
            m.last_use = pm.tick;
            return .{ .bytes = m.segment.?.ptr[0..m.segment.?.bytes], .index = @intCast(i) };
        }
        var name_buf: [64]u8 = undefined;
        const segment = sys.shmOpen(nameOf(&name_buf, pid, serial), 0) catch return null;
        // A free entry, else the least recently used one nobody holds.
        var victim: ?*Map = null;
        for (&pm.maps) |*m| {
            if (m.segment == null) {
                victim = m;
                break;
            }
            if (m.refs == 0 and (victim == null or m.last_use < victim.?.last_use)) victim = m;
        }
        const m = victim orelse return .{ .bytes = segment.ptr[0..segment.bytes], .index = null }; // uncached
        if (m.segment) |old| old.unmapSegment();
        m.* = .{ .pid = pid, .serial = serial, .segment = segment, .refs = 1, .last_use = pm.tick };
        return .{ .bytes = segment.ptr[0..segment.bytes], .index = @intCast((@intFromPtr(m) - @intFromPtr(&pm.maps[0])) / @sizeOf(Map)) };
    }

    pub fn release(pm: *PeerMaps, mapped: Mapped) void {
        pm.mu.lock();
        defer pm.mu.unlock();
        if (mapped.index) |i| {
            std.debug.assert(pm.maps[i].refs > 0);
            pm.maps[i].refs -= 1;
        } else sys.unmap(mapped.bytes.ptr, mapped.bytes.len);
    }

    pub fn deinit(pm: *PeerMaps) void {
        for (&pm.maps) |*m| if (m.segment) |s| {
            std.debug.assert(m.refs == 0);
            s.unmapSegment();
            m.* = .{};
        };
    }
};

test "arena: alloc, locate, a peer maps it and sees the bytes, free" {
    const p = alloc(3 * 4096 + 10) orelse return error.NoArena;
    p[5000] = 42;
    const loc = locate(@intFromPtr(p) + 4096, 100) orelse return error.NotFound;
    try std.testing.expectEqual(@as(u64, 4096), loc.offset);
    try std.testing.expectEqual(@as(?Location, null), locate(@intFromPtr(p) + 4096, 1 << 20));
    var name_buf: [64]u8 = undefined;
    const d = describe(@intFromPtr(p) + 4096, 100, &name_buf) orelse return error.NotFound;
    try std.testing.expectEqual(@as(u64, 4096), d.offset);
    try std.testing.expect(d.file_bytes >= 3 * 4096 + 10);
    var expect_buf: [64]u8 = undefined;
    try std.testing.expectEqualStrings(nameOf(&expect_buf, sys.processId(), loc.serial), d.name);
    var maps = PeerMaps{};
    defer maps.deinit();
    const m = maps.acquire(sys.processId(), loc.serial) orelse return error.NoMap;
    try std.testing.expectEqual(@as(u8, 42), m.bytes[5000]);
    maps.release(m);
    try std.testing.expect(free(p));
    try std.testing.expect(maps.acquire(sys.processId(), loc.serial + 1000) == null);
}
