/**
 * Committing atomic operations when several KV handles share one SQLite file.
 *
 * @module
 */

/**
 * Commits an atomic operation, retrying while SQLite answers "database is locked". With
 * several KV handles on one file (several workers, or engines in one process), a commit
 * whose checks read a snapshot that another handle wrote to meanwhile throws that error
 * instead of committing or failing its checks. The write was rolled back, and each retry
 * is a new transaction that evaluates the checks afresh.
 *
 * @throws whatever the commit throws, once retrying does not help
 */
export async function commitAtomic(
  op: Deno.AtomicOperation,
): Promise<Deno.KvCommitResult | Deno.KvCommitError> {
  for (let tries = 1;; tries++) {
    try {
      return await op.commit();
    } catch (error) {
      if (tries >= 25 || !/database is locked/.test(String(error))) throw error;
      await new Promise((r) => setTimeout(r, 2 + Math.random() * 4 * Math.min(tries, 5)));
    }
  }
}
