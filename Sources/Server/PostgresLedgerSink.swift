import Logging
import NIOCore
import PostgresNIO
import ServiceLifecycle
import SwitchyardCore
import SwitchyardModels
import Synchronization

/// The ledger's rows in PostgreSQL, for teams that query their spend with SQL. The gateway creates the table
/// (`schema`, idempotent) before its first write; each flush is one `INSERT … SELECT … FROM unnest(…)` per 1,000
/// records (a bound array per column, so a batch is one statement whatever its size), within a deadline; once an
/// hour, rows older than the retention are deleted. A failed write is the writer's to count; the rows are lost.
public final class PostgresLedgerSink: LedgerSink, Service {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    let client: PostgresClient
    let retentionSeconds: Int64
    let deadline: Duration
    let logger: Logger
    /// Unix seconds now.
    let clock: @Sendable () -> Int64
    private let state = Mutex<(schemaReady: Bool, prunedAt: Int64)>((false, 0))

    public init(settings: LedgerSettings.PostgresSink, password: String?, retention: Duration, logger: Logger,
                now: @escaping @Sendable () -> Int64 = unixSeconds) {
        var configuration = PostgresClient.Configuration(host: settings.host, port: settings.port, username: settings.user,
                                                         password: password, database: settings.database,
                                                         tls: settings.tls ? .require(.makeClientConfiguration()) : .disable)
        configuration.options.maximumConnections = 4
        configuration.options.connectTimeout = min(settings.timeout, .seconds(5))
        client = PostgresClient(configuration: configuration, backgroundLogger: logger)
        retentionSeconds = max(retention.components.seconds, 1)
        deadline = settings.timeout
        self.logger = logger
        clock = now
    }

    /// The client's connections, until shutdown (after the ledger's last flush: it comes before the writer in the
    /// service group).
    public func run() async throws {
        await cancelWhenGracefulShutdown { await self.client.run() }
    }

    /// The table, as the gateway creates it.
    public static let schema: [String] = [
        """
        CREATE TABLE IF NOT EXISTS switchyard_ledger (
            request_id text NOT NULL,
            time timestamptz NOT NULL,
            tenant text NOT NULL,
            "user" text NOT NULL,
            tier text NOT NULL,
            feature text NOT NULL,
            api text NOT NULL,
            requested text NOT NULL,
            route text,
            rule text,
            model text,
            deployment text,
            streamed boolean NOT NULL,
            status integer NOT NULL,
            outcome text NOT NULL,
            error text,
            input_tokens bigint NOT NULL,
            output_tokens bigint NOT NULL,
            cache_read_tokens bigint NOT NULL,
            cache_write_tokens bigint NOT NULL,
            cost_nano_usd bigint NOT NULL,
            saved_exact_nano_usd bigint NOT NULL,
            saved_semantic_nano_usd bigint NOT NULL,
            saved_prompt_cache_nano_usd bigint NOT NULL,
            saved_routing_nano_usd bigint NOT NULL,
            saved_batch_nano_usd bigint NOT NULL,
            latency_ms double precision NOT NULL,
            ttft_ms double precision,
            cache text,
            degraded text,
            queued_job text,
            job boolean NOT NULL,
            attempts integer NOT NULL,
            usage_estimated boolean NOT NULL,
            escalated boolean NOT NULL
        )
        """,
        "CREATE INDEX IF NOT EXISTS switchyard_ledger_time ON switchyard_ledger (time)",
        "CREATE INDEX IF NOT EXISTS switchyard_ledger_tenant_time ON switchyard_ledger (tenant, time)",
    ]

    /// The columns of a batch, one array each, in `insert`'s order; empty strings and negative times stand for NULL.
    static let insert = """
        INSERT INTO switchyard_ledger (request_id, time, tenant, "user", tier, feature, api, requested, route, rule, model,
            deployment, streamed, status, outcome, error, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
            cost_nano_usd, saved_exact_nano_usd, saved_semantic_nano_usd, saved_prompt_cache_nano_usd, saved_routing_nano_usd,
            saved_batch_nano_usd, latency_ms, ttft_ms, cache, degraded, queued_job, job, attempts, usage_estimated, escalated)
        SELECT request_id, to_timestamp(time_ms / 1000.0), tenant, "user", tier, feature, api, requested, NULLIF(route, ''),
            NULLIF(rule, ''), NULLIF(model, ''), NULLIF(deployment, ''), streamed, status, outcome, NULLIF(error, ''),
            input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost, saved_exact, saved_semantic,
            saved_prompt_cache, saved_routing, saved_batch, latency_ms, CASE WHEN ttft_ms < 0 THEN NULL ELSE ttft_ms END,
            NULLIF(cache, ''), NULLIF(degraded, ''), NULLIF(queued_job, ''), job, attempts, usage_estimated, escalated
        FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
            $9::text[], $10::text[], $11::text[], $12::text[], $13::boolean[], $14::integer[], $15::text[], $16::text[],
            $17::bigint[], $18::bigint[], $19::bigint[], $20::bigint[], $21::bigint[], $22::bigint[], $23::bigint[],
            $24::bigint[], $25::bigint[], $26::bigint[], $27::double precision[], $28::double precision[], $29::text[],
            $30::text[], $31::text[], $32::boolean[], $33::integer[], $34::boolean[], $35::boolean[])
        AS u(request_id, time_ms, tenant, "user", tier, feature, api, requested, route, rule, model, deployment, streamed,
            status, outcome, error, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost, saved_exact,
            saved_semantic, saved_prompt_cache, saved_routing, saved_batch, latency_ms, ttft_ms, cache, degraded, queued_job,
            job, attempts, usage_estimated, escalated)
        """

