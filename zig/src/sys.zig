//! Every socket, futex, mmap and file syscall of the engine and transports lives here, as thin
//! wrappers over raw Linux syscalls that return small error sets (no `unreachable` on an errno
//! a peer or the kernel can cause: a bad peer never crashes a rank).
const std = @import("std");
const linux = std.os.linux;

pub const Fd = i32;
pub const Address = std.net.Address;

pub const NetError = error{ WouldBlock, Closed, Refused, Failed, TimedOut };

fn errnoOf(rc: usize) linux.E {
    return linux.E.init(rc);
}

// ---- time ----

/// A deadline `timeout_ms` from now on the monotonic clock, read coarsely: CLOCK_MONOTONIC_COARSE
/// costs ~5 ns where CLOCK_MONOTONIC costs ~22 (a KVM guest, bench/NOTES.md E58) and lags it
/// by at most one tick, which is added, so the deadline is never early (at most a tick late).
pub fn deadlineNs(timeout_ms: u64) u64 {
    coarse_once.call();
    return coarseNs() + coarse_tick_ns + timeout_ms * std.time.ns_per_ms;
}

/// Whether `deadline_ns` (monotonic) has passed, read coarsely: never before it has (the
/// coarse clock lags), at most a tick after.
pub fn pastDeadline(deadline_ns: u64) bool {
    return coarseNs() >= deadline_ns;
}

/// Monotonic nanoseconds, read coarsely (lags monotonicNs() by at most a tick; ~5 ns a read).
pub fn coarseNs() u64 {
    var ts: std.c.timespec = undefined;
    const rc = std.c.clock_gettime(.MONOTONIC_COARSE, &ts);
    std.debug.assert(rc == 0);
    return @as(u64, @intCast(ts.sec)) * std.time.ns_per_s + @as(u64, @intCast(ts.nsec));
}

var coarse_once = std.once(computeCoarseTick);
/// The coarse clock's resolution (a scheduler tick: 1-10 ms; 4 ms here).
var coarse_tick_ns: u64 = 10 * std.time.ns_per_ms;
fn computeCoarseTick() void {
    var ts: std.c.timespec = undefined;
    if (std.c.clock_getres(.MONOTONIC_COARSE, &ts) != 0) return;
    const tick = @as(u64, @intCast(ts.sec)) * std.time.ns_per_s + @as(u64, @intCast(ts.nsec));
    if (tick > 0 and tick <= std.time.ns_per_s) coarse_tick_ns = tick;
}

/// Monotonic nanoseconds (CLOCK_MONOTONIC).
pub fn monotonicNs() u64 {
    // P4: libc's clock_gettime goes through the vDSO; std.os.linux's does not in a
    // shared library (no aux vector recorded), so every call was a syscall.
    var ts: std.c.timespec = undefined;
    const rc = std.c.clock_gettime(.MONOTONIC, &ts);
    std.debug.assert(rc == 0);
    return @as(u64, @intCast(ts.sec)) * std.time.ns_per_s + @as(u64, @intCast(ts.nsec));
}

/// How long a waiter busy-polls before it sleeps on a futex: $MOONRING_SPIN_US, else 20 us on
/// machines with >= 8 CPUs and 2 us on small ones (where spinning steals the CPU the peer
/// thread needs).
pub fn spinBudgetNs() u64 {
    spin_once.call();
    return spin_budget_ns;
}

var spin_once = std.once(computeSpinBudget);
var spin_budget_ns: u64 = 0;
fn computeSpinBudget() void {
    if (envU64("MOONRING_SPIN_US")) |us| {
        spin_budget_ns = us * std.time.ns_per_us;
        return;
    }
    const cpus = std.Thread.getCpuCount() catch 1;
    spin_budget_ns = (if (cpus >= 8) @as(u64, 20) else 2) * std.time.ns_per_us;
}

