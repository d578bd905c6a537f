import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

/// Why a command did not get its reply.
public enum RedisError: Error, Sendable, Hashable, CustomStringConvertible {
    /// No connection could be opened (refused, unreachable, or not within the connect timeout).
    case connectFailed(String)
    /// The server did not answer within the command timeout; the connection is closed (its replies would no longer
    /// match its commands).
    case timeout
    /// The connection closed (or was closed) before the reply came.
    case connectionClosed
    /// The server's bytes broke RESP: the connection is closed.
    case protocolViolation(RESPParseError)
    /// The server refused the handshake's credentials or protocol.
    case handshakeFailed(String)
    /// An error reply.
    case server(RedisServerError)
    /// More commands wait on this connection than its bound allows.
    case overloaded
    /// Every connection of the pool is down and reconnecting (after backoff).
    case unavailable
    /// TLS failed: the server's certificate was not trusted or did not name the host, or the session broke.
    case tlsFailed(String)

    public var description: String {
        switch self {
        case .connectFailed(let reason): "redis: connect failed: \(reason)"
        case .timeout: "redis: command timed out"
        case .connectionClosed: "redis: connection closed"
        case .protocolViolation(let error): "redis: protocol violation: \(error)"
        case .handshakeFailed(let reason): "redis: handshake failed: \(reason)"
        case .server(let error): "redis: \(error.message)"
        case .overloaded: "redis: too many commands waiting on one connection"
        case .unavailable: "redis: no connection available"
        case .tlsFailed(let reason): "redis: TLS: \(reason)"
        }
    }

    /// A bounded label for metrics.
    public var code: String {
        switch self {
        case .connectFailed: "connect_failed"
        case .timeout: "timeout"
        case .connectionClosed: "connection_closed"
        case .protocolViolation: "protocol_violation"
        case .handshakeFailed: "handshake_failed"
        case .server: "server_error"
        case .overloaded: "overloaded"
        case .unavailable: "unavailable"
        case .tlsFailed: "tls_failed"
        }
    }
}

/// How to reach and talk to one Redis server. Credentials are values here; the gateway reads them from environment
/// variables named in its configuration and never logs them.
public struct RedisConfiguration: Sendable, Hashable {
    public var host: String
    public var port: Int
    public var username: String?
    public var password: String?
    /// The logical database (`SELECT`), 0 by default.
    public var database: Int
    public var connectTimeout: TimeAmount
    public var commandTimeout: TimeAmount
    /// Most commands waiting for replies on one connection (pipelined).
    public var maximumPending: Int
    /// Connections in a client's pool.
    public var poolSize: Int
    public var clientName: String?
    public var limits: RESPParser.Limits
    /// TLS (`rediss://`); `nil`: plain TCP.
    public var tls: RedisTLS?
    /// A Redis Cluster: `host:port` is one node (the seed); commands go to the node serving their key's slot.
    public var cluster: Bool

    public init(host: String = "127.0.0.1", port: Int = 6379, username: String? = nil, password: String? = nil,
                database: Int = 0, connectTimeout: TimeAmount = .seconds(2), commandTimeout: TimeAmount = .seconds(2),
                maximumPending: Int = 10_000, poolSize: Int = 4, clientName: String? = "switchyard",
                limits: RESPParser.Limits = .init(), tls: RedisTLS? = nil, cluster: Bool = false) {
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.database = database
        self.connectTimeout = connectTimeout
        self.commandTimeout = commandTimeout
        self.maximumPending = maximumPending
        self.poolSize = poolSize
        self.clientName = clientName
        self.limits = limits
        self.tls = tls
        self.cluster = cluster
    }
}

/// TLS to a Redis server: the server's certificate must chain to `caFile`'s roots (the system's when `nil`) and name
/// the host (the address itself when the host is an IP literal, which gets no SNI).
public struct RedisTLS: Sendable, Hashable {
    public var caFile: String?

    public init(caFile: String? = nil) {
        self.caFile = caFile
    }

