/**
 * Artifacts: bytes a step stores with its run (a PDF, a CSV), kept in chunks and
 * handed around by reference.
 *
 * @module
 */
import type { ArtifactRef } from "../define/context.ts";
import { UsageError } from "./errors.ts";
import type { BlobRef } from "./records.ts";

/** What kvflow stores about an artifact. */
export interface ArtifactMeta {
  /** The run. */
  runId: string;
  /** Unique within the run. */
  name: string;
  /** MIME type. */
  contentType: string;
  /** Bytes. */
  size: number;
  /** Where the bytes are. */
  blob: BlobRef;
  /** The step that stored it. */
  step: string;
  /** The fan-out item that stored it, or -1. */
  item: number;
  /** When it was stored. */
  createdAt: number;
}

// deno-lint-ignore no-control-regex
const ARTIFACT_NAME = /^[^/\\\u0000-\u001f]{1,200}$/;

/**
 * Checks an artifact name: 1 to 200 characters, no slash, backslash or control character.
 *
 * @throws {UsageError} on an invalid name
 */
export function checkArtifactName(name: unknown): string {
  if (typeof name !== "string" || !ARTIFACT_NAME.test(name) || name === "." || name === "..") {
    throw new UsageError(
      `Invalid artifact name ${JSON.stringify(name)}: use 1 to 200 characters without '/', '\\'` +
        " or control characters",
    );
  }
  return name;
}

/** The reference a step gets back for stored artifact metadata. */
export function artifactRef(meta: ArtifactMeta): ArtifactRef {
  return {
    artifact: true,
    runId: meta.runId,
    name: meta.name,
    contentType: meta.contentType,
    size: meta.size,
  };
}
