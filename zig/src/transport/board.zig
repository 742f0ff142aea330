//! The board: one shared-memory segment per rank through which the ranks of one host run whole
//! collectives without the links (backend/board_direct.zig). Why: a message through an shm ring
//! crosses four threads (op thread -> peer link thread -> peer op thread -> JS), each a futex
//! wake; on the board the thread that runs an op publishes its part and reads its peers'
//! parts itself, spinning briefly, so a small collective costs a few cache-line transfers
//! (bench/NOTES.md E15).
//!
//! Layout: a header (owner pid, liveness, the doorbell futex peers ring, the op id of each
//! entry) and `entries_max` entries, two per engine op slot. The owner writes an entry (its
//! contribution inline, or its buffer addresses for peers to read with process_vm_readv),
//! then its op id; readers find the entry by op id, read, and "depart" (count up). The owner
//! frees an entry only after every reader departed (or gave up), so an entry never changes
//! under a reader; an inline publish may outlive its op ("linger", board_direct.zig) and is
//! freed when the entry is next used. Readers still check, after reading, that the publish they
//! read is the one they found (an op id re-issued after a failure replaces a lingering one).
const std = @import("std");
const sys = @import("../sys.zig");

/// Two per engine op slot (engine.ops_max), used in turn: an inline publish that lingers
/// after its op (board_direct.zig) is settled only two ops later in that slot, when its
/// readers are long done, not at the start of the next op.
pub const entries_max = 256;
/// A contribution up to its entry's capacity is copied into the board; larger ones are read
/// from the owner's buffer with process_vm_readv (CMA). The first entries (the engine hands
/// out the lowest free slot, so an op that runs alone uses entry 0) hold more.
pub const inline_bytes_max = 32 << 10;
pub const inline_bytes_large = 256 << 10;
pub const entries_large = 16;
pub const counts_max = 64;
/// Op ids this rank's recent failed ops had (a ring): an owner whose inline publish lingers
/// stops waiting for a reader that gave up on that op.
pub const gave_up_max = 64;
const magic: u64 = 0x4d52_424f_4152_4403; // "MRBOARD" v3 (pair lanes carry a part's offset)
const header_bytes = 4096 * 2;
const entry_bytes = 1024;

/// Phase of an entry. A reader waits for the phase it needs; `aborted` fails it.
pub const Phase = struct {
    pub const free: u32 = 0;
    pub const published: u32 = 1;
    /// allreduce: the owner's reduced block is in its recv buffer.
    pub const reduced: u32 = 2;
    pub const aborted: u32 = 0xffff_ffff;
};

const Header = extern struct {
    magic: u64,
    owner_rank: u32,
    pid: i32,
    incarnation: u64,
    segment_bytes: u64,
    /// 1 + the highest entry index ever published: readers scan the ids below it only (an
    /// engine that runs one op at a time uses entries 0 and 1). In this read-mostly line.
    ids_high: u32 = 0,
    pad0: [28]u8 = [_]u8{0} ** 28,
    /// 1 while the owner's engine lives (0 after a clean shutdown).
    alive: u32 align(64) = 0,
    pad1: [60]u8 = [_]u8{0} ** 60,
    /// Rung (incremented, then woken if someone sleeps) by whoever changed something the
    /// owner's threads may wait for.
    doorbell: u32 align(64) = 0,
    sleepers: u32 = 0,
    pad2: [56]u8 = [_]u8{0} ** 56,
    /// The op id of each published entry (valid only while the entry's phase is not free).
    ids: [entries_max]u64 align(64) = [_]u64{0} ** entries_max,
    /// Ring of the op ids of this rank's failed ops (recordGaveUp), 0 = empty.
    gave_up_next: u32 align(64) = 0,
    gave_up: [gave_up_max]u64 = [_]u64{0} ** gave_up_max,
};

