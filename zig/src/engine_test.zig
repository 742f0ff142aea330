//! Multi-rank tests of the engine and its transports: N engines (ranks) as threads of this
//! process on loopback, over TCP and over shm. Transport behaviour first (ordered messages,
//! chunking, the stash and its backpressure, strangers and garbage, dead / stalled peers),
//! then every collective through algo/dispatch.zig with references computed here.
const std = @import("std");
const engine_mod = @import("engine.zig");
const transport = @import("transport/transport.zig");
const wire = @import("transport/wire.zig");
const op = @import("op.zig");
const sys = @import("sys.zig");
const dispatch = @import("algo/dispatch.zig");
const plan = @import("plan.zig");
const arena = @import("transport/arena.zig");
const board_mod = @import("transport/board.zig");

const Engine = engine_mod.Engine;
const Status = engine_mod.Status;
const Mode = engine_mod.Mode;
const Submit = engine_mod.Submit;
const testing = std.testing;

const ranks_max = 5;
const test_host_id: u64 = 0x7e57;
var cluster_counter = std.atomic.Value(u32).init(0);

const WorldOptions = struct {
    mode: Mode = .tcp,
    runner: engine_mod.Runner = dispatch.run,
    stash_bytes_max: u64 = 0,
    tcp_chunk_bytes: u32 = 64 * 1024,
    shm_slot_bytes: u32 = 16 * 1024,
    shm_slot_count: u32 = 8,
    /// The engines' knobs (null: from the environment).
    config: ?plan.Config = null,
};

const World = struct {
    n: u32,
    options: WorldOptions,
    engines: [ranks_max]?*Engine = [_]?*Engine{null} ** ranks_max,
    cluster_buf: [64]u8 = undefined,
    cluster_len: usize = 0,

    fn init(n: u32, options: WorldOptions) !World {
        std.debug.assert(n >= 1 and n <= ranks_max);
        var world = World{ .n = n, .options = options };
        const cluster_id = try std.fmt.bufPrint(&world.cluster_buf, "test-{d}-{d}", .{ std.os.linux.getpid(), cluster_counter.fetchAdd(1, .monotonic) });
        world.cluster_len = cluster_id.len;
        errdefer world.deinit();
        for (0..n) |r| world.engines[r] = try world.create(r);
        for (0..n) |r| for (0..n) |p| {
            if (r == p) continue;
            try world.engine(r).setPeer(@intCast(p), "127.0.0.1", world.engine(p).dataPort(), test_host_id);
        };
        return world;
    }

    fn create(world: *const World, r: usize) !*Engine {
        const options = world.options;
        return Engine.create(testing.allocator, .{
            .rank = @intCast(r),
            .world_size_max = ranks_max + 1, // one free slot, like launch --max-world-size
            .cluster_id = world.cluster(),
            .listen_host = "127.0.0.1",
            .mode = options.mode,
            .host_id = test_host_id,
            .runner = options.runner,
            .stash_bytes_max = if (options.stash_bytes_max != 0) options.stash_bytes_max else 64 << 20,
            .tcp_chunk_bytes = options.tcp_chunk_bytes,
            .shm_slot_bytes = options.shm_slot_bytes,
            .shm_slot_count = options.shm_slot_count,
            .config = options.config,
        });
    }

    /// Rank r stops and starts again (a new port, a new board); the others are told.
    fn restart(world: *World, r: usize) !void {
        world.kill(r);
        world.engines[r] = try world.create(r);
        for (0..world.n) |p| {
            if (p == r) continue;
            try world.engine(p).setPeer(@intCast(r), "127.0.0.1", world.engine(r).dataPort(), test_host_id);
            try world.engine(r).setPeer(@intCast(p), "127.0.0.1", world.engine(p).dataPort(), test_host_id);
        }
    }

    fn engine(world: *const World, r: usize) *Engine {
        return world.engines[r].?;
    }

    fn cluster(world: *const World) []const u8 {
        return world.cluster_buf[0..world.cluster_len];
    }

    fn kill(world: *World, r: usize) void {
        if (world.engines[r]) |e| e.destroy();
        world.engines[r] = null;
    }

    fn deinit(world: *World) void {
        for (0..world.n) |r| world.kill(r);
    }

    fn fullMask(world: *const World) u64 {
        return (@as(u64, 1) << @intCast(world.n)) - 1;
    }

    /// Submits one op per rank (args[r] for rank r), waits for all, returns the statuses.
    fn run(world: *World, args: []const Submit, statuses: []i32) !void {
        var tickets: [ranks_max]u64 = undefined;
        for (args, 0..) |a, r| tickets[r] = try world.engine(r).submit(a);
        for (args, 0..) |_, r| {
            statuses[r] = world.engine(r).waitTicket(tickets[r]);
            if (statuses[r] != Status.ok) {
                var buf: [512]u8 = undefined;
                const len = world.engine(r).opError(tickets[r], &buf);
                std.debug.print("rank {d} status {d}: {s}\n", .{ r, statuses[r], buf[0..@min(len, buf.len)] });
            }
            world.engine(r).release(tickets[r]);
        }
    }

    fn expectAllOk(world: *World, args: []const Submit) !void {
        var statuses: [ranks_max]i32 = undefined;
        try world.run(args, statuses[0..args.len]);
        for (statuses[0..args.len]) |s| try testing.expectEqual(Status.ok, s);
    }
};

var op_id_counter = std.atomic.Value(u64).init(1000);

fn nextOpId() u64 {
    return op_id_counter.fetchAdd(1, .monotonic);
}

/// An op whose runner is a test function; `context` reaches it as desc.send.
fn customOp(op_id: u64, mask: u64, context: *const anyopaque, timeout_ms: u32) Submit {
    return .{
        .kind = @intFromEnum(op.Collective.barrier),
        .dtype = @intFromEnum(op.DType.u8),
        .redop = 0,
        .op_id = op_id,
        .ranks_mask = mask,
        .root = 0,
        .send = @ptrCast(context),
        .recv = null,
        .count = 0,
        .counts = null,
        .device = -1,
        .timeout_ms = timeout_ms,
    };
}

fn contextOf(comptime T: type, desc: op.OpDesc) *const T {
    return @ptrCast(@alignCast(desc.send));
}

// ---- transport: ordered messages of many sizes ----

const MessagesTest = struct {
    messages: u32,
    size_max: u32,
    /// Send everything before posting any receive (frames wait in the stash).
    post_late: bool,
    /// Only rank 0 sends (to everyone), and receivers post after a pause: with a tiny stash
    /// the link threads must stop and wait for the posts (backpressure), without deadlock.
    one_way: bool = false,
};

fn messageSize(src: u32, dst: u32, i: u32, size_max: u32) usize {
    return switch (i % 5) {
        0 => 0,
        1 => 1 + (src * 7 + dst) % 13,
        2 => size_max,
        else => (src * 7919 + dst * 104729 + i * 1299709) % (size_max + 1),
    };
}

fn messageByte(src: u32, dst: u32, i: u32, k: usize) u8 {
    return @truncate(src *% 131 +% dst *% 31 +% i *% 7 +% k *% 13 +% (k >> 8));
}

fn messagesRunner(comm: transport.Comm, desc: op.OpDesc, scratch: std.mem.Allocator) transport.Error!void {
    const t = contextOf(MessagesTest, desc);
    const me = comm.rank;
    const n = comm.size;
    const send_bufs = try scratch.alloc([]u8, n);
    const recv_bufs = try scratch.alloc([]u8, n);
    if (t.one_way) return oneWay(comm, t, scratch);
    var i: u32 = 0;
    while (i < t.messages) : (i += 1) {
        var reqs: [2 * ranks_max]transport.Request = undefined;
        var reqs_len: usize = 0;
        for (0..n) |p_usize| {
            const p: u32 = @intCast(p_usize);
            if (p == me) continue;
            recv_bufs[p] = try scratch.alloc(u8, messageSize(p, me, i, t.size_max));
            @memset(recv_bufs[p], 0xee);
            if (!t.post_late) {
                reqs[reqs_len] = try comm.irecv(p, recv_bufs[p]);
                reqs_len += 1;
            }
        }
        for (0..n) |p_usize| {
            const p: u32 = @intCast(p_usize);
            if (p == me) continue;
            send_bufs[p] = try scratch.alloc(u8, messageSize(me, p, i, t.size_max));
            for (send_bufs[p], 0..) |*b, k| b.* = messageByte(me, p, i, k);
            reqs[reqs_len] = try comm.isend(p, send_bufs[p]);
            reqs_len += 1;
        }
        if (t.post_late) {
            for (0..n) |p_usize| {
                const p: u32 = @intCast(p_usize);
                if (p == me) continue;
                reqs[reqs_len] = try comm.irecv(p, recv_bufs[p]);
                reqs_len += 1;
            }
        }
        for (reqs[0..reqs_len]) |r| try comm.wait(r);
        for (0..n) |p_usize| {
            const p: u32 = @intCast(p_usize);
            if (p == me) continue;
            for (recv_bufs[p], 0..) |b, k| {
                if (b != messageByte(p, me, i, k)) {
                    std.debug.print("rank {d}: message {d} from {d}: byte {d} is {d}, expected {d}\n", .{ me, i, p, k, b, messageByte(p, me, i, k) });
                    return error.Protocol;
                }
            }
            scratch.free(recv_bufs[p]);
            scratch.free(send_bufs[p]);
        }
    }
}

fn oneWay(comm: transport.Comm, t: *const MessagesTest, scratch: std.mem.Allocator) transport.Error!void {
    var i: u32 = 0;
    if (comm.rank == 0) {
        while (i < t.messages) : (i += 1) {
            for (1..comm.size) |p| {
                const buf = try scratch.alloc(u8, messageSize(0, @intCast(p), i, t.size_max));
                defer scratch.free(buf);
                for (buf, 0..) |*b, k| b.* = messageByte(0, @intCast(p), i, k);
                try comm.send(@intCast(p), buf);
            }
        }
        return;
    }
    std.Thread.sleep(20 * std.time.ns_per_ms);
    while (i < t.messages) : (i += 1) {
        const buf = try scratch.alloc(u8, messageSize(0, comm.rank, i, t.size_max));
        defer scratch.free(buf);
        try comm.recv(0, buf);
        for (buf, 0..) |b, k| if (b != messageByte(0, comm.rank, i, k)) return error.Protocol;
    }
}

fn runMessages(mode: Mode, n: u32, t: MessagesTest, stash_bytes_max: u64) !void {
    var world = try World.init(n, .{ .mode = mode, .runner = messagesRunner, .stash_bytes_max = stash_bytes_max });
    defer world.deinit();
    var args: [ranks_max]Submit = undefined;
    const id = nextOpId();
    for (0..n) |r| args[r] = customOp(id, world.fullMask(), &t, 20_000);
    try world.expectAllOk(args[0..n]);
    // A second op over the same (now established) links.
    const id2 = nextOpId();
    for (0..n) |r| args[r] = customOp(id2, world.fullMask(), &t, 20_000);
    try world.expectAllOk(args[0..n]);
}

test "tcp: ordered messages of many sizes, 2..5 ranks" {
    try runMessages(.tcp, 2, .{ .messages = 20, .size_max = 200_000, .post_late = false }, 0);
    try runMessages(.tcp, 3, .{ .messages = 10, .size_max = 70_000, .post_late = false }, 0);
    try runMessages(.tcp, 5, .{ .messages = 6, .size_max = 20_000, .post_late = false }, 0);
}

test "shm: ordered messages of many sizes, 2..5 ranks" {
    try runMessages(.shm, 2, .{ .messages = 20, .size_max = 200_000, .post_late = false }, 0);
    try runMessages(.shm, 4, .{ .messages = 8, .size_max = 50_000, .post_late = false }, 0);
    try runMessages(.shm, 5, .{ .messages = 6, .size_max = 20_000, .post_late = false }, 0);
}

