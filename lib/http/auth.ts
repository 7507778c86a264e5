/**
 * Bearer-token auth of the HTTP service. With a write token, every mutation needs
 * `Authorization: Bearer <token>`; with a read token, reads need it (or the write token)
 * too. Tokens are compared in constant time and never appear in an answer or a log line.
 *
 * @module
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { HttpError } from "./errors.ts";

/** What a route needs: nothing, the right to read, or the right to change. */
export type Access = "public" | "read" | "write";

/** The tokens of a service; an unset or empty token does not guard anything. */
export interface Tokens {
  /** Guards mutations (and reads, as it implies read). */
  token?: string;
  /** Guards reads, when set. */
  readToken?: string;
}

/** Checks requests against a service's tokens. */
export class Auth {
  readonly #write: Uint8Array | null;
  readonly #read: Uint8Array | null;

  /**
   * Creates it; only digests of the tokens are kept.
   *
   * @param tokens the write and read tokens
   */
  constructor(tokens: Tokens) {
    this.#write = tokens.token ? digest(tokens.token) : null;
    this.#read = tokens.readToken ? digest(tokens.readToken) : null;
  }

  /** Whether mutations need a token. */
  get guardsWrites(): boolean {
    return this.#write !== null;
  }

  /** Whether reads need a token. */
  get guardsReads(): boolean {
    return this.#read !== null;
  }

  /**
   * Checks that a request's `Authorization` header grants `access`.
   *
   * @param header the `Authorization` header, if any
   * @param access what the route needs
   * @throws {HttpError} 401 without a bearer token, 403 with a wrong one
   */
  check(header: string | null | undefined, access: Access): void {
    const accepted = access === "write"
      ? [this.#write]
      : access === "read" && this.#read
      ? [this.#read, this.#write]
      : [];
    const guards = accepted.filter((d): d is Uint8Array => d !== null);
    if (guards.length === 0) return;
    const match = /^Bearer +(\S+) *$/i.exec(header ?? "");
    if (!match) {
      throw new HttpError(
        401,
        "unauthorized",
        `This ${
          access === "write" ? "change" : "read"
        } needs an Authorization: Bearer <token> header`,
        { headers: { "www-authenticate": 'Bearer realm="kvflow"' } },
      );
    }
    const given = digest(match[1]);
    // Compare with every accepted token, always, so timing says nothing about which.
    let ok = false;
    for (const guard of guards) ok = timingSafeEqual(given, guard) || ok;
    if (!ok) {
      throw new HttpError(403, "forbidden", "The bearer token does not grant this request");
    }
  }
}

// Digests have one length whatever the token's, so the comparison leaks no length either.
function digest(token: string): Uint8Array {
  return createHash("sha256").update(token, "utf8").digest();
}
