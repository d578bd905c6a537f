import Crypto
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// When a connection slot may try to connect again: exponential backoff with full jitter, from `base` up to
/// `maximum`, reset by a success. A value type with time and randomness passed in.
public struct ReconnectBackoff: Sendable, Hashable {
    public var base: TimeAmount
    public var maximum: TimeAmount
    public private(set) var failures = 0
    public private(set) var notBefore: NIODeadline = .uptimeNanoseconds(0)

    public init(base: TimeAmount = .milliseconds(50), maximum: TimeAmount = .seconds(5)) {
        self.base = base
        self.maximum = maximum
    }

    public func mayConnect(at now: NIODeadline) -> Bool { now >= notBefore }

    /// A failed attempt at `now`; `random` in [0, 1) picks the wait within the doubled window.
    public mutating func failed(at now: NIODeadline, random: Double) {
        failures = min(failures + 1, 62)
        let window = min(Double(base.nanoseconds) * Double(UInt64(1) << UInt64(min(failures - 1, 40))), Double(maximum.nanoseconds))
        let wait = Int64(window * min(max(random, 0), 1))
        notBefore = now + .nanoseconds(wait)
    }

    public mutating func succeeded() {
        failures = 0
        notBefore = .uptimeNanoseconds(0)
    }
}

/// A Lua script run by its SHA-1 (`EVALSHA`); loaded with `SCRIPT LOAD` when the server does not know it yet
/// (`NOSCRIPT`: first use, a restarted server, a failover).
public struct RedisScript: Sendable, Hashable {
    public let source: String
    public let sha1: String

    public init(_ source: String) {
        self.source = source
        sha1 = Insecure.SHA1.hash(data: Array(source.utf8)).map { byte in
            let hex = String(byte, radix: 16)
            return byte < 16 ? "0" + hex : hex
        }.joined()
    }
}

/// A pool of pipelined connections to one server. Commands go round-robin over the connected slots; a slot whose
/// connection died reconnects on next use, after its backoff. Nothing waits longer than the connect timeout for a
/// connection, or the command timeout for a reply: with the server down every call fails fast with
/// `.unavailable` or `.connectFailed`, and the caller's failure policy decides (a cache bypasses itself).
final class RedisNodePool: Sendable {
    let configuration: RedisConfiguration
    private let group: any EventLoopGroup
    private let onPush: (@Sendable ([RESPValue]) -> Void)?

    private enum Slot: Sendable {
        case empty(ReconnectBackoff)
        case connecting(EventLoopFuture<RedisConnection>, ReconnectBackoff)
        case connected(RedisConnection, ReconnectBackoff)
    }

    private struct State: Sendable {
        var slots: [Slot]
        var next = 0
        var closed = false
    }

    private let state: NIOLockedValueBox<State>

    init(configuration: RedisConfiguration, group: any EventLoopGroup, onPush: (@Sendable ([RESPValue]) -> Void)? = nil) {
        self.configuration = configuration
        self.group = group
        self.onPush = onPush
        state = NIOLockedValueBox(State(slots: Array(repeating: .empty(ReconnectBackoff()), count: max(configuration.poolSize, 1))))
    }

    /// Commands written together on one connection and answered in order (error replies in place).
    func pipeline(_ commands: [[RedisArgument]]) async throws(RedisError) -> [RESPValue] {
        try await connection().pipeline(commands)
    }

    /// One command, its error reply in place.
    func reply(_ arguments: [RedisArgument]) async throws(RedisError) -> RESPValue {
        try await pipeline([arguments]).first ?? .null
    }

    /// Closes every connection; later calls fail with `.unavailable`.
    func close() async {
        let connections: [RedisConnection] = state.withLockedValue { state in
            state.closed = true
            let open = state.slots.compactMap { slot -> RedisConnection? in
                if case .connected(let connection, _) = slot { return connection }
                return nil
            }
            state.slots = state.slots.map { _ in .empty(ReconnectBackoff()) }
            return open
        }
        for connection in connections { await connection.close() }
    }

    /// A connected connection, without waiting: the caller's event loop's when there is one; nil when none is
    /// connected now.
    func readyConnection() -> RedisConnection? {
        let current = MultiThreadedEventLoopGroup.currentEventLoop
        return state.withLockedValue { state -> RedisConnection? in
            guard !state.closed else { return nil }
            var any: (RedisConnection, Int)?
            for offset in 0..<state.slots.count {
                let index = (state.next + offset) % state.slots.count
                guard case .connected(let connection, _) = state.slots[index], connection.isActive else { continue }
                if current == nil || connection.channel.eventLoop === current {
                    state.next = (index + 1) % state.slots.count
                    return connection
                }
                any = any ?? (connection, index)
            }
            if let (_, index) = any { state.next = (index + 1) % state.slots.count }
            return any?.0
        }
    }

