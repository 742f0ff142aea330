//! The board registry: this rank's board (board.zig) and the boards of its same-host peers,
//! mapped on first use and again after a peer restarted. Used by net.zig under the data
//! plane's lock; the peers' liveness comes from the link layer (links.zig).
const std = @import("std");
const sys = @import("../sys.zig");
const board_mod = @import("board.zig");
const links_mod = @import("links.zig");

const world_size_max = links_mod.world_size_max;
const retired_boards_max = 64;

const PeerBoard = struct {
    board: ?board_mod.Board = null,
    generation: u32 = 0,
    /// Serial of the publish this rank last departed, per entry of that board.
    departed_serials: [board_mod.entries_max]u64 = [_]u64{0} ** board_mod.entries_max,
};

/// The boards of one op's group, in group order (Net.boardTeam).
/// Board ops run only in groups of at most board_mod.counts_max ranks.
pub const BoardTeam = struct {
    boards: [board_mod.counts_max]board_mod.Board = undefined,
    departed_serials: [board_mod.counts_max]*[board_mod.entries_max]u64 = undefined,
    /// The group this team was last filled for (0 ranks: none) and the net's team epoch then
    /// (Net.boardTeamOf reuses it without the lock while neither changed).
    filled_ranks: u32 = 0,
    filled_group: [board_mod.counts_max]u32 = undefined,
    filled_epoch: u64 = 0,

    /// Filled for `group` at `epoch`, and every board of it still has its owner.
    pub fn current(team: *const BoardTeam, group: []const u32, epoch: u64) bool {
        if (team.filled_ranks != group.len or team.filled_epoch != epoch) return false;
        if (!std.mem.eql(u32, team.filled_group[0..group.len], group)) return false;
        for (team.boards[0..group.len]) |b| if (!b.aliveFlag()) return false;
        return true;
    }

    pub fn markFilled(team: *BoardTeam, group: []const u32, epoch: u64) void {
        std.debug.assert(group.len <= board_mod.counts_max);
        team.filled_ranks = @intCast(group.len);
        @memcpy(team.filled_group[0..group.len], group);
        team.filled_epoch = epoch;
    }
};

/// Sweeping our rank's stale segments keeps the board of another live process that claims
/// our rank (a duplicate start the control plane is about to refuse).
pub fn keepLiveBoard(name: []const u8) bool {
    if (std.mem.indexOf(u8, name, "board-") == null) return false;
    const segment = sys.shmOpen(name, board_mod.segmentBytes()) catch return false;
    defer segment.unmapSegment();
    const board = board_mod.Board{ .segment = segment, .header = @ptrCast(@alignCast(segment.ptr)) };
    return board.pid() != sys.processId() and board.ownerAlive();
}

/// A board's name carries its owner's data port: a second process claiming the same rank
/// (refused later by the control plane) never replaces a live rank's board.
pub fn boardName(buf: []u8, prefix: []const u8, port: u16) []const u8 {
    return std.fmt.bufPrint(buf, "{s}board-{d}", .{ prefix, port }) catch unreachable;
}

pub const Boards = struct {
    /// This rank's board; null when the board is off or the transport is tcp.
    own: ?board_mod.Board = null,
    own_name_len: usize = 0,
    own_name: [96]u8 = undefined,
    peers: [world_size_max]PeerBoard = [_]PeerBoard{.{}} ** world_size_max,
    /// Boards replaced while an op may still read them; unmapped at deinit.
    retired: std.BoundedArray(board_mod.Board, retired_boards_max) = .{},
    /// Peer boards (re)mapped so far: a team filled before one was may name a stale board.
    reopened: std.atomic.Value(u64) = .init(0),

    /// Creates this rank's board under `prefix` + port.
    pub fn create(boards: *Boards, rank: u32, prefix: []const u8, port: u16, incarnation_id: u64) !void {
        std.debug.assert(boards.own == null);
        board_mod.sweepDead();
        const name = boardName(&boards.own_name, prefix, port);
        boards.own_name_len = name.len;
        boards.own = board_mod.Board.create(name, rank, incarnation_id) catch |err| {
            sys.logLine("rank {d}: cannot create the board {s}{s} ({d} bytes): {s}; MOONRING_BOARD=0 on every rank turns it off", .{ rank, sys.shm_dir, name, board_mod.segmentBytes(), @errorName(err) });
            return err;
        };
    }

    pub fn deinit(boards: *Boards) void {
        if (boards.own) |b| {
            b.markDead();
            b.unmap();
            sys.shmUnlink(boards.own_name[0..boards.own_name_len]);
        }
        for (boards.peers) |pb| if (pb.board) |b| b.unmap();
        for (boards.retired.constSlice()) |b| b.unmap();
    }

    /// Fills `team` for `group` (global ranks, ascending) when every peer of it is on this
    /// host (`same_host`) with a live board; else false (the op runs over the links).
    /// `prefixes(g)` names rank g's segments.
    pub fn teamLocked(
        boards: *Boards,
        rank: u32,
        group: []const u32,
        peers: *const [world_size_max]links_mod.Peer,
        context: anytype,
        comptime sameHost: fn (@TypeOf(context), *const links_mod.Peer) bool,
        comptime prefix: fn (@TypeOf(context), []u8, u32) []const u8,
        team: *BoardTeam,
    ) bool {
        const own = boards.own orelse return false;
        if (group.len > board_mod.counts_max) return false;
        for (group, 0..) |g, i| {
            if (g == rank) {
                team.boards[i] = own;
                team.departed_serials[i] = &boards.peers[g].departed_serials; // unused
                continue;
            }
            const peer = &peers[g];
            if (!peer.usable() or !sameHost(context, peer)) return false;
            const pb = &boards.peers[g];
            // The alive flag only (no syscall per op): a killed owner is caught by the waits.
            const current = if (pb.board) |b| pb.generation == peer.generation and b.aliveFlag() else false;
            if (!current) {
                var prefix_buf: [64]u8 = undefined;
                var name_buf: [96]u8 = undefined;
                const name = boardName(&name_buf, prefix(context, &prefix_buf, g), peer.addr.?.getPort());
                const fresh = board_mod.Board.open(name, g) catch return false;
                if (!fresh.ownerAlive()) {
                    fresh.unmap();
                    return false;
                }
                if (pb.board) |old| {
                    if (boards.retired.len == retired_boards_max) boards.retired.orderedRemove(0).unmap();
                    boards.retired.appendAssumeCapacity(old);
                }
                pb.* = .{ .board = fresh, .generation = peer.generation };
                _ = boards.reopened.fetchAdd(1, .release);
            }
            team.boards[i] = pb.board.?;
            team.departed_serials[i] = &pb.departed_serials;
        }
        return true;
    }
};