test "stash: receives posted after the data arrived, and a tiny stash that pushes back" {
    try runMessages(.tcp, 3, .{ .messages = 10, .size_max = 100_000, .post_late = true }, 0);
    try runMessages(.shm, 3, .{ .messages = 10, .size_max = 100_000, .post_late = true }, 0);
    // 32 KiB of stash for messages up to 200 KB: the link threads must wait for the posts.
    try runMessages(.tcp, 3, .{ .messages = 6, .size_max = 300_000, .post_late = true, .one_way = true }, 32 * 1024);
    try runMessages(.shm, 3, .{ .messages = 6, .size_max = 300_000, .post_late = true, .one_way = true }, 32 * 1024);
}

// ---- transport: a big message, chunked ----

const BigTest = struct { bytes: usize, delay_recv_ms: u32 };

fn bigRunner(comm: transport.Comm, desc: op.OpDesc, scratch: std.mem.Allocator) transport.Error!void {
    const t = contextOf(BigTest, desc);
    const buf = try scratch.alloc(u8, t.bytes);
    if (comm.rank == 0) {
        var rng = std.Random.DefaultPrng.init(42);
        rng.fill(buf);
        try comm.send(1, buf);
    } else {
        if (t.delay_recv_ms > 0) std.Thread.sleep(@as(u64, t.delay_recv_ms) * std.time.ns_per_ms);
        try comm.recv(0, buf);
        var expected = std.Random.DefaultPrng.init(42);
        var k: usize = 0;
        var word: [8]u8 = undefined;
        while (k < buf.len) : (k += 8) {
            expected.fill(&word);
            const n = @min(8, buf.len - k);
            if (!std.mem.eql(u8, buf[k..][0..n], word[0..n])) return error.Protocol;
        }
    }
}

test "big message: 48 MiB in chunks over tcp and shm, receiver late" {
    for ([_]Mode{ .tcp, .shm }) |mode| {
        var world = try World.init(2, .{ .mode = mode, .runner = bigRunner, .stash_bytes_max = 1 << 20, .tcp_chunk_bytes = wire.chunk_bytes_max, .shm_slot_bytes = 256 * 1024, .shm_slot_count = 16 });
        defer world.deinit();
        const t = BigTest{ .bytes = 48 << 20, .delay_recv_ms = 30 };
        const id = nextOpId();
        try world.expectAllOk(&.{ customOp(id, 3, &t, 30_000), customOp(id, 3, &t, 30_000) });
    }
}

// ---- failures ----

const WaitTest = struct {
    /// Group rank to receive one message from.
    from: u32,
    bytes: usize = 16,
};

fn recvOneRunner(comm: transport.Comm, desc: op.OpDesc, scratch: std.mem.Allocator) transport.Error!void {
    const t = contextOf(WaitTest, desc);
    const buf = try scratch.alloc(u8, t.bytes);
    if (comm.rank == t.from) {
        // The sender side: sends, unless it is the rank the test kills / stalls.
        return;
    }
    try comm.recv(t.from, buf);
}

fn expectFailure(engine: *Engine, ticket: u64, status: i32, peer: i32, needles: []const []const u8) !void {
    try testing.expectEqual(status, engine.waitTicket(ticket));
    try testing.expectEqual(peer, engine.opFailedPeer(ticket));
    var buf: [512]u8 = undefined;
    const len = engine.opError(ticket, &buf);
    const text = buf[0..@min(len, buf.len)];
    for (needles) |needle| {
        if (std.mem.indexOf(u8, text, needle) == null) {
            std.debug.print("error text '{s}' lacks '{s}'\n", .{ text, needle });
            return error.TestExpectedText;
        }
    }
    engine.release(ticket);
}

test "timeout: a peer that never sends fails the op by its deadline, naming the peer" {
    var world = try World.init(2, .{ .mode = .tcp, .runner = recvOneRunner });
    defer world.deinit();
    const t = WaitTest{ .from = 1 };
    const ticket = try world.engine(0).submit(customOp(nextOpId(), 3, &t, 150));
    try expectFailure(world.engine(0), ticket, Status.etimeout, 1, &.{ "rank 0", "barrier op", "timed out after 150 ms", "from rank 1" });
}

test "peer down: ops waiting on it fail at once; cancel: ECANCELED" {
    var world = try World.init(3, .{ .mode = .tcp, .runner = recvOneRunner });
    defer world.deinit();
    const t = WaitTest{ .from = 2 };
    const id = nextOpId();
    const ticket = try world.engine(0).submit(customOp(id, 7, &t, 60_000));
    std.Thread.sleep(5 * std.time.ns_per_ms);
    try world.engine(0).peerDown(2);
    try expectFailure(world.engine(0), ticket, Status.epeer, 2, &.{ "rank 0", "barrier op", "rank 2 was marked down" });
    // Later ops with rank 2 fail at once too, until set_peer brings it back.
    const again = try world.engine(0).submit(customOp(nextOpId(), 7, &t, 60_000));
    try expectFailure(world.engine(0), again, Status.epeer, 2, &.{"marked down"});

    const t1 = WaitTest{ .from = 1 };
    const ticket2 = try world.engine(0).submit(customOp(nextOpId(), 3, &t1, 60_000));
    std.Thread.sleep(5 * std.time.ns_per_ms);
    try world.engine(0).cancel(ticket2);
    try expectFailure(world.engine(0), ticket2, Status.ecanceled, -1, &.{"canceled"});
}

/// Tagged{ .kind = 0, .a = rounds }: every rank exchanges with every other (links come up).
fn pingRunner(comm: transport.Comm, desc: op.OpDesc, scratch: std.mem.Allocator) transport.Error!void {
    const t = contextOf(Tagged, desc);
    _ = scratch;
    var buf: [64]u8 = undefined;
    var i: u32 = 0;
    while (i < t.a) : (i += 1) {
        // Everyone exchanges with everyone: all links come up.
        for (0..comm.size) |p| {
            if (p == comm.rank) continue;
            var out: [64]u8 = undefined;
            @memset(&out, @intCast(comm.rank));
            try comm.sendRecv(@intCast(p), &out, @intCast(p), &buf);
            if (buf[0] != p) return error.Protocol;
        }
    }
}

fn dualRunner(comm: transport.Comm, desc: op.OpDesc, scratch: std.mem.Allocator) transport.Error!void {
    // Custom ops carry a context whose first field says which test runner to use.
    const kind: *const u32 = @ptrCast(@alignCast(desc.send));
    return switch (kind.*) {
        0 => pingRunner(comm, desc, scratch),
        else => recvOneTagged(comm, desc, scratch),
    };
}

const Tagged = extern struct { kind: u32, a: u32, b: u32 };

test "peer killed mid-op: survivors fail with EPEER naming it, well before the deadline" {
    for ([_]Mode{ .tcp, .shm }) |mode| {
        var world = try World.init(3, .{ .mode = mode, .runner = dualRunner });
        defer world.deinit();
        // Bring every link up.
        const ping = Tagged{ .kind = 0, .a = 1, .b = 0 };
        const id = nextOpId();
        var tickets: [3]u64 = undefined;
        for (0..3) |r| tickets[r] = try world.engine(r).submit(customOp(id, 7, &ping, 10_000));
        for (0..3) |r| {
            try testing.expectEqual(Status.ok, world.engine(r).waitTicket(tickets[r]));
            world.engine(r).release(tickets[r]);
        }
        // Ranks 0 and 1 wait for rank 2, which dies. Deadline 60 s: EPEER proves it was fast.
        const wait2 = Tagged{ .kind = 1, .a = 2, .b = 16 };
        const id2 = nextOpId();
        const t0 = try world.engine(0).submit(customOp(id2, 7, &wait2, 60_000));
        const t1 = try world.engine(1).submit(customOp(id2, 7, &wait2, 60_000));
        std.Thread.sleep(10 * std.time.ns_per_ms);
        world.kill(2);
        try expectFailure(world.engine(0), t0, Status.epeer, 2, &.{ "rank 0", "rank 2 closed its link" });
        try expectFailure(world.engine(1), t1, Status.epeer, 2, &.{ "rank 1", "rank 2 closed its link" });
        // The survivors still work together.
        const ping01 = Tagged{ .kind = 0, .a = 1, .b = 0 };
        const id3 = nextOpId();
        const a = try world.engine(0).submit(customOp(id3, 3, &ping01, 10_000));
        const b = try world.engine(1).submit(customOp(id3, 3, &ping01, 10_000));
        try testing.expectEqual(Status.ok, world.engine(0).waitTicket(a));
        try testing.expectEqual(Status.ok, world.engine(1).waitTicket(b));
        world.engine(0).release(a);
        world.engine(1).release(b);
    }
}

fn recvOneTagged(comm: transport.Comm, desc: op.OpDesc, scratch: std.mem.Allocator) transport.Error!void {
    const t: *const Tagged = @ptrCast(@alignCast(desc.send));
    if (comm.rank == t.a) return;
    const buf = try scratch.alloc(u8, t.b);
    try comm.recv(t.a, buf);
}

// ---- strangers ----

fn connectRaw(port: u16) !sys.Fd {
    return sys.connectTimeout(sys.Address.initIp4(.{ 127, 0, 0, 1 }, port), 2000);
}

/// True when the engine closed the connection (EOF) within ~3 s.
fn expectClosedByEngine(fd: sys.Fd) !void {
    sys.setRecvTimeout(fd, 3000);
    var buf: [64]u8 = undefined;
    var reads: u32 = 0;
    while (reads < 8) : (reads += 1) {
        _ = sys.recvSome(fd, &buf) catch |err| switch (err) {
            error.Closed => return,
            else => return error.TestNotClosed,
        };
    }
    return error.TestNotClosed;
}

fn helloBytes(buf: []u8, src: u32, dst: u32, world_size: u32, cluster: []const u8, token: []const u8) []u8 {
    const hello = wire.Hello{
        .kind = @intFromEnum(wire.LinkKind.tcp),
        .src_rank = src,
        .dst_rank = dst,
        .world_size_max = world_size,
        .cluster_id_len = @intCast(cluster.len),
        .token_len = @intCast(token.len),
        .blob_len = 0,
        .host_id = 1,
    };
    var len: usize = 0;
    for ([_][]const u8{ std.mem.asBytes(&hello), cluster, token }) |part| {
        @memcpy(buf[len..][0..part.len], part);
        len += part.len;
    }
    return buf[0..len];
}