/// Until when (monotonic ns) every waiter of this process keeps busy-polling past
/// spinBudgetNs() (spinHotFor).
var spin_hot_until_ns: std.atomic.Value(u64) = .init(0);

/// Keeps waiters (spinUntil: link threads, op threads in wait) polling for the next `ns`
/// instead of sleeping on a futex after spinBudgetNs(): for a short stretch where messages are
/// due but come later than the spin budget (the CUDA direct path while the GPU works). Ignored
/// where the spin budget is below 20 us (small machines, MOONRING_SPIN_US < 20).
pub fn spinHotFor(ns: u64) void {
    if (ns == 0 or spinBudgetNs() < 20 * std.time.ns_per_us) return;
    const until = monotonicNs() + ns;
    var current = spin_hot_until_ns.load(.monotonic);
    while (current < until) {
        current = spin_hot_until_ns.cmpxchgWeak(current, until, .monotonic, .monotonic) orelse return;
    }
}

/// Busy-polls `ready()` for up to spinBudgetNs() (longer inside a spinHotFor window); true
/// when it became ready.
pub fn spinUntil(context: anytype, comptime ready: fn (@TypeOf(context)) bool) bool {
    const budget = spinBudgetNs();
    if (budget == 0) return ready(context);
    const until = monotonicNs() + budget;
    var spins: u32 = 0;
    while (true) : (spins += 1) {
        if (ready(context)) return true;
        std.atomic.spinLoopHint();
        if (spins % 32 == 31) {
            const now = monotonicNs();
            if (now >= until and now >= spin_hot_until_ns.load(.monotonic)) return ready(context);
        }
    }
}

pub fn sleepNs(ns: u64) void {
    std.Thread.sleep(ns);
}

// ---- logging ----

/// One line to stderr (never blocks the data path for long: stderr is unbuffered).
pub fn logLine(comptime fmt: []const u8, args: anytype) void {
    var buf: [512]u8 = undefined;
    const line = std.fmt.bufPrint(&buf, "moonring: " ++ fmt ++ "\n", args) catch blk: {
        buf[buf.len - 4 ..][0..4].* = "...\n".*;
        break :blk buf[0..];
    };
    _ = linux.write(2, line.ptr, line.len);
}

// ---- addresses ----

/// Parses an IP literal, else resolves a host name (getaddrinfo); first address wins.
pub fn resolve(host: []const u8, port: u16) !Address {
    if (Address.parseIp(host, port)) |addr| return addr else |_| {}
    if (std.mem.eql(u8, host, "localhost")) return Address.initIp4(.{ 127, 0, 0, 1 }, port);
    var buf: [4096]u8 = undefined;
    var fba = std.heap.FixedBufferAllocator.init(&buf);
    const list = std.net.getAddressList(fba.allocator(), host, port) catch return error.UnknownHost;
    defer list.deinit();
    if (list.addrs.len == 0) return error.UnknownHost;
    return list.addrs[0];
}

// ---- sockets ----

pub fn closeFd(fd: Fd) void {
    _ = linux.close(fd);
}

fn setOpt(fd: Fd, level: i32, name: u32, value: []const u8) void {
    _ = linux.setsockopt(fd, level, name, value.ptr, @intCast(value.len));
}

fn setOptInt(fd: Fd, level: i32, name: u32, value: c_int) void {
    setOpt(fd, level, name, std.mem.asBytes(&value));
}

pub fn setNoDelay(fd: Fd) void {
    setOptInt(fd, linux.IPPROTO.TCP, linux.TCP.NODELAY, 1);
}

/// O_NONBLOCK on `fd` (a verbs completion channel: events are taken without blocking).
pub fn setNonBlocking(fd: Fd) bool {
    const flags = linux.fcntl(fd, linux.F.GETFL, 0);
    if (errnoOf(flags) != .SUCCESS) return false;
    const rc = linux.fcntl(fd, linux.F.SETFL, flags | @as(usize, 1 << @bitOffsetOf(linux.O, "NONBLOCK")));
    return errnoOf(rc) == .SUCCESS;
}

