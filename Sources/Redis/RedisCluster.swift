import NIOConcurrencyHelpers
import NIOCore

/// Redis Cluster's key space: 16,384 slots. A key's slot is the CRC16 (XMODEM) of its hash tag — the bytes between
/// its first `{` and the next `}`, when there are any — or of the whole key, modulo 16,384. Keys that share a tag
/// share a slot, so one script or transaction may touch them all.
public enum RedisSlot {
    public static let count = 16384

    public static func of(_ key: some Collection<UInt8>) -> Int {
        let bytes = Array(key)
        if let open = bytes.firstIndex(of: UInt8(ascii: "{")),
           let close = bytes[(open + 1)...].firstIndex(of: UInt8(ascii: "}")), close > open + 1 {
            return Int(crc16(bytes[(open + 1)..<close]) % UInt16(count))
        }
        return Int(crc16(bytes) % UInt16(count))
    }

    public static func of(_ key: String) -> Int { of(Array(key.utf8)) }

    static func crc16(_ bytes: some Sequence<UInt8>) -> UInt16 {
        var crc: UInt16 = 0
        for byte in bytes { crc = (crc << 8) ^ table[Int((crc >> 8) ^ UInt16(byte))] }
        return crc
    }

    private static let table: [UInt16] = (0..<256).map { index in
        var crc = UInt16(index) << 8
        for _ in 0..<8 { crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1 }
        return crc
    }
}

/// The first key a command names, for routing it: the argument after the name for most commands, after `numkeys`
/// for scripts, after `STREAMS` for stream reads; `nil` for commands without keys (any node answers them).
enum RedisCommandKey {
    private static let keyless: Set<String> = [
        "PING", "ECHO", "HELLO", "AUTH", "SELECT", "INFO", "SCAN", "SCRIPT", "CLUSTER", "COMMAND", "CONFIG", "CLIENT",
        "DBSIZE", "TIME", "FLUSHALL", "FLUSHDB", "PUBLISH", "SUBSCRIBE", "UNSUBSCRIBE", "PSUBSCRIBE", "PUNSUBSCRIBE",
        "DEBUG", "WAIT", "ASKING", "READONLY", "MEMORY", "LATENCY", "SLOWLOG", "ROLE", "LASTSAVE", "FUNCTION",
    ]

    static func first(_ arguments: [RedisArgument]) -> [UInt8]? {
        guard let name = arguments.first.map(bytes).map({ String(decoding: $0, as: UTF8.self).uppercased() }) else { return nil }
        switch name {
        case _ where keyless.contains(name):
            return nil
        case "EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO":
            guard arguments.count > 3, let count = Int(String(decoding: bytes(arguments[2]), as: UTF8.self)), count > 0 else {
                return nil
            }
            return bytes(arguments[3])
        case "XREAD", "XREADGROUP":
            guard let streams = arguments.firstIndex(where: { String(decoding: bytes($0), as: UTF8.self).uppercased() == "STREAMS" }),
                  streams + 1 < arguments.count else { return nil }
            return bytes(arguments[streams + 1])
        default:
            return arguments.count > 1 ? bytes(arguments[1]) : nil
        }
    }

    private static func bytes(_ argument: RedisArgument) -> [UInt8] {
        switch argument {
        case .string(let string): Array(string.utf8)
        case .bytes(let bytes): bytes
        case .number(let value): Array(String(value).utf8)
        }
    }
}

/// One node of a cluster, by the address clients reach it at.
public struct RedisNode: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// `host:port` as MOVED and ASK name it; an empty host is the node that answered (`sender`).
    init?(endpoint: Substring, sender: RedisNode) {
        guard let colon = endpoint.lastIndex(of: ":"), let port = Int(endpoint[endpoint.index(after: colon)...]),
              (1...65535).contains(port) else { return nil }
        var host = endpoint[..<colon]
        if host.hasPrefix("[") && host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        guard host.utf8.count <= 255 else { return nil }
        self.init(host: host.isEmpty ? sender.host : String(host), port: port)
    }
}

/// A `MOVED` or `ASK` error reply: the slot lives (for good, or during a migration for this one command) on
/// another node.
struct RedisRedirect: Hashable {
    enum Kind: Hashable { case moved, ask }
    var kind: Kind
    var slot: Int
    var node: RedisNode

    init(kind: Kind, slot: Int, node: RedisNode) {
        self.kind = kind
        self.slot = slot
        self.node = node
    }

    init?(_ error: RedisServerError, sender: RedisNode) {
        let words = error.message.split(separator: " ")
        guard words.count == 3, let slot = Int(words[1]), (0..<RedisSlot.count).contains(slot),
              let node = RedisNode(endpoint: words[2], sender: sender) else { return nil }
        switch words[0] {
        case "MOVED": kind = .moved
        case "ASK": kind = .ask
        default: return nil
        }
        self.slot = slot
        self.node = node
    }
}

