public import Redis
public import SwitchyardCore

/// The breakers' board in Redis: one hash, `<prefix>breakers`, a field per deployment (its ID) holding the Unix
/// nanoseconds it is open until. One key (one Cluster slot) for every deployment: a read is one HGETALL. The fields
/// are the configured deployments', so the hash stays small, and a field past its time is left in place (removing it
/// could race with an instance writing a new opening).
public final class RedisBreakerBoard: BreakerBoard {
    let client: RedisClient
    let key: String
    /// Fields read at most (a hash written by something else than a gateway is not read without bound).
    static let maximumFields = 10_000

    public init(client: RedisClient, keyPrefix: String) {
        self.client = client
        key = "\(keyPrefix)breakers"
    }

    public func opened(_ deployment: String, until: Int64) async throws {
        // Kept a day past the last opening: a board nobody writes to any more goes away.
        let replies = try await client.pipeline([["HSET", .string(key), .string(deployment), .integer(until)],
                                                 ["PEXPIRE", .string(key), .integer(86_400_000)]])
        if let error = replies.lazy.compactMap({ reply -> RedisServerError? in
            if case .error(let error) = reply { return error }
            return nil
        }).first {
            throw RedisError.server(error)
        }
    }

    public func open(now: Int64) async throws -> [String: Int64] {
        let reply = try await client.send(["HGETALL", .string(key)])
        var open: [String: Int64] = [:]
        for pair in (reply.pairs ?? []).prefix(Self.maximumFields) {
            guard let deployment = pair.key.string else { continue }
            // Only a plain number of at most 19 digits is a time.
            guard let text = pair.value.string, text.utf8.count <= 19, let until = Int64(text), until > now else { continue }
            open[deployment] = until
        }
        return open
    }
}
