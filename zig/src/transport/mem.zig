//! In-process transport for tests: one `World` is one op's group of `size` ranks, each rank a
//! thread holding `world.comm(rank)`. Messages are matched per (sender, receiver) in posting
//! order. Delivery is rendezvous: the bytes are copied when both sides have posted (by whichever
//! posts second), so a send completes only once its receive is posted. That is stricter than
//! TCP / shm (which buffer), so an algorithm that passes here cannot rely on buffering.
//!
//! Failure: `failRank(r)` (or `Options.kill`, which kills a rank after it has posted a number
//! of requests) marks a rank dead; its unmatched requests are withdrawn so nothing touches its
//! buffers any more, and every request on it fails with PeerFailed. A request that reaches
//! the op's deadline fails with Timeout. With `abort_on_error`, a rank whose wait fails is
//! marked failed too (as the engine aborts an op), so its peers fail fast instead of waiting
//! for the deadline; its other requests then fail with Canceled.
const std = @import("std");
const transport = @import("transport.zig");

const Error = transport.Error;
const Request = transport.Request;
const slots_max = transport.requests_in_flight_max;

pub const Options = struct {
    /// The op's deadline, from World.init().
    timeout_ns: u64 = 10 * std.time.ns_per_s,
    /// Simulated crash: `rank` dies when it posts its request number `after_posts` (0-based).
    kill: ?struct { rank: u32, after_posts: u32 } = null,
    abort_on_error: bool = true,
};

const Direction = enum { send, recv };

const Slot = struct {
    state: enum { free, posted, done } = .free,
    direction: Direction = .send,
    peer: u32 = 0,
    ptr: [*]u8 = undefined,
    len: usize = 0,
    /// Set when state == .done.
    result: Error!void = {},
};

const SlotRef = struct { rank: u32, index: u32 };

/// Posted, not yet matched requests of one (sender, receiver) pair: at most one side is
/// non-empty at a time.
const Channel = struct {
    sends: std.BoundedArray(SlotRef, slots_max) = .{},
    recvs: std.BoundedArray(SlotRef, slots_max) = .{},
};

const Endpoint = struct {
    world: *World,
    rank: u32,
    slots: [slots_max]Slot = [_]Slot{.{}} ** slots_max,
    posts: u32 = 0,
    failed: bool = false,
    failed_peer: ?u32 = null,
};