/// SO_RCVTIMEO: a blocking recv returns WouldBlock after `ms` without data (0 = never).
pub fn setRecvTimeout(fd: Fd, ms: u32) void {
    const tv = linux.timeval{ .sec = @intCast(ms / 1000), .usec = @intCast((ms % 1000) * 1000) };
    setOpt(fd, linux.SOL.SOCKET, linux.SO.RCVTIMEO, std.mem.asBytes(&tv));
}

/// SO_SNDTIMEO: a blocking send returns what it wrote (or WouldBlock) after `ms`.
pub fn setSendTimeout(fd: Fd, ms: u32) void {
    const tv = linux.timeval{ .sec = @intCast(ms / 1000), .usec = @intCast((ms % 1000) * 1000) };
    setOpt(fd, linux.SOL.SOCKET, linux.SO.SNDTIMEO, std.mem.asBytes(&tv));
}

pub fn setBufferSizes(fd: Fd, bytes: u32) void {
    setOptInt(fd, linux.SOL.SOCKET, linux.SO.SNDBUF, @intCast(bytes));
    setOptInt(fd, linux.SOL.SOCKET, linux.SO.RCVBUF, @intCast(bytes));
}

/// A listening TCP socket bound to `addr` (port 0 = any free port).
pub fn listenTcp(addr: Address) !Fd {
    const rc = linux.socket(addr.any.family, linux.SOCK.STREAM | linux.SOCK.CLOEXEC, linux.IPPROTO.TCP);
    if (errnoOf(rc) != .SUCCESS) return error.SocketFailed;
    const fd: Fd = @intCast(rc);
    errdefer closeFd(fd);
    setOptInt(fd, linux.SOL.SOCKET, linux.SO.REUSEADDR, 1);
    if (errnoOf(linux.bind(fd, &addr.any, addr.getOsSockLen())) != .SUCCESS) return error.BindFailed;
    if (errnoOf(linux.listen(fd, 128)) != .SUCCESS) return error.ListenFailed;
    return fd;
}

pub fn localPort(fd: Fd) u16 {
    var addr: Address = undefined;
    var len: linux.socklen_t = @sizeOf(Address);
    if (errnoOf(linux.getsockname(fd, &addr.any, &len)) != .SUCCESS) return 0;
    return addr.getPort();
}

pub const Accepted = struct { fd: Fd, addr: Address };

/// Waits up to `timeout_ms` for a connection; null when none arrived.
pub fn acceptTimeout(listen_fd: Fd, timeout_ms: i32) NetError!?Accepted {
    if (!try pollFd(listen_fd, linux.POLL.IN, timeout_ms)) return null;
    var addr: Address = undefined;
    var len: linux.socklen_t = @sizeOf(Address);
    const rc = linux.accept4(listen_fd, &addr.any, &len, linux.SOCK.CLOEXEC);
    switch (errnoOf(rc)) {
        .SUCCESS => return .{ .fd = @intCast(rc), .addr = addr },
        .AGAIN, .INTR, .CONNABORTED, .PROTO, .PERM => return null,
        .MFILE, .NFILE, .NOBUFS, .NOMEM => {
            sleepNs(10 * std.time.ns_per_ms); // out of fds: back off instead of spinning
            return null;
        },
        else => return error.Failed,
    }
}

/// True when `fd` has one of `events` within `timeout_ms` (-1 = forever).
pub fn pollFd(fd: Fd, events: i16, timeout_ms: i32) NetError!bool {
    var fds = [1]linux.pollfd{.{ .fd = fd, .events = events, .revents = 0 }};
    while (true) {
        const rc = linux.poll(&fds, 1, timeout_ms);
        switch (errnoOf(rc)) {
            .SUCCESS => return rc > 0,
            .INTR => continue,
            else => return error.Failed,
        }
    }
}

const pollrdhup: i16 = 0x2000; // POLLRDHUP (Linux)

