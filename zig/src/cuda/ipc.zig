//! CUDA IPC for the direct device path (backend/cuda_direct.zig): what one rank process tells
//! its same-host peers about a device buffer (`Ref`: the 64-byte IPC handle of the buffer's
//! allocation + the offset into it), and a per-engine cache of peer allocations opened here.
//!
//! cuIpcOpenMemHandle is slow (it maps the peer's allocation: tens to hundreds of µs), so a
//! mapping stays open and is reused by later ops while the peer process lives. Entries are
//! keyed by (peer rank, local device, handle bytes): the handle names one allocation of the
//! peer process, and a new allocation gets a new handle even at a reused address. Entries are
//! closed when the cache is full and they are unused (LRU), when the peer goes down or is
//! replaced (dropPeer) and when the engine is destroyed (deinit).
//!
//! `verified` remembers which peers' handles this process has opened successfully (IPC works
//! between us), so ops between verified peers skip the "did every open work?" round.
const std = @import("std");
const driver = @import("driver.zig");
const staging = @import("staging.zig");

pub const Error = driver.Error;
pub const handle_bytes = driver.ipc_handle_bytes;
/// Open peer allocations kept per engine.
pub const entries_max = 64;
/// Streams kept per engine for direct ops (one per op in flight).
pub const streams_max = 16;

comptime {
    std.debug.assert(handle_bytes == 64);
    std.debug.assert(@sizeOf(Ref) == handle_bytes + 32);
}

/// A device buffer as its owner describes it to a peer process of the same host.
pub const Ref = extern struct {
    handle: [handle_bytes]u8 = [_]u8{0} ** handle_bytes,
    /// Bytes from the allocation's base to the buffer.
    offset: u64 = 0,
    /// Bytes of the buffer (0: no buffer).
    bytes: u64 = 0,
    /// The allocation's address range in its owner's process: a mapping of an allocation whose
    /// range overlaps a new one's was freed there (stale).
    owner_base: u64 = 0,
    owner_bytes: u64 = 0,

    pub fn present(ref: *const Ref) bool {
        return ref.bytes > 0;
    }
};

/// The Ref of [dptr, dptr + bytes) on device `ordinal` (error: not IPC-capable memory, e.g.
/// VMM / cuMemCreate allocations or host memory).
pub fn refOf(ordinal: i32, dptr: u64, bytes: u64) Error!Ref {
    if (dptr == 0 or bytes == 0) return .{};
    const dev = try staging.device(ordinal);
    try dev.checkRange(dptr, bytes, "IPC export");
    const range = try dev.addressRange(dptr);
    const handle = try dev.ipcHandle(range.base);
    return .{ .handle = handle.reserved, .offset = dptr - range.base, .bytes = bytes, .owner_base = range.base, .owner_bytes = range.bytes };
}

/// A peer buffer mapped here: its address, and the cache entry to release.
pub const Mapping = struct {
    address: u64,
    slot: u32,
};

const Entry = struct {
    peer: u32,
    ordinal: i32,
    handle: [handle_bytes]u8,
    /// Base of the mapping in this process, and the allocation's length.
    base: u64,
    bytes: u64,
    /// The allocation's range in the peer process (Ref.owner_base / owner_bytes).
    owner_base: u64,
    owner_bytes: u64,
    /// Ops using it now; only unused entries are closed.
    refs: u32,
    /// Close once the last op releases it (its peer went down meanwhile).
    stale: bool,
    last_use: u64,
};