test "strangers: garbage, wrong cluster and bad frames close the connection, never the rank" {
    var world = try World.init(2, .{ .mode = .tcp, .runner = dualRunner });
    defer world.deinit();
    const port = world.engine(0).dataPort();

    // 1. Garbage bytes (an HTTP request).
    {
        const fd = try connectRaw(port);
        defer sys.closeFd(fd);
        try sys.sendAll(fd, "GET / HTTP/1.1\r\nHost: x\r\n\r\n" ++ "x" ** 40);
        try expectClosedByEngine(fd);
    }
    // 2. A well-formed hello for another cluster: a rejecting ack, then close.
    {
        const fd = try connectRaw(port);
        defer sys.closeFd(fd);
        var buf: [512]u8 = undefined;
        try sys.sendAll(fd, helloBytes(&buf, 1, 0, ranks_max + 1, "other-cluster", ""));
        var ack: wire.Ack = undefined;
        sys.setRecvTimeout(fd, 3000);
        try sys.recvAll(fd, std.mem.asBytes(&ack));
        try testing.expectEqual(wire.ack_magic, ack.magic);
        try testing.expectEqual(wire.AckStatus.bad_cluster, ack.status);
        try expectClosedByEngine(fd);
    }
    // 3. Impersonating rank 1 correctly, then a corrupt frame while rank 0 waits on rank 1:
    //    the op fails with EPROTO naming rank 1, the link closes.
    {
        const wait1 = Tagged{ .kind = 1, .a = 1, .b = 16 };
        const ticket = try world.engine(0).submit(customOp(nextOpId(), 3, &wait1, 60_000));
        const fd = try connectRaw(port);
        defer sys.closeFd(fd);
        var buf: [512]u8 = undefined;
        try sys.sendAll(fd, helloBytes(&buf, 1, 0, ranks_max + 1, world.cluster(), ""));
        var ack: wire.Ack = undefined;
        sys.setRecvTimeout(fd, 3000);
        try sys.recvAll(fd, std.mem.asBytes(&ack));
        try testing.expectEqual(wire.AckStatus.ok, ack.status);
        var frame = wire.FrameHeader{ .src_rank = 1, .op_id = 5, .seq = 0, .chunk_len = 8, .msg_len = 8, .offset = 0 };
        frame.seal();
        frame.offset = 4; // the check no longer matches
        try sys.sendAll(fd, std.mem.asBytes(&frame));
        try expectClosedByEngine(fd);
        try expectFailure(world.engine(0), ticket, Status.eproto, 1, &.{ "rank 0", "rank 1 sent a bad frame" });
    }
    // 4. Rank 0 still works with the real rank 1 (set_peer resets the poisoned peer state).
    try world.engine(0).setPeer(1, "127.0.0.1", world.engine(1).dataPort(), test_host_id);
    const ping = Tagged{ .kind = 0, .a = 1, .b = 0 };
    const id = nextOpId();
    try world.expectAllOk(&.{ customOp(id, 3, &ping, 10_000), customOp(id, 3, &ping, 10_000) });
}

test "strangers: 300 idle connections neither fill the link slots nor keep a real peer out (issue 18 item 3)" {
    for ([_]Mode{ .tcp, .shm }) |mode| {
        var world = try World.init(2, .{ .mode = mode, .runner = dualRunner });
        defer world.deinit();
        const port = world.engine(0).dataPort();
        // More idle connections than handshake slots (handshakes_max), each
        // accepted before rank 1 dials (the accept queue is FIFO).
        var fds: [300]sys.Fd = undefined;
        var opened: usize = 0;
        defer for (fds[0..opened]) |fd| sys.closeFd(fd);
        while (opened < fds.len) : (opened += 1) fds[opened] = try connectRaw(port);
        // Rank 1 dials rank 0 (no link yet) and rank 0 dials rank 1: both get in.
        const ping = Tagged{ .kind = 0, .a = 1, .b = 0 };
        const id = nextOpId();
        try world.expectAllOk(&.{ customOp(id, 3, &ping, 10_000), customOp(id, 3, &ping, 10_000) });
        try testing.expect(world.engine(0).net.linkCounts().tcp + world.engine(0).net.linkCounts().shm > 0);
    }
}

/// One stranger's bytes: garbage, a Hello with random fields, or a Hello that passes as rank 1
/// followed by frames (valid, mutated, random).
fn fuzzConnection(random: std.Random, port: u16, cluster: []const u8) !void {
    const fd = try connectRaw(port);
    defer sys.closeFd(fd);
    var buf: [4096]u8 = undefined;
    var len: usize = 0;
    const class = random.uintLessThan(u32, 3);
    if (class == 0) {
        len = random.uintAtMost(usize, buf.len);
        random.bytes(buf[0..len]);
    } else {
        var hello_buf: [1024]u8 = undefined;
        const hello = helloBytes(&hello_buf, 1, 0, ranks_max + 1, cluster, "");
        var header: wire.Hello = std.mem.bytesToValue(wire.Hello, hello[0..@sizeOf(wire.Hello)]);
        header.kind = random.uintAtMost(u16, 3);
        if (class == 1) random.bytes(std.mem.asBytes(&header)[random.uintLessThan(usize, @sizeOf(wire.Hello))..]);
        const blob_len = random.uintAtMost(u16, 200);
        if (class == 2) header.blob_len = blob_len;
        @memcpy(buf[0..@sizeOf(wire.Hello)], std.mem.asBytes(&header));
        len = @sizeOf(wire.Hello);
        @memcpy(buf[len..][0 .. hello.len - len], hello[len..]);
        len = hello.len;
        if (class == 2) {
            random.bytes(buf[len..][0..blob_len]); // a random shm name / blob
            len += blob_len;
            for (0..random.uintAtMost(u32, 4)) |_| {
                var frame = wire.FrameHeader{ .src_rank = 1, .op_id = random.int(u64) | 1 << 62, .seq = random.uintAtMost(u32, 3), .chunk_len = 8, .msg_len = 8, .offset = 0 };
                frame.seal();
                if (random.boolean()) std.mem.asBytes(&frame)[random.uintLessThan(usize, @sizeOf(wire.FrameHeader))] ^= 0x10;
                if (len + @sizeOf(wire.FrameHeader) + 8 > buf.len) break;
                @memcpy(buf[len..][0..@sizeOf(wire.FrameHeader)], std.mem.asBytes(&frame));
                len += @sizeOf(wire.FrameHeader);
                random.bytes(buf[len..][0..8]);
                len += 8;
            }
        }
    }
    sys.sendAll(fd, buf[0..len]) catch {};
}

test "fuzz: a live rank fed random handshakes and frames stays up and serves its real peer (issue 18)" {
    for ([_]Mode{ .tcp, .shm }) |mode| {
        var world = try World.init(2, .{ .mode = mode, .runner = dualRunner });
        defer world.deinit();
        var prng = std.Random.DefaultPrng.init(@as(u64, 0x18f022) + @intFromEnum(mode));
        const net = world.engine(0).net;
        const accepted_before = net.acceptActivity().accepted;
        for (0..150) |i| {
            try fuzzConnection(prng.random(), world.engine(0).dataPort(), world.cluster());
            // One stranger at a time: wait (bounded) until rank 0 took it and every thread it
            // caused (handshake, receive loop) has ended.
            var polls: u32 = 0;
            while (polls < 20_000) : (polls += 1) {
                const activity = net.acceptActivity();
                if (activity.accepted == accepted_before + i + 1 and activity.threads == 0) break;
                std.Thread.sleep(std.time.ns_per_ms);
            } else return error.TestStrangerNotDone;
        }
        // The impersonations may have poisoned rank 1's peer state (a bad frame): reset it, as
        // the control plane does for a rank it still trusts, then the real rank 1 gets through.
        try world.engine(0).setPeer(1, "127.0.0.1", world.engine(1).dataPort(), test_host_id);
        const ping = Tagged{ .kind = 0, .a = 2, .b = 0 };
        const id = nextOpId();
        try world.expectAllOk(&.{ customOp(id, 3, &ping, 20_000), customOp(id, 3, &ping, 20_000) });
    }
}

test "engine: bad submissions are EINVAL with a message" {
    var world = try World.init(2, .{ .mode = .tcp });
    defer world.deinit();
    const e = world.engine(0);
    var buf: [16]f32 = undefined;
    const base = Submit{
        .kind = @intFromEnum(op.Collective.allreduce),
        .dtype = @intFromEnum(op.DType.f32),
        .redop = @intFromEnum(op.RedOp.sum),
        .op_id = 1,
        .ranks_mask = 3,
        .root = 0,
        .send = @ptrCast(&buf),
        .recv = @ptrCast(&buf),
        .count = 16,
        .counts = null,
        .device = -1,
        .timeout_ms = 1000,
    };
    var s = base;
    s.kind = 99;
    try testing.expectError(error.InvalidArgument, e.submit(s));
    try testing.expect(std.mem.indexOf(u8, engine_mod.lastError(), "unknown collective") != null);
    s = base;
    s.redop = @intFromEnum(op.RedOp.band);
    try testing.expectError(error.InvalidArgument, e.submit(s));
    try testing.expect(std.mem.indexOf(u8, engine_mod.lastError(), "band") != null);
    s = base;
    s.ranks_mask = 2;
    try testing.expectError(error.InvalidArgument, e.submit(s));
    s = base;
    s.ranks_mask = 1 << 40;
    try testing.expectError(error.InvalidArgument, e.submit(s));
    s = base;
    s.send = null;
    try testing.expectError(error.InvalidArgument, e.submit(s));
    s = base;
    s.timeout_ms = 0;
    try testing.expectError(error.InvalidArgument, e.submit(s));
    s = base;
    s.kind = @intFromEnum(op.Collective.reduce);
    s.root = 4;
    try testing.expectError(error.InvalidArgument, e.submit(s));
    // Device pointers without a GPU (or with a bogus pointer): the op fails, the rank lives.
    s = base;
    s.device = 0;
    s.op_id = 77;
    const ticket = try e.submit(s);
    const status = e.waitTicket(ticket);
    try testing.expect(status == Status.enodev or status == Status.einval);
    var text: [400]u8 = undefined;
    const len = e.opError(ticket, &text);
    try testing.expect(std.mem.indexOf(u8, text[0..len], "device 0") != null);
    e.release(ticket);
}

// ---- every collective through dispatch ----

const Rng = std.Random.DefaultPrng;

fn fillInts(comptime T: type, out: []T, rng: std.Random, lo: i64, hi: i64) void {
    for (out) |*v| {
        const x = rng.intRangeAtMost(i64, lo, hi);
        v.* = switch (@typeInfo(T)) {
            .float => @floatFromInt(x),
            .int => @intCast(x),
            else => unreachable,
        };
    }
}

fn asF64(comptime T: type, v: T) f64 {
    return switch (@typeInfo(T)) {
        .float => @floatCast(v),
        .int => @floatFromInt(v),
        else => unreachable,
    };
}

fn dtypeOf(comptime T: type) op.DType {
    return switch (T) {
        f32 => .f32,
        f64 => .f64,
        i16 => .i16,
        i32 => .i32,
        i64 => .i64,
        u8 => .u8,
        else => @compileError("no dtype"),
    };
}

fn refReduce(redop: op.RedOp, acc: f64, x: f64) f64 {
    return switch (redop) {
        .sum, .avg => acc + x,
        .prod => acc * x,
        .min => @min(acc, x),
        .max => @max(acc, x),
        else => unreachable,
    };
}

