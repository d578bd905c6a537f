import HTTPEdge
import NIOHTTP1
import HTTPTypes
import NIOCore
import Stages
import SwitchyardCore
import SwitchyardModels

/// `GET /v1/usage`: the ledger's aggregates for a period, grouped as asked, as JSON or CSV.
///
/// `from`, `to`: Unix seconds (default the last 24 hours); `group_by`: any of `user`, `feature`, `model` (comma
/// separated; rows are always per tenant); `interval`: `minute`, `hour` or `day` for a series (default one row per
/// group for the whole period); `format=csv` (or `Accept: text/csv`) for a spreadsheet; `limit`: rows at most
/// (default 1,000, at most 100,000; the most expensive first within a period). A caller sees its own tenant; the
/// admin key every tenant, or `?tenant=NAME`.
struct UsageHandler: Sendable {
    enum Dimension: String, CaseIterable {
        case user, feature, model
    }

    enum Interval: String {
        case none, minute, hour, day

        var seconds: Int64? {
            switch self {
            case .none: nil
            case .minute: 60
            case .hour: 3600
            case .day: 86400
            }
        }
    }

    let store: any UsageStore
    let auth: AuthStage
    let adminKeyHash: String?
    /// Unix seconds now.
    let clock: @Sendable () -> Int64
    let failed: @Sendable () -> Void

    struct Query {
        var tenant: String?
        var from: Int64
        var to: Int64
        var groupBy: [Dimension]
        var interval: Interval
        var csv: Bool
        var limit: Int
    }

    func handle(_ request: EdgeRequest) async -> EdgeResponse {
        let requestID = ChatHandler.makeRequestID()
        let query: Query
        do {
            query = try parse(request)
        } catch {
            return ErrorRenderer.response(for: error, format: .openAI, requestID: requestID)
        }
        let keys: [UsageKey: UsageTotals]
        do {
            keys = try await store.usage(from: query.from, to: query.to, tenant: query.tenant)
        } catch {
            failed()
            return ErrorRenderer.response(for: GatewayError(.overloaded, "the usage store is unavailable: \(error)"),
                                          format: .openAI, requestID: requestID)
        }
        let (rows, total, truncated) = Self.group(keys, query)
        if query.csv {
            return EdgeResponse(status: .ok, headers: [.contentType: "text/csv; charset=utf-8", .requestID: requestID,
                                                       .contentDisposition: "attachment; filename=\"usage.csv\""],
                                body: .buffer(ByteBuffer(string: Self.csv(rows, query))))
        }
        let body: JSONValue = [
            "object": "usage", "from": .int(query.from), "to": .int(query.to),
            "group_by": .array(query.groupBy.map { .string($0.rawValue) }), "interval": .string(query.interval.rawValue),
            "rows": .array(rows.map { Self.json($0, query) }), "total": Self.figures(total), "truncated": .bool(truncated),
        ]
        return EdgeResponse(status: .ok, headers: [.contentType: "application/json", .requestID: requestID],
                            body: .buffer(ByteBuffer(bytes: body.serialized())))
    }

    func parse(_ request: EdgeRequest) throws(GatewayError) -> Query {
        let tenant = try ReportQuery.tenant(request, auth: auth, adminKeyHash: adminKeyHash)
        let (from, to) = try ReportQuery.period(request, now: clock())
        let uri = request.head.uri
        var groupBy: [Dimension] = []
        if let text = CacheAdminHandler.query(uri, "group_by"), !text.isEmpty {
            for name in text.split(separator: ",") {
                guard let dimension = Dimension(rawValue: String(name)) else {
                    throw GatewayError(.invalidRequest, "group_by takes user, feature and model, comma separated", param: "group_by")
                }
                if !groupBy.contains(dimension) { groupBy.append(dimension) }
            }
        }
        let intervalText = CacheAdminHandler.query(uri, "interval") ?? "none"
        guard let interval = Interval(rawValue: intervalText) else {
            throw GatewayError(.invalidRequest, "interval must be minute, hour or day", param: "interval")
        }
        var limit = 1000
        if let text = CacheAdminHandler.query(uri, "limit") {
            guard let value = Int(text), (1...100_000).contains(value) else {
                throw GatewayError(.invalidRequest, "limit must be 1 to 100000", param: "limit")
            }
            limit = value
        }
        let format = CacheAdminHandler.query(uri, "format")
        guard format == nil || format == "json" || format == "csv" else {
            throw GatewayError(.invalidRequest, "format must be json or csv", param: "format")
        }
        let csv = format == "csv" || (format == nil && request.header("accept")?.contains("text/csv") == true)
        return Query(tenant: tenant, from: from, to: to, groupBy: groupBy, interval: interval, csv: csv, limit: limit)
    }