pub const Cache = struct {
    mutex: std.Thread.Mutex = .{},
    entries: [entries_max]?Entry = [_]?Entry{null} ** entries_max,
    clock: u64 = 0,
    /// Bit r: a handle of global rank r was opened here successfully (cleared by dropPeer).
    verified: std.atomic.Value(u64) = .init(0),

    /// Set when IPC failed between this process and a peer: later ops use host staging.
    disabled: std.atomic.Value(bool) = .init(false),
    /// Log lines said once.
    said: std.atomic.Value(u32) = .init(0),
    streams: [streams_max]?driver.Stream = [_]?driver.Stream{null} ** streams_max,
    /// cuIpcOpenMemHandle calls made (tests, diagnostics: MOONRING_CUDA_TRACE).
    opens: std.atomic.Value(u64) = .init(0),
    /// Ops completed on the direct path (tests, diagnostics).
    completed: std.atomic.Value(u64) = .init(0),
    /// Tests: every open fails (as cuIpcOpenMemHandle does between containers).
    test_fail_open: bool = false,

    /// The bit of `peer` in `verified`; ranks past the mask's 64 bits (worlds hold up to
    /// MR_WORLD_SIZE_MAX) have none, so ops with them always take the acknowledgement round.
    pub fn verifiedBit(peer: u32) u64 {
        return if (peer < 64) @as(u64, 1) << @intCast(peer) else 0;
    }

    /// Maps the buffer `ref` of global rank `peer` into this process on device `ordinal`;
    /// returns its device address here. Pair with release().
    pub fn acquire(cache: *Cache, ordinal: i32, peer: u32, ref: *const Ref) Error!Mapping {
        std.debug.assert(ref.present());
        cache.mutex.lock();
        defer cache.mutex.unlock();
        cache.clock += 1;
        if (cache.reuseLocked(ordinal, peer, ref)) |mapping| return mapping;
        cache.closeOverlapsLocked(ordinal, peer, ref);
        const index = try cache.victimLocked();
        const base, const bytes = try cache.openLocked(ordinal, peer, ref);
        cache.entries[index] = .{
            .peer = peer,
            .ordinal = ordinal,
            .handle = ref.handle,
            .base = base,
            .bytes = bytes,
            .owner_base = ref.owner_base,
            .owner_bytes = ref.owner_bytes,
            .refs = 1,
            .stale = false,
            .last_use = cache.clock,
        };
        _ = cache.verified.fetchOr(verifiedBit(peer), .acq_rel);
        return .{ .address = base + ref.offset, .slot = @intCast(index) };
    }

    /// acquire(): a live mapping of `ref` (same peer, device and handle, the range inside it),
    /// counted; null when there is none.
    fn reuseLocked(cache: *Cache, ordinal: i32, peer: u32, ref: *const Ref) ?Mapping {
        for (&cache.entries, 0..) |*slot, i| {
            const entry = &(slot.* orelse continue);
            if (entry.peer != peer or entry.ordinal != ordinal or entry.stale) continue;
            if (!std.mem.eql(u8, &entry.handle, &ref.handle)) continue;
            if (ref.offset > entry.bytes or ref.bytes > entry.bytes - ref.offset) {
                // Not the allocation we mapped under this handle (a driver that reuses handles
                // for a new allocation at the same address): map it afresh.
                if (entry.refs == 0) {
                    closeEntry(entry.*);
                    slot.* = null;
                } else entry.stale = true;
                break;
            }
            entry.refs += 1;
            entry.last_use = cache.clock;
            return .{ .address = entry.base + ref.offset, .slot = @intCast(i) };
        }
        return null;
    }

    /// acquire(): mappings of this peer whose allocation overlaps the new one in the peer's
    /// address space were freed there since (live allocations never overlap), so close them.
    /// CUDA refuses to map an allocation's memory twice (CUDA_ERROR_ALREADY_MAPPED), and small
    /// cuMemAllocs share memory, so a stale mapping can block a new one.
    fn closeOverlapsLocked(cache: *Cache, ordinal: i32, peer: u32, ref: *const Ref) void {
        for (&cache.entries) |*slot| {
            const entry = &(slot.* orelse continue);
            if (entry.peer != peer or entry.ordinal != ordinal) continue;
            const overlaps = entry.owner_base < ref.owner_base + ref.owner_bytes and ref.owner_base < entry.owner_base + entry.owner_bytes;
            if (!overlaps) continue;
            if (entry.refs == 0) {
                closeEntry(entry.*);
                slot.* = null;
            } else entry.stale = true;
        }
    }

    /// acquire(): a free slot, else the least recently used unreferenced entry (closed, emptied).
    fn victimLocked(cache: *Cache) Error!usize {
        var victim: ?usize = null;
        for (cache.entries, 0..) |slot, i| {
            const entry = slot orelse {
                victim = i;
                break;
            };
            if (entry.refs > 0) continue;
            if (victim == null or entry.last_use < cache.entries[victim.?].?.last_use) victim = i;
        }
        const index = victim orelse return driver.fail(error.OutOfMemory, "CUDA IPC: {d} peer buffers mapped and in use", .{entries_max});
        if (cache.entries[index]) |old| closeEntry(old);
        cache.entries[index] = null;
        return index;
    }

    /// acquire(): opens `ref`'s handle on device `ordinal`; its base here and its allocation's bytes.
    fn openLocked(cache: *Cache, ordinal: i32, peer: u32, ref: *const Ref) Error!struct { u64, u64 } {
        if (cache.test_fail_open) return driver.fail(error.Cuda, "CUDA cuIpcOpenMemHandle failed (test)", .{});
        const dev = try staging.device(ordinal);
        _ = cache.opens.fetchAdd(1, .monotonic);
        const base = dev.ipcOpen(.{ .reserved = ref.handle }) catch |err| retry: {
            // Already mapped through another (stale) handle of the same memory: close this
            // peer's unused mappings and try once more.
            var closed: u32 = 0;
            for (&cache.entries) |*slot| {
                const entry = slot.* orelse continue;
                if (entry.peer != peer or entry.refs > 0) continue;
                closeEntry(entry);
                slot.* = null;
                closed += 1;
            }
            if (closed == 0) return err;
            break :retry try dev.ipcOpen(.{ .reserved = ref.handle });
        };
        const range = dev.addressRange(base) catch |err| {
            dev.ipcClose(base) catch {};
            return err;
        };
        if (ref.offset > range.bytes or ref.bytes > range.bytes - ref.offset) {
            dev.ipcClose(base) catch {};
            return driver.fail(error.InvalidArgument, "CUDA IPC: rank {d}'s buffer [+{d}, {d} bytes) overruns its allocation ({d} bytes)", .{ peer, ref.offset, ref.bytes, range.bytes });
        }
        return .{ base, range.bytes };
    }

    /// An op is done with the mapping acquire() returned.
    pub fn release(cache: *Cache, mapping: Mapping) void {
        cache.mutex.lock();
        defer cache.mutex.unlock();
        const slot = &cache.entries[mapping.slot];
        const entry = &slot.*.?; // in use: never evicted or dropped
        std.debug.assert(entry.refs > 0 and mapping.address >= entry.base and mapping.address <= entry.base + entry.bytes);
        entry.refs -= 1;
        if (entry.refs == 0 and entry.stale) {
            closeEntry(entry.*);
            slot.* = null;
        }
    }

    /// The peer process went away (or was replaced): close its mappings (those in use once
    /// released) and forget that IPC with it worked.
    pub fn dropPeer(cache: *Cache, peer: u32) void {
        _ = cache.verified.fetchAnd(~verifiedBit(peer), .acq_rel);
        cache.mutex.lock();
        defer cache.mutex.unlock();
        for (&cache.entries) |*slot| {
            const entry = &(slot.* orelse continue);
            if (entry.peer != peer) continue;
            if (entry.refs > 0) {
                entry.stale = true;
            } else {
                closeEntry(entry.*);
                slot.* = null;
            }
        }
    }

    /// A stream on device `ordinal` for one op (give it back with putStream).
    pub fn takeStream(cache: *Cache, ordinal: i32) Error!driver.Stream {
        {
            cache.mutex.lock();
            defer cache.mutex.unlock();
            for (&cache.streams) |*slot| {
                if (slot.*) |stream| if (stream.device.ordinal == ordinal) {
                    slot.* = null;
                    return stream;
                };
            }
        }
        const dev = try staging.device(ordinal);
        return dev.createStream();
    }

    pub fn putStream(cache: *Cache, stream: driver.Stream) void {
        cache.mutex.lock();
        for (&cache.streams) |*slot| {
            if (slot.* == null) {
                slot.* = stream;
                cache.mutex.unlock();
                return;
            }
        }
        cache.mutex.unlock();
        destroyStream(stream);
    }

    /// True the first time `what` (a bit) is asked for: for log lines said once per engine.
    pub fn firstTime(cache: *Cache, what: u5) bool {
        const bit = @as(u32, 1) << what;
        return cache.said.fetchOr(bit, .acq_rel) & bit == 0;
    }

    /// Closes every mapping and stream (engine destroy: no op runs any more).
    pub fn deinit(cache: *Cache) void {
        cache.mutex.lock();
        defer cache.mutex.unlock();
        for (&cache.entries) |*slot| {
            if (slot.*) |entry| {
                std.debug.assert(entry.refs == 0);
                closeEntry(entry);
            }
            slot.* = null;
        }
        for (&cache.streams) |*slot| {
            if (slot.*) |stream| destroyStream(stream);
            slot.* = null;
        }
    }

    /// Mappings open now (tests).
    pub fn openCount(cache: *Cache) u32 {
        cache.mutex.lock();
        defer cache.mutex.unlock();
        var n: u32 = 0;
        for (cache.entries) |slot| {
            if (slot != null) n += 1;
        }
        return n;
    }
};