pub const World = struct {
    allocator: std.mem.Allocator,
    size: u32,
    options: Options,
    mutex: std.Thread.Mutex = .{},
    cond: std.Thread.Condition = .{},
    timer: std.time.Timer,
    endpoints: []Endpoint,
    /// Indexed [sender * size + receiver].
    channels: []Channel,

    pub fn init(allocator: std.mem.Allocator, size: u32, options: Options) !*World {
        std.debug.assert(size >= 1);
        const world = try allocator.create(World);
        errdefer allocator.destroy(world);
        const endpoints = try allocator.alloc(Endpoint, size);
        errdefer allocator.free(endpoints);
        const channels = try allocator.alloc(Channel, @as(usize, size) * size);
        errdefer allocator.free(channels);
        for (endpoints, 0..) |*e, r| e.* = .{ .world = world, .rank = @intCast(r) };
        for (channels) |*c| c.* = .{};
        world.* = .{
            .allocator = allocator,
            .size = size,
            .options = options,
            .timer = std.time.Timer.start() catch unreachable, // tests run where a monotonic clock exists
            .endpoints = endpoints,
            .channels = channels,
        };
        return world;
    }

    pub fn deinit(world: *World) void {
        const allocator = world.allocator;
        allocator.free(world.channels);
        allocator.free(world.endpoints);
        allocator.destroy(world);
    }

    pub fn comm(world: *World, rank: u32) transport.Comm {
        std.debug.assert(rank < world.size);
        return .{ .context = &world.endpoints[rank], .vtable = &vtable, .rank = rank, .size = world.size };
    }

    /// Simulates the death of `rank`: its requests are withdrawn and its peers' requests on it
    /// fail with PeerFailed.
    pub fn failRank(world: *World, rank: u32) void {
        world.mutex.lock();
        defer world.mutex.unlock();
        world.markFailed(rank);
    }

    pub fn failedPeer(world: *World, rank: u32) ?u32 {
        world.mutex.lock();
        defer world.mutex.unlock();
        return world.endpoints[rank].failed_peer;
    }

    /// Requests of `rank` not yet waited for (0 after every op that completed cleanly).
    pub fn slotsInUse(world: *World, rank: u32) u32 {
        world.mutex.lock();
        defer world.mutex.unlock();
        var n: u32 = 0;
        for (world.endpoints[rank].slots) |s| n += @intFromBool(s.state != .free);
        return n;
    }

    fn channel(world: *World, sender: u32, receiver: u32) *Channel {
        return &world.channels[@as(usize, sender) * world.size + receiver];
    }

    fn slot(world: *World, ref: SlotRef) *Slot {
        return &world.endpoints[ref.rank].slots[ref.index];
    }

    /// Caller holds the mutex.
    fn markFailed(world: *World, rank: u32) void {
        const e = &world.endpoints[rank];
        if (e.failed) return;
        e.failed = true;
        // Withdraw its unmatched requests: no peer may copy from / into its buffers any more.
        for (&e.slots, 0..) |*s, i| {
            if (s.state != .posted) continue;
            world.withdraw(.{ .rank = rank, .index = @intCast(i) });
            s.state = .done;
            s.result = error.Canceled;
        }
        world.cond.broadcast();
    }

    /// Removes a posted slot from its channel queue. Caller holds the mutex.
    fn withdraw(world: *World, ref: SlotRef) void {
        const s = world.slot(ref);
        std.debug.assert(s.state == .posted);
        const queue = switch (s.direction) {
            .send => &world.channel(ref.rank, s.peer).sends,
            .recv => &world.channel(s.peer, ref.rank).recvs,
        };
        for (queue.constSlice(), 0..) |q, i| {
            if (q.rank == ref.rank and q.index == ref.index) {
                _ = queue.orderedRemove(i);
                return;
            }
        }
        unreachable; // a posted slot is always queued
    }

    fn post(world: *World, rank: u32, direction: Direction, peer: u32, ptr: [*]u8, len: usize) Error!Request {
        world.mutex.lock();
        defer world.mutex.unlock();
        std.debug.assert(peer < world.size and peer != rank);
        const e = &world.endpoints[rank];
        if (e.failed) return error.Canceled;
        if (world.options.kill) |kill| {
            if (kill.rank == rank and e.posts == kill.after_posts) {
                world.markFailed(rank);
                return error.Canceled;
            }
        }
        e.posts += 1;
        if (world.endpoints[peer].failed) {
            e.failed_peer = peer;
            if (world.options.abort_on_error) world.markFailed(rank);
            return error.PeerFailed;
        }
        const index: u32 = for (e.slots, 0..) |s, i| {
            if (s.state == .free) break @intCast(i);
        } else std.debug.panic("mem transport: rank {d} has more than {d} requests in flight", .{ rank, slots_max });
        e.slots[index] = .{ .state = .posted, .direction = direction, .peer = peer, .ptr = ptr, .len = len };
        const ref: SlotRef = .{ .rank = rank, .index = index };
        const ch = switch (direction) {
            .send => world.channel(rank, peer),
            .recv => world.channel(peer, rank),
        };
        const mine, const theirs = switch (direction) {
            .send => .{ &ch.sends, &ch.recvs },
            .recv => .{ &ch.recvs, &ch.sends },
        };
        if (theirs.len > 0) {
            std.debug.assert(mine.len == 0);
            const other = theirs.orderedRemove(0);
            const s_ref, const r_ref = switch (direction) {
                .send => .{ ref, other },
                .recv => .{ other, ref },
            };
            world.complete(world.slot(s_ref), world.slot(r_ref));
        } else {
            mine.append(ref) catch unreachable; // bounded by the sender's slots
        }
        return .{ .index = index };
    }

    /// Caller holds the mutex.
    fn complete(world: *World, send_slot: *Slot, recv_slot: *Slot) void {
        if (send_slot.len != recv_slot.len) {
            send_slot.result = error.Protocol;
            recv_slot.result = error.Protocol;
        } else {
            @memcpy(recv_slot.ptr[0..recv_slot.len], send_slot.ptr[0..send_slot.len]);
            send_slot.result = {};
            recv_slot.result = {};
        }
        send_slot.state = .done;
        recv_slot.state = .done;
        world.cond.broadcast();
    }

    fn wait(world: *World, rank: u32, request: Request) Error!void {
        world.mutex.lock();
        defer world.mutex.unlock();
        const e = &world.endpoints[rank];
        std.debug.assert(request.index < slots_max);
        const s = &e.slots[request.index];
        std.debug.assert(s.state != .free);
        defer s.state = .free;
        var wakeups: u64 = 0;
        while (true) : (wakeups += 1) {
            if (s.state == .done) {
                s.result catch |err| {
                    if (world.options.abort_on_error) world.markFailed(rank);
                    return err;
                };
                return;
            }
            std.debug.assert(!e.failed); // markFailed() completes every posted slot
            if (world.endpoints[s.peer].failed) {
                e.failed_peer = s.peer;
                world.withdraw(.{ .rank = rank, .index = request.index });
                s.state = .done;
                if (world.options.abort_on_error) world.markFailed(rank);
                return error.PeerFailed;
            }
            const now_ns = world.timer.read();
            if (now_ns >= world.options.timeout_ns) {
                world.withdraw(.{ .rank = rank, .index = request.index });
                s.state = .done;
                if (world.options.abort_on_error) world.markFailed(rank);
                return error.Timeout;
            }
            world.cond.timedWait(&world.mutex, world.options.timeout_ns - now_ns) catch {};
        }
    }
};

