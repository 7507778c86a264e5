/**
 * Lease renewal: while the driver acts on a run it renews the run's lease before a third
 * of it is spent, and in between looks whether another worker took the run over (a
 * cancel deletes the lease too), so that a lost run stops at once, not at its next commit;
 * the same read tells the driver when its run was paused.
 *
 * @module
 */
import * as keys from "../../kv/keys.ts";
import type { Lease, PauseState } from "../../model/records.ts";
import type { Clock } from "../../model/clock.ts";
import type { Kv, KvKey } from "../../kv/kv.ts";

/** What renewal tells its driver, and asks it. */
export interface LeaseHooks {
  /** Whether the driver still acts on the run. */
  acting(): boolean;
  /** Writes the lease with its new deadline (with the checkpoints, fenced like them). */
  renew(lease: Lease): void;
  /** The lease is someone else's now, or gone. */
  lost(): void;
  /** The run was paused (see `store/pause.ts`). */
  paused(): void;
}

/** Renews one run's lease while its driver acts on it. */
export class LeaseRenewal {
  readonly #kv: Kv;
  readonly #clock: Clock;
  readonly #key: KvKey;
  readonly #pauseKey: KvKey;
  readonly #leaseMs: number;
  readonly #hooks: LeaseHooks;
  #lease: Lease;
  #timer: ReturnType<typeof setInterval> | undefined;

  /**
   * Creates the renewal of a claimed run's lease.
   *
   * @param claim the run's id, its lease, its length, and where it is stored
   */
  constructor(
    claim: { kv: Kv; clock: Clock; runId: string; lease: Lease; leaseMs: number },
    hooks: LeaseHooks,
  ) {
    this.#kv = claim.kv;
    this.#clock = claim.clock;
    this.#key = keys.lease(claim.runId);
    this.#pauseKey = keys.runPause(claim.runId);
    this.#lease = claim.lease;
    this.#leaseMs = claim.leaseMs;
    this.#hooks = hooks;
  }

  /** Starts looking at the lease, a few times per lease length. */
  start(): void {
    this.#timer = setInterval(() => this.#tick(), Math.min(1000, this.#leaseMs / 4));
  }

  /** Stops. */
  stop(): void {
    clearInterval(this.#timer);
  }

  #tick(): void {
    if (!this.#hooks.acting()) return;
    const now = this.#clock.now();
    if (this.#lease.deadline - now < (this.#leaseMs * 2) / 3) {
      this.#lease = { ...this.#lease, deadline: now + this.#leaseMs };
      this.#hooks.renew(this.#lease);
      return;
    }
    // the same read tells of a pause: the driver then finishes what runs and lets go
    this.#kv.getMany<[Lease, PauseState]>([this.#key, this.#pauseKey]).then(([entry, pause]) => {
      if (!this.#hooks.acting()) return;
      if (entry.value?.owner !== this.#lease.owner) this.#hooks.lost();
      else if (pause.value !== null) this.#hooks.paused();
    }).catch(() => {});
  }
}