    /// One row of the report: its period's start (nil without an interval), tenant and grouped dimensions.
    struct Row {
        var start: Int64?
        var tenant: String
        var dimensions: [String]
        var totals: UsageTotals
    }

    struct GroupKey: Hashable {
        var start: Int64?
        var tenant: String
        var dimensions: [String]
    }

    /// The keys summed per period and group; ordered by period, then cost (highest first), then names.
    static func group(_ keys: [UsageKey: UsageTotals], _ query: Query) -> (rows: [Row], total: UsageTotals, truncated: Bool) {
        var groups: [GroupKey: UsageTotals] = [:]
        var total = UsageTotals()
        for (key, totals) in keys {
            let start = query.interval.seconds.map { seconds in key.minute * 60 / seconds * seconds }
            let dimensions = query.groupBy.map { dimension in
                switch dimension {
                case .user: key.user
                case .feature: key.feature
                case .model: key.model
                }
            }
            groups[GroupKey(start: start, tenant: key.tenant, dimensions: dimensions), default: UsageTotals()].add(totals)
            total.add(totals)
        }
        var rows = groups.map { Row(start: $0.key.start, tenant: $0.key.tenant, dimensions: $0.key.dimensions, totals: $0.value) }
        rows.sort { a, b in
            if a.start != b.start { return (a.start ?? 0) < (b.start ?? 0) }
            if a.totals[.cost] != b.totals[.cost] { return a.totals[.cost] > b.totals[.cost] }
            if a.tenant != b.tenant { return a.tenant < b.tenant }
            return a.dimensions.lexicographicallyPrecedes(b.dimensions)
        }
        let truncated = rows.count > query.limit
        return (Array(rows.prefix(query.limit)), total, truncated)
    }

    static func usd(_ nano: Int64) -> String { NanoUSD(nano).usdString }

    /// A row's figures: counts, tokens, money (USD strings and exact nano-USD), means.
    static func figures(_ totals: UsageTotals) -> JSONValue {
        var saved: [String: JSONValue] = [:]
        for kind in SavingKind.allCases { saved[kind.rawValue] = .string(usd(totals[.saved(kind)])) }
        let requests = max(totals[.requests], 1)
        return [
            "requests": .int(totals[.requests]), "errors": .int(totals[.errors]),
            "input_tokens": .int(totals[.inputTokens]), "output_tokens": .int(totals[.outputTokens]),
            "cache_read_tokens": .int(totals[.cacheReadTokens]), "cache_write_tokens": .int(totals[.cacheWriteTokens]),
            "cost_usd": .string(usd(totals[.cost])), "cost_nano_usd": .int(totals[.cost]),
            "saved_usd": .object(saved), "total_saved_usd": .string(usd(totals.saved)),
            "exact_hits": .int(totals[.exactHits]), "semantic_hits": .int(totals[.semanticHits]),
            "degraded": .int(totals[.degraded]), "queued": .int(totals[.queued]), "attempts": .int(totals[.attempts]),
            "mean_latency_ms": .double(Double(totals[.latencyMilliseconds]) / Double(requests)),
            "mean_ttft_ms": .double(Double(totals[.timeToFirstTokenMilliseconds]) / Double(requests)),
        ]
    }

