//! Direct collectives on the board (transport/board.zig), for groups whose ranks all share a
//! host: every rank publishes its contribution (inline in its board, or its buffer address),
//! then reads exactly what it needs from its peers' contributions itself: no link thread, no
//! message, one copy. Small contributions are read from the board; large ones with
//! process_vm_readv straight from the owner's buffer into the reader's (CMA).
//!
//! | kind           | each rank reads                                                        |
//! |----------------|------------------------------------------------------------------------|
//! | allreduce      | small: every contribution, reduced in group order (same bytes everywhere); else block i of every rank's send, reduced by rank i into its recv (phase `reduced`), then block j from rank j's recv |
//! | reduce         | root: every contribution, reduced in group order                        |
//! | broadcast      | the root's data                                                         |
//! | allgather/gather | every rank's block (gather: the root only)                            |
//! | scatter        | its block of the root's data                                            |
//! | reduce_scatter | its block of every rank's send, reduced in group order                 |
//! | alltoall       | from each rank the part meant for it (offsets from the published counts) |
//! | barrier        | nothing                                                                 |
//!
//! Every rank arrives at every peer's entry and departs it when done; an owner returns only
//! after all its readers departed, so its buffers are never read after the op.
//!
//! Eager groups (Team.eager: by default more ranks than the host has CPUs, where waiting for
//! a descheduled peer is what costs) differ in two ways (bench/NOTES.md E50). Rooted ops are
//! one-way, as Open MPI's eager sends are: broadcast / scatter, only the root publishes and
//! the others read it; reduce / gather, only the others publish and the root reads them. And
//! an owner whose contribution was copied into the board returns without waiting for its
//! readers: the publish "lingers" until the entry's next use, which waits for them then (an
//! engine slot has two entries used in turn, so that is two ops later).
//!
//! Two-rank groups run small ops through the pair lanes (board.zig, bench/NOTES.md E59), as
//! eager groups: the owner copies its contribution into its lane to the peer and returns; the
//! reader finds it in one line and marks it consumed. An owner whose lane cell is still taken
//! publishes in its entry instead; readers look in both. Which of these an op does (who reads
//! whom, what is copied, lanes or not) is board_rules.zig: every rank decides it alike.
const std = @import("std");
const common = @import("../algo/common.zig");
const op = @import("../op.zig");
const reduce = @import("../reduce.zig");
const sys = @import("../sys.zig");
const board_mod = @import("../transport/board.zig");
const arena = @import("../transport/arena.zig");
const transport = @import("../transport/transport.zig");
const rules = @import("board_rules.zig");

const Board = board_mod.Board;
const Phase = board_mod.Phase;
const Error = common.Error;
const inline_always_bytes = rules.inline_always_bytes;
const eagerCopyBytesMax = rules.eagerCopyBytesMax;
const reads = rules.reads;
const rootedOrBarrier = rules.rootedOrBarrier;

/// Op.entries[p] when rank p's contribution is in its lane cell, not an entry.
const lane_entry: u32 = board_mod.entries_max;
/// Reductions and CMA copies go through scratch in pieces of this size (L2-resident).
const piece_bytes = 64 << 10;
/// Two-rank allreduces of at least this many bytes (out of place) write the peer's copy of a
/// reduced piece with non-temporal stores: there the working set (4 x the op) no longer fits
/// the last-level cache, and skipping the read for ownership gave +15-25% at 64 MiB and +12%
/// at 32 MiB, while at 16 MiB (cache-resident) it cost 5% (NOTES E32, E67).
const nt_op_bytes_min = 32 << 20;
/// One process_vm_readv moves at most this much, so a cancel is seen between calls.
const copy_bytes_max = 4 << 20;
/// A sleeping waiter re-checks liveness, cancel and the deadline this often.
const sleep_ns = 1 * std.time.ns_per_ms;
/// A lingering publish (or an unconsumed lane cell) whose readers neither departed nor gave up
/// within this is freed anyway (a reader still reading it then fails its check, it never gets
/// wrong bytes): a reader that vanished without a trace does not hold the entry forever.
const linger_wait_ns_max = 2 * std.time.ns_per_s;
const check_what = "waiting on the board for";

comptime {
    std.debug.assert(piece_bytes % 64 == 0 and copy_bytes_max % piece_bytes == 0);
}

/// How the op reports and checks failures (the net endpoint it was opened on).
pub const Control = struct {
    context: *anyopaque,
    /// Why the op must stop now (failed elsewhere, canceled, past its deadline), or null;
    /// `peer` is the group rank waited for (for the message).
    check: *const fn (context: *anyopaque, peer: u32, what: []const u8) ?Error,
    /// Records the op's failure (the first one wins) and returns its error.
    fail: *const fn (context: *anyopaque, err: Error, peer: ?u32, message: []const u8) Error,
    /// Global rank the op's recorded failure names, or -1.
    failed_peer: *const fn (context: *anyopaque) i32,
};