/// Which node serves each slot, from `CLUSTER SLOTS`. A pure value: parsed, checked, looked up, patched by MOVED.
public struct RedisSlotMap: Sendable, Hashable {
    /// Index into `nodes` per slot; -1 where no node serves it.
    private var owners: [Int16]
    public private(set) var nodes: [RedisNode]
    /// At most this many distinct nodes (a reply naming more is refused, not trusted).
    public static let maximumNodes = 1000

    public init() {
        owners = Array(repeating: -1, count: RedisSlot.count)
        nodes = []
    }

    /// The reply of `CLUSTER SLOTS`: per range, `[start, end, [host, port, id, …], replicas…]`; the first node is the
    /// primary. A node with an empty host (or `?`) is reached at the host of the node that answered (`sender`).
    public init?(clusterSlots reply: RESPValue, sender: RedisNode) {
        self.init()
        guard let ranges = reply.elements, ranges.count <= RedisSlot.count else { return nil }
        var index: [RedisNode: Int16] = [:]
        for range in ranges {
            guard let parts = range.elements, parts.count >= 3, let start = parts[0].integer, let end = parts[1].integer,
                  0 <= start, start <= end, end < RedisSlot.count, let primary = parts[2].elements, primary.count >= 2,
                  let host = primary[0].string, host.utf8.count <= 255, let port = primary[1].integer, (1...65535).contains(port)
            else { return nil }
            let node = RedisNode(host: host.isEmpty || host == "?" ? sender.host : host, port: Int(port))
            let number: Int16
            if let known = index[node] {
                number = known
            } else {
                guard nodes.count < Self.maximumNodes else { return nil }
                number = Int16(nodes.count)
                index[node] = number
                nodes.append(node)
            }
            for slot in Int(start)...Int(end) { owners[slot] = number }
        }
    }

    public func node(forSlot slot: Int) -> RedisNode? {
        guard (0..<RedisSlot.count).contains(slot), owners[slot] >= 0 else { return nil }
        return nodes[Int(owners[slot])]
    }

    /// A MOVED reply: the slot is served by `node` from now on.
    public mutating func move(slot: Int, to node: RedisNode) {
        guard (0..<RedisSlot.count).contains(slot) else { return }
        if let known = nodes.firstIndex(of: node) {
            owners[slot] = Int16(known)
        } else if nodes.count < Self.maximumNodes {
            owners[slot] = Int16(nodes.count)
            nodes.append(node)
        }
    }

    /// The nodes that serve at least one slot.
    public var primaries: [RedisNode] {
        let used = Set(owners.filter { $0 >= 0 })
        return nodes.indices.filter { used.contains(Int16($0)) }.map { nodes[$0] }
    }
}

/// A client for one Redis server, or for a Redis Cluster (`configuration.cluster`): commands are pipelined over a
/// pool of connections per node. In a cluster a command goes to the node serving its key's slot (from
/// `CLUSTER SLOTS`, fetched on first use), follows `MOVED` (and refreshes the map) and `ASK` (`ASKING` first, on the
/// same connection), at most `maximumRedirects` times; a pipeline is split by node and put back in order.
public final class RedisClient: Sendable {
    public let configuration: RedisConfiguration
    let eventLoopGroup: any EventLoopGroup
    private let onPush: (@Sendable ([RESPValue]) -> Void)?
    private let seed: RedisNodePool
    private let seedNode: RedisNode
    private let cluster: NIOLockedValueBox<ClusterState>?
    private let redirectCounts = NIOLockedValueBox((moved: 0, ask: 0))
    static let maximumRedirects = 3

    /// The MOVED and ASK replies followed so far (a cluster resharding, or a map gone stale).
    public var redirects: (moved: Int, ask: Int) { redirectCounts.withLockedValue { $0 } }

    private struct ClusterState: Sendable {
        var map: RedisSlotMap?
        var pools: [RedisNode: RedisNodePool] = [:]
        var refreshing = false
        var closed = false
    }

    public init(configuration: RedisConfiguration, group: any EventLoopGroup,
                onPush: (@Sendable ([RESPValue]) -> Void)? = nil) {
        self.configuration = configuration
        eventLoopGroup = group
        self.onPush = onPush
        seed = RedisNodePool(configuration: configuration, group: group, onPush: onPush)
        seedNode = RedisNode(host: configuration.host, port: configuration.port)
        cluster = configuration.cluster ? NIOLockedValueBox(ClusterState()) : nil
    }

    /// One command; an error reply is thrown as `.server`.
    @discardableResult
    public func send(_ arguments: [RedisArgument]) async throws(RedisError) -> RESPValue {
        let reply = try await routed(arguments)
        if case .error(let error) = reply { throw .server(error) }
        return reply
    }

