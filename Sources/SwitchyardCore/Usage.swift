import SwitchyardModels

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Unix seconds now, on the wall clock (without Foundation): aggregates and reports are per wall-clock minute.
public let unixSeconds: @Sendable () -> Int64 = {
    var spec = timespec()
    clock_gettime(CLOCK_REALTIME, &spec)
    return Int64(spec.tv_sec)
}

/// The ledger's aggregates: per minute, tenant, user, feature and model, what was asked, used, spent and saved.
/// Kept in the state store (this process's or Redis), so budgets and the dashboard read the same figures from
/// any instance.
public struct UsageKey: Sendable, Hashable {
    /// Unix minute.
    public var minute: Int64
    public var tenant: String
    public var user: String
    public var feature: String
    /// The model that served, or `-` when none did (a cache hit, a refusal).
    public var model: String

    public init(minute: Int64, tenant: String, user: String, feature: String, model: String) {
        self.minute = minute
        self.tenant = tenant
        self.user = user
        self.feature = feature
        self.model = model
    }
}

/// The counted figures of a `UsageKey`. Each is an `Int64` (nano-USD for money), added saturating.
public struct UsageTotals: Sendable, Hashable {
    /// The figures, in the order of `values`; `name` is each one's name in reports and in Redis.
    public enum Metric: Int, Sendable, CaseIterable {
        case requests, errors
        case inputTokens, outputTokens, cacheReadTokens, cacheWriteTokens
        case cost
        case savedExact, savedSemantic, savedPromptCache, savedRouting, savedBatch
        case exactHits, semanticHits
        case degraded, queued, attempts
        /// Sum of latencies and of times to first token (ms), for means.
        case latencyMilliseconds, timeToFirstTokenMilliseconds
        /// Requests whose answer used the provider's prompt cache (read or written), sent through a batch, chosen
        /// by a route's rule, and cascades that escalated to their strong model.
        case promptCacheRequests, batchRequests, routedRequests, escalations

        public var name: String {
            switch self {
            case .requests: "requests"
            case .errors: "errors"
            case .inputTokens: "input_tokens"
            case .outputTokens: "output_tokens"
            case .cacheReadTokens: "cache_read_tokens"
            case .cacheWriteTokens: "cache_write_tokens"
            case .cost: "cost_nano_usd"
            case .savedExact: "saved_exact_nano_usd"
            case .savedSemantic: "saved_semantic_nano_usd"
            case .savedPromptCache: "saved_prompt_cache_nano_usd"
            case .savedRouting: "saved_routing_nano_usd"
            case .savedBatch: "saved_batch_nano_usd"
            case .exactHits: "exact_hits"
            case .semanticHits: "semantic_hits"
            case .degraded: "degraded"
            case .queued: "queued"
            case .attempts: "attempts"
            case .latencyMilliseconds: "latency_ms_sum"
            case .timeToFirstTokenMilliseconds: "ttft_ms_sum"
            case .promptCacheRequests: "prompt_cache_requests"
            case .batchRequests: "batch_requests"
            case .routedRequests: "routed_requests"
            case .escalations: "escalations"
            }
        }

        public static func saved(_ kind: SavingKind) -> Metric {
            switch kind {
            case .exact: .savedExact
            case .semantic: .savedSemantic
            case .promptCache: .savedPromptCache
            case .routing: .savedRouting
            case .batch: .savedBatch
            }
        }
    }

    public private(set) var values: [Int64]

    public init() {
        values = Array(repeating: 0, count: Metric.allCases.count)
    }

    public subscript(_ metric: Metric) -> Int64 {
        get { values[metric.rawValue] }
        set { values[metric.rawValue] = newValue }
    }

    public mutating func add(_ metric: Metric, _ amount: Int64) {
        let (sum, overflow) = self[metric].addingReportingOverflow(amount)
        self[metric] = overflow ? (amount > 0 ? .max : .min) : sum
    }

    public mutating func add(_ other: UsageTotals) {
        for (index, metric) in Metric.allCases.enumerated() where other.values[index] != 0 { add(metric, other.values[index]) }
    }

    /// One record's contribution.
    public init(_ record: LedgerRecord) {
        self.init()
        add(record)
    }