/// True when the peer closed (or reset) a socket on which it never sends after the handshake.
pub fn peerHungUp(fd: Fd) bool {
    var fds = [1]linux.pollfd{.{ .fd = fd, .events = linux.POLL.IN | pollrdhup, .revents = 0 }};
    const rc = linux.poll(&fds, 1, 0);
    if (errnoOf(rc) != .SUCCESS or rc == 0) return false;
    return fds[0].revents & (pollrdhup | linux.POLL.HUP | linux.POLL.ERR | linux.POLL.IN) != 0;
}

/// A connected TCP socket, or an error within `timeout_ms`.
pub fn connectTimeout(addr: Address, timeout_ms: u32) NetError!Fd {
    const rc = linux.socket(addr.any.family, linux.SOCK.STREAM | linux.SOCK.CLOEXEC | linux.SOCK.NONBLOCK, linux.IPPROTO.TCP);
    if (errnoOf(rc) != .SUCCESS) return error.Failed;
    const fd: Fd = @intCast(rc);
    errdefer closeFd(fd);
    switch (errnoOf(linux.connect(fd, &addr.any, addr.getOsSockLen()))) {
        .SUCCESS => {},
        .INPROGRESS, .INTR, .AGAIN => {
            if (!try pollFd(fd, linux.POLL.OUT, @intCast(@min(timeout_ms, std.math.maxInt(i32))))) return error.TimedOut;
            var err: c_int = 0;
            var len: linux.socklen_t = @sizeOf(c_int);
            if (errnoOf(linux.getsockopt(fd, linux.SOL.SOCKET, linux.SO.ERROR, std.mem.asBytes(&err), &len)) != .SUCCESS)
                return error.Failed;
            if (err != 0) {
                return if (err == @intFromEnum(linux.E.CONNREFUSED)) error.Refused else error.Failed;
            }
        },
        .CONNREFUSED => return error.Refused,
        else => return error.Failed,
    }
    // Back to blocking mode; timeouts come from SO_RCVTIMEO / SO_SNDTIMEO.
    const flags = linux.fcntl(fd, linux.F.GETFL, 0);
    _ = linux.fcntl(fd, linux.F.SETFL, flags & ~@as(usize, 1 << @bitOffsetOf(linux.O, "NONBLOCK")));
    setNoDelay(fd);
    return fd;
}

/// One recv: bytes read (> 0), WouldBlock on SO_RCVTIMEO, Closed on EOF/reset.
pub fn recvSome(fd: Fd, buf: []u8) NetError!usize {
    std.debug.assert(buf.len > 0);
    while (true) {
        const rc = linux.recvfrom(fd, buf.ptr, buf.len, 0, null, null);
        switch (errnoOf(rc)) {
            .SUCCESS => return if (rc == 0) error.Closed else rc,
            .INTR => continue,
            .AGAIN => return error.WouldBlock,
            else => return error.Closed,
        }
    }
}

/// One send without SIGPIPE: bytes written, WouldBlock on SO_SNDTIMEO, Closed on a broken link.
pub fn sendSome(fd: Fd, buf: []const u8, more: bool) NetError!usize {
    std.debug.assert(buf.len > 0);
    const flags: u32 = linux.MSG.NOSIGNAL | (if (more) @as(u32, linux.MSG.MORE) else 0);
    while (true) {
        const rc = linux.sendto(fd, buf.ptr, buf.len, flags, null, 0);
        switch (errnoOf(rc)) {
            .SUCCESS => return rc,
            .INTR => continue,
            .AGAIN => return error.WouldBlock,
            else => return error.Closed,
        }
    }
}

/// Blocking send of all of `buf` (for handshakes); gives up after `timeout_ms` of no progress.
pub fn sendAll(fd: Fd, buf: []const u8) NetError!void {
    var done: usize = 0;
    while (done < buf.len) done += try sendSome(fd, buf[done..], false);
}

