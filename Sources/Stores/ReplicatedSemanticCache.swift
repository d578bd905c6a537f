public import Caching
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
public import Redis
import SwitchyardCore

/// The semantic cache shared by every instance: each searches its own in-process index (microseconds), and every
/// insert and removal goes to a Redis stream, `<prefix>semantic:log`, that every instance replays into its index —
/// from the start of the stream when it starts (catching up), and from where it stopped after a disconnect.
///
/// The stream holds the truth, trimmed (`MAXLEN ~`) to twice the index's entry bound; the indexes are bounded as
/// before. A feedback removal or an admin delete through one instance reaches the others through the same stream.
public final class ReplicatedSemanticCache: SemanticCacheStore {
    public let local: InMemorySemanticCache
    let client: RedisClient
    let stream: String
    let origin: String
    let maximumLength: Int
    /// The only vector size accepted from the stream (the encoder's): another would not compare.
    let dimensions: Int
    private let writes: BackgroundWrites
    /// Entries applied from other instances, and the time from their write to their application (for the lag).
    private let applied = NIOLockedValueBox<(count: Int, lagMilliseconds: [Int64])>((0, []))

    public init(local: InMemorySemanticCache, client: RedisClient, keyPrefix: String, maximumLength: Int, dimensions: Int = 384,
                maximumWrites: Int = 1024, onFailure: @escaping @Sendable () -> Void = {}) {
        self.local = local
        self.client = client
        stream = "\(keyPrefix)semantic:log"
        origin = UUID().uuidString
        self.maximumLength = max(1000, maximumLength)
        self.dimensions = dimensions
        writes = BackgroundWrites(maximum: maximumWrites, onFailure: onFailure)
    }

    public func nearest(_ vector: [Float], namespace: String, minimum: Float, limit: Int, now: ContinuousClock.Instant) -> [SemanticMatch] {
        local.nearest(vector, namespace: namespace, minimum: minimum, limit: limit, now: now)
    }

    public func size(of namespace: String) -> Int { local.size(of: namespace) }

    public func insert(_ entry: SemanticEntry) {
        local.insert(entry)
        let data = SemanticEntryCoding.encode(entry, now: .now, wallNow: SharedState.wallNow())
        publish(["op", "insert", "data", .bytes(data)])
    }

    @discardableResult public func remove(id: String) -> SemanticEntry? {
        let removed = local.remove(id: id)
        publish(["op", "remove", "id", .string(id)])
        return removed
    }

    @discardableResult public func removeAll(tenant: String?) -> Int {
        let removed = local.removeAll(tenant: tenant)
        publish(["op", "clear"] + (tenant.map { ["tenant", .string($0)] } ?? []))
        return removed
    }

    /// Appends a record in the background, at most `maximumWrites` at once (past that it is dropped and counted).
    func publish(_ fields: [RedisArgument]) {
        writes.submit([["XADD", .string(stream), "MAXLEN", "~", .integer(maximumLength), "*",
                        "origin", .string(origin), "ms", .integer(SharedState.wallNow())] + fields], through: client)
    }

    /// Applies one record of the stream (another instance's; this one's own were applied when made).
    func apply(_ fields: [String: RESPValue]) {
        guard fields["origin"]?.string != origin, let op = fields["op"]?.string else { return }
        switch op {
        case "insert":
            guard let data = fields["data"]?.bytes,
                  let entry = SemanticEntryCoding.decode(data, now: .now, wallNow: SharedState.wallNow()),
                  entry.vector.count == dimensions
            else { return }
            local.insert(entry)
            let lag = fields["ms"]?.string.flatMap { Int64($0) }.map { SharedState.wallNow() - $0 }
            applied.withLockedValue { state in
                state.count += 1
                if let lag {
                    state.lagMilliseconds.append(lag)
                    if state.lagMilliseconds.count > 10_000 { state.lagMilliseconds.removeFirst(5_000) }
                }
            }
        case "remove":
            if let id = fields["id"]?.string { local.remove(id: id) }
        case "clear":
            local.removeAll(tenant: fields["tenant"]?.string)
        default:
            return
        }
    }

    /// Entries applied from other instances, and the recent lags (write to application) in milliseconds.
    public var replication: (applied: Int, lagMilliseconds: [Int64]) {
        applied.withLockedValue { ($0.count, $0.lagMilliseconds) }
    }

    /// Replays the stream into the index until cancelled: from its start, then blocking for new records (one
    /// connection of its own); after an error, reconnects with backoff and goes on from the last record applied.
    public func replicate() async {
        var last = "0-0"
        var backoff = ReconnectBackoff()
        var failed = false
        while !Task.isCancelled {
            do {
                // In a cluster, the node serving the stream's slot (asked again after a failure: it may have moved).
                var configuration = try await client.configuration(forKey: stream, refresh: failed)
                // A blocked read waits up to a second; its reply may take that long.
                configuration.commandTimeout = .seconds(3)
                // A record is one entry (answers over 4 MiB are not shared): a larger bulk is not one of ours.
                configuration.limits.bulk = 64 << 20
                let connection = try await RedisConnection.connect(configuration, on: MultiThreadedEventLoopGroupProvider.next())
                defer { Task { await connection.close() } }
                backoff.succeeded()
                failed = false
                // A blocked read ends at once when the task is cancelled (shutdown), not when its block times out.
                try await withTaskCancellationHandler {
                    try await readRecords(connection, from: &last)
                } onCancel: {
                    connection.channel.close(promise: nil)
                }
            } catch {
                failed = true
                backoff.failed(at: .now(), random: Double.random(in: 0..<1))
                let wait = max((backoff.notBefore - NIODeadline.now()).nanoseconds, 1_000_000)
                try? await Task.sleep(nanoseconds: UInt64(wait))
            }
        }
    }

    /// Reads and applies records after `last` until the connection fails or the task is cancelled.
    func readRecords(_ connection: RedisConnection, from last: inout String) async throws(RedisError) {
        while !Task.isCancelled {
            let reply = try await connection.send(["XREAD", "COUNT", "500", "BLOCK", "1000", "STREAMS", .string(stream), .string(last)])
            // RESP3: a map from the stream to its records; null when the block timed out.
            guard let records = reply.pairs?.first?.value.elements else { continue }
            for record in records {
                guard let parts = record.elements, parts.count == 2, let id = parts[0].string else { continue }
                var fields: [String: RESPValue] = [:]
                for pair in parts[1].pairs ?? [] {
                    if let name = pair.key.string { fields[name] = pair.value }
                }
                apply(fields)
                last = id
            }
        }
    }
}

/// The event loop a replication connection runs on.
enum MultiThreadedEventLoopGroupProvider {
    static func next() -> any EventLoop { NIOSingletons.posixEventLoopGroup.next() }
}
