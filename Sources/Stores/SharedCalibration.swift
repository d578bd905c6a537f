import Caching
import Foundation
import NIOConcurrencyHelpers
import Redis
import SwitchyardCore

/// The learned verifier's calibration, shared by every instance through Redis, so that all of them serve at the
/// threshold the labels of all of them support (labels arrive at one instance; without this each would calibrate on
/// its share of them).
///
/// Serving reads the local table (no round trip). Once a `interval`, `sync` writes what this instance added (labels
/// and observed scores per step: HINCRBY into one hash per tenant and model, `<prefix>calib:{<tenant hash>}:<key
/// hash>`, its name put in a sorted set by the time it changed), then reads back the hashes changed since the last
/// sync and makes their totals the local counts. The scores hits were served at go to `<prefix>calib:hit:{<tenant
/// hash>}:<entry id>` (a day), where feedback through any instance takes them, once (GETDEL).
public final class SharedCalibration: Sendable {
    public let calibration: SemanticCalibration
    private let client: RedisClient
    private let prefix: String
    private let writes: BackgroundWrites
    private let interval: Duration
    /// The registry score (Unix ms) read up to.
    private let cursor = NIOLockedValueBox<Int64>(0)
    static let retentionMilliseconds: Int64 = 30 * 86_400_000
    static let hitMilliseconds: Int64 = 86_400_000
    /// Hashes read per sync; more changed ones wait for the next.
    static let batch = 1000
    /// Changes up to this much older than the cursor are read again: instances' clocks differ a little.
    static let skewMilliseconds: Int64 = 5000

    public init(calibration: SemanticCalibration, client: RedisClient, keyPrefix: String, interval: Duration = .seconds(1),
                onWriteFailure: @escaping @Sendable () -> Void = {}) {
        self.calibration = calibration
        self.client = client
        prefix = keyPrefix
        writes = BackgroundWrites(maximum: 1024, onFailure: onWriteFailure)
        self.interval = interval
    }

    /// What `SemanticCalibration` calls when it serves a hit: remembers its score where any instance finds it.
    public static func hitRecorder(client: RedisClient, keyPrefix: String,
                                   onWriteFailure: @escaping @Sendable () -> Void = {}) -> @Sendable (String, String, Double) -> Void {
        let writes = BackgroundWrites(maximum: 1024, onFailure: onWriteFailure)
        return { entryID, key, score in
            guard let tenant = key.split(separator: "\u{0}", maxSplits: 1, omittingEmptySubsequences: false).first else { return }
            writes.submit([["SET", .string(hitKey(prefix: keyPrefix, tenant: String(tenant), entryID: entryID)),
                            .string("\(score)\n\(key)"), "PX", .integer(hitMilliseconds)]], through: client)
        }
    }

    static func hitKey(prefix: String, tenant: String, entryID: String) -> String {
        "\(prefix)calib:hit:{\(SharedState.tenantTag(tenant))}:\(entryID)"
    }

