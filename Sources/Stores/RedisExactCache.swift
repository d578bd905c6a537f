public import Caching
import Foundation
import NIOConcurrencyHelpers
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
    public let maximumWrites: Int
    private let writes = NIOLockedValueBox(0)
    private let onWriteFailure: @Sendable () -> Void

    public init(client: RedisClient, keyPrefix: String, maximumEntryBytes: Int = 4 << 20, maximumWrites: Int = 1024,
                onWriteFailure: @escaping @Sendable () -> Void = {}) {
        self.client = client
        prefix = keyPrefix
        self.maximumEntryBytes = maximumEntryBytes
        self.maximumWrites = maximumWrites
        self.onWriteFailure = onWriteFailure
    }

    /// Unix milliseconds now.
    static func wallNow() -> Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded()) }

    func tenantTag(_ tenant: String) -> String {
        String(KeyHash.sha256Hex(bytes: Array(tenant.utf8)).prefix(16))
    }

    func redisKey(_ key: String, tenant: String) -> String {
        "\(prefix)exact:{\(tenantTag(tenant))}:\(key)"
    }

    public func lookup(_ key: String, tenant: String, now: ContinuousClock.Instant) async throws -> CachedAnswer? {
        let reply = try await client.send(["GET", .string(redisKey(key, tenant: tenant))])
        guard let bytes = reply.bytes else { return nil }
        return CachedAnswerCoding.decode(bytes, now: now, wallNow: Self.wallNow())
    }

    public func put(_ key: String, _ answer: CachedAnswer) {
        let now = ContinuousClock.now
        let ttl = CachedAnswerCoding.milliseconds(answer.expiresAt - now)
        guard ttl > 0 else { return }
        let bytes = CachedAnswerCoding.encode(answer, now: now, wallNow: Self.wallNow())
        guard bytes.count <= maximumEntryBytes else { return }
        let admitted = writes.withLockedValue { count in
            guard count < maximumWrites else { return false }
            count += 1
            return true
        }
        guard admitted else {
            onWriteFailure()
            return
        }
        let command: [RedisArgument] = ["SET", .string(redisKey(key, tenant: answer.tenant)), .bytes(bytes), "PX", .integer(ttl)]
        let client = self.client, writes = self.writes, onWriteFailure = self.onWriteFailure
        Task {
            do {
                try await client.send(command)
            } catch {
                onWriteFailure()
            }
            writes.withLockedValue { $0 -= 1 }
        }
    }

    /// Every key of `tenant` (or of every tenant), found with SCAN and removed with UNLINK, a thousand at a time.
    public func removeAll(tenant: String?) async throws -> Int {
        let pattern = tenant.map { "\(prefix)exact:{\(tenantTag($0))}:*" } ?? "\(prefix)exact:*"
        var cursor = "0"
        var removed = 0
        repeat {
            let reply = try await client.send(["SCAN", .string(cursor), "MATCH", .string(pattern), "COUNT", "1000"])
            guard let parts = reply.elements, parts.count == 2, let next = parts[0].string, let keys = parts[1].elements else {
                throw RedisError.protocolViolation(.badValue)
            }
            cursor = next
            let names = keys.compactMap(\.bytes)
            if !names.isEmpty {
                removed += Int(try await client.send(["UNLINK"] + names.map { .bytes($0) }).integer ?? 0)
            }
        } while cursor != "0"
        return removed
    }
}
