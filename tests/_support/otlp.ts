/**
 * A real OTLP receiver for tests: a loopback HTTP server that takes what Deno's built-in
 * exporter sends (`http/json`) and keeps the spans and log records, flattened. It also
 * answers `GET /echo`, a service for a step to call.
 *
 * @module
 */
import { poll } from "./harness.ts";

/** A received span, its attributes as plain values. */
export interface ReceivedSpan {
  scope: string;
  traceId: string;
  spanId: string;
  parentSpanId: string;
  name: string;
  start: number;
  end: number;
  attributes: Record<string, unknown>;
  /** 0 unset, 1 ok, 2 error. */
  status: number;
  events: { name: string; attributes: Record<string, unknown> }[];
}

/** A received log record. */
export interface ReceivedLog {
  body: string;
  severity: string;
  traceId: string;
  spanId: string;
}

type AnyValue = {
  stringValue?: string;
  intValue?: string | number;
  boolValue?: boolean;
  doubleValue?: number;
};
type KeyValue = { key: string; value: AnyValue };

function plain(attributes: KeyValue[] = []): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const { key, value } of attributes) {
    out[key] = value.stringValue ??
      (value.intValue !== undefined
        ? Number(value.intValue)
        : value.boolValue ?? value.doubleValue);
  }
  return out;
}

/** The receiver; `await using` stops it. */
export class OtlpReceiver implements AsyncDisposable {
  readonly spans: ReceivedSpan[] = [];
  readonly logs: ReceivedLog[] = [];
  readonly #server: Deno.HttpServer<Deno.NetAddr>;

  constructor() {
    this.#server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
      return this.#take(req);
    });
  }

  /** Where it listens. */
  get url(): string {
    return `http://127.0.0.1:${this.#server.addr.port}`;
  }

  /** The environment that makes a Deno process export to this receiver. */
  env(): Record<string, string> {
    return {
      OTEL_DENO: "true",
      OTEL_EXPORTER_OTLP_ENDPOINT: this.url,
      OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
      OTEL_BSP_SCHEDULE_DELAY: "50",
      OTEL_BLRP_SCHEDULE_DELAY: "50",
      OTEL_SERVICE_NAME: "kvflow-test",
    };
  }

  /** The spans whose attribute `kvflow.run_id` is `runId`. */
  spansOf(runId: string): ReceivedSpan[] {
    return this.spans.filter((s) => s.attributes["kvflow.run_id"] === runId);
  }

  /** Waits until a span matches `test`. */
  async waitForSpan(what: string, test: (span: ReceivedSpan) => boolean): Promise<ReceivedSpan> {
    return await poll(what, 15_000, () => this.spans.find(test));
  }

  async #take(req: Request): Promise<Response> {
    const path = new URL(req.url).pathname;
    if (path === "/echo") return new Response("echo");
    const body = await req.json();
    if (path === "/v1/traces") {
      for (const resource of body.resourceSpans ?? []) {
        for (const scope of resource.scopeSpans ?? []) {
          for (const s of scope.spans ?? []) {
            this.spans.push({
              scope: scope.scope?.name ?? "",
              traceId: s.traceId,
              spanId: s.spanId,
              parentSpanId: s.parentSpanId ?? "",
              name: s.name,
              start: Number(BigInt(s.startTimeUnixNano) / 1_000_000n),
              end: Number(BigInt(s.endTimeUnixNano) / 1_000_000n),
              attributes: plain(s.attributes),
              status: s.status?.code ?? 0,
              events: (s.events ?? []).map((e: { name: string; attributes: KeyValue[] }) => ({
                name: e.name,
                attributes: plain(e.attributes),
              })),
            });
          }
        }
      }
    } else if (path === "/v1/logs") {
      for (const resource of body.resourceLogs ?? []) {
        for (const scope of resource.scopeLogs ?? []) {
          for (const l of scope.logRecords ?? []) {
            this.logs.push({
              body: l.body?.stringValue ?? "",
              severity: l.severityText ?? "",
              traceId: l.traceId ?? "",
              spanId: l.spanId ?? "",
            });
          }
        }
      }
    }
    return Response.json({});
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.#server.shutdown();
  }
}