fn destroyStream(stream: driver.Stream) void {
    // A fake driver may hand out the device's shared stream again: never destroy that one.
    if (stream.handle != stream.device.stream) stream.destroy();
}

fn closeEntry(entry: Entry) void {
    const dev = staging.device(entry.ordinal) catch return;
    dev.ipcClose(entry.base) catch {};
}

test "cuda ipc: verified bits cover ranks 0..63 only; a wider rank drops and verifies without a shift past the mask" {
    try std.testing.expectEqual(@as(u64, 1), Cache.verifiedBit(0));
    try std.testing.expectEqual(@as(u64, 1) << 63, Cache.verifiedBit(63));
    try std.testing.expectEqual(@as(u64, 0), Cache.verifiedBit(64));
    try std.testing.expectEqual(@as(u64, 0), Cache.verifiedBit(1023));
    var cache: Cache = .{};
    cache.verified.store(std.math.maxInt(u64), .release);
    cache.dropPeer(700); // peer_down of a rank past 64 (worlds of 1,024): was a shift overflow panic
    try std.testing.expectEqual(std.math.maxInt(u64), cache.verified.load(.acquire));
    cache.dropPeer(5);
    try std.testing.expectEqual(std.math.maxInt(u64) & ~(@as(u64, 1) << 5), cache.verified.load(.acquire));
}