fn CollectiveCase(comptime T: type) type {
    return struct {
        const Self = @This();
        world: *World,
        kind: op.Collective,
        redop: op.RedOp = .sum,
        count: usize,
        root: u32 = 0,
        /// Buffers from mr_alloc_shared (arena.zig): board ops read peers' buffers in place.
        shared: bool = false,

        fn allocBuf(self: Self, len: usize) ![]T {
            if (!self.shared) return testing.allocator.alloc(T, len);
            const p = arena.alloc(@max(len, 1) * @sizeOf(T)) orelse return error.OutOfMemory;
            return @as([*]T, @ptrCast(@alignCast(p)))[0..len];
        }

        fn freeBuf(self: Self, buf: []T) void {
            if (!self.shared) return testing.allocator.free(buf);
            std.debug.assert(arena.free(@ptrCast(buf.ptr)));
        }

        fn run(self: Self, seed: u64) !void {
            const n = self.world.n;
            var prng = Rng.init(seed);
            const rng = prng.random();
            const c = self.count;
            var sends: [ranks_max][]T = undefined;
            var recvs: [ranks_max][]T = undefined;
            var counts: [ranks_max][2 * (ranks_max + 1)]u64 = undefined;
            const send_len: usize, const recv_len: usize = switch (self.kind) {
                .allreduce, .reduce, .broadcast => .{ c, c },
                .allgather, .gather => .{ c, c * n },
                .scatter, .reduce_scatter => .{ c * n, c },
                .alltoall => .{ 0, 0 },
                .barrier => .{ 0, 0 },
                else => unreachable,
            };
            // alltoall: rank j sends (j + 2k) % 3 + c elements to rank k.
            for (0..n) |r| {
                var sl = send_len;
                var rl = recv_len;
                if (self.kind == .alltoall) {
                    @memset(&counts[r], 0);
                    sl = 0;
                    rl = 0;
                    for (0..n) |k| {
                        counts[r][k] = (r + 2 * k) % 3 + c;
                        counts[r][ranks_max + 1 + k] = (k + 2 * r) % 3 + c;
                        sl += counts[r][k];
                        rl += counts[r][ranks_max + 1 + k];
                    }
                }
                sends[r] = try self.allocBuf(sl);
                recvs[r] = try self.allocBuf(rl);
                const lo: i64 = if (self.redop == .prod) -2 else -1000;
                const hi: i64 = if (self.redop == .prod) 2 else 1000;
                fillInts(T, sends[r], rng, if (@typeInfo(T) == .int and @typeInfo(T).int.signedness == .unsigned) 0 else lo, if (T == u8) 255 else hi);
                @memset(std.mem.sliceAsBytes(recvs[r]), 0xcd);
            }
            defer for (0..n) |r| {
                self.freeBuf(sends[r]);
                self.freeBuf(recvs[r]);
            };
            var args: [ranks_max]Submit = undefined;
            const id = nextOpId();
            for (0..n) |r| {
                args[r] = .{
                    .kind = @intFromEnum(self.kind),
                    .dtype = @intFromEnum(dtypeOf(T)),
                    .redop = @intFromEnum(self.redop),
                    .op_id = id,
                    .ranks_mask = self.world.fullMask(),
                    .root = self.root,
                    .send = if (sends[r].len > 0) @ptrCast(sends[r].ptr) else null,
                    .recv = if (recvs[r].len > 0 and !(self.kind == .reduce or self.kind == .gather) or r == self.root) @ptrCast(recvs[r].ptr) else null,
                    .count = c,
                    .counts = &counts[r],
                    .device = -1,
                    .timeout_ms = 20_000,
                };
                if (recvs[r].len == 0) args[r].recv = null;
            }
            try self.world.expectAllOk(args[0..n]);
            // References.
            for (0..n) |r| {
                switch (self.kind) {
                    .allreduce, .reduce => {
                        if (self.kind == .reduce and r != self.root) continue;
                        for (0..c) |k| {
                            var acc = asF64(T, sends[0][k]);
                            for (1..n) |j| acc = refReduce(self.redop, acc, asF64(T, sends[j][k]));
                            if (self.redop == .avg) acc /= @floatFromInt(n);
                            try expectClose(T, acc, recvs[r][k]);
                        }
                    },
                    .reduce_scatter => for (0..c) |k| {
                        var acc = asF64(T, sends[0][r * c + k]);
                        for (1..n) |j| acc = refReduce(self.redop, acc, asF64(T, sends[j][r * c + k]));
                        try expectClose(T, acc, recvs[r][k]);
                    },
                    .broadcast => try testing.expectEqualSlices(T, sends[self.root], recvs[r]),
                    .allgather, .gather => {
                        if (self.kind == .gather and r != self.root) continue;
                        for (0..n) |j| try testing.expectEqualSlices(T, sends[j], recvs[r][j * c ..][0..c]);
                    },
                    .scatter => try testing.expectEqualSlices(T, sends[self.root][r * c ..][0..c], recvs[r]),
                    .alltoall => {
                        var at: usize = 0;
                        for (0..n) |j| {
                            // Block from j: j's block for r, at j's offset for r.
                            var off: usize = 0;
                            for (0..r) |k| off += counts[j][k];
                            const len = counts[j][r];
                            try testing.expectEqual(len, counts[r][ranks_max + 1 + j]);
                            try testing.expectEqualSlices(T, sends[j][off..][0..len], recvs[r][at..][0..len]);
                            at += len;
                        }
                    },
                    .barrier => {},
                    else => unreachable,
                }
            }
        }
    };
}

fn expectClose(comptime T: type, expected: f64, actual: T) !void {
    const got = asF64(T, actual);
    if (@typeInfo(T) == .int) {
        try testing.expectEqual(@as(T, @intFromFloat(expected)), actual);
    } else if (@abs(expected - got) > 1e-5 * @max(1.0, @abs(expected))) {
        std.debug.print("expected {d}, got {d}\n", .{ expected, got });
        return error.TestExpectedEqual;
    }
}

fn runCollectives(mode: Mode, n: u32) !void {
    var world = try World.init(n, .{ .mode = mode });
    defer world.deinit();
    const last = n - 1;
    var seed: u64 = n * 1000 + @intFromEnum(mode);
    for ([_]usize{ 7, 20_000 }) |c| {
        seed += 17;
        try (CollectiveCase(i32){ .world = &world, .kind = .allreduce, .count = c }).run(seed + 1);
        try (CollectiveCase(f64){ .world = &world, .kind = .allreduce, .redop = .max, .count = c }).run(seed + 2);
        try (CollectiveCase(f32){ .world = &world, .kind = .allreduce, .redop = .avg, .count = c }).run(seed + 3);
        for ([_]u32{ 0, last }) |root| {
            try (CollectiveCase(i64){ .world = &world, .kind = .reduce, .count = c, .root = root }).run(seed + 4);
            try (CollectiveCase(u8){ .world = &world, .kind = .broadcast, .count = c, .root = root }).run(seed + 5);
            try (CollectiveCase(f32){ .world = &world, .kind = .gather, .count = c, .root = root }).run(seed + 6);
            try (CollectiveCase(i32){ .world = &world, .kind = .scatter, .count = c, .root = root }).run(seed + 7);
        }
        try (CollectiveCase(i16){ .world = &world, .kind = .allgather, .count = c }).run(seed + 8);
        try (CollectiveCase(i32){ .world = &world, .kind = .reduce_scatter, .count = c }).run(seed + 9);
        try (CollectiveCase(i32){ .world = &world, .kind = .alltoall, .count = c }).run(seed + 10);
        try (CollectiveCase(i32){ .world = &world, .kind = .barrier, .count = 0 }).run(seed + 11);
    }
    if (n >= 2) try runSendRecv(&world, 0, last);
}

fn runSendRecv(world: *World, src: u32, dst: u32) !void {
    var data: [1000]i32 = undefined;
    var got: [1000]i32 = undefined;
    for (&data, 0..) |*d, i| d.* = @intCast(i * 3 + 1);
    @memset(&got, 0);
    const id = nextOpId();
    const mask = (@as(u64, 1) << @intCast(src)) | (@as(u64, 1) << @intCast(dst));
    const base = Submit{ .kind = 0, .dtype = @intFromEnum(op.DType.i32), .redop = 0, .op_id = id, .ranks_mask = mask, .root = 0, .send = null, .recv = null, .count = data.len, .counts = null, .device = -1, .timeout_ms = 10_000 };
    var s = base;
    s.kind = @intFromEnum(op.Collective.send);
    s.root = dst;
    s.send = @ptrCast(&data);
    var r = base;
    r.kind = @intFromEnum(op.Collective.recv);
    r.root = src;
    r.recv = @ptrCast(&got);
    const ts = try world.engine(src).submit(s);
    const tr = try world.engine(dst).submit(r);
    try testing.expectEqual(Status.ok, world.engine(src).waitTicket(ts));
    try testing.expectEqual(Status.ok, world.engine(dst).waitTicket(tr));
    world.engine(src).release(ts);
    world.engine(dst).release(tr);
    try testing.expectEqualSlices(i32, &data, &got);
}

test "collectives over tcp, 1..5 ranks, roots 0 and last" {
    for (1..ranks_max + 1) |n| try runCollectives(.tcp, @intCast(n));
}

test "collectives over shm, 2..5 ranks, roots 0 and last" {
    for (2..ranks_max + 1) |n| try runCollectives(.shm, @intCast(n));
}

test "completion queue: poll drains tickets, wait blocks until one is there" {
    var world = try World.init(2, .{ .mode = .tcp });
    defer world.deinit();
    var x: [4]f64 = .{ 1, 2, 3, 4 };
    var y: [4]f64 = .{ 10, 20, 30, 40 };
    const id = nextOpId();
    const base = Submit{ .kind = @intFromEnum(op.Collective.allreduce), .dtype = @intFromEnum(op.DType.f64), .redop = 0, .op_id = id, .ranks_mask = 3, .root = 0, .send = @ptrCast(&x), .recv = @ptrCast(&x), .count = 4, .counts = null, .device = -1, .timeout_ms = 10_000 };
    var b = base;
    b.send = @ptrCast(&y);
    b.recv = @ptrCast(&y);
    const t0 = try world.engine(0).submit(base);
    const t1 = try world.engine(1).submit(b);
    for ([_]u64{ t0, t1 }, 0..) |t, r| {
        const e = world.engine(r);
        var tickets: [4]u64 = undefined;
        var statuses: [4]i32 = undefined;
        var got: u32 = 0;
        var rounds: u32 = 0;
        while (got == 0 and rounds < 100) : (rounds += 1) {
            _ = e.wait(1000);
            got = e.poll(&tickets, &statuses);
        }
        try testing.expectEqual(@as(u32, 1), got);
        try testing.expectEqual(t, tickets[0]);
        try testing.expectEqual(Status.ok, statuses[0]);
        try testing.expectEqual(@as(u32, 0), e.poll(&tickets, &statuses));
        e.release(t);
    }
    try testing.expectEqualSlices(f64, &.{ 11, 22, 33, 44 }, &x);
    try testing.expectEqualSlices(f64, &.{ 11, 22, 33, 44 }, &y);
}

test "shm hygiene: stale segments of a killed rank are removed; nothing is left after destroy" {
    const cluster = "shm-hygiene-test";
    var prefix_buf: [64]u8 = undefined;
    const prefix = try std.fmt.bufPrint(&prefix_buf, "moonring-{x:0>16}-", .{std.hash.Wyhash.hash(0, cluster)});
    var name_buf: [96]u8 = undefined;
    // What a killed rank 1 could have left behind.
    const stale = try std.fmt.bufPrint(&name_buf, "{s}1-0-deadbeef0001", .{prefix});
    const segment = try sys.shmCreate(stale, 4096);
    segment.unmapSegment();
    var engines: [2]*Engine = undefined;
    for (0..2) |r| engines[r] = try Engine.create(testing.allocator, .{ .rank = @intCast(r), .world_size_max = 2, .cluster_id = cluster, .mode = .shm, .host_id = test_host_id });
    try testing.expectError(error.ShmOpenFailed, sys.shmOpen(stale, 0)); // rank 1 removed it
    for (0..2) |r| try engines[r].setPeer(@intCast(1 - r), "127.0.0.1", engines[1 - r].dataPort(), test_host_id);
    var x: [3]i64 = .{ 1, 2, 3 };
    var y: [3]i64 = .{ 10, 20, 30 };
    const base = Submit{ .kind = @intFromEnum(op.Collective.allreduce), .dtype = @intFromEnum(op.DType.i64), .redop = 0, .op_id = nextOpId(), .ranks_mask = 3, .root = 0, .send = @ptrCast(&x), .recv = @ptrCast(&x), .count = 3, .counts = null, .device = -1, .timeout_ms = 10_000 };
    var b = base;
    b.send = @ptrCast(&y);
    b.recv = @ptrCast(&y);
    const t0 = try engines[0].submit(base);
    const t1 = try engines[1].submit(b);
    try testing.expectEqual(Status.ok, engines[0].waitTicket(t0));
    try testing.expectEqual(Status.ok, engines[1].waitTicket(t1));
    try testing.expectEqualSlices(i64, &.{ 11, 22, 33 }, &x);
    for (engines) |e| e.destroy();
    // Nothing of this cluster remains in /dev/shm.
    try testing.expectEqual(@as(u32, 0), sys.shmUnlinkPrefix(prefix, null));
}