    /// The client context for these settings, made once (loading roots costs milliseconds) and kept. Keyed by
    /// configuration only, so the map is as small as the configuration.
    func context() throws(RedisError) -> NIOSSLContext {
        if let made = Self.contexts.withLockedValue({ $0[self] }) { return made }
        var configuration = TLSConfiguration.makeClientConfiguration()
        if let caFile { configuration.trustRoots = .file(caFile) }
        let made: NIOSSLContext
        do {
            made = try NIOSSLContext(configuration: configuration)
        } catch {
            throw .tlsFailed("cannot use the trust roots\(caFile.map { " in \($0)" } ?? ""): \(error)")
        }
        return Self.contexts.withLockedValue { map in
            if let raced = map[self] { return raced }
            map[self] = made
            return made
        }
    }

    private static let contexts = NIOLockedValueBox([RedisTLS: NIOSSLContext]())

    static func isIPAddress(_ host: String) -> Bool {
        host.contains(":") || (!host.isEmpty && host.allSatisfy { $0.isNumber || $0 == "." })
    }
}

/// One connection to a Redis server: commands are pipelined (written at once, answered in order), each with a
/// timeout. After the handshake it speaks RESP3 when the server does (HELLO 3) and RESP2 otherwise.
public final class RedisConnection: Sendable {
    public let channel: any Channel
    /// 3, or 2 on a server without HELLO.
    public let protocolVersion: Int
    private let handler: NIOLoopBound<RedisChannelHandler>
    private let configuration: RedisConfiguration

    private init(channel: any Channel, handler: NIOLoopBound<RedisChannelHandler>, protocolVersion: Int,
                 configuration: RedisConfiguration) {
        self.channel = channel
        self.handler = handler
        self.protocolVersion = protocolVersion
        self.configuration = configuration
    }

    public var isActive: Bool { channel.isActive }

