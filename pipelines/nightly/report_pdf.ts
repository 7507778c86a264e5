/**
 * A manager's nightly report as a PDF (pdf-lib): the team table with totals, then each
 * salesperson's lines. The same input gives the same bytes: the document's dates come
 * from the logical date, and nothing in it depends on the run, the clock or the machine.
 *
 * @module
 */
import type { Color, PDFDocument, PDFFont, PDFPage } from "pdf-lib";
import { longDate } from "./dates.ts";
import { CURRENCY, formatBps, formatCents } from "./money.ts";
import type { Commission, CommissionLine } from "./commissions.ts";
import type { Manager } from "./pull_sales.ts";

/** What one report shows. */
export interface ReportInput {
  /** Whose team. */
  manager: Manager;
  /** The sales day, `YYYY-MM-DD`. */
  date: string;
  /** The run's logical date, `YYYY-MM-DD`. */
  logicalDate: string;
  /**
   * Names the report in its footer: derived from the pipeline, the logical date and the
   * manager (never from the run id), so a rerun or backfill of the night gives the same bytes.
   */
  reportId: string;
  /** The team's commissions, one per salesperson. */
  team: readonly Commission[];
}

const A4 = [595.28, 841.89] as const;
const MARGIN = 48;

/** A table column: its heading, and the x its text starts at (left) or ends at (right). */
interface Column {
  readonly label: string;
  readonly x: number;
  readonly align: "left" | "right";
}

const RIGHT = A4[0] - MARGIN;

const TEAM_COLUMNS: readonly Column[] = [
  { label: "Salesperson", x: MARGIN, align: "left" },
  { label: "Sales", x: 250, align: "right" },
  { label: "Returns", x: 315, align: "right" },
  { label: "Net", x: 385, align: "right" },
  { label: "Quota used", x: 455, align: "right" },
  { label: "Commission", x: RIGHT, align: "right" },
];

const LINE_COLUMNS: readonly Column[] = [
  { label: "Time", x: MARGIN + 10, align: "left" },
  { label: "Product", x: MARGIN + 40, align: "left" },
  { label: "Category", x: 250, align: "left" },
  { label: "Amount", x: 385, align: "right" },
  { label: "Rate", x: 455, align: "right" },
  { label: "Commission", x: RIGHT, align: "right" },
];

/**
 * Renders a report.
 *
 * @example
 * ```ts ignore
 * import { renderReport } from "./report_pdf.ts";
 * const pdf = await renderReport({ manager, date: "2026-10-31", logicalDate: "2026-11-01",
 *   reportId: "nightly/2026-11-01/ada.berg", team });
 * ```
 *
 * @param input the manager, the dates and the team's commissions
 * @returns the PDF's bytes
 */
export async function renderReport(input: ReportInput): Promise<Uint8Array> {
  // Loaded on first use: every CLI command imports the pipeline registry, few render PDFs.
  const { PDFDocument, rgb, StandardFonts } = await import("pdf-lib");
  const doc = await PDFDocument.create();
  const stamp = new Date(`${input.logicalDate}T00:00:00Z`);
  doc.setTitle(`Nightly sales report, ${input.manager.region}, ${input.date}`);
  doc.setAuthor("kvflow nightly pipeline");
  doc.setCreator("kvflow");
  doc.setProducer("kvflow with pdf-lib");
  doc.setCreationDate(stamp);
  doc.setModificationDate(stamp);
  const pen = new Pen(
    doc,
    await doc.embedFont(StandardFonts.Helvetica),
    await doc.embedFont(StandardFonts.HelveticaBold),
    rgb(0.4, 0.4, 0.4),
  );

  pen.text("Nightly sales report", { size: 18, bold: true, gap: 24 });
  pen.text(`${input.manager.region} region · manager ${input.manager.name}`, { size: 12 });
  pen.text(`Sales of ${longDate(input.date)} · amounts in ${CURRENCY}`, { size: 12, gap: 28 });
  teamTable(pen, input.team);
  for (const commission of input.team) salespersonLines(pen, commission);
  pen.footers(
    `Report ${input.reportId} · logical date ${input.logicalDate} · kvflow nightly pipeline`,
  );
  return await doc.save();
}

/** One row per salesperson, the team's totals, and what the columns mean. */
function teamTable(pen: Pen, team: readonly Commission[]): void {
  pen.text("Team", { size: 13, bold: true, gap: 18 });
  pen.row(TEAM_COLUMNS.map((c) => c.label), TEAM_COLUMNS, { bold: true });
  for (const c of team) {
    pen.row([
      c.name,
      formatCents(c.salesCents),
      formatCents(c.returnsCents),
      formatCents(c.netCents),
      c.monthlyQuotaCents > 0
        ? `${Math.round((c.monthToDateCents / c.monthlyQuotaCents) * 100)}%`
        : "-",
      formatCents(c.commissionCents),
    ], TEAM_COLUMNS);
  }
  const total = (pick: (c: Commission) => number) => team.reduce((a, c) => a + pick(c), 0);
  pen.rule();
  pen.row(
    [
      "Team total",
      formatCents(total((c) => c.salesCents)),
      formatCents(total((c) => c.returnsCents)),
      formatCents(total((c) => c.netCents)),
      "",
      formatCents(total((c) => c.commissionCents)),
    ],
    TEAM_COLUMNS,
    { bold: true, gap: 18 },
  );
  pen.text(
    "Quota used: month-to-date net sales after the night, as a share of the monthly quota.",
    { size: 8, grey: true },
  );
  pen.text(
    "acc.: accelerated rate, above the quota. split: the sale crossed the quota. Returns are clawed back at the base rate.",
    { size: 8, grey: true, gap: 26 },
  );
}