    /// Adds one record's figures.
    public mutating func add(_ record: LedgerRecord) {
        add(.requests, 1)
        if record.outcome != "completed" || record.status >= 400 { add(.errors, 1) }
        add(.inputTokens, Int64(record.usage.inputTokens))
        add(.outputTokens, Int64(record.usage.outputTokens))
        add(.cacheReadTokens, Int64(record.usage.cacheReadTokens))
        add(.cacheWriteTokens, Int64(record.usage.cacheWriteTokens))
        add(.cost, record.cost.value)
        for kind in SavingKind.allCases where record.saved[kind] != .zero { add(.saved(kind), record.saved[kind].value) }
        if record.cache == CacheStatus.hitExact.rawValue { add(.exactHits, 1) }
        if record.cache == CacheStatus.hitSemantic.rawValue { add(.semanticHits, 1) }
        if record.degraded != nil { add(.degraded, 1) }
        if record.queuedJob != nil { add(.queued, 1) }
        add(.attempts, Int64(record.attempts))
        add(.latencyMilliseconds, Int64(record.latencyMilliseconds.rounded()))
        if let ttft = record.timeToFirstTokenMilliseconds { add(.timeToFirstTokenMilliseconds, Int64(ttft.rounded())) }
        if record.usage.cacheReadTokens > 0 || record.usage.cacheWriteTokens > 0 { add(.promptCacheRequests, 1) }
        if record.saved[.batch] != .zero { add(.batchRequests, 1) }
        if record.route != nil { add(.routedRequests, 1) }
        if record.escalated { add(.escalations, 1) }
    }

    /// The savings of every kind, in nano-USD.
    public var saved: Int64 {
        SavingKind.allCases.reduce(into: Int64(0)) { sum, kind in
            let (next, overflow) = sum.addingReportingOverflow(self[.saved(kind)])
            sum = overflow ? .max : next
        }
    }
}

extension UsageKey {
    /// The key a record is counted under.
    public init(_ record: LedgerRecord) {
        self.init(minute: record.time / 60_000, tenant: record.tenant, user: record.user, feature: record.feature,
                  model: record.model ?? "-")
    }
}

/// Where the aggregates live: this process (`UsageBook`) or Redis, shared by every instance.
public protocol UsageStore: Sendable {
    /// Adds a batch of aggregates (the ledger's writer sums records per key first).
    func add(_ batch: [UsageKey: UsageTotals]) async throws
    /// Every key between `from` and `to` (Unix seconds, inclusive at minute granularity), of one tenant or all.
    func usage(from: Int64, to: Int64, tenant: String?) async throws -> [UsageKey: UsageTotals]
}

/// The aggregates in this process: the embedded default. Bounded at `maximumKeys` (the oldest minute goes first)
/// and trimmed past `retention`.
public final class UsageBook: UsageStore {
    private struct State {
        var totals: [UsageKey: UsageTotals] = [:]
        var trimmedAt: Int64 = 0
    }

    private let state = Locked(State())
    public let maximumKeys: Int
    private let retentionMinutes: Int64
    /// Unix seconds now.
    private let clock: @Sendable () -> Int64

    public init(retention: Duration = .seconds(31 * 86400), maximumKeys: Int = 200_000,
                now: @escaping @Sendable () -> Int64 = unixSeconds) {
        self.maximumKeys = max(1, maximumKeys)
        retentionMinutes = max(1, retention.components.seconds / 60)
        clock = now
    }

    public var count: Int { state.withLock { $0.totals.count } }

    public func add(_ batch: [UsageKey: UsageTotals]) {
        let minute = clock() / 60
        let oldestKept = minute - retentionMinutes
        let maximumKeys = self.maximumKeys
        state.withLock { state in
            if minute != state.trimmedAt {
                state.trimmedAt = minute
                state.totals = state.totals.filter { $0.key.minute >= oldestKept }
            }
            for (key, totals) in batch where key.minute >= oldestKept {
                if state.totals[key] == nil, state.totals.count >= maximumKeys {
                    // Full: the oldest minute goes; a batch all of whose keys are that minute's is dropped.
                    let oldest = state.totals.keys.lazy.map(\.minute).min() ?? key.minute
                    guard oldest < key.minute else { continue }
                    state.totals = state.totals.filter { $0.key.minute != oldest }
                }
                state.totals[key, default: UsageTotals()].add(totals)
            }
        }
    }

    public func usage(from: Int64, to: Int64, tenant: String?) -> [UsageKey: UsageTotals] {
        let first = from / 60, last = to / 60
        return state.withLock { state in
            state.totals.filter { $0.key.minute >= first && $0.key.minute <= last && (tenant == nil || $0.key.tenant == tenant) }
        }
    }
}

/// YAML `ledger:`: the per-request records, their aggregates and where the raw records go.
public struct LedgerSettings: Sendable, Hashable {
    /// Where the raw records go, besides the aggregates.
    public enum Sink: Sendable, Hashable {
        case none
        /// JSON lines in `directory`, a new file past `rotateBytes` or at a new UTC day; files older than the
        /// retention are deleted.
        case jsonl(directory: String, rotateBytes: Int)
        /// Rows of the table `switchyard_ledger` (created by the gateway), through postgres-nio.
        case postgres(PostgresSink)
    }