    static func json(_ row: Row, _ query: Query) -> JSONValue {
        guard case .object(var object) = figures(row.totals) else { return .null }
        object["tenant"] = .string(row.tenant)
        for (index, dimension) in query.groupBy.enumerated() where index < row.dimensions.count {
            object[dimension.rawValue] = .string(row.dimensions[index])
        }
        if let start = row.start { object["period_start"] = .int(start) }
        return .object(object)
    }

    // MARK: CSV

    static let csvFigures: [(String, UsageTotals.Metric, Bool)] = [
        ("requests", .requests, false), ("errors", .errors, false), ("input_tokens", .inputTokens, false),
        ("output_tokens", .outputTokens, false), ("cache_read_tokens", .cacheReadTokens, false),
        ("cache_write_tokens", .cacheWriteTokens, false), ("cost_usd", .cost, true),
    ] + SavingKind.allCases.map { ("saved_\($0.rawValue)_usd", UsageTotals.Metric.saved($0), true) } + [
        ("exact_hits", .exactHits, false), ("semantic_hits", .semanticHits, false), ("degraded", .degraded, false),
        ("queued", .queued, false), ("attempts", .attempts, false),
    ]

    /// RFC 4180: a header line, then one line per row, CRLF-terminated.
    static func csv(_ rows: [Row], _ query: Query) -> String {
        var header: [String] = query.interval == .none ? [] : ["period_start"]
        header.append("tenant")
        header += query.groupBy.map(\.rawValue)
        header += csvFigures.map(\.0)
        var out = header.map(CSV.cell).joined(separator: ",") + "\r\n"
        for row in rows {
            var cells: [String] = row.start.map { ["\($0)"] } ?? []
            cells.append(row.tenant)
            cells += row.dimensions
            cells += csvFigures.map { _, metric, money in money ? usd(row.totals[metric]) : "\(row.totals[metric])" }
            out += cells.map(CSV.cell).joined(separator: ",") + "\r\n"
        }
        return out
    }
}

/// Spreadsheet-safe CSV.
public enum CSV {
    /// One CSV cell: quoted (quotes doubled) when it holds a comma, a quote or a line break; a value a spreadsheet
    /// would run as a formula (`=`, `+`, `-`, `@`, a tab or CR first) is prefixed with `'` — names come from callers.
    public static func cell(_ value: String) -> String {
        var value = value
        if let first = value.utf8.first, [UInt8(ascii: "="), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "@"), 0x09, 0x0D].contains(first),
           Double(value) == nil {
            value = "'" + value
        }
        guard value.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) else { return value }
        return "\"" + value.replacing("\"", with: "\"\"") + "\""
    }
}