    public func write(_ records: [LedgerRecord]) async throws {
        guard !records.isEmpty else { return }
        // Cancelled (a shutdown that is not graceful): the client is going too, and a query would wait for a
        // connection it will never get.
        guard !Task.isCancelled else { throw Failure(description: "cancelled: \(records.count) ledger rows not written") }
        try await Self.within(deadline) { [self] in
            try await prepare()
            var start = 0
            while start < records.count {
                let end = min(start + 1000, records.count)
                try await client.query(PostgresQuery(unsafeSQL: Self.insert, binds: Self.bindings(records[start..<end])), logger: logger)
                start = end
            }
            try await prune()
        }
    }

    /// `body`, or a failure once `limit` passed — without waiting for `body` to notice its cancellation (a query
    /// waiting for a pool's connection does not), so the writer is never held past the deadline.
    static func within(_ limit: Duration, _ body: @escaping @Sendable () async throws -> Void) async throws {
        let once = ResumeOnce()
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            once.set(continuation)
            let work = Task {
                do {
                    try await body()
                    once.finish(.success(()))
                } catch {
                    once.finish(.failure(error))
                }
            }
            Task {
                try? await Task.sleep(for: limit)
                work.cancel()
                once.finish(.failure(Failure(description: "PostgreSQL did not take the ledger's rows within \(limit)")))
            }
        }
    }

    /// A continuation resumed by whichever comes first.
    final class ResumeOnce: Sendable {
        private let waiter = Mutex<CheckedContinuation<Void, any Error>?>(nil)

        func set(_ continuation: CheckedContinuation<Void, any Error>) {
            waiter.withLock { $0 = continuation }
        }

        func finish(_ result: Result<Void, any Error>) {
            waiter.withLock { $0.take() }?.resume(with: result)
        }
    }

    private func prepare() async throws {
        guard !state.withLock({ $0.schemaReady }) else { return }
        for statement in Self.schema { try await client.query(PostgresQuery(unsafeSQL: statement), logger: logger) }
        state.withLock { $0.schemaReady = true }
    }

    private func prune() async throws {
        let now = clock()
        let due = state.withLock { state in
            guard now - state.prunedAt >= 3600 else { return false }
            state.prunedAt = now
            return true
        }
        guard due else { return }
        var binds = PostgresBindings()
        binds.append(Double(now - retentionSeconds))
        try await client.query(PostgresQuery(unsafeSQL: "DELETE FROM switchyard_ledger WHERE time < to_timestamp($1)", binds: binds),
                               logger: logger)
    }

    /// PostgreSQL's text holds no NUL byte: one in a caller's string becomes U+FFFD rather than failing the batch.
    static func text(_ value: String?) -> String {
        guard let value else { return "" }
        guard value.utf8.contains(0) else { return value }
        return value.replacing("\u{0}", with: "\u{FFFD}")
    }

    static func bindings(_ records: ArraySlice<LedgerRecord>) -> PostgresBindings {
        var binds = PostgresBindings(capacity: 35)
        func strings(_ value: (LedgerRecord) -> String?) { binds.append(records.map { text(value($0)) }) }
        func integers(_ value: (LedgerRecord) -> Int64) { binds.append(records.map(value)) }
        func int32s(_ value: (LedgerRecord) -> Int) { binds.append(records.map { Int32(clamping: value($0)) }) }
        func doubles(_ value: (LedgerRecord) -> Double) { binds.append(records.map { let v = value($0); return v.isFinite ? v : -1 }) }
        func bools(_ value: (LedgerRecord) -> Bool) { binds.append(records.map(value)) }
        strings(\.requestID)
        integers(\.time)
        strings(\.tenant)
        strings(\.user)
        strings(\.tier)
        strings(\.feature)
        strings(\.api.rawValue)
        strings(\.requested)
        strings(\.route)
        strings(\.rule)
        strings(\.model)
        strings(\.deployment)
        bools(\.streamed)
        int32s(\.status)
        strings(\.outcome)
        strings(\.error)
        integers { Int64($0.usage.inputTokens) }
        integers { Int64($0.usage.outputTokens) }
        integers { Int64($0.usage.cacheReadTokens) }
        integers { Int64($0.usage.cacheWriteTokens) }
        integers(\.cost.value)
        for kind in SavingKind.allCases { integers { $0.saved[kind].value } }
        doubles(\.latencyMilliseconds)
        doubles { $0.timeToFirstTokenMilliseconds ?? -1 }
        strings(\.cache)
        strings { $0.degraded?.rawValue }
        strings(\.queuedJob)
        bools(\.job)
        int32s(\.attempts)
        bools(\.usageEstimated)
        bools(\.escalated)
        return binds
    }
}