/// Blocking receive of exactly `buf.len` bytes (handshakes; SO_RCVTIMEO bounds each wait).
pub fn recvAll(fd: Fd, buf: []u8) NetError!void {
    var done: usize = 0;
    while (done < buf.len) done += try recvSome(fd, buf[done..]);
}

/// Wakes threads blocked on `fd` (recv returns EOF); the fd stays open until closeFd().
pub fn shutdownBoth(fd: Fd) void {
    _ = linux.shutdown(fd, linux.SHUT.RDWR);
}

// ---- futex (shared: works across processes on a MAP_SHARED mapping) ----

/// Sleeps while `*word == expected`, at most `timeout_ns`. Spurious wakeups are possible.
pub fn futexWait(word: *const u32, expected: u32, timeout_ns: u64) void {
    const ts = linux.timespec{
        .sec = @intCast(timeout_ns / std.time.ns_per_s),
        .nsec = @intCast(timeout_ns % std.time.ns_per_s),
    };
    _ = linux.futex_wait(@ptrCast(word), linux.FUTEX.WAIT, @bitCast(expected), &ts);
}

pub fn futexWake(word: *const u32, waiters_max: u32) void {
    _ = linux.futex_wake(@ptrCast(word), linux.FUTEX.WAKE, @intCast(@min(waiters_max, std.math.maxInt(i32))));
}

// ---- memory ----

pub const page_bytes = std.heap.page_size_min;

/// Page-aligned, zeroed anonymous memory.
pub fn mapAnonymous(bytes: u64) ?[*]align(page_bytes) u8 {
    if (bytes == 0 or bytes > std.math.maxInt(isize)) return null;
    const rc = linux.mmap(null, @intCast(bytes), linux.PROT.READ | linux.PROT.WRITE, .{ .TYPE = .PRIVATE, .ANONYMOUS = true }, -1, 0);
    if (errnoOf(rc) != .SUCCESS) return null;
    return @ptrFromInt(rc);
}

pub fn unmap(ptr: [*]const u8, bytes: u64) void {
    if (bytes == 0) return;
    _ = linux.munmap(ptr, @intCast(bytes));
}

// ---- shared-memory segments in /dev/shm ----

pub const shm_dir = "/dev/shm/";
pub const shm_name_bytes_max = 96;

pub const Segment = struct {
    ptr: [*]align(page_bytes) u8,
    bytes: u64,

    pub fn unmapSegment(self: Segment) void {
        unmap(self.ptr, self.bytes);
    }
};

fn shmPath(name: []const u8, buf: *[shm_dir.len + shm_name_bytes_max + 1]u8) ![*:0]const u8 {
    if (name.len == 0 or name.len > shm_name_bytes_max) return error.NameTooLong;
    for (name) |c| if (c == '/' or c == 0) return error.BadName;
    @memcpy(buf[0..shm_dir.len], shm_dir);
    @memcpy(buf[shm_dir.len..][0..name.len], name);
    buf[shm_dir.len + name.len] = 0;
    return @ptrCast(buf);
}

/// Creates (replacing any stale file of that name) and maps a zeroed segment.
pub fn shmCreate(name: []const u8, bytes: u64) !Segment {
    var path_buf: [shm_dir.len + shm_name_bytes_max + 1]u8 = undefined;
    const path = try shmPath(name, &path_buf);
    _ = linux.unlink(path);
    const rc = linux.open(path, .{ .ACCMODE = .RDWR, .CREAT = true, .EXCL = true, .CLOEXEC = true }, 0o600);
    if (errnoOf(rc) != .SUCCESS) return error.ShmOpenFailed;
    const fd: Fd = @intCast(rc);
    defer closeFd(fd);
    errdefer _ = linux.unlink(path);
    if (errnoOf(linux.ftruncate(fd, @intCast(bytes))) != .SUCCESS) return error.ShmTruncateFailed;
    // Reserve the pages now: a full /dev/shm (64 MiB in a default container) fails here with
    // ENOSPC (the caller falls back to TCP) instead of SIGBUS on first touch later.
    if (errnoOf(linux.fallocate(fd, 0, 0, @intCast(bytes))) != .SUCCESS) return error.ShmNoSpace;
    return mapShared(fd, bytes);
}

