//! CPU reductions: `dst = dst op src` elementwise over raw bytes of one dtype, vectorised with
//! @Vector for every (redop, dtype) pair of src/ops/table.json.
//!  - f16 / bf16 are computed in f32 within one step and rounded back to nearest-even
//!    (bf16 is a u16 bit pattern: the high half of an f32).
//!  - min / max propagate NaN like torch (a NaN operand wins); ties (+0 / -0) keep `dst`.
//!  - integer sum / prod wrap; bool is 0 / non-zero, results are 0 / 1, and sum / prod / min /
//!    max mean the bitwise op RedOp.onBool() names (sum = or, prod = min = and, max = or).
//!  - avg reduces as sum; finalizeAvg() divides by the group size in the accumulation type.
//! Slices need no alignment. The vector body and the scalar tail run the same code (a tail
//! element is a 1-lane vector), so an element's result never depends on its position.
const std = @import("std");
const ops = @import("ops_table");

pub const DType = ops.DType;
pub const RedOp = ops.RedOp;

/// The elementwise operation a (redop, dtype) pair reduces with.
const Kind = enum { sum, prod, min, max, band, bor, bxor };

fn kindOf(dtype: DType, redop: RedOp) Kind {
    const effective = if (dtype.kind() == .bool) redop.onBool() else redop;
    return switch (effective) {
        .sum, .avg => .sum,
        .prod => .prod,
        .min => .min,
        .max => .max,
        .band => .band,
        .bor => .bor,
        .bxor => .bxor,
    };
}

/// How a dtype is stored in memory and what type one reduction step computes in.
fn Lane(comptime dtype: DType) type {
    return struct {
        const Storage = switch (dtype) {
            .f16 => f16,
            .bf16 => u16,
            .f32 => f32,
            .f64 => f64,
            .i8 => i8,
            .u8 => u8,
            .i16 => i16,
            .i32 => i32,
            .i64 => i64,
            .bool => u8,
        };
        const Compute = switch (dtype) {
            .f16, .bf16 => f32,
            else => Storage,
        };
        const is_float = dtype.kind() == .float;
        const is_bool = dtype.kind() == .bool;
        /// Lanes per vector: a full native vector of the compute type.
        const lanes: comptime_int = @max(4, std.simd.suggestVectorLength(Compute) orelse 4);

        comptime {
            std.debug.assert(@sizeOf(Storage) == dtype.bytes());
        }

        inline fn widen(comptime n: comptime_int, v: @Vector(n, Storage)) @Vector(n, Compute) {
            return switch (dtype) {
                .f16 => @floatCast(v),
                .bf16 => bf16ToF32(n, v),
                .bool => @select(u8, v != @as(@Vector(n, u8), @splat(0)), @as(@Vector(n, u8), @splat(1)), @as(@Vector(n, u8), @splat(0))),
                else => v,
            };
        }

        inline fn narrow(comptime n: comptime_int, v: @Vector(n, Compute)) @Vector(n, Storage) {
            return switch (dtype) {
                .f16 => @floatCast(v),
                .bf16 => f32ToBf16(n, v),
                else => v,
            };
        }
    };
}

/// bf16 bit patterns -> f32 (exact).
pub inline fn bf16ToF32(comptime n: comptime_int, bits: @Vector(n, u16)) @Vector(n, f32) {
    const wide: @Vector(n, u32) = bits;
    return @bitCast(wide << @splat(16));
}

/// f32 -> bf16 bit patterns, rounding to nearest, ties to even; NaN stays a (quiet) NaN.
pub inline fn f32ToBf16(comptime n: comptime_int, value: @Vector(n, f32)) @Vector(n, u16) {
    const bits: @Vector(n, u32) = @bitCast(value);
    const lsb = (bits >> @splat(16)) & @as(@Vector(n, u32), @splat(1));
    const rounded = (bits +% @as(@Vector(n, u32), @splat(0x7fff)) +% lsb) >> @splat(16);
    const quiet_nan = (bits >> @splat(16)) | @as(@Vector(n, u32), @splat(0x0040));
    return @truncate(@select(u32, value != value, quiet_nan, rounded));
}

