public import Caching
public import Redis
import SwitchyardCore

/// The exact cache in Redis, shared by every gateway instance: one string per answer (`CachedAnswerCoding`), with
/// Redis' own expiry (`PX`). Keys carry the tenant as a hash tag, `<prefix>exact:{<tenant hash>}:<key>`, so that one
/// tenant's answers sit in one Cluster slot and can be removed together. The bound on memory is Redis'
/// (`maxmemory` with an LRU policy, see the README) plus a size cap per answer here.
public final class RedisExactCache: ExactCacheStore {
    let client: RedisClient
    let prefix: String
    /// Answers larger than this are not shared (they still answer the request that made them).
    public let maximumEntryBytes: Int
    /// Writes in flight at once; past it a write is dropped (and counted), never queued without bound.
    private let writes: BackgroundWrites

    public init(client: RedisClient, keyPrefix: String, maximumEntryBytes: Int = 4 << 20, maximumWrites: Int = 1024,
                onWriteFailure: @escaping @Sendable () -> Void = {}) {
        self.client = client
        prefix = keyPrefix
        self.maximumEntryBytes = maximumEntryBytes
        writes = BackgroundWrites(maximum: maximumWrites, onFailure: onWriteFailure)
    }

    func tenantTag(_ tenant: String) -> String { SharedState.tenantTag(tenant) }

    func redisKey(_ key: String, tenant: String) -> String {
        "\(prefix)exact:{\(tenantTag(tenant))}:\(key)"
    }

    public func lookup(_ key: String, tenant: String, now: ContinuousClock.Instant) async throws -> CachedAnswer? {
        let reply = try await client.send(["GET", .string(redisKey(key, tenant: tenant))])
        guard let bytes = reply.bytes else { return nil }
        return CachedAnswerCoding.decode(bytes, now: now, wallNow: SharedState.wallNow())
    }

    public func put(_ key: String, _ answer: CachedAnswer) {
        let now = ContinuousClock.now
        let ttl = CachedAnswerCoding.milliseconds(answer.retainedUntil - now)
        guard ttl > 0 else { return }
        let bytes = CachedAnswerCoding.encode(answer, now: now, wallNow: SharedState.wallNow())
        guard bytes.count <= maximumEntryBytes else { return }
        writes.submit([["SET", .string(redisKey(key, tenant: answer.tenant)), .bytes(bytes), "PX", .integer(ttl)]], through: client)
    }

    /// Every key of `tenant` (or of every tenant), found with SCAN (on every primary of a cluster) and removed with
    /// UNLINK, a thousand at a time: one UNLINK per key, pipelined, since the keys of several tenants live in
    /// different slots.
    public func removeAll(tenant: String?) async throws -> Int {
        let pattern = tenant.map { "\(prefix)exact:{\(tenantTag($0))}:*" } ?? "\(prefix)exact:*"
        var removed = 0
        let client = self.client
        try await client.scan(matching: pattern) { (names: [[UInt8]]) throws(RedisError) in
            let replies = try await client.pipeline(names.map { ["UNLINK", .bytes($0)] })
            removed += replies.reduce(0) { $0 + Int($1.integer ?? 0) }
        }
        return removed
    }
}