test "engine create: a taken port fails with a message" {
    const a = try Engine.create(testing.allocator, .{ .rank = 0, .world_size_max = 2, .cluster_id = "port-test" });
    defer a.destroy();
    try testing.expectError(error.ListenFailed, Engine.create(testing.allocator, .{ .rank = 1, .world_size_max = 2, .cluster_id = "port-test", .listen_port = a.dataPort() }));
    try testing.expect(std.mem.indexOf(u8, engine_mod.lastError(), "listener") != null);
}

// ---- device buffers (CUDA): skipped without a GPU ----

const cuda = @import("cuda/exports.zig");

test "device buffers: allreduce and allgather staged through the host, tcp and shm" {
    if (cuda.mr_cuda_device_count() == 0) return error.SkipZigTest;
    for ([_]Mode{ .tcp, .shm }) |mode| {
        var world = try World.init(2, .{ .mode = mode });
        defer world.deinit();
        const count = 300_000;
        var inputs: [2][]f32 = undefined;
        var dptrs: [2]u64 = undefined;
        var gathered: [2]u64 = undefined;
        for (0..2) |r| {
            inputs[r] = try testing.allocator.alloc(f32, count);
            for (inputs[r], 0..) |*v, k| v.* = @floatFromInt(@as(i64, @intCast((k * 7 + r * 13) % 101)) - 50);
            dptrs[r] = cuda.mr_cuda_alloc(0, count * 4);
            gathered[r] = cuda.mr_cuda_alloc(0, 2 * count * 4);
            try testing.expect(dptrs[r] != 0 and gathered[r] != 0);
            try testing.expectEqual(@as(i32, 0), cuda.mr_cuda_copy_to_device(0, dptrs[r], inputs[r].ptr, count * 4));
        }
        defer for (0..2) |r| {
            testing.allocator.free(inputs[r]);
            _ = cuda.mr_cuda_free(0, dptrs[r]);
            _ = cuda.mr_cuda_free(0, gathered[r]);
        };
        var args: [2]Submit = undefined;
        const id = nextOpId();
        for (0..2) |r| args[r] = .{ .kind = @intFromEnum(op.Collective.allreduce), .dtype = @intFromEnum(op.DType.f32), .redop = 0, .op_id = id, .ranks_mask = 3, .root = 0, .send = @ptrFromInt(dptrs[r]), .recv = @ptrFromInt(dptrs[r]), .count = count, .counts = null, .device = 0, .timeout_ms = 20_000 };
        try world.expectAllOk(&args);
        const out = try testing.allocator.alloc(f32, 2 * count);
        defer testing.allocator.free(out);
        for (0..2) |r| {
            try testing.expectEqual(@as(i32, 0), cuda.mr_cuda_copy_to_host(0, out.ptr, dptrs[r], count * 4));
            for (0..count) |k| try testing.expectEqual(inputs[0][k] + inputs[1][k], out[k]);
        }
        const id2 = nextOpId();
        for (0..2) |r| args[r] = .{ .kind = @intFromEnum(op.Collective.allgather), .dtype = @intFromEnum(op.DType.f32), .redop = 0, .op_id = id2, .ranks_mask = 3, .root = 0, .send = @ptrFromInt(dptrs[r]), .recv = @ptrFromInt(gathered[r]), .count = count, .counts = null, .device = 0, .timeout_ms = 20_000 };
        try world.expectAllOk(&args);
        try testing.expectEqual(@as(i32, 0), cuda.mr_cuda_copy_to_host(0, out.ptr, gathered[1], 2 * count * 4));
        for (0..count) |k| try testing.expectEqual(inputs[0][k] + inputs[1][k], out[count + k]);
    }
}

// ---- latency / bandwidth probe: runs only with MOONRING_BENCH=1 ----

fn benchOnce(world: *World, n: u32, bufs: [][]u8, kind: op.Collective, count: u64) !u64 {
    var args: [ranks_max]Submit = undefined;
    const id = nextOpId();
    for (0..n) |r| args[r] = .{ .kind = @intFromEnum(kind), .dtype = @intFromEnum(op.DType.f32), .redop = 0, .op_id = id, .ranks_mask = world.fullMask(), .root = 0, .send = bufs[r].ptr, .recv = bufs[r].ptr, .count = count, .counts = null, .device = -1, .timeout_ms = 30_000 };
    const t0 = sys.monotonicNs();
    try world.expectAllOk(args[0..n]);
    return sys.monotonicNs() - t0;
}

test "bench: allreduce latency and bandwidth (MOONRING_BENCH=1)" {
    if (sys.getenv("MOONRING_BENCH") == null) return error.SkipZigTest;
    const n: u32 = 2;
    for ([_]Mode{ .tcp, .shm }) |mode| {
        var world = try World.init(n, .{ .mode = mode, .tcp_chunk_bytes = wire.chunk_bytes_max, .shm_slot_bytes = 256 * 1024, .shm_slot_count = 16 });
        defer world.deinit();
        var bufs: [ranks_max][]u8 = undefined;
        for (0..n) |r| bufs[r] = try testing.allocator.alloc(u8, 256 << 20);
        defer for (0..n) |r| testing.allocator.free(bufs[r]);
        for (0..n) |r| @memset(bufs[r], 0);
        var times: [1000]u64 = undefined;
        for (&times) |*t| t.* = try benchOnce(&world, n, bufs[0..n], .allreduce, 2);
        std.mem.sort(u64, &times, {}, std.sort.asc(u64));
        std.debug.print("\n{s}: 8-byte allreduce x{d} ranks (in-process, submit->done): p50 {d} us, p90 {d} us, p99 {d} us\n", .{ @tagName(mode), n, times[500] / 1000, times[900] / 1000, times[990] / 1000 });
        for ([_]u64{ 1 << 20, 16 << 20, 256 << 20 }) |bytes| {
            var best: u64 = std.math.maxInt(u64);
            for (0..3) |_| best = @min(best, try benchOnce(&world, n, bufs[0..n], .allreduce, bytes / 4));
            std.debug.print("{s}: allreduce {d} MiB: {d} us, busbw {d:.2} GB/s\n", .{ @tagName(mode), bytes >> 20, best / 1000, @as(f64, @floatFromInt(bytes)) * 2.0 * @as(f64, @floatFromInt(n - 1)) / @as(f64, @floatFromInt(n)) / @as(f64, @floatFromInt(best)) });
        }
    }
}

test "strangers: a silent connection is dropped after the handshake timeout; destroy does not wait for it" {
    var world = try World.init(1, .{ .mode = .tcp });
    defer world.deinit();
    const fd = try connectRaw(world.engine(0).dataPort());
    defer sys.closeFd(fd);
    try expectClosedByEngine(fd); // after ~2 s of silence
    const fd2 = try connectRaw(world.engine(0).dataPort());
    defer sys.closeFd(fd2);
    world.kill(0); // returns promptly although fd2 is mid-handshake
    try expectClosedByEngine(fd2);
}

test "concurrent ops share links: 8 allreduces in flight, submitted in different orders per rank" {
    for ([_]Mode{ .tcp, .shm }) |mode| {
        const n = 3;
        const ops_count = 8;
        var world = try World.init(n, .{ .mode = mode });
        defer world.deinit();
        var bufs: [n][ops_count][]i32 = undefined;
        var counts: [ops_count]usize = undefined;
        var ids: [ops_count]u64 = undefined;
        for (0..ops_count) |o| {
            counts[o] = 7 + o * 13_001;
            ids[o] = nextOpId();
            for (0..n) |r| {
                bufs[r][o] = try testing.allocator.alloc(i32, counts[o]);
                for (bufs[r][o], 0..) |*v, k| v.* = @intCast((k * 31 + r * 7 + o) % 1000);
            }
        }
        defer for (0..n) |r| for (0..ops_count) |o| testing.allocator.free(bufs[r][o]);
        var tickets: [n][ops_count]u64 = undefined;
        for (0..n) |r| {
            for (0..ops_count) |i| {
                const o = if (r % 2 == 0) i else ops_count - 1 - i;
                tickets[r][o] = try world.engine(r).submit(.{ .kind = @intFromEnum(op.Collective.allreduce), .dtype = @intFromEnum(op.DType.i32), .redop = 0, .op_id = ids[o], .ranks_mask = world.fullMask(), .root = 0, .send = @ptrCast(bufs[r][o].ptr), .recv = @ptrCast(bufs[r][o].ptr), .count = counts[o], .counts = null, .device = -1, .timeout_ms = 30_000 });
            }
        }
        for (0..n) |r| for (0..ops_count) |o| {
            try testing.expectEqual(Status.ok, world.engine(r).waitTicket(tickets[r][o]));
            world.engine(r).release(tickets[r][o]);
        };
        for (0..ops_count) |o| for (0..counts[o]) |k| {
            var expected: i32 = 0;
            for (0..n) |r| expected += @intCast((k * 31 + r * 7 + o) % 1000);
            for (0..n) |r| try testing.expectEqual(expected, bufs[r][o][k]);
        };
    }
}

test "transport choice: auto picks shm for the same host id and tcp otherwise; shm forced works across host ids" {
    const Case = struct { mode: Mode, same_host: bool, shm: bool };
    for ([_]Case{
        .{ .mode = .auto, .same_host = true, .shm = true },
        .{ .mode = .auto, .same_host = false, .shm = false },
        .{ .mode = .shm, .same_host = false, .shm = true },
        .{ .mode = .tcp, .same_host = true, .shm = false },
    }) |case| {
        var world = try World.init(2, .{ .mode = case.mode, .runner = dualRunner });
        defer world.deinit();
        try pingAcross(&world, case.same_host);
        for (0..2) |r| {
            const counts = world.engine(r).net.linkCounts();
            try testing.expect(counts.tcp + counts.shm >= 1);
            if (case.shm) try testing.expectEqual(@as(u32, 0), counts.tcp) else try testing.expectEqual(@as(u32, 0), counts.shm);
        }
    }
}

test "bench: a 4.5 GiB send/recv over tcp and shm (MOONRING_BENCH=1)" {
    if (sys.getenv("MOONRING_BENCH") == null) return error.SkipZigTest;
    const bytes: usize = (9 << 30) / 2;
    for ([_]Mode{ .tcp, .shm }) |mode| {
        var world = try World.init(2, .{ .mode = mode, .tcp_chunk_bytes = wire.chunk_bytes_max, .shm_slot_bytes = 256 * 1024, .shm_slot_count = 16 });
        defer world.deinit();
        const src = sys.mapAnonymous(bytes).?;
        defer sys.unmap(src, bytes);
        const dst = sys.mapAnonymous(bytes).?;
        defer sys.unmap(dst, bytes);
        var k: usize = 0;
        while (k < bytes) : (k += 4096) src[k] = @truncate(k >> 12);
        src[bytes - 1] = 0x5a;
        const id = nextOpId();
        const base = Submit{ .kind = 0, .dtype = @intFromEnum(op.DType.u8), .redop = 0, .op_id = id, .ranks_mask = 3, .root = 0, .send = null, .recv = null, .count = bytes, .counts = null, .device = -1, .timeout_ms = 120_000 };
        var s = base;
        s.kind = @intFromEnum(op.Collective.send);
        s.root = 1;
        s.send = src;
        var r = base;
        r.kind = @intFromEnum(op.Collective.recv);
        r.root = 0;
        r.recv = dst;
        const t0 = sys.monotonicNs();
        try world.expectAllOk(&.{ s, r });
        const ns = sys.monotonicNs() - t0;
        k = 0;
        while (k < bytes) : (k += 4096) try testing.expectEqual(@as(u8, @truncate(k >> 12)), dst[k]);
        try testing.expectEqual(@as(u8, 0x5a), dst[bytes - 1]);
        std.debug.print("{s}: send/recv {d} MiB in {d} ms ({d:.2} GB/s)\n", .{ @tagName(mode), bytes >> 20, ns / std.time.ns_per_ms, @as(f64, @floatFromInt(bytes)) / @as(f64, @floatFromInt(ns)) });
    }
}