    /// Connects and runs the handshake: HELLO 3 with AUTH and SETNAME; on a server without HELLO, AUTH alone; then
    /// SELECT when a database is configured. Push messages (RESP3 Pub/Sub) go to `onPush`, on the event loop.
    public static func connect(_ configuration: RedisConfiguration, on eventLoop: any EventLoop,
                               onPush: (@Sendable ([RESPValue]) -> Void)? = nil) async throws(RedisError) -> RedisConnection {
        let tlsContext = try configuration.tls?.context()
        let serverName = RedisTLS.isIPAddress(configuration.host) ? nil : configuration.host
        let handlerPromise = eventLoop.makePromise(of: NIOLoopBound<RedisChannelHandler>.self)
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(configuration.connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    // The handshake runs under HELLO's command timeout: HELLO is written once it completes.
                    if let tlsContext {
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tlsContext, serverHostname: serverName))
                    }
                    let handler = RedisChannelHandler(limits: configuration.limits, maximumPending: configuration.maximumPending,
                                                      onPush: onPush)
                    try channel.pipeline.syncOperations.addHandler(handler)
                    handlerPromise.succeed(NIOLoopBound(handler, eventLoop: channel.eventLoop))
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: configuration.host, port: configuration.port).get()
        } catch {
            handlerPromise.fail(RedisError.connectionClosed)
            throw .connectFailed("\(configuration.host):\(configuration.port): \(error)")
        }
        let handler: NIOLoopBound<RedisChannelHandler>
        do {
            handler = try await handlerPromise.futureResult.get()
        } catch {
            channel.close(promise: nil)
            throw .connectFailed("no handler: \(error)")
        }
        var connection = RedisConnection(channel: channel, handler: handler, protocolVersion: 3, configuration: configuration)
        do {
            var hello: [RedisArgument] = ["HELLO", "3"]
            if let password = configuration.password {
                hello += ["AUTH", .string(configuration.username ?? "default"), .string(password)]
            }
            if let name = configuration.clientName { hello += ["SETNAME", .string(name)] }
            let reply = try await connection.sendRaw([hello]).first ?? .null
            if case .error(let error) = reply {
                // A server before 6 has no HELLO: RESP2, and AUTH on its own.
                guard error.code == "ERR" || error.code == "NOPROTO" else { throw RedisError.handshakeFailed(error.message) }
                connection = RedisConnection(channel: channel, handler: handler, protocolVersion: 2, configuration: configuration)
                if let password = configuration.password {
                    let auth: [RedisArgument] = configuration.username.map { ["AUTH", .string($0), .string(password)] }
                        ?? ["AUTH", .string(password)]
                    if case .error(let refused) = try await connection.sendRaw([auth]).first ?? .null {
                        throw RedisError.handshakeFailed(refused.message)
                    }
                }
            }
            if configuration.database != 0 {
                if case .error(let refused) = try await connection.sendRaw([["SELECT", .integer(configuration.database)]]).first ?? .null {
                    throw RedisError.handshakeFailed(refused.message)
                }
            }
        } catch let error as RedisError {
            channel.close(promise: nil)
            throw error
        } catch {
            channel.close(promise: nil)
            throw .handshakeFailed("\(error)")
        }
        return connection
    }

    /// One command; an error reply is thrown as `.server`.
    @discardableResult
    public func send(_ arguments: [RedisArgument]) async throws(RedisError) -> RESPValue {
        let reply = try await sendRaw([arguments]).first ?? .null
        if case .error(let error) = reply { throw .server(error) }
        return reply
    }

    /// Commands written together and answered in order; error replies stay in the result, one per command.
    public func pipeline(_ commands: [[RedisArgument]]) async throws(RedisError) -> [RESPValue] {
        try await sendRaw(commands)
    }

    func sendRaw(_ commands: [[RedisArgument]], pushReplies: Int = 0) async throws(RedisError) -> [RESPValue] {
        guard !commands.isEmpty else { return [] }
        let promise = channel.eventLoop.makePromise(of: [RESPValue].self)
        submit(commands, promise: promise, pushReplies: pushReplies)
        do {
            return try await promise.futureResult.get()
        } catch let error as RedisError {
            throw error
        } catch {
            throw .connectionClosed
        }
    }

    /// Commands whose replies nobody awaits (a write off the request path): `done` gets them, or the error.
    func sendDetached(_ commands: [[RedisArgument]], done: @escaping @Sendable (Result<[RESPValue], RedisError>) -> Void) {
        let promise = channel.eventLoop.makePromise(of: [RESPValue].self)
        promise.futureResult.whenComplete { result in done(result.mapError { $0 as? RedisError ?? .connectionClosed }) }
        submit(commands, promise: promise)
    }

    /// Queues `commands` on the connection's event loop: at once when called there (a request's task on its loop),
    /// else through the loop's task queue.
    private func submit(_ commands: [[RedisArgument]], promise: EventLoopPromise<[RESPValue]>, pushReplies: Int = 0) {
        let eventLoop = channel.eventLoop
        let handler = self.handler, timeout = configuration.commandTimeout, channel = self.channel
        if eventLoop.inEventLoop {
            handler.value.enqueue(commands, promise: promise, context: channel, timeout: timeout, pushReplies: pushReplies)
            return
        }
        eventLoop.execute {
            handler.value.enqueue(commands, promise: promise, context: channel, timeout: timeout, pushReplies: pushReplies)
        }
    }

    /// SUBSCRIBE to `channels` on this connection (RESP3: messages arrive as pushes, to the `onPush` it was
    /// opened with, while the connection still answers other commands). Returns the confirmations, one per channel.
    public func subscribe(_ channels: [String]) async throws(RedisError) -> [RESPValue] {
        guard protocolVersion == 3 else { throw .handshakeFailed("Pub/Sub needs RESP3 (HELLO 3)") }
        guard !channels.isEmpty else { return [] }
        // SUBSCRIBE answers with one push per channel and no ordinary reply.
        return try await sendRaw([["SUBSCRIBE"] + channels.map { .string($0) }], pushReplies: channels.count)
    }

    public func close() async {
        try? await channel.close()
    }

    /// Completes when the connection closes, for whatever reason.
    public func closed() async {
        try? await channel.closeFuture.get()
    }
}