/// Maps an existing segment; its size must be exactly `bytes_expected` (0 = whatever it is).
/// Only a segment this process's user owns: the owner of a file in /dev/shm is the uid of the
/// process that made it, which a peer can't forge, so a same-host peer offering a ring or a
/// board proves it runs as our user (issue 18: another user completed the handshake).
pub fn shmOpen(name: []const u8, bytes_expected: u64) !Segment {
    var path_buf: [shm_dir.len + shm_name_bytes_max + 1]u8 = undefined;
    const path = try shmPath(name, &path_buf);
    const rc = linux.open(path, .{ .ACCMODE = .RDWR, .CLOEXEC = true, .NOFOLLOW = true }, 0);
    if (errnoOf(rc) != .SUCCESS) return error.ShmOpenFailed;
    const fd: Fd = @intCast(rc);
    defer closeFd(fd);
    var st: linux.Stat = undefined;
    if (errnoOf(linux.fstat(fd, &st)) != .SUCCESS) return error.ShmStatFailed;
    if (st.uid != linux.geteuid()) return error.ShmNotOurs;
    const bytes: u64 = @intCast(st.size);
    if (bytes == 0 or (bytes_expected != 0 and bytes != bytes_expected)) return error.ShmBadSize;
    return mapShared(fd, bytes);
}

fn mapShared(fd: Fd, bytes: u64) !Segment {
    // MAP_POPULATE: fault every page in now, not on the data path (a fresh 256 KiB ring slot
    // would otherwise cost ~64 page faults on each side the first time it is used).
    const rc = linux.mmap(null, @intCast(bytes), linux.PROT.READ | linux.PROT.WRITE, .{ .TYPE = .SHARED, .POPULATE = true }, fd, 0);
    if (errnoOf(rc) != .SUCCESS) return error.ShmMapFailed;
    return .{ .ptr = @ptrFromInt(rc), .bytes = bytes };
}

pub fn shmUnlink(name: []const u8) void {
    var path_buf: [shm_dir.len + shm_name_bytes_max + 1]u8 = undefined;
    const path = shmPath(name, &path_buf) catch return;
    _ = linux.unlink(path);
}

/// The first `buf.len` bytes of /dev/shm/`name` (fewer when shorter; empty when unreadable).
pub fn shmReadHead(name: []const u8, buf: []u8) []const u8 {
    var path_buf: [shm_dir.len + shm_name_bytes_max + 1]u8 = undefined;
    const path = shmPath(name, &path_buf) catch return buf[0..0];
    const rc = linux.open(path, .{ .ACCMODE = .RDONLY, .CLOEXEC = true, .NOFOLLOW = true }, 0);
    if (errnoOf(rc) != .SUCCESS) return buf[0..0];
    const fd: Fd = @intCast(rc);
    defer closeFd(fd);
    const n = linux.read(fd, buf.ptr, buf.len);
    if (errnoOf(n) != .SUCCESS) return buf[0..0];
    return buf[0..n];
}

/// Removes every /dev/shm entry whose name starts with `prefix` (what a killed rank left),
/// except those `keep` says to keep.
pub fn shmUnlinkPrefix(prefix: []const u8, keep: ?*const fn (name: []const u8) bool) u32 {
    var dir = std.fs.openDirAbsolute(shm_dir, .{ .iterate = true }) catch return 0;
    defer dir.close();
    var removed: u32 = 0;
    var it = dir.iterate();
    var entries_max: u32 = 1 << 16; // bounded scan
    while (entries_max > 0) : (entries_max -= 1) {
        const entry = (it.next() catch break) orelse break;
        if (!std.mem.startsWith(u8, entry.name, prefix)) continue;
        if (keep) |k| if (k(entry.name)) continue;
        dir.deleteFile(entry.name) catch continue;
        removed += 1;
    }
    return removed;
}