test "set_peer after the peer already dialed us keeps its link" {
    for ([_]Mode{ .tcp, .shm }) |mode| {
        var world = try World.init(2, .{ .mode = mode, .runner = dualRunner });
        defer world.deinit();
        // Rank 0 learns rank 1's address only after rank 1 has connected and sent.
        const cluster_id = world.cluster();
        world.kill(0);
        world.engines[0] = try Engine.create(testing.allocator, .{ .rank = 0, .world_size_max = ranks_max + 1, .cluster_id = cluster_id, .mode = mode, .host_id = test_host_id, .runner = dualRunner });
        try world.engine(1).setPeer(0, "127.0.0.1", world.engine(0).dataPort(), test_host_id);
        const ping = Tagged{ .kind = 0, .a = 1, .b = 0 };
        const id = nextOpId();
        const t1 = try world.engine(1).submit(customOp(id, 3, &ping, 10_000));
        // Wait until rank 1's link to rank 0 is up (rank 0 can't dial back yet).
        var waits: u32 = 0;
        while (world.engine(0).net.linkCounts().tcp + world.engine(0).net.linkCounts().shm == 0 and waits < 1000) : (waits += 1) std.Thread.sleep(std.time.ns_per_ms);
        try world.engine(0).setPeer(1, "127.0.0.1", world.engine(1).dataPort(), test_host_id);
        const t0 = try world.engine(0).submit(customOp(id, 3, &ping, 10_000));
        try testing.expectEqual(Status.ok, world.engine(0).waitTicket(t0));
        try testing.expectEqual(Status.ok, world.engine(1).waitTicket(t1));
        world.engine(0).release(t0);
        world.engine(1).release(t1);
    }
}

// ---- the board (same-host groups: backend/board_direct.zig) ----

/// Every rank runs its op with runNow() on a thread of its own (as blocking embedders do).
fn runNowAll(world: *World, args: []const Submit, statuses: []i32) !void {
    const Runner = struct {
        fn run(e: *Engine, s: Submit, status: *i32) void {
            const ticket = e.runNow(s) catch {
                status.* = Status.einval;
                return;
            };
            status.* = e.opStatus(ticket);
            if (status.* != Status.ok) {
                var buf: [512]u8 = undefined;
                const len = e.opError(ticket, &buf);
                std.debug.print("runNow status {d}: {s}\n", .{ status.*, buf[0..@min(len, buf.len)] });
            }
            e.release(ticket);
        }
    };
    var threads: [ranks_max]std.Thread = undefined;
    for (args, 0..) |a, r| threads[r] = try std.Thread.spawn(.{}, Runner.run, .{ world.engine(r), a, &statuses[r] });
    for (threads[0..args.len]) |t| t.join();
}

test "board: in-place allreduce / allgather / reduce_scatter / alltoall, inline, CMA and shared buffers, 2..4 ranks, runNow and submit" {
    const a = testing.allocator;
    for (2..5) |nn| {
        const n: u32 = @intCast(nn);
        var world = try World.init(n, .{ .mode = .shm });
        defer world.deinit();
        // 1000 elements: inline (4000 B); 300_000: read with CMA, blocks of unequal length.
        for ([_]usize{ 1000, 12_000, 300_001 }) |c| for ([_]bool{ false, true }) |blocking| for ([_]op.Collective{ .allreduce, .allgather, .reduce_scatter, .alltoall }) |kind| {
            // Shared buffers (peers read them in place) for the blocking runs, plain ones else.
            const shared = blocking;
            var prng = Rng.init(c * 31 + n + @intFromEnum(kind));
            const rng = prng.random();
            const total: usize = if (kind == .allreduce) c else c * n;
            var bufs: [ranks_max][]i32 = undefined;
            var originals: [ranks_max][]i32 = undefined;
            var counts: [ranks_max][2 * (ranks_max + 1)]u64 = undefined;
            for (0..n) |r| {
                bufs[r] = if (shared) @as([*]i32, @ptrCast(@alignCast(arena.alloc(total * 4) orelse return error.OutOfMemory)))[0..total] else try a.alloc(i32, total);
                fillInts(i32, bufs[r], rng, -1000, 1000);
                originals[r] = try a.dupe(i32, bufs[r]);
                @memset(&counts[r], 0);
                for (0..n) |k| {
                    counts[r][k] = c;
                    counts[r][ranks_max + 1 + k] = c;
                }
            }
            defer for (0..n) |r| {
                if (shared) std.debug.assert(arena.free(@ptrCast(bufs[r].ptr))) else a.free(bufs[r]);
                a.free(originals[r]);
            };
            var args: [ranks_max]Submit = undefined;
            const id = nextOpId();
            for (0..n) |r| {
                const base: [*]i32 = bufs[r].ptr;
                // In place: allgather's send is its own block of recv; reduce_scatter's recv is
                // its own block of send; allreduce and alltoall: send == recv.
                const send: [*]const u8 = @ptrCast(if (kind == .allgather) base + r * c else base);
                const recv: [*]u8 = @ptrCast(if (kind == .reduce_scatter) base + r * c else base);
                args[r] = .{ .kind = @intFromEnum(kind), .dtype = @intFromEnum(op.DType.i32), .redop = @intFromEnum(op.RedOp.sum), .op_id = id, .ranks_mask = world.fullMask(), .root = 0, .send = send, .recv = recv, .count = c, .counts = &counts[r], .device = -1, .timeout_ms = 20_000 };
            }
            var statuses: [ranks_max]i32 = undefined;
            if (blocking) try runNowAll(&world, args[0..n], statuses[0..n]) else try world.run(args[0..n], statuses[0..n]);
            for (statuses[0..n]) |s| try testing.expectEqual(Status.ok, s);
            for (0..n) |r| {
                switch (kind) {
                    .allreduce => for (0..c) |k| {
                        var sum: i64 = 0;
                        for (0..n) |j| sum += originals[j][k];
                        try testing.expectEqual(@as(i32, @intCast(sum)), bufs[r][k]);
                    },
                    .allgather => for (0..n) |j| try testing.expectEqualSlices(i32, originals[j][j * c ..][0..c], bufs[r][j * c ..][0..c]),
                    .reduce_scatter => for (0..c) |k| {
                        var sum: i64 = 0;
                        for (0..n) |j| sum += originals[j][r * c + k];
                        try testing.expectEqual(@as(i32, @intCast(sum)), bufs[r][r * c + k]);
                    },
                    .alltoall => for (0..n) |j| try testing.expectEqualSlices(i32, originals[j][r * c ..][0..c], bufs[r][j * c ..][0..c]),
                    else => unreachable,
                }
            }
        };
    }
}

test "board: a rank that never joins times out naming it; a destroyed rank fails the others at once; a re-issued op id succeeds" {
    var world = try World.init(3, .{ .mode = .shm });
    defer world.deinit();
    var x: [3][5000]f32 = undefined; // 20 KB: inline
    for (&x, 0..) |*row, r| for (row, 0..) |*v, k| {
        v.* = @floatFromInt(r * 10 + k % 7);
    };
    const id = nextOpId();
    var args: [3]Submit = undefined;
    for (0..3) |r| args[r] = .{ .kind = @intFromEnum(op.Collective.allreduce), .dtype = @intFromEnum(op.DType.f32), .redop = 0, .op_id = id, .ranks_mask = 7, .root = 0, .send = @ptrCast(&x[r]), .recv = @ptrCast(&x[r]), .count = 5000, .counts = null, .device = -1, .timeout_ms = 200 };
    // Rank 2 never comes: ranks 0 and 1 time out, naming it.
    const t0 = try world.engine(0).submit(args[0]);
    const t1 = try world.engine(1).submit(args[1]);
    try expectFailure(world.engine(0), t0, Status.etimeout, 2, &.{ "rank 0", "allreduce op", "timed out after 200 ms", "rank 2" });
    try expectFailure(world.engine(1), t1, Status.etimeout, 2, &.{ "rank 1", "timed out after 200 ms", "rank 2" });
    // The same op id again, now with everyone: the failed attempt's leftovers are ignored.
    for (&args) |*s| s.timeout_ms = 10_000;
    try world.expectAllOk(&args);
    for (0..5000) |k| try testing.expectEqual(@as(f32, @floatFromInt(30 + 3 * (k % 7))), x[1][k]);
    // Rank 2 dies while 0 and 1 wait for it: EPEER naming it well before the 60 s deadline.
    const id2 = nextOpId();
    for (&args) |*s| {
        s.op_id = id2;
        s.timeout_ms = 60_000;
    }
    const start = sys.monotonicNs();
    const w0 = try world.engine(0).submit(args[0]);
    const w1 = try world.engine(1).submit(args[1]);
    std.Thread.sleep(20 * std.time.ns_per_ms);
    world.kill(2);
    try expectFailure(world.engine(0), w0, Status.epeer, 2, &.{ "rank 0", "rank 2 died" });
    try expectFailure(world.engine(1), w1, Status.epeer, 2, &.{ "rank 1", "rank 2 died" });
    try testing.expect(sys.monotonicNs() - start < 5 * std.time.ns_per_s);
    // The survivors still work together, on the board.
    const id3 = nextOpId();
    for (args[0..2]) |*s| {
        s.op_id = id3;
        s.ranks_mask = 3;
    }
    try world.expectAllOk(args[0..2]);
}

test "board: an in-place allreduce on a small-capacity entry (contribution read with CMA while the owner writes its result) is still right" {
    var world = try World.init(2, .{ .mode = .shm });
    defer world.deinit();
    // Keep slots 0..7 busy (done, not released) so the next op lands on entry 8 (32 KiB).
    var held: [2][8]u64 = undefined;
    var dummy: [2][1]i32 = .{ .{1}, .{2} };
    for (0..8) |k| {
        const id = nextOpId();
        for (0..2) |r| held[r][k] = try world.engine(r).submit(.{ .kind = @intFromEnum(op.Collective.allreduce), .dtype = @intFromEnum(op.DType.i32), .redop = 0, .op_id = id, .ranks_mask = 3, .root = 0, .send = @ptrCast(&dummy[r]), .recv = @ptrCast(&dummy[r]), .count = 1, .counts = null, .device = -1, .timeout_ms = 10_000 });
        for (0..2) |r| try testing.expectEqual(Status.ok, world.engine(r).waitTicket(held[r][k]));
    }
    defer for (0..2) |r| for (held[r]) |t| world.engine(r).release(t);
    const c = 12_000; // 48 KB: above entry 8's 32 KiB, under the reduce-everything limit
    var bufs: [2][c]i32 = undefined;
    for (&bufs, 0..) |*b, r| for (b, 0..) |*v, k| {
        v.* = @intCast(k * 3 + r * 1000);
    };
    const id = nextOpId();
    var args: [2]Submit = undefined;
    for (0..2) |r| args[r] = .{ .kind = @intFromEnum(op.Collective.allreduce), .dtype = @intFromEnum(op.DType.i32), .redop = 0, .op_id = id, .ranks_mask = 3, .root = 0, .send = @ptrCast(&bufs[r]), .recv = @ptrCast(&bufs[r]), .count = c, .counts = null, .device = -1, .timeout_ms = 10_000 };
    try world.expectAllOk(&args);
    for (0..2) |r| for (bufs[r], 0..) |v, k| try testing.expectEqual(@as(i32, @intCast(k * 6 + 1000)), v);
}