/** A salesperson's sales and returns of the night, each with its rate and commission. */
function salespersonLines(pen: Pen, c: Commission): void {
  pen.keep(48);
  pen.text(`${c.name} (${c.salespersonId})`, { size: 11, bold: true, gap: 15 });
  if (c.lines.length === 0) {
    pen.text("No sales or returns.", { size: 9, grey: true, gap: 20 });
    return;
  }
  pen.row(LINE_COLUMNS.map((column) => column.label), LINE_COLUMNS, { size: 8, bold: true });
  for (const line of c.lines) {
    const product = `${line.kind === "return" ? "Return: " : ""}${line.product}${
      line.quantity > 1 ? ` × ${line.quantity}` : ""
    }`;
    pen.row(
      [
        line.at.slice(11),
        product,
        line.category,
        formatCents(line.amountCents),
        rateText(line),
        formatCents(line.commissionCents),
      ],
      LINE_COLUMNS,
      { size: 8 },
    );
  }
  pen.row(
    ["", "", "", formatCents(c.netCents), "", formatCents(c.commissionCents)],
    LINE_COLUMNS,
    { size: 8, bold: true, gap: 20 },
  );
}

function rateText(line: CommissionLine): string {
  if (line.acceleratedCents === 0) return formatBps(line.baseBps);
  if (line.baseCents === 0) return `${formatBps(line.acceleratedBps)} acc.`;
  return `${formatBps(line.baseBps)}/${formatBps(line.acceleratedBps)} split`;
}

interface TextOptions {
  size?: number;
  bold?: boolean;
  grey?: boolean;
  /** Space below, in points. Default: the size plus a little. */
  gap?: number;
}

/** Writes lines top to bottom, starting a new page when one is full. */
class Pen {
  readonly #doc: PDFDocument;
  readonly #regular: PDFFont;
  readonly #bold: PDFFont;
  readonly #grey: Color;
  readonly #encodable: Set<number>;
  #page!: PDFPage;
  #y = 0;

  constructor(doc: PDFDocument, regular: PDFFont, bold: PDFFont, grey: Color) {
    this.#doc = doc;
    this.#regular = regular;
    this.#bold = bold;
    this.#grey = grey;
    this.#encodable = new Set(regular.getCharacterSet());
    this.#newPage();
  }

  text(text: string, options: TextOptions = {}): void {
    const size = options.size ?? 10;
    this.keep(size);
    this.#page.drawText(this.#safe(text), {
      x: MARGIN,
      y: this.#y,
      size,
      font: options.bold ? this.#bold : this.#regular,
      color: options.grey ? this.#grey : undefined,
    });
    this.#y -= options.gap ?? size + 4;
  }

  /** A table row, one cell per column. */
  row(cells: readonly string[], columns: readonly Column[], options: TextOptions = {}): void {
    const size = options.size ?? 9;
    const font = options.bold ? this.#bold : this.#regular;
    this.keep(size);
    for (const [i, cell] of cells.entries()) {
      const text = this.#safe(cell);
      const { x: edge, align } = columns[i];
      const x = align === "left" ? edge : edge - font.widthOfTextAtSize(text, size);
      this.#page.drawText(text, { x, y: this.#y, size, font });
    }
    this.#y -= options.gap ?? size + 5;
  }

  rule(): void {
    this.#page.drawLine({
      start: { x: MARGIN, y: this.#y + 12 },
      end: { x: RIGHT, y: this.#y + 12 },
      thickness: 0.5,
      color: this.#grey,
    });
  }

  /** Starts a new page unless `points` of height are left above the footer. */
  keep(points: number): void {
    if (this.#y - points < MARGIN + 20) this.#newPage();
  }

  footers(text: string): void {
    const pages = this.#doc.getPages();
    for (const [i, page] of pages.entries()) {
      const size = 7;
      const number = `Page ${i + 1} of ${pages.length}`;
      page.drawText(this.#safe(text), {
        x: MARGIN,
        y: MARGIN - 20,
        size,
        font: this.#regular,
        color: this.#grey,
      });
      page.drawText(number, {
        x: RIGHT - this.#regular.widthOfTextAtSize(number, size),
        y: MARGIN - 20,
        size,
        font: this.#regular,
        color: this.#grey,
      });
    }
  }

  #newPage(): void {
    this.#page = this.#doc.addPage([...A4]);
    this.#y = A4[1] - MARGIN;
  }

  /** Keeps what Helvetica can draw; an accented letter it cannot falls back to its base letter. */
  #safe(text: string): string {
    return [...text].map((char) => {
      if (this.#encodable.has(char.codePointAt(0)!)) return char;
      const base = char.normalize("NFKD")[0];
      return this.#encodable.has(base.codePointAt(0)!) ? base : "?";
    }).join("");
  }
}
