/**
 * Headless Chromium for the dashboard's browser tests: Debian's `chromium` (or
 * `KVFLOW_CHROMIUM`), driven by playwright-core, a fresh profile per test, screenshots under
 * `tests/.tmp/screenshots/`. Without Chromium the tests are skipped with a loud note, except
 * in CI (`CI=true`), where they fail.
 *
 * @module
 */
import { type BrowserContext, chromium, type Page } from "playwright-core";

/** Where the browser is. */
export const CHROMIUM = Deno.env.get("KVFLOW_CHROMIUM") ?? "/usr/bin/chromium";

/** Where screenshots go. */
export const SCREENSHOTS = new URL("../.tmp/screenshots/", import.meta.url);

/** Whether Chromium is there. */
export const chromiumFound = await Deno.stat(CHROMIUM).then(() => true, () => false);

const inCi = Deno.env.get("CI") === "true";

/** Whether a browser test is skipped here: no Chromium, and not in CI. */
export const skipBrowser = !chromiumFound && !inCi;

if (skipBrowser) {
  console.error(
    [
      "",
      "!".repeat(78),
      `!! BROWSER TESTS SKIPPED: no Chromium at ${CHROMIUM}.`,
      "!! Install it with: apt-get update && apt-get install -y --no-install-recommends chromium",
      "!! (or point KVFLOW_CHROMIUM at a Chromium binary). In CI (CI=true) they fail instead.",
      "!".repeat(78),
      "",
    ].join("\n"),
  );
}

/** The path of a screenshot by name. */
export function shot(name: string): string {
  return new URL(name, SCREENSHOTS).pathname;
}

/** A headless browser with one tab, the errors its pages report, and its own profile. */
export interface Browser extends AsyncDisposable {
  context: BrowserContext;
  tab: Page;
  /** Page errors and console errors, in order. */
  problems: string[];
}

/**
 * Starts headless Chromium on a fresh profile; disposing it closes the browser and deletes
 * the profile.
 *
 * @throws {Error} when Chromium is missing (in CI, where browser tests must run)
 */
export async function openBrowser(): Promise<Browser> {
  if (!chromiumFound) {
    throw new Error(
      `CI needs Chromium at ${CHROMIUM} for the browser tests: .ci/run installs Debian's chromium`,
    );
  }
  const profile = await Deno.makeTempDir({ prefix: "kvflow-chromium-" });
  await Deno.mkdir(SCREENSHOTS, { recursive: true });
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    viewport: { width: 1280, height: 900 },
  });
  const tab = context.pages()[0] ?? await context.newPage();
  const problems: string[] = [];
  tab.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  tab.on("console", (m) => {
    if (m.type() === "error") problems.push(`console: ${m.text()}`);
  });
  return {
    context,
    tab,
    problems,
    async [Symbol.asyncDispose]() {
      await context.close();
      await Deno.remove(profile, { recursive: true });
    },
  };
}