fn endpointOf(context: *anyopaque) *Endpoint {
    return @ptrCast(@alignCast(context));
}

fn vtableIsend(context: *anyopaque, peer: u32, bytes: []const u8) Error!Request {
    const e = endpointOf(context);
    return e.world.post(e.rank, .send, peer, @constCast(bytes.ptr), bytes.len);
}

fn vtableIrecv(context: *anyopaque, peer: u32, bytes: []u8) Error!Request {
    const e = endpointOf(context);
    return e.world.post(e.rank, .recv, peer, bytes.ptr, bytes.len);
}

fn vtableWait(context: *anyopaque, request: Request) Error!void {
    const e = endpointOf(context);
    return e.world.wait(e.rank, request);
}

const vtable: transport.Comm.VTable = .{ .isend = vtableIsend, .irecv = vtableIrecv, .wait = vtableWait };

// ---------------------------------------------------------------------------------------------

const testing = std.testing;

fn pingPong(world: *World, rank: u32, rounds: u32, result: *Error!void) void {
    result.* = pingPongInner(world.comm(rank), rounds);
}

fn pingPongInner(comm: transport.Comm, rounds: u32) Error!void {
    const peer = 1 - comm.rank;
    var value: [8]u8 = undefined;
    for (0..rounds) |i| {
        std.mem.writeInt(u64, &value, i * 2 + comm.rank, .little);
        var got: [8]u8 = undefined;
        try comm.sendRecv(peer, &value, peer, &got);
        if (std.mem.readInt(u64, &got, .little) != i * 2 + peer) return error.Protocol;
    }
}

test "mem: messages match in posting order, both directions" {
    const world = try World.init(testing.allocator, 2, .{});
    defer world.deinit();
    var results: [2]Error!void = undefined;
    var threads: [2]std.Thread = undefined;
    for (&threads, 0..) |*t, r| t.* = try std.Thread.spawn(.{}, pingPong, .{ world, @as(u32, @intCast(r)), 100, &results[r] });
    for (threads) |t| t.join();
    for (results) |r| try r;
    try testing.expectEqual(@as(u32, 0), world.slotsInUse(0));
    try testing.expectEqual(@as(u32, 0), world.slotsInUse(1));
}

test "mem: a dead peer fails the wait with PeerFailed and names the peer" {
    const world = try World.init(testing.allocator, 3, .{});
    defer world.deinit();
    const comm = world.comm(0);
    var buf: [4]u8 = undefined;
    const r = try comm.irecv(2, &buf);
    world.failRank(2);
    try testing.expectError(error.PeerFailed, comm.wait(r));
    try testing.expectEqual(@as(?u32, 2), world.failedPeer(0));
    // abort_on_error: rank 0 is failed now, so its peers fail too.
    try testing.expectError(error.PeerFailed, world.comm(1).send(0, &buf));
}

test "mem: a peer that never answers fails the wait with Timeout" {
    const world = try World.init(testing.allocator, 2, .{ .timeout_ns = 20 * std.time.ns_per_ms });
    defer world.deinit();
    var buf: [4]u8 = undefined;
    try testing.expectError(error.Timeout, world.comm(0).recv(1, &buf));
    try testing.expectEqual(@as(u32, 0), world.slotsInUse(0));
}

test "mem: length mismatch is a protocol error on both sides" {
    const world = try World.init(testing.allocator, 2, .{ .abort_on_error = false });
    defer world.deinit();
    var a: [4]u8 = .{ 1, 2, 3, 4 };
    var b: [3]u8 = undefined;
    const s = try world.comm(0).isend(1, &a);
    const r = try world.comm(1).irecv(0, &b);
    try testing.expectError(error.Protocol, world.comm(0).wait(s));
    try testing.expectError(error.Protocol, world.comm(1).wait(r));
}

test "mem: a killed rank's sends are withdrawn" {
    const world = try World.init(testing.allocator, 2, .{ .kill = .{ .rank = 0, .after_posts = 1 } });
    defer world.deinit();
    var a: [4]u8 = .{ 1, 2, 3, 4 };
    const s = try world.comm(0).isend(1, &a);
    try testing.expectError(error.Canceled, world.comm(0).isend(1, &a)); // dies here
    try testing.expectError(error.Canceled, world.comm(0).wait(s));
    var b: [4]u8 = undefined;
    try testing.expectError(error.PeerFailed, world.comm(1).recv(0, &b));
}