    /// Commands answered in order, error replies in place. On one server they are written together on one
    /// connection; in a cluster, together per node.
    public func pipeline(_ commands: [[RedisArgument]]) async throws(RedisError) -> [RESPValue] {
        guard cluster != nil, !commands.isEmpty else { return try await seed.pipeline(commands) }
        var groups: [RedisNode: [Int]] = [:]
        for (index, command) in commands.enumerated() {
            groups[try await node(for: command), default: []].append(index)
        }
        var replies = [RESPValue](repeating: .null, count: commands.count)
        let results = await withTaskGroup(of: (RedisNode, Result<[RESPValue], RedisError>).self) { tasks in
            for (node, indices) in groups {
                let batch = indices.map { commands[$0] }
                tasks.addTask {
                    do throws(RedisError) {
                        return (node, .success(try await self.pool(node).pipeline(batch)))
                    } catch {
                        return (node, .failure(error))
                    }
                }
            }
            var all: [(RedisNode, Result<[RESPValue], RedisError>)] = []
            for await result in tasks { all.append(result) }
            return all
        }
        for (node, result) in results {
            let indices = groups[node] ?? []
            let batch = try result.get()
            for (position, index) in indices.enumerated() where position < batch.count {
                replies[index] = batch[position]
            }
        }
        // Replies that were redirected (a slot moved since the map was read): those commands again, one by one.
        for index in replies.indices {
            if case .error(let error) = replies[index], error.code == "MOVED" || error.code == "ASK" {
                replies[index] = try await routed(commands[index])
            }
        }
        return replies
    }

    /// Runs `script` with `keys` and `arguments`: EVALSHA, and on NOSCRIPT, SCRIPT LOAD then EVALSHA again. In a
    /// cluster the keys must share a slot (name them with one hash tag); the script goes to that slot's node.
    @discardableResult
    public func evaluate(_ script: RedisScript, keys: [RedisArgument], arguments: [RedisArgument]) async throws(RedisError) -> RESPValue {
        let command: [RedisArgument] = ["EVALSHA", .string(script.sha1), .integer(keys.count)] + keys + arguments
        do {
            return try await send(command)
        } catch .server(let error) where error.code == "NOSCRIPT" {
            // Loaded on the node that will run it: the one the key routes to now.
            let node = try await node(for: command)
            _ = try await pool(node).pipeline([["SCRIPT", "LOAD", .string(script.source)]])
            return try await send(command)
        }
    }

    /// `evaluate` without a task waiting for the reply (a write off the request path): written at once on a
    /// connection of the caller's event loop when one is connected; through `evaluate` in a task otherwise (a
    /// cluster, no connection yet, or NOSCRIPT). `done` gets the reply, an error reply as `.server`.
    public func evaluateDetached(_ script: RedisScript, keys: [RedisArgument], arguments: [RedisArgument],
                                 done: @escaping @Sendable (Result<RESPValue, RedisError>) -> Void) {
        @Sendable func inTask() {
            Task {
                do throws(RedisError) {
                    done(.success(try await evaluate(script, keys: keys, arguments: arguments)))
                } catch {
                    done(.failure(error))
                }
            }
        }
        guard cluster == nil, let connection = seed.readyConnection() else { return inTask() }
        let command: [RedisArgument] = ["EVALSHA", .string(script.sha1), .integer(keys.count)] + keys + arguments
        connection.sendDetached([command]) { result in
            switch result {
            case .success(let replies):
                switch replies.first {
                case .error(let error)? where error.code == "NOSCRIPT": inTask()
                case .error(let error)?: done(.failure(.server(error)))
                case let reply: done(.success(reply ?? .null))
                }
            case .failure(let error):
                done(.failure(error))
            }
        }
    }

    /// Every key matching `pattern` (SCAN, `batch` at a time), on the server or on every primary of the cluster;
    /// `body` gets each batch of names.
    public func scan(matching pattern: String, batch: Int = 1000,
                     _ body: ([[UInt8]]) async throws(RedisError) -> Void) async throws(RedisError) {
        for node in try await primaries() {
            let pool = try pool(node)
            var cursor = "0"
            repeat {
                let reply = try await pool.reply(["SCAN", .string(cursor), "MATCH", .string(pattern), "COUNT", .integer(batch)])
                if case .error(let error) = reply { throw .server(error) }
                guard let parts = reply.elements, parts.count == 2, let next = parts[0].string, let keys = parts[1].elements else {
                    throw .protocolViolation(.badValue)
                }
                cursor = next
                let names = keys.compactMap(\.bytes)
                if !names.isEmpty { try await body(names) }
            } while cursor != "0"
        }
    }