inline fn apply(comptime C: type, comptime kind: Kind, comptime n: comptime_int, a: @Vector(n, C), b: @Vector(n, C)) @Vector(n, C) {
    const is_float = @typeInfo(C) == .float;
    return switch (kind) {
        .sum => if (is_float) a + b else a +% b,
        .prod => if (is_float) a * b else a *% b,
        // Explicit selects, not @min/@max: NaN wins, and +0/-0 ties keep `a` on every target.
        .min => if (is_float)
            @select(C, a != a, a, @select(C, b != b, b, @select(C, b < a, b, a)))
        else
            @min(a, b),
        .max => if (is_float)
            @select(C, a != a, a, @select(C, b != b, b, @select(C, b > a, b, a)))
        else
            @max(a, b),
        .band => if (is_float) unreachable else a & b,
        .bor => if (is_float) unreachable else a | b,
        .bxor => if (is_float) unreachable else a ^ b,
    };
}

/// Whether `redop` is defined for `dtype` (the table's `kinds`).
pub fn supported(dtype: DType, redop: RedOp) bool {
    return redop.supports(dtype.kind());
}

/// dst = dst op src, elementwise. `dst` and `src` hold the same number of whole elements and do
/// not overlap (or are the same slice).
pub fn reduceInto(dtype: DType, redop: RedOp, dst: []u8, src: []const u8) void {
    // In place is the two-source form with dst as the first source (each index read, then written).
    reduceTo(dtype, redop, dst, dst, src);
}

fn reduceTyped(comptime dtype: DType, comptime kind: Kind, dst: []u8, a_bytes: []const u8, b_bytes: []const u8) void {
    const L = Lane(dtype);
    const T = L.Storage;
    const count = dst.len / @sizeOf(T);
    const d: [*]align(1) T = @ptrCast(dst.ptr);
    const x: [*]align(1) const T = @ptrCast(a_bytes.ptr);
    const y: [*]align(1) const T = @ptrCast(b_bytes.ptr);
    const n = L.lanes;
    var i: usize = 0;
    while (i + n <= count) : (i += n) {
        const a: @Vector(n, T) = x[i..][0..n].*;
        const b: @Vector(n, T) = y[i..][0..n].*;
        d[i..][0..n].* = L.narrow(n, apply(L.Compute, kind, n, L.widen(n, a), L.widen(n, b)));
    }
    while (i < count) : (i += 1) {
        const a: @Vector(1, T) = x[i..][0..1].*;
        const b: @Vector(1, T) = y[i..][0..1].*;
        d[i..][0..1].* = L.narrow(1, apply(L.Compute, kind, 1, L.widen(1, a), L.widen(1, b)));
    }
}

/// dst = a op b, elementwise (dst may be a).
pub fn reduceTo(dtype: DType, redop: RedOp, dst: []u8, a: []const u8, b: []const u8) void {
    std.debug.assert(supported(dtype, redop));
    std.debug.assert(dst.len == a.len and dst.len == b.len);
    std.debug.assert(dst.len % dtype.bytes() == 0);
    if (dst.len == 0) return;
    const kind = kindOf(dtype, redop);
    switch (dtype) {
        inline else => |dt| switch (kind) {
            inline else => |k| {
                if (comptime (dt.kind() == .float and (k == .band or k == .bor or k == .bxor)))
                    unreachable
                else
                    reduceTyped(dt, k, dst, a, b);
            },
        },
    }
}

/// Makes bool elements canonical (0 / 1), as every reduction over two or more ranks leaves
/// them; a no-op for other dtypes. For a reduction over a group of one.
pub fn canonicalize(dtype: DType, buf: []u8) void {
    if (dtype != .bool) return;
    for (buf) |*b| b.* = @intFromBool(b.* != 0);
}

fn finalizeTyped(comptime dtype: DType, buf: []u8, group_size: u32) void {
    const L = Lane(dtype);
    const T = L.Storage;
    const C = L.Compute;
    const count = buf.len / @sizeOf(T);
    const p: [*]align(1) T = @ptrCast(buf.ptr);
    const n = L.lanes;
    const divisor_n: @Vector(n, C) = @splat(@floatFromInt(group_size));
    const divisor_1: @Vector(1, C) = @splat(@floatFromInt(group_size));
    var i: usize = 0;
    while (i + n <= count) : (i += n) {
        const a: @Vector(n, T) = p[i..][0..n].*;
        p[i..][0..n].* = L.narrow(n, L.widen(n, a) / divisor_n);
    }
    while (i < count) : (i += 1) {
        const a: @Vector(1, T) = p[i..][0..1].*;
        p[i..][0..1].* = L.narrow(1, L.widen(1, a) / divisor_1);
    }
}

