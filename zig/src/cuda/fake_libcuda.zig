//! The fake driver of fake_api.zig as a shared library exporting the real driver symbol names
//! (cuMemAlloc_v2, ...): set MOONRING_CUDA_DRIVER=path/to/it and libmoonring "finds a GPU", so
//! tests/gpu runs end to end without one (scripts/gpu/fake-check.sh builds and runs it). Only
//! the kernels are CPU stand-ins; the loader, exports, FFI signatures and the test harness are
//! the real ones.
const std = @import("std");
const driver = @import("driver.zig");
const fake = @import("fake_api.zig").Fake(@import("reduce"));

comptime {
    @setEvalBranchQuota(10_000);
    for (std.meta.fields(driver.Api)) |field| {
        const function = @field(fake.api, field.name);
        if (@typeInfo(@TypeOf(function)) == .optional) {
            if (function) |f| @export(f, .{ .name = driver.symbolsOf(field.name)[0] });
        } else {
            @export(function, .{ .name = driver.symbolsOf(field.name)[0] });
        }
    }
    for (fake.extra_symbols) |entry| @export(entry[1], .{ .name = entry[0] });
}
