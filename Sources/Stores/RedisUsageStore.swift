import Limits
public import Redis
public import SwitchyardCore

/// The ledger's aggregates in Redis, so that usage, budgets and the dashboard read the same figures from every
/// instance.
///
/// One hash per tenant and UTC hour, `<prefix>usage:{<tenant hash>}:<hour>`, with a field per minute, user, feature,
/// model and metric, `<minute>|<user>|<feature>|<model>|<metric>` (the values escaped: `%`, `|` and `=` as `%25`, `%7C`, `%3D`),
/// incremented with `HINCRBY` and expiring past the retention. A batch is one pipeline; a report reads one hash per
/// tenant and hour in range. Tenants are listed in `<prefix>usage:tenants` (a sorted set by last minute) and named
/// in `<prefix>usage:names`, both trimmed past the retention.
public final class RedisUsageStore: UsageStore {
    let client: RedisClient
    let prefix: String
    let retentionHours: Int64
    /// Tenants a report of every tenant reads at most (the most recently active first).
    public let maximumTenants: Int
    /// Unix seconds now.
    private let clock: @Sendable () -> Int64

    public init(client: RedisClient, keyPrefix: String, retention: Duration = .seconds(31 * 86400), maximumTenants: Int = 1000,
                now: @escaping @Sendable () -> Int64 = unixSeconds) {
        self.client = client
        prefix = keyPrefix
        retentionHours = max(1, retention.components.seconds / 3600)
        self.maximumTenants = max(1, maximumTenants)
        clock = now
    }

    func hourKey(_ tag: String, hour: Int64) -> String { "\(prefix)usage:{\(tag)}:\(hour)" }

    /// `%`, `|` and `=` escaped as the limits' counter names are (`CounterKey.escape`).
    static func escape(_ value: String) -> String { CounterKey.escape(value) }

    static func unescape(_ value: Substring) -> String {
        guard value.contains("%") else { return String(value) }
        return String(value).replacing("%7C", with: "|").replacing("%3D", with: "=").replacing("%25", with: "%")
    }

    public func add(_ batch: [UsageKey: UsageTotals]) async throws {
        guard !batch.isEmpty else { return }
        var commands: [[RedisArgument]] = []
        var hours: Set<String> = []
        var tenants: [String: (tag: String, minute: Int64)] = [:]
        for (key, totals) in batch {
            let tag = SharedState.tenantTag(key.tenant)
            let hash = hourKey(tag, hour: key.minute / 60)
            let field = "\(key.minute)|\(Self.escape(key.user))|\(Self.escape(key.feature))|\(Self.escape(key.model))|"
            for (index, metric) in UsageTotals.Metric.allCases.enumerated() where totals.values[index] != 0 {
                commands.append(["HINCRBY", .string(hash), .string(field + metric.name), .integer(totals.values[index])])
            }
            hours.insert(hash)
            tenants[key.tenant] = (tag, max(tenants[key.tenant]?.minute ?? .min, key.minute))
        }
        for hash in hours { commands.append(["EXPIRE", .string(hash), .integer((retentionHours + 1) * 3600)]) }
        for (tenant, entry) in tenants {
            commands.append(["ZADD", .string("\(prefix)usage:tenants"), .integer(entry.minute), .string(entry.tag)])
            commands.append(["HSET", .string("\(prefix)usage:names"), .string(entry.tag), .string(tenant)])
        }
        let replies = try await client.pipeline(commands)
        for case .error(let error) in replies { throw RedisError.server(error) }
    }

    public func usage(from: Int64, to: Int64, tenant: String?) async throws -> [UsageKey: UsageTotals] {
        let first = from / 60, last = to / 60
        let oldestKept = clock() / 60 - retentionHours * 60
        var tenants: [(tag: String, name: String)] = []
        if let tenant {
            tenants = [(SharedState.tenantTag(tenant), tenant)]
        } else {
            let replies = try await client.pipeline([
                ["ZREMRANGEBYSCORE", .string("\(prefix)usage:tenants"), "-inf", .string("(\(oldestKept)")],
                ["ZREVRANGEBYSCORE", .string("\(prefix)usage:tenants"), "+inf", .integer(first), "LIMIT", "0", .integer(maximumTenants)],
            ])
            let tags = replies.last?.elements?.compactMap(\.string) ?? []
            if !tags.isEmpty {
                let names = try await client.send(["HMGET", .string("\(prefix)usage:names")] + tags.map { .string($0) })
                let values = names.elements ?? []
                for (index, tag) in tags.enumerated() {
                    if index < values.count, let name = values[index].string { tenants.append((tag, name)) }
                }
            }
        }
        let start = max(first, oldestKept) / 60
        let end = last / 60
        guard start <= end else { return [:] }
        let hours = Array(start...min(end, start + retentionHours))
        let metrics = Dictionary(uniqueKeysWithValues: UsageTotals.Metric.allCases.map { ($0.name, $0) })
        var result: [UsageKey: UsageTotals] = [:]
        for (tag, name) in tenants {
            let replies = try await client.pipeline(hours.map { ["HGETALL", .string(hourKey(tag, hour: $0))] })
            for reply in replies {
                for pair in reply.pairs ?? [] {
                    guard let field = pair.key.string, let count = pair.value.string.flatMap({ Int64($0) }) else { continue }
                    let parts = field.split(separator: "|", omittingEmptySubsequences: false)
                    guard parts.count == 5, let minute = Int64(parts[0]), minute >= first, minute <= last,
                          let metric = metrics[String(parts[4])] else { continue }
                    let key = UsageKey(minute: minute, tenant: name, user: Self.unescape(parts[1]), feature: Self.unescape(parts[2]),
                                       model: Self.unescape(parts[3]))
                    result[key, default: UsageTotals()].add(metric, count)
                }
            }
        }
        return result
    }
}