/// The last step of avg: buf[i] = buf[i] / group_size, computed in the dtype's accumulation type
/// (f32 for f16 / bf16). Float dtypes only.
pub fn finalizeAvg(dtype: DType, buf: []u8, group_size: u32) void {
    std.debug.assert(dtype.kind() == .float);
    std.debug.assert(group_size > 0);
    std.debug.assert(buf.len % dtype.bytes() == 0);
    switch (dtype) {
        inline .f16, .bf16, .f32, .f64 => |dt| finalizeTyped(dt, buf, group_size),
        else => unreachable,
    }
}

// ---------------------------------------------------------------------------------------------
// Tests: every supported pair against an independent scalar reference (f64 for floats, i128 for
// integers), random data with specials, lengths around the vector width, unaligned slices.

const testing = std.testing;

/// Reference rounding of an f64 to bf16 bits, by comparing the two neighbouring bf16 values
/// (independent of f32ToBf16's bit trick). `x` is the exact result of one op on bf16 operands
/// rounded to f64, where double rounding is innocuous.
fn refToBf16(x: f64) u16 {
    if (std.math.isNan(x)) return 0x7fc0;
    const f: f32 = @floatCast(x); // innocuous double rounding (24 >= 2 * 8 + 2)
    const bits: u32 = @bitCast(f);
    const lo: u16 = @truncate(bits >> 16);
    if (std.math.isInf(f) or (bits & 0xffff) == 0) return lo;
    const hi: u16 = lo + 1;
    const lo_v = refBf16Value(lo);
    const hi_v = refBf16Value(hi);
    const fv: f64 = f;
    const d_lo = @abs(fv - lo_v);
    const d_hi = @abs(hi_v - fv);
    if (d_lo < d_hi) return lo;
    if (d_hi < d_lo) return hi;
    return if (lo & 1 == 0) lo else hi;
}

/// The value of bf16 bits as f64; the pattern one past the largest finite means 2^128 (for
/// distances: where rounding overflows to infinity).
fn refBf16Value(b: u16) f64 {
    if (b & 0x7fff == 0x7f80) {
        const big = std.math.ldexp(@as(f64, 1.0), 128);
        return if (b & 0x8000 != 0) -big else big;
    }
    const f: f32 = @bitCast(@as(u32, b) << 16);
    return f;
}

fn refFloatIn(dtype: DType, bytes: []const u8) f64 {
    return switch (dtype) {
        .f16 => @floatCast(std.mem.bytesToValue(f16, bytes)),
        .bf16 => @floatCast(@as(f32, @bitCast(@as(u32, std.mem.readInt(u16, bytes[0..2], .little)) << 16))),
        .f32 => @floatCast(std.mem.bytesToValue(f32, bytes)),
        .f64 => std.mem.bytesToValue(f64, bytes),
        else => unreachable,
    };
}

fn refFloatOut(dtype: DType, x: f64, out: []u8) void {
    switch (dtype) {
        .f16 => @memcpy(out[0..2], std.mem.asBytes(&@as(f16, @floatCast(x)))),
        .bf16 => std.mem.writeInt(u16, out[0..2], refToBf16(x), .little),
        .f32 => @memcpy(out[0..4], std.mem.asBytes(&@as(f32, @floatCast(x)))),
        .f64 => @memcpy(out[0..8], std.mem.asBytes(&x)),
        else => unreachable,
    }
}

fn refIntIn(dtype: DType, bytes: []const u8) i128 {
    return switch (dtype) {
        .i8 => std.mem.readInt(i8, bytes[0..1], .little),
        .u8, .bool => std.mem.readInt(u8, bytes[0..1], .little),
        .i16 => std.mem.readInt(i16, bytes[0..2], .little),
        .i32 => std.mem.readInt(i32, bytes[0..4], .little),
        .i64 => std.mem.readInt(i64, bytes[0..8], .little),
        else => unreachable,
    };
}