/// Every collective once on `world` (roots 0 and last, several dtypes and ops), `c` elements per
/// rank, each result checked against its f64 / exact-int reference (CollectiveCase).
fn everyCollective(world: *World, c: usize, shared: bool, seed: u64) !void {
    const n = world.n;
    try (CollectiveCase(i32){ .world = world, .kind = .allreduce, .count = c, .shared = shared }).run(seed + 1);
    try (CollectiveCase(f32){ .world = world, .kind = .allreduce, .redop = .avg, .count = c, .shared = shared }).run(seed + 2);
    for ([_]u32{ 0, n - 1 }) |root| {
        try (CollectiveCase(i64){ .world = world, .kind = .reduce, .count = c, .root = root, .shared = shared }).run(seed + 3);
        try (CollectiveCase(u8){ .world = world, .kind = .broadcast, .count = c, .root = root, .shared = shared }).run(seed + 4);
        try (CollectiveCase(f32){ .world = world, .kind = .gather, .count = c, .root = root, .shared = shared }).run(seed + 5);
        try (CollectiveCase(i32){ .world = world, .kind = .scatter, .count = c, .root = root, .shared = shared }).run(seed + 6);
    }
    try (CollectiveCase(i16){ .world = world, .kind = .allgather, .count = c, .shared = shared }).run(seed + 7);
    try (CollectiveCase(i32){ .world = world, .kind = .reduce_scatter, .count = c, .shared = shared }).run(seed + 8);
    try (CollectiveCase(i32){ .world = world, .kind = .alltoall, .count = c, .shared = shared }).run(seed + 9);
}

test "board: every collective on shared buffers (peers read them in place), 2..4 ranks, roots 0 and last" {
    for (2..5) |nn| {
        const n: u32 = @intCast(nn);
        var world = try World.init(n, .{ .mode = .shm });
        defer world.deinit();
        var seed: u64 = 7000 + n;
        // 300_001 elements: large (shared, not inline), blocks of unequal length.
        for ([_]usize{ 300_001, 70_000 }) |c| {
            seed += 13;
            try everyCollective(&world, c, true, seed);
        }
    }
}

test "board: a 2-rank allreduce of 32 MiB (the peer's copy of each reduced piece written with non-temporal stores), plain and shared buffers, is exact" {
    var world = try World.init(2, .{ .mode = .shm });
    defer world.deinit();
    for ([_]bool{ false, true }) |shared| {
        try (CollectiveCase(i32){ .world = &world, .kind = .allreduce, .count = 8 << 20, .shared = shared }).run(9901);
        try (CollectiveCase(f32){ .world = &world, .kind = .allreduce, .redop = .max, .count = (8 << 20) + 3, .shared = shared }).run(9902);
    }
}

/// Board knobs with eager groups from two ranks on (plan.Config.board_eager_ranks_min).
fn eagerConfig() plan.Config {
    var config = plan.Config.fromEnv();
    config.board_eager_ranks_min = 2;
    return config;
}

test "board, eager: every collective, tiny / inline / large, plain and shared buffers, 2..4 ranks, roots 0 and last, twice (lingering publishes settled)" {
    for (2..5) |nn| {
        const n: u32 = @intCast(nn);
        var world = try World.init(n, .{ .mode = .shm, .config = eagerConfig() });
        defer world.deinit();
        var seed: u64 = 9100 + n;
        for ([_]usize{ 1, 1000, 70_000 }) |c| for ([_]bool{ false, true }) |shared| for (0..2) |_| {
            seed += 17;
            try everyCollective(&world, c, shared, seed);
        };
    }
}

/// A broadcast of `data` from rank 0 run by rank `r` alone (runNow); returns its status.
fn broadcastAlone(world: *World, r: usize, id: u64, buf: *[64]f32, timeout_ms: u32) !i32 {
    const s = Submit{ .kind = @intFromEnum(op.Collective.broadcast), .dtype = @intFromEnum(op.DType.f32), .redop = 0, .op_id = id, .ranks_mask = world.fullMask(), .root = 0, .send = @ptrCast(buf), .recv = @ptrCast(buf), .count = 64, .counts = null, .device = -1, .timeout_ms = timeout_ms };
    const ticket = try world.engine(r).runNow(s);
    defer world.engine(r).release(ticket);
    return world.engine(r).opStatus(ticket);
}

test "board, eager: a broadcast root returns before its readers start; they get what it sent (the board's copy), not what its buffer holds later" {
    var world = try World.init(3, .{ .mode = .shm, .config = eagerConfig() });
    defer world.deinit();
    var bufs: [3][64]f32 = undefined;
    for (0..4) |round| {
        const id = nextOpId();
        for (&bufs[0], 0..) |*v, k| v.* = @floatFromInt(round * 1000 + k);
        // Alone: nobody else has started the op, yet the root completes it.
        try testing.expectEqual(Status.ok, try broadcastAlone(&world, 0, id, &bufs[0], 10_000));
        @memset(&bufs[0], -1); // the root's buffer changes before anyone read it
        for (1..3) |r| {
            @memset(&bufs[r], 0);
            try testing.expectEqual(Status.ok, try broadcastAlone(&world, r, id, &bufs[r], 10_000));
            for (bufs[r], 0..) |v, k| try testing.expectEqual(@as(f32, @floatFromInt(round * 1000 + k)), v);
        }
    }
}

test "board, eager: a reader that never comes does not hold the root's entry; a re-issued op id replaces the earlier attempt's publish" {
    var world = try World.init(3, .{ .mode = .shm, .config = eagerConfig() });
    defer world.deinit();
    var bufs: [3][64]f32 = undefined;
    const abandoned = nextOpId();
    @memset(&bufs[0], 7);
    try testing.expectEqual(Status.ok, try broadcastAlone(&world, 0, abandoned, &bufs[0], 10_000));
    // Rank 2 never runs `abandoned`; rank 1 reads it. The root's later ops reuse the entry
    // (two slots' worth of turns) after waiting for rank 2 a bounded time, and stay exact.
    try testing.expectEqual(Status.ok, try broadcastAlone(&world, 1, abandoned, &bufs[1], 10_000));
    for (bufs[1]) |v| try testing.expectEqual(@as(f32, 7), v);
    for (0..3) |round| {
        const id = nextOpId();
        @memset(&bufs[0], @floatFromInt(round + 1));
        for (0..3) |r| try testing.expectEqual(Status.ok, try broadcastAlone(&world, r, id, &bufs[r], 10_000));
        for (bufs[1..3]) |row| for (row) |v| try testing.expectEqual(@as(f32, @floatFromInt(round + 1)), v);
    }
    // The same op id again (a retry after a failure elsewhere) with new data: rank 2 reads
    // this attempt's publish, not the first attempt's that still lingered.
    // The first attempt goes to the slot's first entry, so a reader that scans the ids in
    // order would meet it before the second attempt's (a lone op on a group of one only flips
    // the slot's turn when needed).
    if (world.engine(0).slots[0].board_turn == 0) {
        var lone = [_]f32{0} ** 64;
        const s = Submit{ .kind = @intFromEnum(op.Collective.broadcast), .dtype = @intFromEnum(op.DType.f32), .redop = 0, .op_id = nextOpId(), .ranks_mask = 1, .root = 0, .send = @ptrCast(&lone), .recv = @ptrCast(&lone), .count = 64, .counts = null, .device = -1, .timeout_ms = 10_000 };
        const ticket = try world.engine(0).runNow(s);
        world.engine(0).release(ticket);
    }
    try testing.expectEqual(@as(u1, 1), world.engine(0).slots[0].board_turn);
    try expectReissueReplaces(&world, 2);
}

/// Rank 0 broadcasts op id X twice (a retry after a failure elsewhere) with new data the second
/// time; rank `reader` then reads X and must get the second attempt's data, not the first's.
fn expectReissueReplaces(world: *World, reader: usize) !void {
    var bufs: [2][64]f32 = undefined;
    const retried = nextOpId();
    @memset(&bufs[0], 3);
    try testing.expectEqual(Status.ok, try broadcastAlone(world, 0, retried, &bufs[0], 10_000));
    @memset(&bufs[0], 4);
    try testing.expectEqual(Status.ok, try broadcastAlone(world, 0, retried, &bufs[0], 10_000));
    try testing.expectEqual(Status.ok, try broadcastAlone(world, reader, retried, &bufs[1], 10_000));
    for (bufs[1]) |v| try testing.expectEqual(@as(f32, 4), v);
}

/// Board knobs with the pair lanes on or off (plan.Config.board_lanes).
fn lanesConfig(on: bool) plan.Config {
    var config = plan.Config.fromEnv();
    config.board_lanes = on;
    return config;
}

test "board, lanes: every collective at 2 ranks, sizes below, at and above a lane cell, lanes on and off, three times (cells reused)" {
    for ([_]bool{ true, false }) |on| {
        var world = try World.init(2, .{ .mode = .shm, .config = lanesConfig(on) });
        defer world.deinit();
        var seed: u64 = 9400 + @as(u64, @intFromBool(on));
        // 256 x i32 (allreduce, scatter and reduce_scatter blocks) = 1024 B, a full cell; 257:
        // the entries. Alltoall sends c + 0..2 elements per pair: 254 and 255 straddle it too.
        for ([_]usize{ 1, 17, 128, 254, 255, 256, 257, 300 }) |c| for ([_]bool{ false, true }) |shared| for (0..3) |_| {
            seed += 19;
            try everyCollective(&world, c, shared, seed);
        };
    }
}

test "board, lanes: a 2-rank broadcast root runs ten ops ahead of its reader (more than a lane's cells: the rest go to entries); each arrives exactly" {
    var world = try World.init(2, .{ .mode = .shm, .config = lanesConfig(true) });
    defer world.deinit();
    var bufs: [2][64]f32 = undefined;
    var ids: [10]u64 = undefined;
    for (&ids, 0..) |*id, round| {
        id.* = nextOpId();
        for (&bufs[0], 0..) |*v, k| v.* = @floatFromInt(round * 1000 + k);
        try testing.expectEqual(Status.ok, try broadcastAlone(&world, 0, id.*, &bufs[0], 10_000));
        @memset(&bufs[0], -1); // what the reader gets is the lane's (or entry's) copy
    }
    try testing.expect(ids.len > board_mod.lane_cells);
    for (ids, 0..) |id, round| {
        @memset(&bufs[1], 0);
        try testing.expectEqual(Status.ok, try broadcastAlone(&world, 1, id, &bufs[1], 10_000));
        for (bufs[1], 0..) |v, k| try testing.expectEqual(@as(f32, @floatFromInt(round * 1000 + k)), v);
    }
}

test "board, lanes: an op its reader never runs holds its cell; the ops after it, two rounds of cells, go through lanes or entries and arrive exactly" {
    var world = try World.init(2, .{ .mode = .shm, .config = lanesConfig(true) });
    defer world.deinit();
    var bufs: [2][64]f32 = undefined;
    @memset(&bufs[0], 7);
    try testing.expectEqual(Status.ok, try broadcastAlone(&world, 0, nextOpId(), &bufs[0], 10_000)); // rank 1 never runs it
    for (0..2 * board_mod.lane_cells + 1) |round| {
        const id = nextOpId();
        @memset(&bufs[0], @floatFromInt(round + 1));
        for (0..2) |r| try testing.expectEqual(Status.ok, try broadcastAlone(&world, r, id, &bufs[r], 10_000));
        for (bufs[1]) |v| try testing.expectEqual(@as(f32, @floatFromInt(round + 1)), v);
    }
}

test "board, lanes: a re-issued op id replaces the earlier attempt's lane publish" {
    var world = try World.init(2, .{ .mode = .shm, .config = lanesConfig(true) });
    defer world.deinit();
    try expectReissueReplaces(&world, 1);
}