pub const Entry = extern struct {
    // Owner-written line.
    phase: u32 align(64) = Phase.free,
    /// 1: the contribution is in the board's data area; 0: read it with CMA at send_addr.
    inline_data: u32 = 0,
    /// Changes on every publish, so a reader never mistakes an old publish for a new one.
    serial: u64 = 0,
    send_bytes: u64 = 0,
    send_addr: u64 = 0,
    recv_addr: u64 = 0,
    /// How many ranks read this publish (board_direct: rooted ops may be one-way).
    readers: u32 = 0,
    /// When the owner gave up (monotonic ns; one clock for the host).
    abort_ns: u64 = 0,
    /// Global rank whose failure made the owner give up, or -1 (timeout, cancel).
    abort_cause: i32 = -1,
    /// Two ranks, allreduce / reduce: 1 when the owner wrote its reduced block into the
    /// reader's recv too (the reader then neither copies nor reduces it; board_direct E27, E28).
    wrote_peer_recv: u32 = 0,
    pad0: [4]u8 = [_]u8{0} ** 4,
    // Reader-written line.
    /// Byte r is 1 once group rank r departed: each reader stores its own byte (a plain
    /// store that drains in the background), where a shared counter took a locked add on a
    /// line the owner holds, one cross-core stall per reader per op (E52).
    departed: [counts_max]u8 align(64) = [_]u8{0} ** counts_max,
    /// Owner-written: where the send / recv buffers lie when they are shared buffers
    /// (arena.zig; serial 0: not shared, read with CMA).
    send_serial: u64 align(64) = 0,
    send_offset: u64 = 0,
    recv_serial: u64 = 0,
    recv_offset: u64 = 0,
    /// The published op (as header.ids[this entry]; read between two reads of the serial, it
    /// tells a reader the entry was not replaced while it looked: holds()).
    op_id: u64 = 0,
    pad2: [24]u8 = [_]u8{0} ** 24,
    /// alltoall: the owner's send counts in group order (elements).
    send_counts: [counts_max]u64 = [_]u64{0} ** counts_max,
};

comptime {
    std.debug.assert(@sizeOf(Header) <= header_bytes);
    std.debug.assert(@offsetOf(Header, "magic") == 0 and @offsetOf(Header, "pid") == 12); // sweepDead
    std.debug.assert(@sizeOf(Entry) <= entry_bytes);
    std.debug.assert(inline_bytes_max % 64 == 0 and inline_bytes_large % 64 == 0);
    std.debug.assert(inline_bytes_large >= inline_bytes_max and entries_large <= entries_max);
    std.debug.assert(gave_up_max >= 16);
    std.debug.assert(@sizeOf(LaneCell) == lane_cell_bytes and @offsetOf(LaneCell, "data") == lane_data_offset);
    std.debug.assert(lane_bytes_max <= lane_cell_bytes - lane_data_offset and lane_data_offset % 16 == 0);
    std.debug.assert(@sizeOf(Lane) % 64 == 0 and std.math.isPowerOfTwo(lane_cells));

}

/// Pair lanes (board_direct.zig, E59): a ring of cells per peer through which two-rank groups
/// run small ops as Open MPI's fast boxes do. The owner writes a cell (its contribution and the
/// op id, in the line the reader polls) and returns; the reader finds it with one line transfer
/// and marks it consumed in a line of its own. Peers of global rank >= lane_peers_max use the
/// entries only. Pages of lanes never used are never touched (the segment is sparse).
pub const lane_peers_max = 64;
pub const lane_cells = 8;
/// A contribution up to this many bytes goes through a lane.
pub const lane_bytes_max = 1024;
const lane_cell_bytes = 1088;
const lane_data_offset = 32;

pub const LaneCell = extern struct {
    /// The op whose contribution this is (0: never used); written last, in the polled line.
    op_id: u64 align(64) = 0,
    /// Changes on every publish (the engine's ticket), so a reader tells publishes apart.
    serial: u64 = 0,
    bytes: u32 = 0,
    /// Where the published bytes start in the owner's whole contribution (scatter,
    /// reduce_scatter and alltoall publish only the reader's part).
    part_offset: u32 = 0,
    /// When the owner wrote it (sys.coarseNs): an unconsumed publish older than the owner's
    /// bound is taken back (a reader that never came does not hold the cell forever).
    published_ns: u64 = 0,
    /// The first bytes of the data share the op id's line: an 8-byte op moves one line.
    data: [lane_cell_bytes - lane_data_offset]u8 = undefined,
};