    /// A live connection: the next connected slot, or one (re)connecting now; `.unavailable` when every slot is
    /// waiting out its backoff.
    func connection() async throws(RedisError) -> RedisConnection {
        enum Choice {
            case use(RedisConnection)
            case await(EventLoopFuture<RedisConnection>)
            case fail(RedisError)
        }
        let now = NIODeadline.now()
        // A caller running on an event loop (a request's task) is best served by a connection of that loop: the
        // command is written and its reply resumes the caller without a hop to another thread.
        let current = MultiThreadedEventLoopGroup.currentEventLoop
        let choice: Choice = state.withLockedValue { state in
            guard !state.closed else { return .fail(.unavailable) }
            let count = state.slots.count
            if let current {
                for offset in 0..<count {
                    let index = (state.next + offset) % count
                    if case .connected(let connection, _) = state.slots[index], connection.isActive,
                       connection.channel.eventLoop === current {
                        state.next = (index + 1) % count
                        return .use(connection)
                    }
                }
            }
            var connecting: EventLoopFuture<RedisConnection>?
            for offset in 0..<count {
                let index = (state.next + offset) % count
                switch state.slots[index] {
                case .connected(let connection, let backoff):
                    if connection.isActive {
                        state.next = (index + 1) % count
                        return .use(connection)
                    }
                    state.slots[index] = .empty(backoff)
                    if let future = startConnecting(&state, index: index, now: now) { connecting = connecting ?? future }
                case .connecting(let future, _):
                    connecting = connecting ?? future
                case .empty:
                    if let future = startConnecting(&state, index: index, now: now) { connecting = connecting ?? future }
                }
            }
            if let connecting { return .await(connecting) }
            return .fail(.unavailable)
        }
        switch choice {
        case .use(let connection): return connection
        case .fail(let error): throw error
        case .await(let future):
            do {
                return try await future.get()
            } catch let error as RedisError {
                throw error
            } catch {
                throw .connectFailed("\(error)")
            }
        }
    }

    /// Starts connecting slot `index` when its backoff allows; the future settles the slot.
    private func startConnecting(_ state: inout State, index: Int, now: NIODeadline) -> EventLoopFuture<RedisConnection>? {
        guard case .empty(let backoff) = state.slots[index], backoff.mayConnect(at: now) else { return nil }
        let eventLoop = group.next()
        let promise = eventLoop.makePromise(of: RedisConnection.self)
        let configuration = self.configuration, onPush = self.onPush
        promise.completeWithTask {
            try await RedisConnection.connect(configuration, on: eventLoop, onPush: onPush)
        }
        state.slots[index] = .connecting(promise.futureResult, backoff)
        promise.futureResult.whenComplete { [weak self] result in
            guard let self else { return }
            let stale: RedisConnection? = self.state.withLockedValue { state in
                guard case .connecting(_, var backoff) = state.slots[index] else {
                    // Closed meanwhile: drop what connected.
                    if case .success(let connection) = result { return connection }
                    return nil
                }
                switch result {
                case .success(let connection):
                    backoff.succeeded()
                    state.slots[index] = state.closed ? .empty(backoff) : .connected(connection, backoff)
                    return state.closed ? connection : nil
                case .failure:
                    backoff.failed(at: .now(), random: Double.random(in: 0..<1))
                    state.slots[index] = .empty(backoff)
                    return nil
                }
            }
            if let stale { stale.channel.close(promise: nil) }
        }
        return promise.futureResult
    }
}

/// A kept subscription: see `RedisClient.subscribe`. Cancelling it closes its connection and ends it.
public final class RedisSubscription: Sendable {
    private let task: NIOLockedValueBox<Task<Void, Never>?>
    private let connection: NIOLockedValueBox<RedisConnection?>

    init(task: NIOLockedValueBox<Task<Void, Never>?>, connection: NIOLockedValueBox<RedisConnection?>) {
        self.task = task
        self.connection = connection
    }

    public func cancel() async {
        task.withLockedValue { $0?.cancel() }
        await connection.withLockedValue { $0 }?.close()
        await task.withLockedValue { $0 }?.value
    }
}

extension RedisClient {
    /// Subscribes to `channels` on a connection of its own (RESP3 push messages) and keeps the subscription: after
    /// a disconnect it reconnects, with backoff, and subscribes again, then calls `onSubscribed` — each time, the
    /// first included. Pub/Sub keeps nothing for a subscriber that was away, so a caller that must not miss a message
    /// catches up in `onSubscribed` (from a stream or the data itself). Messages are delivered on the connection's
    /// event loop, in order: `onMessage` must return quickly.
    public func subscribe(_ channels: [String], onSubscribed: @escaping @Sendable () async -> Void = {},
                          onMessage: @escaping @Sendable (_ channel: String, _ payload: [UInt8]) -> Void) -> RedisSubscription {
        let configuration = self.configuration, group = self.eventLoopGroup
        let current = NIOLockedValueBox<RedisConnection?>(nil)
        let holder = NIOLockedValueBox<Task<Void, Never>?>(nil)
        let task = Task {
            var backoff = ReconnectBackoff()
            while !Task.isCancelled {
                do {
                    let connection = try await RedisConnection.connect(configuration, on: group.next()) { items in
                        guard items.count == 3, items[0].string?.lowercased() == "message", let channel = items[1].string,
                              let payload = items[2].bytes else { return }
                        onMessage(channel, payload)
                    }
                    current.withLockedValue { $0 = connection }
                    if Task.isCancelled {
                        await connection.close()
                        return
                    }
                    _ = try await connection.subscribe(channels)
                    backoff.succeeded()
                    await onSubscribed()
                    await connection.closed()
                } catch {
                    // Refused, timed out or cut: try again after the backoff.
                }
                backoff.failed(at: .now(), random: Double.random(in: 0..<1))
                let wait = max((backoff.notBefore - NIODeadline.now()).nanoseconds, 1_000_000)
                try? await Task.sleep(nanoseconds: UInt64(wait))
            }
        }
        holder.withLockedValue { $0 = task }
        return RedisSubscription(task: holder, connection: current)
    }
}