test "board, lanes: a lane op registers with the net only once it waits; a peer marked down then, or since it started, fails it naming the peer" {
    var world = try World.init(2, .{ .mode = .shm, .config = lanesConfig(true) });
    defer world.deinit();
    // Rank 1 reads a broadcast that rank 0 never runs: it waits, so it registers.
    const Outcome = struct { status: i32 = 0, peer: i32 = -2, text: [256]u8 = undefined, len: usize = 0 };
    const Reader = struct {
        fn run(w: *World, id: u64, out: *Outcome) void {
            var buf = [_]f32{0} ** 64;
            const s = Submit{ .kind = @intFromEnum(op.Collective.broadcast), .dtype = @intFromEnum(op.DType.f32), .redop = 0, .op_id = id, .ranks_mask = 3, .root = 0, .send = @ptrCast(&buf), .recv = @ptrCast(&buf), .count = 64, .counts = null, .device = -1, .timeout_ms = 60_000 };
            const e = w.engine(1);
            const ticket = e.runNow(s) catch return;
            out.status = e.opStatus(ticket);
            out.peer = e.opFailedPeer(ticket);
            out.len = e.opError(ticket, &out.text);
            e.release(ticket);
        }
    };
    var outcome = Outcome{};
    const start = sys.monotonicNs();
    const thread = try std.Thread.spawn(.{}, Reader.run, .{ &world, nextOpId(), &outcome });
    var polls: u32 = 0;
    while (registeredOps(world.engine(1)) == 0) : (polls += 1) {
        try testing.expect(polls < 10_000); // 10 s: it registers after spinning ~50 us
        std.Thread.sleep(std.time.ns_per_ms);
    }
    try world.engine(1).peerDown(0);
    thread.join();
    try testing.expectEqual(Status.epeer, outcome.status);
    try testing.expectEqual(@as(i32, 0), outcome.peer);
    try testing.expect(std.mem.indexOf(u8, outcome.text[0..@min(outcome.len, outcome.text.len)], "rank 0 was marked down") != null);
    try testing.expect(sys.monotonicNs() - start < 30 * std.time.ns_per_s);
    try testing.expectEqual(@as(u32, 0), registeredOps(world.engine(1)));

    // Marked down between prepare (at admission) and a late register: failed as if registered.
    const net = world.engine(0).net;
    var ep: @TypeOf(world.engine(0).slots[0].ep) = .{};
    net.prepare(&ep, nextOpId(), &[_]u32{ 0, 1 }, 0, sys.deadlineNs(1000), 1000);
    try world.engine(0).peerDown(1);
    try net.register(&ep);
    try testing.expect(ep.failed.load(.acquire));
    try testing.expectEqual(@as(i32, 1), net.failedPeer(&ep));
    net.close(&ep);
}

fn registeredOps(engine: *Engine) u32 {
    engine.net.mu.lock();
    defer engine.net.mu.unlock();
    return @popCount(engine.net.endpoints_used);
}

test "board, lanes: a restarted peer's new board is used (each slot's cached board team is refreshed), by lane ops and worker ops alike" {
    var world = try World.init(2, .{ .mode = .shm, .config = lanesConfig(true) });
    defer world.deinit();
    for (0..3) |life| {
        if (life > 0) try world.restart(1);
        for (0..4) |round| {
            const value: f32 = @floatFromInt(life * 100 + round);
            var bufs: [2][64]f32 = .{ [_]f32{value} ** 64, [_]f32{0} ** 64 };
            const id = nextOpId();
            for (0..2) |r| try testing.expectEqual(Status.ok, try broadcastAlone(&world, r, id, &bufs[r], 10_000));
            for (bufs[1]) |v| try testing.expectEqual(value, v);
            var x: [2][16]i32 = undefined;
            var args: [2]Submit = undefined;
            const sum_id = nextOpId();
            for (0..2) |r| {
                @memset(&x[r], @intCast(r + 1 + life));
                args[r] = .{ .kind = @intFromEnum(op.Collective.allreduce), .dtype = @intFromEnum(op.DType.i32), .redop = 0, .op_id = sum_id, .ranks_mask = 3, .root = 0, .send = @ptrCast(&x[r]), .recv = @ptrCast(&x[r]), .count = 16, .counts = null, .device = -1, .timeout_ms = 10_000 };
            }
            try world.expectAllOk(&args);
            for (x) |row| for (row) |v| try testing.expectEqual(@as(i32, @intCast(3 + 2 * life)), v);
        }
    }
    // Marked down (alive, its board too): the cached team is not used, the op fails at once.
    try world.engine(0).peerDown(1);
    var buf = [_]f32{1} ** 64;
    try testing.expectEqual(Status.epeer, try broadcastAlone(&world, 0, nextOpId(), &buf, 10_000));
}

test "runNowStatus: a successful op's slot is freed without the lock; its ticket is unknown at once, and the slots are reclaimed (3 x ops_max ops)" {
    var world = try World.init(2, .{ .mode = .shm, .config = lanesConfig(true) });
    defer world.deinit();
    const e = world.engine(0);
    var lone = [_]f32{0} ** 64;
    for (0..3 * engine_mod.ops_max) |i| {
        lone[0] = @floatFromInt(i);
        const s = Submit{ .kind = @intFromEnum(op.Collective.broadcast), .dtype = @intFromEnum(op.DType.f32), .redop = 0, .op_id = nextOpId(), .ranks_mask = 1, .root = 0, .send = @ptrCast(&lone), .recv = @ptrCast(&lone), .count = 64, .counts = null, .device = -1, .timeout_ms = 10_000 };
        const done = try e.runNowStatus(s, true);
        try testing.expectEqual(Status.ok, done.status);
        try testing.expectEqual(Status.einval, e.opStatus(done.ticket));
        try testing.expectEqual(@as(f32, @floatFromInt(i)), lone[0]);
    }
    // A failed op keeps its slot for opError() until released.
    const bad = Submit{ .kind = @intFromEnum(op.Collective.broadcast), .dtype = @intFromEnum(op.DType.f32), .redop = 0, .op_id = nextOpId(), .ranks_mask = 3, .root = 1, .send = @ptrCast(&lone), .recv = @ptrCast(&lone), .count = 64, .counts = null, .device = -1, .timeout_ms = 50 };
    const failed = try e.runNowStatus(bad, true);
    try testing.expectEqual(Status.etimeout, failed.status);
    try expectFailure(e, failed.ticket, Status.etimeout, 1, &.{"timed out"});
}

test "start: the last rank to start a small board op runs it on its own thread, complete on return; the first one runs it async" {
    var world = try World.init(3, .{ .mode = .shm });
    defer world.deinit();
    var x: [3][64]f64 = undefined;
    for (&x, 0..) |*row, r| for (row, 0..) |*v, k| {
        v.* = @floatFromInt(r * 100 + k);
    };
    const id = nextOpId();
    var args: [3]Submit = undefined;
    for (0..3) |r| args[r] = .{ .kind = @intFromEnum(op.Collective.allreduce), .dtype = @intFromEnum(op.DType.f64), .redop = @intFromEnum(op.RedOp.max), .op_id = id, .ranks_mask = 7, .root = 0, .send = @ptrCast(&x[r]), .recv = @ptrCast(&x[r]), .count = 64, .counts = null, .device = -1, .timeout_ms = 10_000 };
    const t0 = try world.engine(0).start(args[0]);
    const t1 = try world.engine(1).start(args[1]);
    // Ranks 0 and 1 started before rank 2 had: they run on workers (or finished if raced).
    std.Thread.sleep(20 * std.time.ns_per_ms);
    try testing.expectEqual(Status.ebusy, world.engine(0).opStatus(t0));
    const t2 = try world.engine(2).start(args[2]);
    try testing.expectEqual(Status.ok, world.engine(2).opStatus(t2)); // ran here, complete
    world.engine(2).release(t2);
    try testing.expectEqual(Status.ok, world.engine(0).waitTicket(t0));
    try testing.expectEqual(Status.ok, world.engine(1).waitTicket(t1));
    world.engine(0).release(t0);
    world.engine(1).release(t1);
    for (0..3) |r| for (x[r], 0..) |v, k| try testing.expectEqual(@as(f64, @floatFromInt(200 + k)), v);
}

// ---- the verbs link kind, against the test provider ($MOONRING_VERBS_LIB, set by zig build test) ----

const verbs_lib = @import("verbs/lib.zig");

fn verbsProvider() bool {
    return verbs_lib.useTestProvider();
}

test "verbs: ordered messages of many sizes, late receives and a tiny stash, 2..5 ranks (test provider)" {
    if (!verbsProvider()) return error.SkipZigTest;
    defer verbs_lib.dropTestProvider();
    const kind_verbs = @import("transport/kind_verbs.zig");
    const direct0 = kind_verbs.rendezvous_direct_bytes.load(.monotonic);
    try runMessages(.verbs, 2, .{ .messages = 20, .size_max = 200_000, .post_late = false }, 0);
    try runMessages(.verbs, 3, .{ .messages = 10, .size_max = 70_000, .post_late = false }, 0);
    try runMessages(.verbs, 5, .{ .messages = 6, .size_max = 20_000, .post_late = false }, 0);
    // Messages of 4 slots (64 KiB here) and more went zero-copy into posted receives.
    try testing.expect(kind_verbs.rendezvous_direct_bytes.load(.monotonic) > direct0);
    const staged0 = kind_verbs.rendezvous_staged_bytes.load(.monotonic);
    try runMessages(.verbs, 3, .{ .messages = 10, .size_max = 100_000, .post_late = true }, 0);
    try runMessages(.verbs, 3, .{ .messages = 6, .size_max = 300_000, .post_late = true, .one_way = true }, 32 * 1024);
    // Receives posted after the data came: the rendezvous pulled into the stash instead.
    try testing.expect(kind_verbs.rendezvous_staged_bytes.load(.monotonic) > staged0);
}

test "collectives over verbs, 2..5 ranks, roots 0 and last (test provider)" {
    if (!verbsProvider()) return error.SkipZigTest;
    defer verbs_lib.dropTestProvider();
    for (2..ranks_max + 1) |n| try runCollectives(.verbs, @intCast(n));
}

test "transport choice with verbs: auto takes verbs between host ids and shm within one; forced verbs on one host" {
    if (!verbsProvider()) return error.SkipZigTest;
    defer verbs_lib.dropTestProvider();
    const Case = struct { mode: Mode, same_host: bool, kind: enum { shm, verbs } };
    for ([_]Case{
        .{ .mode = .auto, .same_host = true, .kind = .shm },
        .{ .mode = .auto, .same_host = false, .kind = .verbs },
        .{ .mode = .verbs, .same_host = true, .kind = .verbs },
    }) |case| {
        var world = try World.init(2, .{ .mode = case.mode, .runner = dualRunner });
        defer world.deinit();
        try pingAcross(&world, case.same_host);
        for (0..2) |r| {
            const counts = world.engine(r).net.linkCounts();
            try testing.expectEqual(@as(u32, 0), counts.tcp);
            if (case.kind == .verbs) {
                try testing.expect(counts.verbs >= 1);
                try testing.expectEqual(@as(u32, 0), counts.shm);
            } else {
                try testing.expect(counts.shm >= 1);
                try testing.expectEqual(@as(u32, 0), counts.verbs);
            }
        }
    }
}

/// Two ranks exchange one message; `same_host` false gives them different host ids, so the
/// transport choice sees two hosts.
fn pingAcross(world: *World, same_host: bool) !void {
    if (!same_host) {
        try world.engine(0).setPeer(1, "127.0.0.1", world.engine(1).dataPort(), 0xaaaa);
        try world.engine(1).setPeer(0, "127.0.0.1", world.engine(0).dataPort(), 0xbbbb);
    }
    const ping = Tagged{ .kind = 0, .a = 2, .b = 0 };
    const id = nextOpId();
    try world.expectAllOk(&.{ customOp(id, 3, &ping, 10_000), customOp(id, 3, &ping, 10_000) });
}