// ---- host identity ----

fn readSmallFile(path: [*:0]const u8, buf: []u8) []const u8 {
    const rc = linux.open(path, .{ .ACCMODE = .RDONLY, .CLOEXEC = true }, 0);
    if (errnoOf(rc) != .SUCCESS) return "";
    const fd: Fd = @intCast(rc);
    defer closeFd(fd);
    const n = linux.read(fd, buf.ptr, buf.len);
    if (errnoOf(n) != .SUCCESS) return "";
    return std.mem.trim(u8, buf[0..n], " \n\r\t");
}

/// A stable id of this host and shm namespace: boot id, hostname and /dev/shm's inode, so two
/// containers of one machine (different /dev/shm) differ. Never 0.
pub fn hostId() u64 {
    var hasher = std.hash.Wyhash.init(0x6d6f6f6e72696e67); // "moonring"
    var buf: [256]u8 = undefined;
    hasher.update(readSmallFile("/proc/sys/kernel/random/boot_id", &buf));
    var uts: linux.utsname = undefined;
    if (errnoOf(linux.uname(&uts)) == .SUCCESS) hasher.update(std.mem.sliceTo(&uts.nodename, 0));
    const rc = linux.open(shm_dir, .{ .ACCMODE = .RDONLY, .DIRECTORY = true, .CLOEXEC = true }, 0);
    if (errnoOf(rc) == .SUCCESS) {
        const fd: Fd = @intCast(rc);
        defer closeFd(fd);
        var st: linux.Stat = undefined;
        if (errnoOf(linux.fstat(fd, &st)) == .SUCCESS) {
            hasher.update(std.mem.asBytes(&st.ino));
            hasher.update(std.mem.asBytes(&st.dev));
        }
    }
    const id = hasher.final();
    return if (id == 0) 1 else id;
}

/// An unsigned decimal environment variable, or null (unset or not a number).
pub fn envU64(name: [*:0]const u8) ?u64 {
    const text = getenv(name) orelse return null;
    return std.fmt.parseInt(u64, text, 10) catch null;
}

/// Environment variable (process environment via libc), or null.
pub fn getenv(name: [*:0]const u8) ?[]const u8 {
    const value = std.c.getenv(name) orelse return null;
    return std.mem.sliceTo(value, 0);
}

test "sys: anonymous map is page aligned and zeroed" {
    const ptr = mapAnonymous(3 * page_bytes + 1).?;
    defer unmap(ptr, 3 * page_bytes + 1);
    try std.testing.expect(@intFromPtr(ptr) % page_bytes == 0);
    try std.testing.expectEqual(@as(u8, 0), ptr[3 * page_bytes]);
}

test "sys: host id is stable" {
    try std.testing.expectEqual(hostId(), hostId());
}

test "sys: shm segment create, open, unlink" {
    const name = "moonring-systest-0-seg";
    const a = try shmCreate(name, 8192);
    defer a.unmapSegment();
    const b = try shmOpen(name, 8192);
    defer b.unmapSegment();
    a.ptr[100] = 42;
    try std.testing.expectEqual(@as(u8, 42), b.ptr[100]);
    try std.testing.expectError(error.ShmBadSize, shmOpen(name, 4096));
    try std.testing.expectEqual(@as(u32, 1), shmUnlinkPrefix("moonring-systest-0-", null));
    try std.testing.expectError(error.ShmOpenFailed, shmOpen(name, 0));
}