/// The connection's protocol state, on its event loop: the parser and the replies owed, in order.
final class RedisChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Commands written whose replies have not all come: a batch (a pipeline) fulfils one promise.
    private struct Waiting {
        var remaining: Int
        /// Replies that come as push messages (SUBSCRIBE and its kin confirm each channel with one, in RESP3).
        var pushReplies = 0
        /// Commands in the batch, counted against `maximumPending` until it completes.
        var commands = 0
        var replies: [RESPValue]
        var promise: EventLoopPromise<[RESPValue]>
        var timeout: Scheduled<Void>?
    }

    static let confirmations: Set<String> = ["subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe", "sunsubscribe"]

    private var parser: RESPParser
    private var waiting = CircularBuffer<Waiting>()
    private var pendingCommands = 0
    private let maximumPending: Int
    private let onPush: (@Sendable ([RESPValue]) -> Void)?
    private var context: ChannelHandlerContext?
    private var failure: RedisError?

    init(limits: RESPParser.Limits, maximumPending: Int, onPush: (@Sendable ([RESPValue]) -> Void)?) {
        parser = RESPParser(limits: limits)
        self.maximumPending = maximumPending
        self.onPush = onPush
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        failAll(.connectionClosed)
    }

    func enqueue(_ commands: [[RedisArgument]], promise: EventLoopPromise<[RESPValue]>, context channel: any Channel,
                 timeout: TimeAmount, pushReplies: Int = 0) {
        guard let context, failure == nil, channel.isActive else {
            promise.fail(failure ?? .connectionClosed)
            return
        }
        guard pendingCommands + commands.count <= maximumPending else {
            promise.fail(RedisError.overloaded)
            return
        }
        var buffer = context.channel.allocator.buffer(capacity: 64 * commands.count)
        for command in commands { RESPCommand.encode(command, into: &buffer) }
        // A reply that does not come in time means the stream of replies can no longer be trusted to line up.
        let scheduled = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [weak self] in
            guard let self else { return }
            self.fail(.timeout)
        }
        waiting.append(Waiting(remaining: pushReplies > 0 ? pushReplies : commands.count, pushReplies: pushReplies,
                               commands: commands.count, replies: [], promise: promise, timeout: scheduled))
        pendingCommands += commands.count
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        parser.append(unwrapInboundIn(data))
        do {
            while let value = try parser.next() {
                if case .push(let items) = value {
                    // A subscription's confirmation answers the command that asked for it; anything else is a message.
                    let kind = items.first?.string?.lowercased() ?? ""
                    if Self.confirmations.contains(kind), let head = waiting.first, head.pushReplies > 0 {
                        waiting[waiting.startIndex].pushReplies -= 1
                    } else {
                        onPush?(items)
                        continue
                    }
                }
                guard !waiting.isEmpty else {
                    // A reply nobody asked for: the replies no longer line up with the commands.
                    fail(.protocolViolation(.badFraming))
                    return
                }
                waiting[waiting.startIndex].replies.append(value)
                waiting[waiting.startIndex].remaining -= 1
                if waiting[waiting.startIndex].remaining == 0 {
                    let done = waiting.removeFirst()
                    pendingCommands -= done.commands
                    done.timeout?.cancel()
                    done.promise.succeed(done.replies)
                }
            }
        } catch {
            fail(.protocolViolation(error))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        failAll(failure ?? .connectionClosed)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // The TLS handler reports a refused certificate here, before the close: say so rather than "closed".
        fail(error is NIOSSLError || error is NIOSSLExtraError || error is BoringSSLError ? .tlsFailed("\(error)") : .connectionClosed)
    }

    /// Fails every waiting command and closes the connection.
    private func fail(_ error: RedisError) {
        if failure == nil { failure = error }
        failAll(error)
        context?.close(promise: nil)
    }

    private func failAll(_ error: RedisError) {
        while let entry = waiting.popFirst() {
            entry.timeout?.cancel()
            entry.promise.fail(error)
        }
        pendingCommands = 0
    }
}