/// One op's view of the board: the group's boards in group order (boards[me] is this rank's).
pub const Team = struct {
    me: u32,
    boards: []const Board,
    /// Global rank of each group rank (messages name global ranks).
    global: []const u32,
    /// This rank's entry (the engine's op slot) and this publish's serial.
    entry: u32,
    serial: u64,
    op_id: u64,
    /// Per group rank: the serial of the publish this reader last departed, per entry index
    /// (owned by the net, one array per peer).
    departed_serials: []const *[board_mod.entries_max]u64,
    control: Control,
    cma: bool,
    /// Allreduces up to this x (n - 1) bytes: every rank reduces everything (plan.Config).
    allreduce_all_bytes: u64 = 64 << 10,
    /// Rooted ops one way, inline publishes linger (plan.Config.board_eager_ranks_min).
    eager: bool = false,
    /// Through the pair lanes (usesLanes; implies eager).
    lanes: bool = false,
    /// Peers' shared buffers mapped by this rank (the net's).
    maps: *arena.PeerMaps,

    pub fn size(t: *const Team) u32 {
        return @intCast(t.boards.len);
    }
};

/// Runs `desc` over the board. n >= 2; the caller validated desc (dispatch.validate).
pub fn run(t: *Team, desc: common.OpDesc, scratch: std.mem.Allocator) Error!void {
    const n = t.size();
    std.debug.assert(n >= 2 and t.me < n and t.global.len == n and t.departed_serials.len == n);
    std.debug.assert(n <= board_mod.counts_max);
    std.debug.assert(desc.kind.board()); // the table's "board" (plan.boardRuns)
    std.debug.assert(t.entry < board_mod.entries_max);
    std.debug.assert(!t.lanes or (t.eager and n == 2));
    var entries: [board_mod.counts_max]u32 = undefined;
    var serials: [board_mod.counts_max]u64 = undefined;
    var mapped: [board_mod.counts_max][2]?arena.PeerMaps.Mapped = undefined;
    @memset(mapped[0..n], .{ null, null });
    var state = Op{ .t = t, .desc = desc, .scratch = scratch, .entries = entries[0..n], .serials = serials[0..n], .mapped = mapped[0..n] };
    return state.runPublished();
}