fn refIntOut(dtype: DType, x: i128, out: []u8) void {
    const bits: u128 = @bitCast(x);
    switch (dtype) {
        .i8, .u8, .bool => out[0] = @truncate(bits),
        .i16 => std.mem.writeInt(u16, out[0..2], @truncate(bits), .little),
        .i32 => std.mem.writeInt(u32, out[0..4], @truncate(bits), .little),
        .i64 => std.mem.writeInt(u64, out[0..8], @truncate(bits), .little),
        else => unreachable,
    }
}

/// The reference for one element: out = a op b.
pub fn refElement(dtype: DType, redop: RedOp, a: []const u8, b: []const u8, out: []u8) void {
    switch (dtype.kind()) {
        .float => {
            const x = refFloatIn(dtype, a);
            const y = refFloatIn(dtype, b);
            const r: f64 = switch (redop) {
                .sum, .avg => x + y,
                .prod => x * y,
                .min => if (std.math.isNan(x) or std.math.isNan(y)) std.math.nan(f64) else if (y < x) y else x,
                .max => if (std.math.isNan(x) or std.math.isNan(y)) std.math.nan(f64) else if (y > x) y else x,
                else => unreachable,
            };
            refFloatOut(dtype, r, out);
        },
        .int => {
            const x = refIntIn(dtype, a);
            const y = refIntIn(dtype, b);
            const r: i128 = switch (redop) {
                .sum => x + y,
                .prod => x * y,
                .min => @min(x, y),
                .max => @max(x, y),
                .band => x & y,
                .bor => x | y,
                .bxor => x ^ y,
                else => unreachable,
            };
            refIntOut(dtype, r, out);
        },
        .bool => {
            const x = a[0] != 0;
            const y = b[0] != 0;
            const r = switch (redop) {
                .sum, .max, .bor => x or y,
                .prod, .min, .band => x and y,
                .bxor => x != y,
                else => unreachable,
            };
            out[0] = @intFromBool(r);
        },
    }
}

/// Whether two encoded elements are equal as values (NaN equals NaN, +0 equals -0).
pub fn refEqual(dtype: DType, a: []const u8, b: []const u8) bool {
    if (dtype.kind() != .float) return std.mem.eql(u8, a, b);
    const x = refFloatIn(dtype, a);
    const y = refFloatIn(dtype, b);
    if (std.math.isNan(x) or std.math.isNan(y)) return std.math.isNan(x) and std.math.isNan(y);
    return x == y;
}

/// Random element bytes; floats include specials now and then.
fn randomElement(random: std.Random, dtype: DType, out: []u8) void {
    random.bytes(out);
    switch (dtype) {
        .f16, .bf16, .f32, .f64 => {
            const specials = [_]f64{ 0.0, -0.0, std.math.inf(f64), -std.math.inf(f64), std.math.nan(f64), 1.0, -1.0 };
            switch (random.uintLessThan(u8, 16)) {
                0 => refFloatOut(dtype, specials[random.uintLessThan(usize, specials.len)], out),
                1...7 => refFloatOut(dtype, (random.float(f64) - 0.5) * 200.0, out),
                else => {}, // random bits: any exponent, subnormals, NaN payloads
            }
        },
        .bool => out[0] = switch (random.uintLessThan(u8, 4)) {
            0 => 0,
            1 => 1,
            2 => 0,
            else => out[0], // non-canonical true
        },
        else => {},
    }
}

