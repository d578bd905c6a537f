public import Limits
public import Redis
import SwitchyardCore

/// The alert latch in Redis: `SET <prefix>alert:<key hash> 1 NX EX ttl`, so that of every instance that sees a
/// budget cross a threshold, one sends the alert.
public struct RedisAlertLatch: AlertLatch {
    let client: RedisClient
    let prefix: String

    public init(client: RedisClient, keyPrefix: String) {
        self.client = client
        prefix = keyPrefix
    }

    public func claim(_ key: String, ttlSeconds: Int64) async throws -> Bool {
        let reply = try await client.send(["SET", .string("\(prefix)alert:\(KeyHash.sha256Hex(key, characters: 32))"), "1", "NX", "EX",
                                           .integer(max(ttlSeconds, 1))])
        return reply.string == "OK"
    }
}