const Op = struct {
    t: *Team,
    desc: common.OpDesc,
    scratch: std.mem.Allocator,
    /// Entry index and serial of each peer's publish (valid after arrive()).
    entries: []u32,
    serials: []u64,
    published: bool = false,
    /// contribution(): copy it into the board (else peers read it where it is).
    publish_inline: bool = false,
    /// When this rank published (aborted publishes from before are stale).
    start_ns: u64 = 0,
    /// Peers' shared send / recv buffers mapped during this op (released at its end); the
    /// group's part of an array of the caller (no 3 KiB reset per op).
    mapped: [][2]?arena.PeerMaps.Mapped,
    snapshot: ?[]u8 = null,
    /// Where the peer's lane publish starts in its contribution (two ranks: one peer).
    lane_part_offset: u64 = 0,

    fn es(o: *const Op) u64 {
        return o.desc.elementBytes();
    }

    fn own(o: *const Op) Board {
        return o.t.boards[o.t.me];
    }

    fn runPublished(o: *Op) Error!void {
        defer if (o.snapshot) |s| o.scratch.free(s);
        defer for (o.mapped) |pair| for (pair) |maybe| if (maybe) |m| o.t.maps.release(m);
        const t = o.t;
        const n = t.size();
        const send = try o.contribution();
        if (o.readers() > 0) try o.publish(send);
        // Before the snapshot is freed (the defers above run after this): peers stop reading.
        errdefer o.abort();
        for (0..n) |p| if (p != t.me and o.readsFrom(@intCast(p))) try o.arrive(@intCast(p));
        try o.body(send);
        for (0..n) |p| if (p != t.me and o.readsFrom(@intCast(p))) try o.departFrom(@intCast(p));
        if (!o.published) return;
        // Copied into the board and nothing else of ours is read: readers need only the
        // entry, which stays until its next use (publish() waits for them there). Not a
        // barrier: its ranks leave together only if each waits for the others to read it
        // (lingering barriers let the last rank in run ahead by a wake-up: E53).
        if (o.t.eager and o.publish_inline and !o.peersReadMore() and o.desc.kind != .barrier) {
            o.published = false;
            return;
        }
        // Our buffers stay valid until every reader is done with them.
        try o.waitFor(DepartedAll{ .o = o }, null, "the other ranks to finish reading");
        o.own().free(t.entry);
        o.published = false;
    }

    /// Whether this rank reads group rank p's entry: rooted ops move data one way only.
    fn readsFrom(o: *const Op, p: u32) bool {
        if (!o.t.eager) return true;
        return reads(o.desc.kind, o.t.me, o.desc.root, p, o.pairReduce(), true);
    }

    /// How many ranks read this rank's entry (0: it publishes nothing).
    fn readers(o: *const Op) u32 {
        const n = o.t.size();
        if (!o.t.eager) return n - 1;
        const pair_reduce = o.pairReduce();
        var count: u32 = 0;
        for (0..n) |q| {
            if (q != o.t.me and reads(o.desc.kind, @intCast(q), o.desc.root, o.t.me, pair_reduce, true)) count += 1;
        }
        return count;
    }

    /// Two-rank reduce in halves (reducePair): both ranks read each other.
    fn pairReduce(o: *const Op) bool {
        return o.desc.kind == .reduce and o.t.size() == 2 and o.desc.count * o.es() > allreduceAllBytesMax(o.t);
    }

    /// Peers read more of ours than the published contribution: our recv or a later phase
    /// (the allreduce in phases, the two-rank reduce).
    fn peersReadMore(o: *const Op) bool {
        const c = o.desc.count * o.es();
        return (o.desc.kind == .allreduce and c > allreduceAllBytesMax(o.t)) or o.pairReduce();
    }

    /// Marks this rank's entry aborted (peers waiting on it fail at once).
    fn abort(o: *Op) void {
        if (!o.published) return;
        // Peers that wait on us fail naming the rank that made us give up, not us (E23).
        o.own().abort(o.t.entry, o.t.control.failed_peer(o.t.control.context));
        o.ringPeers();
    }

    /// The bytes this rank offers its peers (its send buffer, or a snapshot when its own
    /// writes to recv could change them while peers read).
    fn contribution(o: *Op) Error![]const u8 {
        const d = o.desc;
        const n = o.t.size();
        const me = o.t.me;
        const es_ = o.es();
        const c = d.count * es_;
        const bytes, const recv_all = op.bufferBytes(d.kind, es_, d.count, n, d.root == me, d.send_counts, d.recv_counts);
        const send = common.bytesPtr(d.send, bytes);
        // Copied into the board when it fits, unless it lies in a shared buffer (then peers read
        // it in place: copying in cost ~12 us per 64 KiB here, every line stolen back from the
        // reader's cache, E20); parts up to 1 KiB always (a mapping lookup costs more, E56).
        const fits = bytes <= board_mod.inlineBytes(o.t.entry);
        const shared = bytes > inline_always_bytes and arena.locate(@intFromPtr(send.ptr), bytes) != null;
        // Eager rooted ops copy shared parts too (up to eagerCopyBytesMax): the owner then
        // returns without waiting for its descheduled readers (E55).
        const copy_anyway = o.t.eager and bytes <= eagerCopyBytesMax(d.kind);
        o.publish_inline = fits and (!shared or copy_anyway);
        if (o.publish_inline) return send;
        // The part of recv whose writes may change what peers read of our send.
        const recv_bytes: u64 = switch (d.kind) {
            .allgather, .scatter, .reduce_scatter, .alltoall => recv_all,
            // Every rank reduces everything: our recv may be what peers read (in place).
            .allreduce => if (c <= allreduceAllBytesMax(o.t)) c else 0,
            else => 0, // allreduce in phases, reduce / broadcast / gather: nothing read is written
        };
        const recv = common.bytesPtr(d.recv, recv_bytes);
        const own_block_start: u64 = switch (d.kind) {
            .allgather => me * c,
            .scatter => me * c,
            else => std.math.maxInt(u64),
        };
        const writes_only_own_block = switch (d.kind) {
            .allgather => @intFromPtr(send.ptr) == @intFromPtr(recv.ptr) + own_block_start,
            .scatter => @intFromPtr(recv.ptr) == @intFromPtr(send.ptr) + own_block_start,
            .reduce_scatter => @intFromPtr(recv.ptr) == @intFromPtr(send.ptr) + me * c,
            else => false,
        };
        if (!common.overlaps(send, recv) or writes_only_own_block) return send;
        if (fits) {
            o.publish_inline = true; // the board's copy is the snapshot
            return send;
        }
        const copy = try o.scratch.alloc(u8, @intCast(bytes));
        @memcpy(copy, send);
        o.snapshot = copy;
        return copy;
    }

    fn publish(o: *Op, send: []const u8) Error!void {
        const t = o.t;
        const b = o.own();
        if (t.lanes) {
            std.debug.assert(t.size() == 2);
            const peer: u32 = 1 - t.me;
            const part = rules.lanePart(o.desc.kind, peer, o.desc.count * o.es(), o.es(), o.desc.send_counts, send.len);
            std.debug.assert(part.len <= board_mod.lane_bytes_max and part.offset + part.len <= send.len);
            // Op id 0 marks an unused cell: that op (tests only) uses its entry; so does a
            // part that starts past what the cell can say (an alltoall's own block > 4 GiB).
            const in_lane = t.op_id != 0 and part.offset <= std.math.maxInt(u32);
            if (in_lane and b.lanePublish(t.global[peer], t.op_id, t.serial, send[@intCast(part.offset)..][0..@intCast(part.len)], @intCast(part.offset), t.boards[peer], linger_wait_ns_max)) return o.ringPeers();
        }
        const e = b.entry(t.entry);
        // An aborted publish of an earlier op in this slot stays until the slot is reused.
        if (e.phase == Phase.aborted) b.free(t.entry);
        // Also when this op is not eager: an earlier one in this slot (a larger group) was.
        if (b.inUse(t.entry)) try o.settleLinger();
        o.replaceEarlierAttempt();
        std.debug.assert(b.phaseOf(t.entry) == Phase.free);
        e.readers = o.readers();
        e.recv_addr = @intFromPtr(o.desc.recv);
        if (o.publish_inline) {
            std.debug.assert(send.len <= board_mod.inlineBytes(t.entry));
            e.inline_data = 1;
            e.send_addr = 0;
            @memcpy(b.data(t.entry)[0..send.len], send);
        } else {
            e.inline_data = 0;
            e.send_addr = @intFromPtr(send.ptr);
        }
        e.send_bytes = send.len;
        e.send_serial = 0;
        e.recv_serial = 0;
        e.wrote_peer_recv = 0;
        if (!o.publish_inline) if (arena.locate(e.send_addr, send.len)) |loc| {
            e.send_serial = loc.serial;
            e.send_offset = loc.offset;
        };
        const writes_recv_here = o.desc.kind == .allreduce or (o.desc.kind == .reduce and o.t.me == o.desc.root);
        if (writes_recv_here) if (arena.locate(e.recv_addr, send.len)) |loc| {
            e.recv_serial = loc.serial;
            e.recv_offset = loc.offset;
        };
        if (o.desc.kind == .alltoall) @memcpy(e.send_counts[0..o.desc.send_counts.len], o.desc.send_counts);
        o.start_ns = sys.monotonicNs();
        b.publish(t.entry, t.op_id, t.serial);
        o.published = true;
        o.ringPeers();
    }

    /// The entry still holds an earlier op's lingering publish: wait until its readers
    /// departed, gave up or died (bounded by linger_wait_ns_max), then free it.
    fn settleLinger(o: *Op) Error!void {
        const b = o.own();
        const index = o.t.entry;
        const lingering = LingerDone{ .o = o, .op_id = @atomicLoad(u64, &b.header.ids[index], .acquire), .give_up_ns = sys.monotonicNs() + linger_wait_ns_max };
        try o.waitFor(lingering, null, "the other ranks to finish reading an earlier op");
        if (b.departed(index) < b.entry(index).readers) {
            sys.logLine("rank {d}: op {d}: freed board entry {d} of op {d} that {d} of {d} reader(s) never finished reading", .{ o.t.global[o.t.me], o.t.op_id, index, lingering.op_id, b.entry(index).readers - b.departed(index), b.entry(index).readers });
        }
        b.free(index);
    }

    /// An op id re-issued after a failure: a publish of the earlier attempt that lingers in
    /// another entry must not be found by this attempt's readers (admission runs one op per
    /// id at a time, so an entry of ours with this id is such a leftover).
    fn replaceEarlierAttempt(o: *Op) void {
        const b = o.own();
        for (0..b.idsHigh()) |i| {
            if (i == o.t.entry or @atomicLoad(u64, &b.header.ids[i], .monotonic) != o.t.op_id) continue;
            if (b.inUse(@intCast(i))) b.free(@intCast(i));
        }
    }

    fn ringPeers(o: *const Op) void {
        for (o.t.boards, 0..) |b, p| if (p != o.t.me) b.ring();
    }

    fn arrive(o: *Op, p: u32) Error!void {
        const Found = struct {
            o: *Op,
            p: u32,
            const yield_soon = true;
            fn ready(self: @This()) Readiness {
                const t = self.o.t;
                const board = t.boards[self.p];
                if (t.lanes) if (board.laneHolds(t.global[t.me], t.op_id)) |serial| {
                    self.o.entries[self.p] = lane_entry;
                    self.o.serials[self.p] = serial;
                    self.o.lane_part_offset = board.lanePartOffset(t.global[t.me], t.op_id);
                    return .ready;
                };
                const found = board.find(t.op_id, t.departed_serials[self.p], self.o.start_ns) orelse return .not_yet;
                // Set before .aborted too: failAborted reads the cause from this entry (it read
                // a stale index, so waiters named the wrong rank and a survivor was removed).
                self.o.entries[self.p] = found.index;
                self.o.serials[self.p] = found.serial;
                if (board.phaseOf(found.index) == Phase.aborted) return .aborted;
                return .ready;
            }
        };
        try o.waitFor(Found{ .o = o, .p = p }, p, "to join the op");
    }

    /// Done with p's entry. Fails when p replaced the publish meanwhile (its op id re-issued,
    /// or our read outlasted linger_wait_ns_max): what we read may be mixed.
    fn departFrom(o: *Op, p: u32) Error!void {
        const t = o.t;
        const b = t.boards[p];
        const index = o.entries[p];
        const serial = o.serials[p];
        if (index == lane_entry) {
            if (!b.laneStill(t.global[t.me], t.op_id, serial)) {
                return o.failPeer(error.Protocol, p, "replaced its contribution", "to be read (it re-issued the op id)");
            }
            // No ring: an owner never waits for its lane to be consumed.
            return b.laneConsume(t.global[t.me], t.op_id, serial);
        }
        // Only an eager owner may replace a publish before its readers departed.
        if (t.eager and (@atomicLoad(u64, &b.entry(index).serial, .acquire) != serial or b.phaseOf(index) == Phase.free)) {
            return o.failPeer(error.Protocol, p, "replaced its contribution", "to be read (it re-issued the op id, or this rank read for too long)");
        }
        t.departed_serials[p][index] = serial;
        b.depart(index, t.me);
        b.ring();
    }

    // ---- waiting ----

    const Readiness = enum { not_yet, ready, aborted };

    const DepartedAll = struct {
        o: *Op,
        fn ready(self: @This()) Readiness {
            const t = self.o.t;
            const board = t.boards[t.me];
            return if (board.departed(t.entry) >= board.entry(t.entry).readers) .ready else .not_yet;
        }
    };

    const LingerDone = struct {
        o: *Op,
        op_id: u64,
        give_up_ns: u64,
        fn ready(self: @This()) Readiness {
            const t = self.o.t;
            const b = t.boards[t.me];
            const wanted = b.entry(t.entry).readers;
            var done = b.departed(t.entry);
            if (done >= wanted) return .ready;
            // Peers of this op that gave up on that one, or died, will not depart it.
            for (t.boards, 0..) |peer, p| {
                if (p != t.me and (peer.gaveUp(self.op_id) or !peer.aliveFlag())) done += 1;
            }
            if (done >= wanted or sys.monotonicNs() >= self.give_up_ns) return .ready;
            return .not_yet;
        }
    };

    const PhaseAtLeast = struct {
        o: *Op,
        p: u32,
        phase: u32,
        fn ready(self: @This()) Readiness {
            const phase = self.o.t.boards[self.p].phaseOf(self.o.entries[self.p]);
            if (phase == Phase.aborted) return .aborted;
            return if (phase >= self.phase) .ready else .not_yet;
        }
    };

    /// Spins, then sleeps on this rank's doorbell, until `cond` is ready. Fails when the
    /// awaited peer (any peer when null) died or aborted, on cancel, or past the deadline.
    fn waitFor(o: *Op, cond: anytype, peer: ?u32, what: []const u8) Error!void {
        const t = o.t;
        const Cond = @TypeOf(cond);
        const Wrap = struct {
            fn readyNow(c: Cond) bool {
                return c.ready() != .not_yet;
            }
        };
        switch (cond.ready()) {
            .ready => return,
            else => {}, // handled in the loop
        }
        // More ranks than CPUs: the rank we wait for may need this CPU, so yield at every
        // check instead of every 16th (E22).
        const oversubscribed = t.size() > board_mod.cpuCount();
        // Read at the first check, not here: most waits end within it, and a clock read
        // costs ~22 ns on a KVM guest (E58).
        var spin_until: u64 = 0;
        var spins: u32 = 0;
        while (true) : (spins +%= 1) {
            switch (cond.ready()) {
                .ready => return,
                .aborted => return o.failAborted(peer.?, what),
                .not_yet => {},
            }
            // Waiting for a peer to join an op every rank needs (not rooted, not the barrier,
            // whose ranks should leave together) while oversubscribed: every rank must run
            // before anyone finishes, so hand the CPU over soon (E54).
            const yield_soon = oversubscribed and @hasDecl(Cond, "yield_soon") and !rootedOrBarrier(o.desc.kind);
            const check_every: u32 = if (yield_soon) 4 else 64;
            if (spins % check_every != check_every - 1) {
                std.atomic.spinLoopHint();
                continue;
            }
            const now = sys.monotonicNs();
            if (spin_until == 0) spin_until = now + board_mod.spinNs();
            if (now < spin_until) {
                if (oversubscribed or spins % 1024 == 1023) sys.yieldCpu();
                continue;
            }
            if (peer) |p| {
                if (!t.boards[p].ownerAlive()) return o.failPeer(error.PeerFailed, p, "died", what);
                if (t.control.check(t.control.context, p, check_what)) |err| return err;
            } else {
                for (t.boards, 0..) |b, p| {
                    if (p != t.me and !b.ownerAlive()) return o.failPeer(error.PeerFailed, @intCast(p), "died", what);
                }
                if (t.control.check(t.control.context, if (t.me == 0) 1 else 0, check_what)) |err| return err;
            }
            o.own().sleep(cond, Wrap.readyNow, sleep_ns);
        }
    }

    /// Rank p gave up on the op: fail naming what made it give up when that is a rank of the
    /// group (the one that died), else p.
    fn failAborted(o: *Op, p: u32, what: []const u8) Error {
        const t = o.t;
        std.debug.assert(o.entries[p] < board_mod.entries_max); // lane cells never abort
        const e = t.boards[p].entry(o.entries[p]);
        const cause = @atomicLoad(i32, &e.abort_cause, .acquire);
        for (t.global, 0..) |g, q| {
            if (cause < 0 or g != cause or q == t.me) continue;
            var buf: [160]u8 = undefined;
            const text = std.fmt.bufPrint(&buf, "rank {d} gave up on the op because rank {d} failed (board, waiting for rank {d} {s})", .{ t.global[p], g, t.global[p], what }) catch buf[0..];
            return t.control.fail(t.control.context, error.PeerFailed, @intCast(q), text);
        }
        return o.failPeer(error.PeerFailed, p, "gave up on the op", what);
    }

    fn failPeer(o: *Op, err: Error, p: u32, why: []const u8, what: []const u8) Error {
        var buf: [160]u8 = undefined;
        const text = std.fmt.bufPrint(&buf, "rank {d} {s} while waiting for it {s} (board)", .{ o.t.global[p], why, what }) catch buf[0..];
        return o.t.control.fail(o.t.control.context, err, p, text);
    }

    // ---- reading contributions ----

    /// Bytes [offset, offset+len) of rank p's contribution: a slice of the board or of our own
    /// send, else read with CMA into `buf` (len bytes at least).
    fn source(o: *Op, send: []const u8, p: u32, offset: u64, len: u64, buf: []u8) Error![]const u8 {
        if (len == 0) return &.{};
        if (p == o.t.me) return send[@intCast(offset)..][0..@intCast(len)];
        const b = o.t.boards[p];
        const index = o.entries[p];
        // A lane holds the part [lane_part_offset, + its length) of p's contribution.
        const data_start = if (index == lane_entry) o.lane_part_offset else 0;
        const published_bytes = if (index == lane_entry) b.laneData(o.t.global[o.t.me], o.t.op_id).len else b.entry(index).send_bytes;
        if (offset < data_start or offset + len > data_start + published_bytes) {
            return o.failPeer(error.Protocol, p, "published fewer bytes than the op needs", "(sizes differ between ranks)");
        }
        if (index == lane_entry) return b.laneData(o.t.global[o.t.me], o.t.op_id)[@intCast(offset - data_start)..][0..@intCast(len)];
        const e = b.entry(index);
        if (e.inline_data == 1) return b.data(index)[@intCast(offset)..][0..@intCast(len)];
        if (o.peerShared(p, .send)) |shared| return shared[@intCast(offset)..][0..@intCast(len)];
        try o.copyFrom(p, e.send_addr + offset, buf[0..@intCast(len)]);
        return buf[0..@intCast(len)];
    }

    /// Rank p's send (its contribution) or recv buffer, mapped, when it is a shared buffer
    /// (arena.zig); null: read it with CMA.
    fn peerShared(o: *Op, p: u32, which: enum { send, recv }) ?[]const u8 {
        if (o.entries[p] == lane_entry) return null;
        const e = o.t.boards[p].entry(o.entries[p]);
        const serial, const offset, const bytes = switch (which) {
            .send => .{ e.send_serial, e.send_offset, e.send_bytes },
            .recv => .{ e.recv_serial, e.recv_offset, e.send_bytes },
        };
        if (serial == 0) return null;
        const slot = &o.mapped[p][@intFromEnum(which)];
        if (slot.* == null) slot.* = o.t.maps.acquire(o.t.boards[p].pid(), serial) orelse return null;
        const all = slot.*.?.bytes;
        if (offset + bytes > all.len) return null;
        return all[@intCast(offset)..][0..@intCast(bytes)];
    }

    /// CMA: `dst.len` bytes at `addr` in rank p's process.
    fn copyFrom(o: *Op, p: u32, addr: u64, dst: []u8) Error!void {
        const t = o.t;
        var done: usize = 0;
        while (done < dst.len) {
            const len = @min(dst.len - done, copy_bytes_max);
            sys.processRead(t.boards[p].pid(), dst[done..][0..len], addr + done) catch |err| {
                var buf: [160]u8 = undefined;
                const text = std.fmt.bufPrint(&buf, "reading rank {d}'s buffer with process_vm_readv failed ({s}; MOONRING_BOARD_CMA=0 turns it off)", .{ t.global[p], @errorName(err) }) catch buf[0..];
                return t.control.fail(t.control.context, if (err == error.NoProcess) error.PeerFailed else error.Protocol, p, text);
            };
            done += len;
            if (done < dst.len) if (t.control.check(t.control.context, p, "copying from")) |err| return err;
        }
    }

    /// Copies bytes [offset, offset+dst.len) of rank p's contribution into dst.
    fn copyPart(o: *Op, send: []const u8, p: u32, offset: u64, dst: []u8) Error!void {
        if (dst.len == 0) return;
        // A CMA read lands in dst itself (source() then returns dst: the move is a no-op).
        common.move(dst, try o.source(send, p, offset, dst.len, dst));
    }

    /// dst = part [offset, offset+dst.len) reduced over every rank's contribution, in group
    /// order (dst may alias our own send).
    fn reduceAll(o: *Op, send: []const u8, offset: u64, dst: []u8) Error!void {
        const d = o.desc;
        const n = o.t.size();
        if (dst.len == 0) return;
        if (o.directSources(send, dst)) {
            // Every contribution is addressable (ours, inline, a mapped shared buffer): reduce
            // straight into dst, no staging copies (E20). Piecewise, for the cache.
            var done: u64 = 0;
            while (done < dst.len) {
                const len: u64 = @min(dst.len - done, piece_bytes);
                const out = dst[@intCast(done)..][0..@intCast(len)];
                const s0 = try o.source(send, 0, offset + done, len, out);
                const s1 = try o.source(send, 1, offset + done, len, out);
                reduce.reduceTo(d.dtype, d.redop, out, s0, s1);
                for (2..n) |p| reduce.reduceTo(d.dtype, d.redop, out, out, try o.source(send, @intCast(p), offset + done, len, out));
                if (d.redop == .avg) reduce.finalizeAvg(d.dtype, out, n);
                done += len;
            }
            return;
        }
        const acc = try o.scratch.alloc(u8, @min(dst.len, piece_bytes));
        defer o.scratch.free(acc);
        const tmp = try o.scratch.alloc(u8, @min(dst.len, piece_bytes));
        defer o.scratch.free(tmp);
        var done: u64 = 0;
        while (done < dst.len) {
            const len: u64 = @min(dst.len - done, piece_bytes);
            const a = acc[0..@intCast(len)];
            const first = try o.source(send, 0, offset + done, len, a);
            if (first.ptr != a.ptr) @memcpy(a, first);
            for (1..n) |p| {
                const src = try o.source(send, @intCast(p), offset + done, len, tmp);
                reduce.reduceTo(d.dtype, d.redop, a, a, src);
            }
            if (d.redop == .avg) reduce.finalizeAvg(d.dtype, a, n);
            @memcpy(dst[@intCast(done)..][0..@intCast(len)], a);
            done += len;
        }
    }

    /// With two ranks: the peer's recv buffer, mapped writable, when it is a shared buffer
    /// (the phased allreduce then writes its reduced block there too); else null.
    fn pairRecv(o: *Op) ?[]u8 {
        if (o.t.size() != 2) return null;
        const shared = o.peerShared(1 - o.t.me, .recv) orelse return null;
        // PeerMaps maps peers' buffers read-write (sys.mapShared).
        return @constCast(shared);
    }

    /// dst = the reduction of part [offset, offset+dst.len), written to `also` as well, piece
    /// by piece so the second write reads from cache: per rank the allreduce then reads S
    /// and writes S, the bound's traffic, instead of reading 1.5 S (E27). In place is safe:
    /// each piece of a source is read before the same piece of `also` (which may be that
    /// source) is written, and nobody else reads it.
    fn reduceToBoth(o: *Op, send: []const u8, offset: u64, dst: []u8, also: []u8) Error!void {
        std.debug.assert(dst.len == also.len and o.t.size() == 2);
        // In place the peer's recv is the peer's send we just read (in our cache): ordinary
        // stores are cheaper there, and below nt_op_bytes_min everything is cache-resident.
        const peer_send = o.peerShared(1 - o.t.me, .send);
        const in_place = peer_send == null or common.overlaps(peer_send.?, also);
        const non_temporal = !in_place and o.desc.count * o.es() >= nt_op_bytes_min;
        var done: u64 = 0;
        while (done < dst.len) {
            const len: u64 = @min(dst.len - done, piece_bytes);
            const piece = dst[@intCast(done)..][0..@intCast(len)];
            const out = also[@intCast(done)..][0..@intCast(len)];
            try o.reduceAll(send, offset + done, piece);
            if (non_temporal) common.copyNonTemporal(out, piece) else @memcpy(out, piece);
            done += len;
        }
    }

    /// Reduce of two ranks: each reduces half; the other rank writes its half straight into the
    /// root's recv when it can map it (else the root reduces it too), so both ranks' memory
    /// bandwidth works (E28). In place is safe as in reduceToBoth.
    fn reducePair(o: *Op, send: []const u8) Error!void {
        const d = o.desc;
        const t = o.t;
        const es_ = o.es();
        const root = d.root;
        const other: u32 = 1 - root;
        const half = common.block(d.count, 2, other);
        const half_offset = half.start * es_;
        const half_bytes = half.len * es_;
        if (t.me == other) {
            const root_recv = o.pairRecv();
            if (root_recv) |r| try o.reduceAll(send, half_offset, r[@intCast(half_offset)..][0..@intCast(half_bytes)]);
            @atomicStore(u32, &o.own().entry(t.entry).wrote_peer_recv, @intFromBool(root_recv != null), .release);
            o.own().setPhase(t.entry, Phase.reduced);
            o.ringPeers();
            return;
        }
        const recv = common.bytesPtrMut(d.recv, d.count * es_);
        const own_half = common.block(d.count, 2, root);
        try o.reduceAll(send, own_half.start * es_, recv[@intCast(own_half.start * es_)..][0..@intCast(own_half.len * es_)]);
        try o.waitFor(PhaseAtLeast{ .o = o, .p = other, .phase = Phase.reduced }, other, "to reduce its half");
        if (@atomicLoad(u32, &t.boards[other].entry(o.entries[other]).wrote_peer_recv, .acquire) == 1) return;
        try o.reduceAll(send, half_offset, recv[@intCast(half_offset)..][0..@intCast(half_bytes)]);
    }

    /// No contribution needs a CMA read, and writing dst can't change a source before it is
    /// read: dst may be our own send only with two ranks (dst = s0 op s1 element by element).
    fn directSources(o: *Op, send: []const u8, dst: []const u8) bool {
        const t = o.t;
        if (t.size() > 2 and common.overlaps(send, dst)) return false;
        for (0..t.size()) |pi| {
            const p: u32 = @intCast(pi);
            if (p == t.me or o.entries[p] == lane_entry or t.boards[p].entry(o.entries[p]).inline_data == 1) continue;
            if (o.peerShared(p, .send) == null) return false;
        }
        return true;
    }

    // ---- the collectives ----

    /// Where rank p's part for us starts in p's send (bytes): p's counts before ours, from
    /// its entry; a lane holds just that part (board_rules.lanePart).
    fn alltoallPartOffset(o: *Op, p: u32) Error!u64 {
        const d = o.desc;
        const me = o.t.me;
        const es_ = o.es();
        if (p != me and o.entries[p] == lane_entry) {
            const published = o.t.boards[p].laneData(o.t.global[me], o.t.op_id).len;
            if (published == d.recv_counts[p] * es_) return o.lane_part_offset;
        } else {
            const counts: []const u64 = if (p == me) d.send_counts else o.t.boards[p].entry(o.entries[p]).send_counts[0..o.t.size()];
            if (counts[me] == d.recv_counts[p]) return op.countsTotal(counts[0..me]) * es_;
        }
        return o.failPeer(error.Protocol, p, "sends a different count than this rank receives", "(alltoall counts differ)");
    }

    fn body(o: *Op, send: []const u8) Error!void {
        const d = o.desc;
        const t = o.t;
        const n = t.size();
        const me = t.me;
        const es_ = o.es();
        const c = d.count * es_;
        switch (d.kind) {
            .allreduce => {
                const recv = common.bytesPtrMut(d.recv, c);
                if (c <= allreduceAllBytesMax(t)) return o.reduceAll(send, 0, recv);
                // Block me reduced here, the others read from their reducers' recv.
                const mine = common.block(d.count, n, me);
                const mine_bytes = recv[@intCast(mine.start * es_)..][0..@intCast(mine.len * es_)];
                // Two ranks, the peer's recv mapped: the reduced block goes to both recvs while
                // it is in cache, and the peer copies nothing afterwards (E27).
                const pair_recv = o.pairRecv();
                if (pair_recv) |peer_recv| {
                    try o.reduceToBoth(send, mine.start * es_, mine_bytes, peer_recv[@intCast(mine.start * es_)..][0..mine_bytes.len]);
                } else try o.reduceAll(send, mine.start * es_, mine_bytes);
                @atomicStore(u32, &o.own().entry(t.entry).wrote_peer_recv, @intFromBool(pair_recv != null), .release);
                o.own().setPhase(t.entry, Phase.reduced);
                o.ringPeers();
                for (1..n) |k| {
                    const p: u32 = @intCast((me + k) % n);
                    // Reduced also means p read our send (which may be our recv) for its block.
                    try o.waitFor(PhaseAtLeast{ .o = o, .p = p, .phase = Phase.reduced }, p, "to reduce its block");
                    if (@atomicLoad(u32, &t.boards[p].entry(o.entries[p]).wrote_peer_recv, .acquire) == 1) continue;
                    const blk = common.block(d.count, n, p);
                    const dst = recv[@intCast(blk.start * es_)..][0..@intCast(blk.len * es_)];
                    if (o.peerShared(p, .recv)) |shared| {
                        @memcpy(dst, shared[@intCast(blk.start * es_)..][0..dst.len]);
                        continue;
                    }
                    try o.copyFrom(p, t.boards[p].entry(o.entries[p]).recv_addr + blk.start * es_, dst);
                }
            },
            .reduce => if (n == 2 and c > allreduceAllBytesMax(t)) {
                try o.reducePair(send);
            } else if (me == d.root) try o.reduceAll(send, 0, common.bytesPtrMut(d.recv, c)),
            .broadcast => {
                const recv = common.bytesPtrMut(d.recv, c);
                if (me == d.root) {
                    common.move(recv, send);
                } else try o.copyPart(send, d.root, 0, recv);
            },
            .allgather, .gather => if (d.kind == .allgather or me == d.root) {
                const recv = common.bytesPtrMut(d.recv, c * n);
                for (0..n) |k| {
                    const p: u32 = @intCast((me + k) % n);
                    try o.copyPart(send, p, 0, recv[p * c ..][0..@intCast(c)]);
                }
            },
            .scatter => try o.copyPart(send, d.root, me * c, common.bytesPtrMut(d.recv, c)),
            .reduce_scatter => try o.reduceAll(send, me * c, common.bytesPtrMut(d.recv, c)),
            .alltoall => {
                const recv = common.bytesPtrMut(d.recv, op.countsTotal(d.recv_counts) * es_);
                var recv_offset: u64 = 0;
                for (0..n) |pi| {
                    const p: u32 = @intCast(pi);
                    const len = d.recv_counts[p] * es_;
                    const send_offset = try o.alltoallPartOffset(p);
                    try o.copyPart(send, p, send_offset, recv[@intCast(recv_offset)..][0..@intCast(len)]);
                    recv_offset += len;
                }
            },
            .barrier => {},
            else => unreachable, // plan.boardRuns: only the collectives the table marks "board"
        }
    }
};

/// board_rules.allreduceAllBytesMax for this team.
fn allreduceAllBytesMax(t: *const Team) u64 {
    return rules.allreduceAllBytesMax(t.size(), t.allreduce_all_bytes);
}