extension UsageHandler {
    /// `GET /v1/usage/savings?from=&to=&requests_per_day=N`, from the ledger: per tenant (the admin key: every tenant,
    /// or `?tenant=`), what was spent, what the same requests would have cost without the gateway (every answer from
    /// the route's reference model, no response cache, no provider prompt caching, no batch API), what each lever
    /// saved, and the projection to a day and a month — at the rate seen over the span the period's records cover, or
    /// at `requests_per_day`.
    func savings(_ request: EdgeRequest) async -> EdgeResponse {
        let requestID = ChatHandler.makeRequestID()
        let tenant: String?, from: Int64, to: Int64
        var perDay: Double?
        do throws(GatewayError) {
            tenant = try ReportQuery.tenant(request, auth: auth, adminKeyHash: adminKeyHash)
            (from, to) = try ReportQuery.period(request, now: clock())
            if let text = CacheAdminHandler.query(request.head.uri, "requests_per_day") {
                guard let value = Double(text), value.isFinite, (1...1e12).contains(value) else {
                    throw GatewayError(.invalidRequest, "requests_per_day must be a number from 1 to 1e12", param: "requests_per_day")
                }
                perDay = value
            }
        } catch {
            return ErrorRenderer.response(for: error, format: .openAI, requestID: requestID)
        }
        let keys: [UsageKey: UsageTotals]
        do {
            keys = try await store.usage(from: from, to: to, tenant: tenant)
        } catch {
            failed()
            return ErrorRenderer.response(for: GatewayError(.overloaded, "the usage store is unavailable: \(error)"),
                                          format: .openAI, requestID: requestID)
        }
        var tenants: [String: UsageTotals] = [:]
        var total = UsageTotals()
        var span: (first: Int64, last: Int64)?
        for (key, totals) in keys {
            tenants[key.tenant, default: UsageTotals()].add(totals)
            total.add(totals)
            span = (min(span?.first ?? key.minute, key.minute), max(span?.last ?? key.minute, key.minute))
        }
        // The span the records cover (whole minutes), within the period asked.
        let seconds = span.map { max(min(($0.last - $0.first + 1) * 60, to - from + 1), 60) } ?? max(to - from + 1, 60)
        func report(_ totals: UsageTotals) -> [String: JSONValue] {
            Self.savingsFigures(totals, seconds: seconds, requestsPerDay: perDay)
        }
        let rows: [JSONValue] = tenants.keys.sorted().map { name in
            var entry = report(tenants[name] ?? UsageTotals())
            entry["tenant"] = .string(name)
            return .object(entry)
        }
        let body: JSONValue = ["object": "savings", "from": .int(from), "to": .int(to), "tenants": .array(rows), "total": .object(report(total))]
        return EdgeResponse(status: .ok, headers: [.contentType: "application/json", .requestID: requestID],
                            body: .buffer(ByteBuffer(bytes: body.serialized())))
    }

    /// One tenant's (or the total's) savings: per lever its requests and amount, spent, without the gateway, and the
    /// projection.
    static func savingsFigures(_ totals: UsageTotals, seconds: Int64, requestsPerDay: Double?) -> [String: JSONValue] {
        let levers: [(SavingKind, UsageTotals.Metric)] = [
            (.exact, .exactHits), (.semantic, .semanticHits), (.promptCache, .promptCacheRequests), (.routing, .routedRequests),
            (.batch, .batchRequests),
        ]
        var entry: [String: JSONValue] = [:]
        for (kind, requests) in levers {
            var lever: [String: JSONValue] = ["requests": .int(totals[requests]), "saved_usd": .string(usd(totals[.saved(kind)]))]
            // A cascade that escalated paid for its cheap answer too: routing's losses.
            if kind == .routing { lever["escalations"] = .int(totals[.escalations]) }
            entry[kind.rawValue] = .object(lever)
        }
        let spent = totals[.cost], saved = totals.saved
        let without = Int64(clamping: Int128(spent) + Int128(saved))
        entry["requests"] = .int(totals[.requests])
        entry["spent_usd"] = .string(usd(spent))
        entry["total_saved_usd"] = .string(usd(saved))
        entry["without_gateway_usd"] = .string(usd(without))
        // Per day: the rate seen, or the volume asked for at the per-request figures seen.
        let requests = Double(totals[.requests])
        let factor = requestsPerDay.map { requests > 0 ? $0 / requests : 0 } ?? 86400 / Double(seconds)
        func projected(_ days: Double) -> JSONValue {
            func scaled(_ value: Int64) -> String {
                let amount = (Double(value) * factor * days).rounded()
                return usd(amount.isFinite ? Int64(clamping: Int128(max(min(amount, 9.2e18), -9.2e18))) : 0)
            }
            return ["requests": .double((requests * factor * days).rounded()), "spent_usd": .string(scaled(spent)),
                    "saved_usd": .string(scaled(saved)), "without_gateway_usd": .string(scaled(without))]
        }
        entry["projection"] = [
            "basis": requestsPerDay == nil ? "observed_rate" : "requests_per_day", "observed_seconds": .int(seconds),
            "per_day": projected(1), "per_month": projected(30),
        ]
        return entry
    }
}
