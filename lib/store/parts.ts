/**
 * What the store's commands (`commands.ts`, `requeue.ts`, `cancel.ts`) use of the store: its
 * KV, its clock, its group committer, and how to wake a run. The `Store` front has them all;
 * the commands depend on this, not on the front, so the folder reads from the bottom up.
 *
 * @module
 */
import type { AtomicOperation, Kv } from "../kv/kv.ts";
import type { GroupCommitter } from "../kv/commit.ts";
import type { Clock } from "../model/clock.ts";
import type { LimitViews } from "./limit_view.ts";

/** The parts of a store its commands use. */
export interface StoreParts {
  /** The KV database. */
  readonly kv: Kv;
  /** Whether queue messages wake runs (the KV has queues). */
  readonly queues: boolean;
  /** Shares one KV commit among checkpoints and claims of different runs. */
  readonly committer: GroupCommitter;
  /**
   * Commits claims: the committer itself locally; on remote KV each claim on its own, since
   * engines racing for runs lose claims, and a lost claim in a group fails the group, whose
   * every part is then sent again alone.
   */
  readonly claims: GroupCommitter;
  /** The clock that decides when work is due. */
  readonly clock: Clock;
  /** What this process knows of its run limits' keys (`limit_view.ts`). */
  readonly limits: LimitViews;
  /** Adds to an atomic operation a queue message that wakes a run, where the KV has queues. */
  wake(op: AtomicOperation, runId: string, delayMs: number): void;
  /**
   * Set when the database had no schema version and no runs as this process opened it:
   * the next run created here writes the version in its creation commit, so that a later
   * process (a restart) finds the database current and has nothing to migrate.
   */
  schemaUnwritten?: boolean;
}
