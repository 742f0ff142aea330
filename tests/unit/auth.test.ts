import { describe, expect, test } from "bun:test";
import { ApiError } from "../../src/errors";
import { authorize, expectedBearer } from "../../src/server/auth";

function refusal(expected: Buffer | null, header: string | null | undefined): ApiError | null {
  try {
    authorize(expected, header);
    return null;
  } catch (e) {
    return e as ApiError;
  }
}

describe("authorize", () => {
  const expected = expectedBearer("s3cret");
  test("no token set: every request passes", () => {
    expect(expectedBearer(undefined)).toBeNull();
    expect(expectedBearer("")).toBeNull();
    expect(refusal(null, undefined)).toBeNull();
    expect(refusal(null, "Bearer whatever")).toBeNull();
  });
  test("the exact header passes", () => {
    expect(refusal(expected, "Bearer s3cret")).toBeNull();
  });
  test("missing, same-length wrong, shorter, longer and unprefixed headers are 401 unauthorized", () => {
    for (const h of [undefined, null, "", "Bearer s3creT", "Bearer s3cre", "Bearer s3cret ", "s3cret", "bearer s3cret"]) {
      const e = refusal(expected, h);
      expect(e).toBeInstanceOf(ApiError);
      expect(e!.status).toBe(401);
      expect(e!.code).toBe("unauthorized");
    }
  });
});