test "sys: a segment another user owns is refused (same-host peers prove their uid)" {
    const name = "moonring-systest-0-foreign";
    const a = try shmCreate(name, 8192);
    defer a.unmapSegment();
    defer shmUnlink(name);
    var path_buf: [shm_dir.len + shm_name_bytes_max + 1]u8 = undefined;
    const rc = linux.open(try shmPath(name, &path_buf), .{ .ACCMODE = .RDWR, .CLOEXEC = true }, 0);
    if (errnoOf(rc) != .SUCCESS) return error.ShmOpenFailed;
    const fd: Fd = @intCast(rc);
    defer closeFd(fd);
    // Giving a file away needs root (CAP_CHOWN); without it there is no foreign file to test.
    if (errnoOf(linux.fchown(fd, 65534, 65534)) != .SUCCESS) return error.SkipZigTest;
    try std.testing.expectError(error.ShmNotOurs, shmOpen(name, 0));
}

test "sys: spinUntil polls through a spinHotFor window" {
    const Never = struct {
        fn ready(_: void) bool {
            return false;
        }
    };
    const start = monotonicNs();
    spinHotFor(2 * std.time.ns_per_ms);
    try std.testing.expect(!spinUntil({}, Never.ready));
    // Where hot windows apply (spin budget >= 20 us), the wait lasted the window.
    if (spinBudgetNs() >= 20 * std.time.ns_per_us) try std.testing.expect(monotonicNs() - start >= 2 * std.time.ns_per_ms);
}

// ---- other processes of this host (the board, transport/board.zig) ----

pub fn processId() i32 {
    return linux.getpid();
}

/// False once `pid` no longer exists (kill(pid, 0) == ESRCH); EPERM means it does.
pub fn processAlive(pid: i32) bool {
    if (pid <= 0) return false;
    return errnoOf(linux.kill(pid, 0)) != .SRCH;
}

pub fn yieldCpu() void {
    _ = linux.sched_yield();
}

pub const ProcessReadError = error{ NoProcess, Denied, Fault, Failed };

/// Copies `local.len` bytes at address `remote` of process `pid` into `local` (CMA,
/// process_vm_readv: one copy, no help from the other process).
pub fn processRead(pid: i32, local: []u8, remote: u64) ProcessReadError!void {
    var done: usize = 0;
    var calls: u32 = 0;
    while (done < local.len) : (calls += 1) {
        std.debug.assert(calls < 1 << 20); // progress per call, so bounded by the length
        const iov_local = [_]std.posix.iovec{.{ .base = local.ptr + done, .len = local.len - done }};
        const iov_remote = [_]std.posix.iovec_const{.{ .base = @ptrFromInt(remote + done), .len = local.len - done }};
        const rc = linux.process_vm_readv(pid, &iov_local, &iov_remote, 0);
        switch (errnoOf(rc)) {
            .SUCCESS => {
                if (rc == 0) return error.Fault;
                done += rc;
            },
            .INTR => {},
            .SRCH => return error.NoProcess,
            .PERM => return error.Denied,
            .FAULT => return error.Fault,
            else => return error.Failed,
        }
    }
}

/// CPUs online on this host: every process of the host sees the same number (unlike the
/// affinity mask of a bound thread), so ranks of one host can base a shared choice on it.
extern "c" fn sysconf(name: c_int) c_long;

pub fn onlineCpus() u32 {
    const sc_nprocessors_onln: c_int = 84; // glibc and musl on Linux (std.c._SC lacks it)
    const n = sysconf(sc_nprocessors_onln);
    return if (n > 0) @intCast(@min(n, std.math.maxInt(u32))) else 1;
}

/// Binds the calling thread to CPU `cpu` (like Open MPI's default --bind-to core for a rank:
/// two ranks that spin on shared memory must not share a CPU). False when it can't.
pub fn pinThread(cpu: u32) bool {
    var set = std.mem.zeroes(linux.cpu_set_t);
    const bits = @bitSizeOf(usize);
    if (cpu >= set.len * bits) return false;
    set[cpu / bits] |= @as(usize, 1) << @intCast(cpu % bits);
    linux.sched_setaffinity(0, &set) catch return false;
    return true;
}