test "reduceInto matches the scalar reference for every supported pair" {
    var prng = std.Random.DefaultPrng.init(0x5eed_0001);
    const random = prng.random();
    const lengths = [_]usize{ 0, 1, 3, 7, 8, 15, 16, 17, 31, 33, 64, 65, 127, 257 };
    var dst_buf: [257 * 8 + 8]u8 = undefined;
    var src_buf: [257 * 8 + 8]u8 = undefined;
    var orig_buf: [257 * 8]u8 = undefined;
    var pairs: u32 = 0;
    inline for (std.meta.fields(DType)) |df| {
        const dtype: DType = @enumFromInt(df.value);
        inline for (std.meta.fields(RedOp)) |rf| {
            const redop: RedOp = @enumFromInt(rf.value);
            if (supported(dtype, redop)) {
                pairs += 1;
                const es = dtype.bytes();
                for (lengths, 0..) |len, li| {
                    // Unaligned: offsets 0..7 bytes into the buffers, different for dst and src.
                    const dst_off = li % 8;
                    const src_off = (li * 3 + 1) % 8;
                    const dst = dst_buf[dst_off..][0 .. len * es];
                    const src = src_buf[src_off..][0 .. len * es];
                    for (0..len) |i| {
                        randomElement(random, dtype, dst[i * es ..][0..es]);
                        randomElement(random, dtype, src[i * es ..][0..es]);
                    }
                    @memcpy(orig_buf[0 .. len * es], dst);
                    reduceInto(dtype, redop, dst, src);
                    for (0..len) |i| {
                        var want: [8]u8 = undefined;
                        refElement(dtype, redop, orig_buf[i * es ..][0..es], src[i * es ..][0..es], want[0..es]);
                        if (!refEqual(dtype, want[0..es], dst[i * es ..][0..es])) {
                            std.debug.print("reduceInto {s} {s} len {d} element {d}: a={x} b={x} want={x} got={x}\n", .{
                                @tagName(redop),                 @tagName(dtype),        len, i,
                                orig_buf[i * es ..][0..es],      src[i * es ..][0..es], want[0..es],
                                dst[i * es ..][0..es],
                            });
                            return error.TestUnexpectedResult;
                        }
                    }
                }
            }
        }
    }
    try testing.expectEqual(@as(u32, 4 * 5 + 5 * 7 + 1 * 7), pairs); // floats 5 ops, ints 7, bool 7
}

test "finalizeAvg divides in the accumulation type" {
    var prng = std.Random.DefaultPrng.init(0x5eed_0002);
    const random = prng.random();
    var buf: [100 * 8 + 8]u8 = undefined;
    var orig: [100 * 8]u8 = undefined;
    inline for (.{ DType.f16, DType.bf16, DType.f32, DType.f64 }) |dtype| {
        const es = dtype.bytes();
        for ([_]u32{ 1, 2, 3, 5, 7, 64 }) |group_size| {
            for ([_]usize{ 0, 1, 9, 100 }, 0..) |len, li| {
                const b = buf[li % 8 + 1 ..][0 .. len * es];
                for (0..len) |i| randomElement(random, dtype, b[i * es ..][0..es]);
                @memcpy(orig[0 .. len * es], b);
                finalizeAvg(dtype, b, group_size);
                for (0..len) |i| {
                    var want: [8]u8 = undefined;
                    // x / n in f64 rounded once to the dtype (innocuous: f32 >= 2p + 2 for f16/bf16).
                    refFloatOut(dtype, refFloatIn(dtype, orig[i * es ..][0..es]) / @as(f64, @floatFromInt(group_size)), want[0..es]);
                    try testing.expect(refEqual(dtype, want[0..es], b[i * es ..][0..es]));
                }
            }
        }
    }
}

test "bf16 rounding: ties to even, overflow to infinity, NaN stays NaN" {
    const cases = [_]struct { f: u32, want: u16 }{
        .{ .f = 0x3f808000, .want = 0x3f80 }, // tie, even below
        .{ .f = 0x3f818000, .want = 0x3f82 }, // tie, odd below -> up
        .{ .f = 0x3f808001, .want = 0x3f81 }, // above tie
        .{ .f = 0x7f7fffff, .want = 0x7f80 }, // rounds to +inf
        .{ .f = 0xff7f7fff, .want = 0xff7f }, // stays finite
        .{ .f = 0x7f800000, .want = 0x7f80 },
        .{ .f = 0x00000001, .want = 0x0000 }, // tiny subnormal
    };
    for (cases) |c| {
        const got = f32ToBf16(1, @as(@Vector(1, f32), @bitCast(@as(@Vector(1, u32), @splat(c.f)))))[0];
        try testing.expectEqual(c.want, got);
        try testing.expectEqual(c.want, refToBf16(@as(f32, @bitCast(c.f))));
    }
    const nan = f32ToBf16(1, @splat(std.math.nan(f32)))[0];
    try testing.expect(nan & 0x7f80 == 0x7f80 and nan & 0x007f != 0);
}