    func hashKey(_ key: String) -> String {
        let tenant = key.split(separator: "\u{0}", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        return "\(prefix)calib:{\(SharedState.tenantTag(tenant))}:\(KeyHash.sha256Hex(key, characters: 16))"
    }

    var registry: String { "\(prefix)calib:changed" }

    /// Syncs every `interval` until cancelled; a failed sync is tried again at the next (nothing added is lost).
    public func run() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: interval)
            try? await sync()
        }
    }

    /// Writes the pending deltas, then reads the totals changed since the last sync into the local table.
    public func sync() async throws(RedisError) {
        let pending = calibration.takePending()
        if !pending.isEmpty {
            let now = SharedState.wallNow()
            var commands: [[RedisArgument]] = []
            for (key, counts) in pending {
                let name = hashKey(key)
                commands.append(["HSET", .string(name), "key", .string(key)])
                for (field, values) in [("r", counts.right), ("w", counts.wrong), ("s", counts.seen)] {
                    for (step, value) in values.enumerated() where value != 0 {
                        commands.append(["HINCRBY", .string(name), .string("\(field)\(step)"), .integer(value)])
                    }
                }
                commands.append(["PEXPIRE", .string(name), .integer(Self.retentionMilliseconds)])
                commands.append(["ZADD", .string(registry), .integer(now), .string(name)])
            }
            do throws(RedisError) {
                let replies = try await client.pipeline(commands)
                if let failed = replies.first(where: { if case .error = $0 { true } else { false } }), case .error(let error) = failed {
                    throw .server(error)
                }
            } catch {
                // Not written (or not all): kept, and written with the next sync. HINCRBY of the part that was
                // written would count twice; a failed pipeline is rare and a label counted twice moves a threshold
                // by less than one label's worth of evidence.
                calibration.restorePending(pending)
                throw error
            }
        }
        try await pull()
    }

    private func pull() async throws(RedisError) {
        let since = max(0, cursor.withLockedValue { $0 } - Self.skewMilliseconds)
        let reply = try await client.send(["ZRANGE", .string(registry), .integer(since), "+inf", "BYSCORE", "LIMIT", "0",
                                           .integer(Self.batch), "WITHSCORES"])
        // RESP3: [member, score] pairs; RESP2: member, score, member, score…
        var changed: [(name: String, score: Int64)] = []
        let items = reply.elements ?? []
        if items.first?.elements != nil {
            for pair in items {
                guard let parts = pair.elements, parts.count == 2, let name = parts[0].string, let score = Self.score(parts[1]) else { continue }
                changed.append((name, score))
            }
        } else {
            for index in stride(from: 0, to: items.count - 1, by: 2) {
                guard let name = items[index].string, let score = Self.score(items[index + 1]) else { continue }
                changed.append((name, score))
            }
        }
        guard !changed.isEmpty else { return }
        let replies = try await client.pipeline(changed.map { ["HGETALL", .string($0.name)] })
        let steps = CalibrationCounts(steps: calibration.steps)
        var totals: [String: CalibrationCounts] = [:]
        for (entry, reply) in zip(changed, replies) {
            guard let (key, counts) = Self.decode(reply, shape: steps), hashKey(key) == entry.name else { continue }
            totals[key] = counts
        }
        calibration.apply(totals: totals)
        let newest = changed.map(\.score).max() ?? 0
        // A full batch of changes at one millisecond would be read again and again: step past it.
        let next = changed.count == Self.batch && changed.allSatisfy({ $0.score == newest }) ? newest + 1 : newest
        cursor.withLockedValue { $0 = max($0, next) }
        if Int.random(in: 0..<100) == 0 {
            writes.submit([["ZREMRANGEBYSCORE", .string(registry), "-inf", .integer(SharedState.wallNow() - Self.retentionMilliseconds)]],
                          through: client)
        }
    }

    static func score(_ value: RESPValue) -> Int64? {
        let number: Double? = if case .double(let double) = value { double } else { value.string.flatMap(Double.init) }
        guard let number, number.isFinite, number >= 0, number < 1e15 else { return nil }
        return Int64(number)
    }

    /// A hash read back: its key and counts, every field checked (a malformed one makes the whole hash unread).
    static func decode(_ reply: RESPValue, shape: CalibrationCounts) -> (String, CalibrationCounts)? {
        var fields: [(String, String)] = []
        if let pairs = reply.pairs {
            fields = pairs.compactMap { pair in pair.key.string.flatMap { key in pair.value.string.map { (key, $0) } } }
        } else if let items = reply.elements {
            fields = stride(from: 0, to: items.count - 1, by: 2).compactMap { index in
                items[index].string.flatMap { key in items[index + 1].string.map { (key, $0) } }
            }
        }
        var key: String?
        var counts = shape
        for (name, value) in fields {
            if name == "key" {
                guard value.utf8.count <= 4096, value.contains("\u{0}") else { return nil }
                key = value
                continue
            }
            guard let kind = name.first, let step = Int(name.dropFirst()), step >= 0, step < shape.right.count,
                  let count = Int(value), (0...1_000_000_000_000).contains(count) else { return nil }
            switch kind {
            case "r": counts.right[step] = count
            case "w": counts.wrong[step] = count
            case "s": counts.seen[step] = count
            default: return nil
            }
        }
        guard let key else { return nil }
        return (key, counts)
    }

    /// Feedback from `tenant` on an entry's latest hit, through any instance: the shared record is taken (once,
    /// GETDEL) and labels the score it was served at. With the store down, this instance's memory of its own hits.
    public func feedback(entryID: String, tenant: String, correct: Bool) async -> Bool {
        let name = Self.hitKey(prefix: prefix, tenant: tenant, entryID: entryID)
        let reply: RESPValue
        do {
            reply = try await client.send(["GETDEL", .string(name)])
        } catch {
            // The store is down: the hit as this instance remembers it (labelled at most once here).
            return calibration.feedback(entryID: entryID, tenant: tenant, correct: correct)
        }
        // Nothing there: labelled already (through any instance), expired, or never served through calibration.
        calibration.forget(entryID: entryID)
        guard let text = reply.string else { return false }
        let parts = text.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false)
        guard parts.count == 2, let score = Double(parts[0]), score.isFinite, parts[1].hasPrefix(tenant + "\u{0}") else { return false }
        calibration.record(key: String(parts[1]), score: score, correct: correct)
        return true
    }
}
