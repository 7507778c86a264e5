/**
 * Files the pipeline leaves under `out/`: written whole or not at all, so a crash never
 * leaves half a PDF or half a mail for a person (or a resume) to find.
 *
 * @module
 */
import { dirname } from "node:path";

/**
 * Writes a file through a temporary name and a rename.
 *
 * @param path where the file goes; its directory is created if missing
 * @param data the contents
 */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  await Deno.mkdir(dirname(path), { recursive: true });
  const temporary = `${path}.${crypto.randomUUID().slice(0, 8)}.tmp`;
  try {
    if (typeof data === "string") await Deno.writeTextFile(temporary, data);
    else await Deno.writeFile(temporary, data);
    await Deno.rename(temporary, path);
  } catch (error) {
    await Deno.remove(temporary).catch(() => {});
    throw error;
  }
}

/**
 * Reads a text file, or returns `undefined` when there is none.
 *
 * @param path the file
 * @returns its text, or undefined
 */
export async function readTextIfAny(path: string): Promise<string | undefined> {
  try {
    return await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return undefined;
    throw error;
  }
}

/**
 * A name safe as a file name: letters, digits, `.`, `_` and `-`, anything else as `-`.
 *
 * @param name an id such as a manager's
 * @returns the file-safe form
 */
export function fileSafe(name: string): string {
  return name.replace(/[^A-Za-z0-9._-]/g, "-").replace(/^\.+/, "_");
}