pub const Lane = extern struct {
    /// Reader-written: the serial of the publish it consumed, per cell.
    consumed: [lane_cells]u64 align(64) = [_]u64{0} ** lane_cells,
    cells: [lane_cells]LaneCell,
};

/// Hints the CPU to move the lines of [ptr, ptr+len) from its private caches to the shared
/// last-level cache (CLDEMOTE; a no-op on CPUs without it: the opcode is a hint NOP), so the
/// peer that reads them next finds them there instead of snooping this core (E60).
fn demoteLines(ptr: [*]const u8, len: usize) void {
    if (comptime @import("builtin").cpu.arch != .x86_64) return;
    cldemote_once.call();
    if (!cldemote) return; // a hint NOP elsewhere on Intel; not relied upon on other vendors
    var offset: usize = 0;
    while (offset < len) : (offset += 64) {
        // cldemote (%rax): NP 0F 1C /0.
        asm volatile (".byte 0x0f, 0x1c, 0x00"
            :
            : [p] "{rax}" (ptr + offset),
            : "memory"
        );
    }
}

var cldemote_once = std.once(detectCldemote);
var cldemote = false;
fn detectCldemote() void {
    if (comptime @import("builtin").cpu.arch != .x86_64) return;
    if (cpuid(0).eax < 7) return;
    cldemote = (cpuid(7).ecx >> 25) & 1 == 1; // CPUID.(7,0):ECX.CLDEMOTE
}

/// CPUID leaf `leaf`, subleaf 0 (as std.zig.system.x86 does it).
fn cpuid(leaf: u32) struct { eax: u32, ecx: u32 } {
    var eax: u32 = undefined;
    var ebx: u32 = undefined;
    var ecx: u32 = undefined;
    var edx: u32 = undefined;
    asm volatile ("cpuid"
        : [_] "={eax}" (eax),
          [_] "={ebx}" (ebx),
          [_] "={ecx}" (ecx),
          [_] "={edx}" (edx),
        : [_] "{eax}" (leaf),
          [_] "{ecx}" (@as(u32, 0)),
    );
    return .{ .eax = eax, .ecx = ecx };
}

pub fn segmentBytes() u64 {
    return lanesStart() + lane_peers_max * @as(u64, @sizeOf(Lane));
}

fn lanesStart() u64 {
    return std.mem.alignForward(u64, header_bytes + entries_max * @as(u64, entry_bytes) + dataStart(entries_max), 4096);
}

/// Bytes of entry `index`'s data area.
pub fn inlineBytes(index: u32) u64 {
    return if (index < entries_large) inline_bytes_large else inline_bytes_max;
}

fn dataStart(index: u32) u64 {
    const large = @min(index, entries_large);
    return large * @as(u64, inline_bytes_large) + (index - large) * @as(u64, inline_bytes_max);
}

/// Removes the boards of processes that died without shutting down (kill -9 leaves a ~6 MiB
/// file per rank, and a rank of another cluster never sweeps it): once per process.
pub fn sweepDead() void {
    sweep_once.call();
}

var sweep_once = std.once(sweepDeadOnce);
fn sweepDeadOnce() void {
    var dir = std.fs.openDirAbsolute(sys.shm_dir, .{ .iterate = true }) catch return;
    defer dir.close();
    var it = dir.iterate();
    var scan_max: u32 = 1 << 16; // bounded scan
    var removed: u32 = 0;
    while (scan_max > 0) : (scan_max -= 1) {
        const entry = (it.next() catch break) orelse break;
        if (!std.mem.startsWith(u8, entry.name, "moonring-") or std.mem.indexOf(u8, entry.name, "-board-") == null) continue;
        var head: [16]u8 = undefined;
        const got = sys.shmReadHead(entry.name, &head);
        if (got.len < head.len or std.mem.readInt(u64, head[0..8], .little) != magic) continue;
        const owner_pid = std.mem.readInt(i32, head[12..16], .little);
        if (owner_pid == sys.processId() or sys.processAlive(owner_pid)) continue;
        dir.deleteFile(entry.name) catch continue;
        removed += 1;
    }
    if (removed > 0) sys.logLine("removed {d} board(s) of processes that are gone", .{removed});
}

