public import Redis
public import SwitchyardCore

/// The savings ledger in Redis, so that `GET /v1/usage/savings` gives the same answer from every instance.
///
/// One hash per tenant and UTC day, `<prefix>savings:{<tenant hash>}:<day>`, with fields `<minute>:<kind>:r` (requests)
/// and `<minute>:<kind>:s` (nano-USD saved), incremented with HINCRBY and expiring after the retention. A report
/// reads one hash per tenant and day in range (pipelined). Tenants are listed in a sorted set by their last minute,
/// `<prefix>savings:tenants`, and their names in `<prefix>savings:names` (hash → name), both trimmed past the
/// retention.
public final class RedisSavingsStore: SavingsStore {
    let client: RedisClient
    let prefix: String
    let retentionDays: Int64
    /// Tenants a report reads at most (the most recently active first).
    public let maximumTenants: Int
    private let writes: BackgroundWrites
    private let clock: @Sendable () -> Int64

    public init(client: RedisClient, keyPrefix: String, retentionDays: Int64 = 8, maximumTenants: Int = 10_000,
                maximumWrites: Int = 1024, onFailure: @escaping @Sendable () -> Void = {},
                now: @escaping @Sendable () -> Int64 = SavingsLedger.unixNow) {
        self.client = client
        prefix = keyPrefix
        self.retentionDays = max(1, retentionDays)
        self.maximumTenants = maximumTenants
        writes = BackgroundWrites(maximum: maximumWrites, onFailure: onFailure)
        clock = now
    }

    public var now: Int64 { clock() }

    func tag(_ tenant: String) -> String { SharedState.tenantTag(tenant) }

    func dayKey(_ tag: String, day: Int64) -> String { "\(prefix)savings:{\(tag)}:\(day)" }

    public func record(tenant: String, kind: SavingsLedger.Kind, saved: NanoUSD) {
        let minute = clock() / 60
        let day = minute / 1440
        let tag = tag(tenant)
        let key = dayKey(tag, day: day)
        let commands: [[RedisArgument]] = [
            ["HINCRBY", .string(key), .string("\(minute):\(kind.rawValue):r"), "1"],
            ["HINCRBY", .string(key), .string("\(minute):\(kind.rawValue):s"), .integer(saved.value)],
            ["EXPIRE", .string(key), .integer((retentionDays + 1) * 86400)],
            ["ZADD", .string("\(prefix)savings:tenants"), .integer(minute), .string(tag)],
            ["HSET", .string("\(prefix)savings:names"), .string(tag), .string(tenant)],
        ]
        writes.submit(commands, through: client)
    }

    public func totals(from: Int64, to: Int64, tenant: String?) async throws -> [String: [SavingsLedger.Kind: SavingsLedger.Total]] {
        let first = from / 60, last = to / 60
        let oldestKept = clock() / 60 - retentionDays * 1440
        var tenants: [(tag: String, name: String)] = []
        if let tenant {
            tenants = [(tag(tenant), tenant)]
        } else {
            // Trimmed first: tenants silent past the retention go.
            let replies = try await client.pipeline([
                ["ZREMRANGEBYSCORE", .string("\(prefix)savings:tenants"), "-inf", .string("(\(oldestKept)")],
                ["ZRANGEBYSCORE", .string("\(prefix)savings:tenants"), .integer(first), "+inf", "LIMIT", "0", .integer(maximumTenants)],
            ])
            let tags = replies.last?.elements?.compactMap(\.string) ?? []
            if !tags.isEmpty {
                let names = try await client.send(["HMGET", .string("\(prefix)savings:names")] + tags.map { .string($0) })
                let values = names.elements ?? []
                for (index, tag) in tags.enumerated() {
                    if index < values.count, let name = values[index].string { tenants.append((tag, name)) }
                }
            }
        }
        let days = Array(max(first, oldestKept) / 1440...max(last / 1440, max(first, oldestKept) / 1440)).prefix(400)
        var result: [String: [SavingsLedger.Kind: SavingsLedger.Total]] = [:]
        for (tag, name) in tenants {
            let replies = try await client.pipeline(days.map { ["HGETALL", .string(dayKey(tag, day: $0))] })
            for reply in replies {
                for pair in reply.pairs ?? [] {
                    guard let field = pair.key.string, let count = pair.value.string.flatMap({ Int64($0) }) else { continue }
                    let parts = field.split(separator: ":")
                    guard parts.count == 3, let minute = Int64(parts[0]), minute >= first, minute <= last,
                          let kind = SavingsLedger.Kind(rawValue: String(parts[1])) else { continue }
                    var total = result[name, default: [:]][kind, default: SavingsLedger.Total()]
                    if parts[2] == "r" {
                        total.requests += Int(clamping: count)
                    } else {
                        total.saved = NanoUSD(saturating: Int128(total.saved.value) + Int128(count))
                    }
                    result[name, default: [:]][kind] = total
                }
            }
        }
        return result
    }
}