    /// How to reach the node that serves `key` (the server itself when not a cluster): for a connection of its
    /// own, such as a blocking stream read. `refresh` asks the cluster for its slots first (after a MOVED).
    public func configuration(forKey key: String, refresh: Bool = false) async throws(RedisError) -> RedisConfiguration {
        guard cluster != nil else { return configuration }
        if refresh { try await refreshSlots() }
        let node = try await node(for: ["GET", .string(key)])
        var configuration = self.configuration
        configuration.host = node.host
        configuration.port = node.port
        return configuration
    }

    /// Closes every connection; later calls fail with `.unavailable`.
    public func close() async {
        let pools = cluster?.withLockedValue { state -> [RedisNodePool] in
            state.closed = true
            defer { state.pools = [:] }
            return Array(state.pools.values)
        } ?? []
        await seed.close()
        for pool in pools { await pool.close() }
    }

    // MARK: Routing

    private func routed(_ arguments: [RedisArgument]) async throws(RedisError) -> RESPValue {
        guard cluster != nil else { return try await seed.reply(arguments) }
        var node = try await node(for: arguments)
        var asking = false
        var reply = RESPValue.null
        for _ in 0...Self.maximumRedirects {
            let pool = try pool(node)
            reply = asking ? (try await pool.pipeline([["ASKING"], arguments]).last ?? .null) : try await pool.reply(arguments)
            guard case .error(let error) = reply, let redirect = RedisRedirect(error, sender: node) else { return reply }
            switch redirect.kind {
            case .moved:
                redirectCounts.withLockedValue { $0.moved += 1 }
                cluster?.withLockedValue { $0.map?.move(slot: redirect.slot, to: redirect.node) }
                refreshInBackground()
                asking = false
            case .ask:
                redirectCounts.withLockedValue { $0.ask += 1 }
                asking = true
            }
            node = redirect.node
        }
        return reply
    }

    private func node(for command: [RedisArgument]) async throws(RedisError) -> RedisNode {
        guard let cluster else { return seedNode }
        var map = cluster.withLockedValue { $0.map }
        if map == nil {
            try await refreshSlots()
            map = cluster.withLockedValue { $0.map }
        }
        guard let map else { throw .unavailable }
        if let key = RedisCommandKey.first(command), let node = map.node(forSlot: RedisSlot.of(key)) { return node }
        // No key (or a slot nobody serves yet, which will answer with a redirect or an error): any primary.
        return map.primaries.first ?? seedNode
    }

    private func primaries() async throws(RedisError) -> [RedisNode] {
        guard let cluster else { return [seedNode] }
        if cluster.withLockedValue({ $0.map }) == nil { try await refreshSlots() }
        return cluster.withLockedValue { $0.map?.primaries } ?? [seedNode]
    }

    private func pool(_ node: RedisNode) throws(RedisError) -> RedisNodePool {
        guard let cluster, node != seedNode else { return seed }
        let made: RedisNodePool? = cluster.withLockedValue { state in
            guard !state.closed else { return nil }
            if let pool = state.pools[node] { return pool }
            guard state.pools.count < RedisSlotMap.maximumNodes else { return nil }
            var configuration = self.configuration
            configuration.host = node.host
            configuration.port = node.port
            let pool = RedisNodePool(configuration: configuration, group: eventLoopGroup, onPush: onPush)
            state.pools[node] = pool
            return pool
        }
        guard let made else { throw .unavailable }
        return made
    }

    /// Asks the seed, then the other known nodes, for the slot map (`CLUSTER SLOTS`), and keeps the first answer.
    func refreshSlots() async throws(RedisError) {
        guard let cluster else { return }
        let known = cluster.withLockedValue { $0.map?.nodes ?? [] }
        var failure = RedisError.unavailable
        for node in [seedNode] + known.filter({ $0 != seedNode }).prefix(16) {
            do throws(RedisError) {
                let reply = try await pool(node).reply(["CLUSTER", "SLOTS"])
                if case .error(let error) = reply { throw .server(error) }
                guard let map = RedisSlotMap(clusterSlots: reply, sender: node) else { throw .protocolViolation(.badValue) }
                let stale: [RedisNodePool] = cluster.withLockedValue { state in
                    state.map = map
                    // Nodes that left the cluster: their connections go.
                    let kept = Set(map.nodes)
                    let gone = state.pools.filter { !kept.contains($0.key) }
                    for node in gone.keys { state.pools[node] = nil }
                    return Array(gone.values)
                }
                for pool in stale { await pool.close() }
                return
            } catch {
                failure = error
            }
        }
        throw failure
    }

    /// After a MOVED: the whole map again (a resharding moves many slots), one refresh at a time.
    private func refreshInBackground() {
        guard let cluster, cluster.withLockedValue({ state in
            defer { state.refreshing = true }
            return !state.refreshing
        }) else { return }
        Task {
            try? await refreshSlots()
            cluster.withLockedValue { $0.refreshing = false }
        }
    }
}