pub const Board = struct {
    segment: sys.Segment,
    header: *Header,

    /// Creates this rank's board (replacing a stale segment of that name).
    pub fn create(name: []const u8, owner_rank: u32, incarnation_id: u64) !Board {
        const segment = try sys.shmCreate(name, segmentBytes());
        const header: *Header = @ptrCast(@alignCast(segment.ptr));
        header.* = .{
            .magic = magic,
            .owner_rank = owner_rank,
            .pid = sys.processId(),
            .incarnation = incarnation_id,
            .segment_bytes = segment.bytes,
        };
        @atomicStore(u32, &header.alive, 1, .release);
        return .{ .segment = segment, .header = header };
    }

    /// Maps a peer's board; it must be a live board of rank `owner_rank`.
    pub fn open(name: []const u8, owner_rank: u32) !Board {
        const segment = try sys.shmOpen(name, segmentBytes());
        errdefer segment.unmapSegment();
        const header: *Header = @ptrCast(@alignCast(segment.ptr));
        if (@atomicLoad(u64, &header.magic, .acquire) != magic or header.owner_rank != owner_rank) return error.BadBoard;
        if (@atomicLoad(u32, &header.alive, .acquire) != 1) return error.BoardDead;
        return .{ .segment = segment, .header = header };
    }

    /// The owner's clean shutdown: readers waiting on this board fail at once.
    pub fn markDead(board: Board) void {
        @atomicStore(u32, &board.header.alive, 0, .release);
    }

    pub fn unmap(board: Board) void {
        board.segment.unmapSegment();
    }

    pub fn pid(board: Board) i32 {
        return board.header.pid;
    }

    /// False once the owner shut down cleanly.
    pub fn aliveFlag(board: Board) bool {
        return @atomicLoad(u32, &board.header.alive, .acquire) == 1;
    }

    /// False once the owner shut down or its process is gone.
    pub fn ownerAlive(board: Board) bool {
        if (@atomicLoad(u32, &board.header.alive, .acquire) != 1) return false;
        const owner_pid = board.header.pid;
        return owner_pid == sys.processId() or sys.processAlive(owner_pid);
    }

    pub fn entry(board: Board, index: u32) *Entry {
        std.debug.assert(index < entries_max);
        return @ptrCast(@alignCast(board.segment.ptr + header_bytes + @as(u64, index) * entry_bytes));
    }

    pub fn data(board: Board, index: u32) []u8 {
        std.debug.assert(index < entries_max);
        const start = header_bytes + entries_max * @as(u64, entry_bytes) + dataStart(index);
        return board.segment.ptr[start..][0..inlineBytes(index)];
    }

    pub fn phaseOf(board: Board, index: u32) u32 {
        return @atomicLoad(u32, &board.entry(index).phase, .acquire);
    }

    /// The entry the owner published for `op_id`, or null. Skips what this reader already
    /// departed (`departed_serials`, per index) and publishes aborted before `since_ns` (an
    /// op id re-issued after a failure must not find the failed attempt).
    pub fn find(board: Board, op_id: u64, departed_serials: *const [entries_max]u64, since_ns: u64) ?Found {
        for (0..board.idsHigh()) |i| {
            if (@atomicLoad(u64, &board.header.ids[i], .acquire) != op_id) continue;
            if (board.holds(@intCast(i), op_id, departed_serials, since_ns)) |serial| return .{ .index = @intCast(i), .serial = serial };
        }
        return null;
    }

    /// 1 + the highest entry index ever published here (find scans below it).
    pub fn idsHigh(board: Board) u32 {
        return @min(@atomicLoad(u32, &board.header.ids_high, .acquire), entries_max);
    }

    pub const Found = struct { index: u32, serial: u64 };

    /// The serial of entry `index`'s publish when it is one of `op_id` this reader has not
    /// departed, else null (find's test for one entry). The serial is read before and after
    /// the other fields, so they all belong to that publish (the owner may be replacing it).
    pub fn holds(board: Board, index: u32, op_id: u64, departed_serials: *const [entries_max]u64, since_ns: u64) ?u64 {
        const e = board.entry(index);
        const serial = @atomicLoad(u64, &e.serial, .acquire);
        const phase = @atomicLoad(u32, &e.phase, .acquire);
        if (phase == Phase.free or @atomicLoad(u64, &e.op_id, .acquire) != op_id) return null;
        if (phase == Phase.aborted and @atomicLoad(u64, &e.abort_ns, .acquire) < since_ns) return null;
        if (@atomicLoad(u64, &e.serial, .acquire) != serial or serial == departed_serials[index]) return null;
        return serial;
    }

    /// Owner: gives up on entry `index`; readers that wait on it fail.
    pub fn abort(board: Board, index: u32, cause: i32) void {
        @atomicStore(i32, &board.entry(index).abort_cause, cause, .release);
        @atomicStore(u64, &board.entry(index).abort_ns, sys.monotonicNs(), .release);
        @atomicStore(u32, &board.entry(index).phase, Phase.aborted, .release);
    }

    /// Owner: makes entry `index` visible under `op_id` (fields and data written before).
    pub fn publish(board: Board, index: u32, op_id: u64, serial: u64) void {
        const e = board.entry(index);
        std.debug.assert(e.phase == Phase.free);
        if (@atomicLoad(u32, &board.header.ids_high, .monotonic) <= index) _ = @atomicRmw(u32, &board.header.ids_high, .Max, index + 1, .acq_rel);
        const flags: *align(64) volatile @Vector(counts_max, u8) = @ptrCast(&e.departed);
        flags.* = @splat(0);
        @atomicStore(u64, &e.op_id, op_id, .release);
        @atomicStore(u64, &e.serial, serial, .release);
        @atomicStore(u32, &e.phase, Phase.published, .release);
        @atomicStore(u64, &board.header.ids[index], op_id, .release);
    }

    pub fn setPhase(board: Board, index: u32, phase: u32) void {
        @atomicStore(u32, &board.entry(index).phase, phase, .release);
    }

    /// Owner: the entry is done with (every reader departed, or the op gave up).
    pub fn free(board: Board, index: u32) void {
        @atomicStore(u32, &board.entry(index).phase, Phase.free, .release);
        @atomicStore(u64, &board.entry(index).op_id, 0, .release);
        @atomicStore(u64, &board.header.ids[index], 0, .release);
    }

    /// Published and not yet freed: an inline publish whose op ended before its readers
    /// departed (board_direct: "linger"), or an entry in use.
    pub fn inUse(board: Board, index: u32) bool {
        const phase = board.phaseOf(index);
        return phase != Phase.free and phase != Phase.aborted;
    }

    /// This rank's op `op_id` failed: owners waiting for it to read their lingering publish of
    /// that op stop waiting. Any thread may call it.
    pub fn recordGaveUp(board: Board, op_id: u64) void {
        const h = board.header;
        const at = @atomicRmw(u32, &h.gave_up_next, .Add, 1, .acq_rel) % gave_up_max;
        @atomicStore(u64, &h.gave_up[at], op_id, .release);
    }

    /// Whether this board's owner recorded a failure of op `op_id` lately (gave_up_max).
    pub fn gaveUp(board: Board, op_id: u64) bool {
        if (op_id == 0) return false; // 0 marks an empty place in the ring
        for (&board.header.gave_up) |*id| if (@atomicLoad(u64, id, .acquire) == op_id) return true;
        return false;
    }

    /// The lane through which this board's owner sends to global rank `peer` (null: none).
    pub fn lane(board: Board, peer: u32) ?*Lane {
        if (peer >= lane_peers_max) return null;
        return @ptrCast(@alignCast(board.segment.ptr + lanesStart() + @as(u64, peer) * @sizeOf(Lane)));
    }

    /// The cell op `op_id` uses in a lane: consecutive ids (the coordinator's) take consecutive
    /// cells. Ids that step by 256 (the bench worker's) all take one, which measured faster
    /// than spreading them in the bench's barrier-paced loop (E61).
    pub fn laneCell(op_id: u64) u32 {
        return @intCast(op_id % lane_cells);
    }

    /// The serial of this owner's lane publish of `op_id` for global rank `reader`, when that
    /// reader has not consumed it yet; else null.
    pub fn laneHolds(board: Board, reader: u32, op_id: u64) ?u64 {
        const l = board.lane(reader) orelse return null;
        const index = laneCell(op_id);
        const cell = &l.cells[index];
        if (@atomicLoad(u64, &cell.op_id, .acquire) != op_id) return null;
        const serial = @atomicLoad(u64, &cell.serial, .acquire);
        if (serial == @atomicLoad(u64, &l.consumed[index], .monotonic)) return null;
        return serial;
    }

    /// Owner: writes `part` (bytes from `part_offset` on of its contribution) into the lane to
    /// global rank `reader` as op `op_id`'s publish, when the cell is free: its last publish
    /// consumed, or of this op id (an earlier attempt), or of an op the reader gave up on
    /// (`gave_up`, the reader's board), or older than `stale_ns`. False: use an entry.
    pub fn lanePublish(board: Board, reader: u32, op_id: u64, serial: u64, part: []const u8, part_offset: u32, gave_up: Board, stale_ns: u64) bool {
        std.debug.assert(part.len <= lane_bytes_max and op_id != 0 and serial != 0);
        const l = board.lane(reader) orelse return false;
        const index = laneCell(op_id);
        const cell = &l.cells[index];
        const held = @atomicLoad(u64, &cell.op_id, .monotonic);
        const now_ns = sys.coarseNs();
        if (held != 0) {
            const consumed = @atomicLoad(u64, &l.consumed[index], .acquire) == cell.serial;
            const stale = now_ns -| cell.published_ns >= stale_ns;
            if (!consumed and held != op_id and !stale and !gave_up.gaveUp(held)) return false;
            // A reader that finds the old id meanwhile sees the serial change (laneStill).
            @atomicStore(u64, &cell.op_id, 0, .release);
        }
        cell.bytes = @intCast(part.len);
        cell.part_offset = part_offset;
        cell.published_ns = now_ns;
        @atomicStore(u64, &cell.serial, serial, .release);
        @memcpy(cell.data[0..part.len], part);
        @atomicStore(u64, &cell.op_id, op_id, .release);
        demoteLines(@ptrCast(cell), lane_data_offset + part.len);
        return true;
    }

    /// Reader: the owner's lane publish it read (`serial`) is still in place (not replaced
    /// while it read: then what it read may be mixed).
    pub fn laneStill(board: Board, reader: u32, op_id: u64, serial: u64) bool {
        const l = board.lane(reader) orelse return false;
        const cell = &l.cells[laneCell(op_id)];
        return @atomicLoad(u64, &cell.op_id, .acquire) == op_id and @atomicLoad(u64, &cell.serial, .acquire) == serial;
    }

    /// Reader: done with the owner's lane publish `serial` of `op_id` (the owner may reuse it).
    pub fn laneConsume(board: Board, reader: u32, op_id: u64, serial: u64) void {
        const l = board.lane(reader) orelse return;
        @atomicStore(u64, &l.consumed[laneCell(op_id)], serial, .release);
    }

    /// The data of the owner's lane publish of `op_id` for `reader` (after laneHolds).
    pub fn laneData(board: Board, reader: u32, op_id: u64) []const u8 {
        const cell = &board.lane(reader).?.cells[laneCell(op_id)];
        return cell.data[0..@min(cell.bytes, lane_bytes_max)];
    }

    /// Where laneData() starts in the owner's whole contribution.
    pub fn lanePartOffset(board: Board, reader: u32, op_id: u64) u64 {
        const cell = &board.lane(reader).?.cells[laneCell(op_id)]; // `&`: not a copy of the cells
        return cell.part_offset;
    }

    /// Reader `reader` (its group rank): done with entry `index` of this board.
    pub fn depart(board: Board, index: u32, reader: u32) void {
        std.debug.assert(reader < counts_max);
        @atomicStore(u8, &board.entry(index).departed[reader], 1, .release);
    }

    /// How many readers departed entry `index`.
    pub fn departed(board: Board, index: u32) u32 {
        const flags: *align(64) const volatile @Vector(counts_max, u8) = @ptrCast(&board.entry(index).departed);
        const set = flags.* != @as(@Vector(counts_max, u8), @splat(0));
        return std.simd.countTrues(set);
    }

    /// Wakes the owner's threads that sleep in wait() (only a syscall when one sleeps). The
    /// locked add also makes this thread's earlier stores (the publish) visible before it
    /// goes on: without it a rooted op's reader waited longer (E66).
    pub fn ring(board: Board) void {
        _ = @atomicRmw(u32, &board.header.doorbell, .Add, 1, .release);
        if (@atomicLoad(u32, &board.header.sleepers, .acquire) != 0) sys.futexWake(&board.header.doorbell, std.math.maxInt(u32));
    }

    /// Owner's threads: sleep until rung or `timeout_ns`, unless `ready` already holds.
    pub fn sleep(board: Board, context: anytype, comptime ready: fn (@TypeOf(context)) bool, timeout_ns: u64) void {
        const h = board.header;
        _ = @atomicRmw(u32, &h.sleepers, .Add, 1, .acq_rel);
        defer _ = @atomicRmw(u32, &h.sleepers, .Sub, 1, .acq_rel);
        const bell = @atomicLoad(u32, &h.doorbell, .acquire);
        if (ready(context)) return;
        sys.futexWait(&h.doorbell, bell, timeout_ns);
    }
};