    /// A PostgreSQL server for the ledger's rows; the password comes from the environment variable named here.
    public struct PostgresSink: Sendable, Hashable {
        public var host: String
        public var port: Int
        public var database: String
        public var user: String
        public var passwordEnv: String?
        public var tls: Bool
        /// How long a flush may take (connecting included) before its rows are given up.
        public var timeout: Duration

        public init(host: String = "127.0.0.1", port: Int = 5432, database: String = "switchyard", user: String = "switchyard",
                    passwordEnv: String? = nil, tls: Bool = false, timeout: Duration = .seconds(10)) {
            self.timeout = timeout
            self.host = host
            self.port = port
            self.database = database
            self.user = user
            self.passwordEnv = passwordEnv
            self.tls = tls
        }
    }

    /// Whether requests are recorded at all (YAML `enabled`).
    public var enabled = true
    /// Records waiting to be written at most; past it a record is dropped and counted (never waited for).
    public var buffer = 20_000
    /// How often the buffer is written out.
    public var flushInterval = Duration.milliseconds(500)
    /// How long aggregates (and the files of a `jsonl` sink) are kept.
    public var retention = Duration.seconds(31 * 86400)
    /// Aggregate keys (minute × tenant × user × feature × model) kept in memory at most.
    public var maximumKeys = 200_000
    public var sink = Sink.none

    public init() {}
}

extension ConfigLoader {
    /// `ledger: {enabled, buffer, flush_ms, retention_days, max_keys, sink: jsonl | postgres | none, path, rotate_mb,
    /// postgres: {host, port, database, user, password_env, tls, timeout_seconds}}`; the sink is `jsonl` when a `path` is given.
    static func parseLedger(_ reader: MappingReader) throws(ConfigError) -> LedgerSettings {
        var settings = LedgerSettings()
        settings.enabled = try reader.bool("enabled") ?? settings.enabled
        settings.buffer = try reader.int("buffer", in: 1...10_000_000) ?? settings.buffer
        if let milliseconds = try reader.int("flush_ms", in: 10...60_000) { settings.flushInterval = .milliseconds(milliseconds) }
        if let days = try reader.int("retention_days", in: 1...3660) { settings.retention = .seconds(Int64(days) * 86400) }
        settings.maximumKeys = try reader.int("max_keys", in: 1...100_000_000) ?? settings.maximumKeys
        let path = try reader.string("path")
        let rotate = try reader.int("rotate_mb", in: 1...1_000_000) ?? 64
        let postgres = try reader.mapping("postgres")
        switch try reader.string("sink") ?? (path == nil ? (postgres == nil ? "none" : "postgres") : "jsonl") {
        case "none":
            guard path == nil else { throw ConfigError(path: reader.child("path"), "is for sink: jsonl") }
        case "postgres":
            guard let postgres else { throw ConfigError(path: reader.child("postgres"), "is required for sink: postgres") }
            guard path == nil else { throw ConfigError(path: reader.child("path"), "is for sink: jsonl") }
            var sink = LedgerSettings.PostgresSink()
            sink.host = try postgres.string("host") ?? sink.host
            sink.port = try postgres.int("port", in: 1...65535) ?? sink.port
            sink.database = try postgres.string("database") ?? sink.database
            sink.user = try postgres.string("user") ?? sink.user
            if let name = try postgres.string("password_env") {
                guard !name.isEmpty, name.utf8.allSatisfy({ $0 == UInt8(ascii: "_") || (0x30...0x39).contains($0) || (0x41...0x5A).contains($0) }) else {
                    throw ConfigError(path: postgres.child("password_env"), "must name an environment variable (A-Z, 0-9, _)")
                }
                sink.passwordEnv = name
            }
            sink.tls = try postgres.bool("tls") ?? sink.tls
            if let seconds = try postgres.double("timeout_seconds", in: 0.1...600) { sink.timeout = .milliseconds(Int64(seconds * 1000)) }
            if postgres.has("password") {
                throw ConfigError(path: postgres.child("password"), "secrets come from the environment: name the variable in password_env")
            }
            try postgres.finish()
            settings.sink = .postgres(sink)
        case "jsonl":
            guard let path, !path.isEmpty else {
                throw ConfigError(path: reader.child("path"), "is required for sink: jsonl (the directory of the files)")
            }
            settings.sink = .jsonl(directory: path, rotateBytes: rotate << 20)
        default:
            throw ConfigError(path: reader.child("sink"), "must be jsonl, postgres or none")
        }
        try reader.finish()
        return settings
    }
}