/// How long a board waiter busy-polls before it sleeps: $MOONRING_BOARD_SPIN_US, else 50 us
/// (a board op keeps one thread per rank runnable, so a short spin does not starve a peer).
pub fn spinNs() u64 {
    spin_once.call();
    return spin_ns;
}

/// CPUs of this host (cached): the online count, not this thread's affinity, which a rank
/// bound to one core (mr_pin_thread) would see as 1 and so think itself oversubscribed.
pub fn cpuCount() u32 {
    cpus_once.call();
    return cpus;
}

var cpus_once = std.once(computeCpus);
var cpus: u32 = 1;
fn computeCpus() void {
    cpus = sys.onlineCpus();
}

var spin_once = std.once(computeSpin);
var spin_ns: u64 = 50 * std.time.ns_per_us;
fn computeSpin() void {
    if (sys.envU64("MOONRING_BOARD_SPIN_US")) |us| spin_ns = us * std.time.ns_per_us;
}

test "board: publish, find, depart, free; a departed publish is not found again" {
    var name_buf: [64]u8 = undefined;
    const name = try std.fmt.bufPrint(&name_buf, "moonring-test-board-{d}", .{sys.processId()});
    const own = try Board.create(name, 3, 42);
    defer sys.shmUnlink(name);
    defer own.unmap();
    const peer = try Board.open(name, 3);
    defer peer.unmap();
    try std.testing.expectError(error.BadBoard, Board.open(name, 2));

    var departed = [_]u64{0} ** entries_max;
    try std.testing.expectEqual(@as(?Board.Found, null), peer.find(7, &departed, 0));
    const e = own.entry(5);
    e.send_bytes = 8;
    e.inline_data = 1;
    @memcpy(own.data(5)[0..8], "abcdefgh");
    own.publish(5, 7, 1);
    own.ring();
    const found = (peer.find(7, &departed, 0) orelse return error.NotFound).index;
    try std.testing.expectEqual(@as(u32, 5), found);
    try std.testing.expectEqualStrings("abcdefgh", peer.data(found)[0..8]);
    try std.testing.expectEqual(@as(?u64, 1), peer.holds(5, 7, &departed, 0));
    try std.testing.expect(peer.holds(4, 7, &departed, 0) == null and peer.holds(5, 8, &departed, 0) == null);
    peer.depart(found, 1);
    departed[found] = 1;
    try std.testing.expectEqual(@as(u32, 1), own.departed(5));
    // Until the owner frees it the entry still holds op 7, but this reader is done with it.
    try std.testing.expectEqual(@as(?Board.Found, null), peer.find(7, &departed, 0));
    own.free(5);
    own.publish(5, 7, 2); // the same op id again (ids may be reused): a new serial
    try std.testing.expectEqual(@as(?u32, 5), (peer.find(7, &departed, 0) orelse return error.NotFound).index);
    try std.testing.expect(peer.ownerAlive());
    own.markDead();
    try std.testing.expect(!peer.ownerAlive());
}
