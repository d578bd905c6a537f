public import NIOCore
import NIOHTTP1
public import NIOPosix
import NIOSSL
import NIOTLS
import HTTPEdge
import Synchronization
public import SwitchyardCore

/// A lean HTTP/1.1 client for every upstream: hosted providers over HTTPS, self-hosted replicas, the mock.
///
/// Each event loop keeps its own keep-alive pool per host (and trust roots), and a call runs on the event loop it is
/// made from, so a gateway request and its upstream call share one thread with no hop between loops and no lock.
/// HTTPS adds swift-nio-ssl's handler in front of the same connection handler; a connection joins the pool only
/// once its handshake (certificate and host name checked) completed within the connect timeout.
///
/// A call writes the whole request, then either collects the whole body (non-streamed answers and every non-200
/// answer) or hands back a `UpstreamBodyStream` that reads the body part by part with backpressure: reading from
/// the socket pauses while 16 parts wait unread. Each exchange is an `UpstreamExchangeStateMachine` driven by
/// `Exchange`; its deadlines (the wait for a connection, for the head, the total, and the idle gap once the answer
/// began) are checked by a sweep of the loop's open exchanges. Cancelling the calling task, or dropping an
/// unfinished stream, closes the connection.
///
/// Exact by construction: a connection returns to the pool only after its answer was wholly parsed and nothing
/// followed it; a byte that arrives when no request is waiting, or after an answer, closes the connection; on an
/// upstream that echoes the gateway's `x-request-id` (vLLM's `--enable-request-id-headers`, the built-in mock), an
/// answer carrying another request's id closes it too. A request is never written twice: a connection found dead
/// before the write is replaced, one lost after it fails the call.
public final class LoopLocalHTTPClient: Sendable {
    private let group: MultiThreadedEventLoopGroup
    private let pools: [ObjectIdentifier: LoopPool]
    let shared: SharedPoolState
    let tls: UpstreamTLSContexts

    /// - Parameters:
    ///   - connectionsPerHost: The most connections to one host, over all event loops together, for requests that do
    ///     not set their own `maximumConnections`.
    ///   - maximumWaiters: The most requests waiting for a connection to one host on one event loop; past it a request
    ///     fails at once.
    ///   - anomalies: Where upstream misbehaviour (bytes nobody asked for, malformed answers, stalls) is counted.
    public init(group: MultiThreadedEventLoopGroup = .singleton, connectTimeout: TimeAmount, connectionsPerHost: Int,
                idleTimeout: TimeAmount = .seconds(60), maximumWaiters: Int = 10_000,
                anomalies: (any UpstreamAnomalyRecorder)? = nil) {
        self.group = group
        let loops = Array(group.makeIterator())
        let shared = SharedPoolState(loopCount: max(loops.count, 1), anomalies: anomalies)
        let tls = UpstreamTLSContexts()
        var pools: [ObjectIdentifier: LoopPool] = [:]
        for loop in loops {
            pools[ObjectIdentifier(loop)] = LoopPool(loop: loop, connectTimeout: connectTimeout,
                                                    connectionsPerHost: connectionsPerHost, idleTimeout: idleTimeout,
                                                    maximumWaiters: maximumWaiters, shared: shared, tls: tls)
        }
        self.pools = pools
        self.shared = shared
        self.tls = tls
    }

    /// Sends `request` and waits for the answer's head (streamed 200 answers) or its whole body (everything else).
    /// - Parameters:
    ///   - deadline: When the whole exchange must have ended.
    ///   - headDeadline: When the answer's head must have arrived (default: `deadline`).
    ///   - queueDeadline: When a connection must have been free (default: `headDeadline`).
    ///   - idleTimeout: The longest silence once the answer began (default: until `deadline`).
    public func execute(_ request: UpstreamRequest, deadline: NIODeadline, headDeadline: NIODeadline? = nil,
                        queueDeadline: NIODeadline? = nil, idleTimeout: TimeAmount? = nil, streaming: Bool,
                        maximumBodyBytes: Int) async throws -> UpstreamResponse
    {
        let loop = group.any()
        guard let pool = pools[ObjectIdentifier(loop)] else { throw UpstreamTransportError.connectFailed("no event loop") }
        let now = NIODeadline.now()
        let head = headDeadline ?? deadline
        let machine = UpstreamExchangeStateMachine(
            streaming: streaming, maximumBodyBytes: maximumBodyBytes, totalDeadline: deadline,
            queueDeadline: queueDeadline ?? head, headDeadline: head, idleTimeout: idleTimeout ?? (deadline - now), now: now)
        let exchange = Exchange(request: request, pool: pool, machine: machine)
        return try await exchange.run()
    }

    /// Loads the trust roots that HTTPS requests with `tlsCAFile` use (they are loaded on first use otherwise), so that
    /// an unusable file fails at start-up.
    public func prepareTLS(caFile: String?) throws {
        _ = try tls.context(caFile: caFile)
    }

    /// Requests waiting for a connection, by `UpstreamRequest.provider`, over every event loop.
    public func waiters() -> [String: Int] {
        shared.waiters.withLock { $0 }
    }

    /// Closes every pooled connection.
    public func shutdown() async {
        for pool in pools.values {
            try? await pool.loop.submit { pool.closeAll() }.get()
        }
    }
}

/// One request to an upstream.
public struct UpstreamRequest: Sendable {
    public var endpoint: UpstreamEndpoint
    /// The provider's name: the label of its pool-waiters gauge.
    public var provider: String
    /// The most connections to this endpoint over all event loops (the provider's `pool_size`); `nil`: the client's
    /// default.
    public var maximumConnections: Int?
    /// The connect timeout for this request's provider (the TLS handshake included); `nil`: the client's.
    public var connectTimeout: TimeAmount?
    /// HTTPS only: a PEM file of the roots the upstream's certificate must chain to; `nil`: the system's.
    public var tlsCAFile: String?
    /// `false`: sent with `connection: close`, and its connection closed after the answer (the provider's
    /// `keep_alive`).
    public var keepAlive: Bool
    /// The gateway's id for this request, sent as `x-request-id`: an upstream that echoes it proves each answer is
    /// the one asked for.
    public var requestID: String?
    public var method: HTTPMethod
    /// Path and query, starting with `/`.
    public var target: String
    public var headers: HTTPHeaders
    public var body: ByteBuffer

    public init(endpoint: UpstreamEndpoint, method: HTTPMethod = .POST, target: String, headers: HTTPHeaders,
                body: ByteBuffer, provider: String = "", maximumConnections: Int? = nil, connectTimeout: TimeAmount? = nil,
                requestID: String? = nil, tlsCAFile: String? = nil, keepAlive: Bool = true) {
        self.keepAlive = keepAlive
        self.connectTimeout = connectTimeout
        self.tlsCAFile = tlsCAFile
        self.endpoint = endpoint
        self.provider = provider
        self.maximumConnections = maximumConnections
        self.requestID = requestID
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
    }
}

/// An upstream's answer: the head, and either the collected body or a stream of body parts.
public struct UpstreamResponse: Sendable {
    public var status: HTTPResponseStatus
    public var headers: HTTPHeaders
    /// The whole body, unless `stream` is set.
    public var body: ByteBuffer
    /// The body, part by part (streamed 200 answers only).
    public var stream: (any UpstreamBodyStream)?

    public init(status: HTTPResponseStatus, headers: HTTPHeaders, body: ByteBuffer, stream: (any UpstreamBodyStream)? = nil) {
        self.status = status
        self.headers = headers
        self.body = body
        self.stream = stream
    }
}

/// A response body read part by part; `nil` at its end.
public protocol UpstreamBodyStream: Sendable {
    func next() async throws -> ByteBuffer?
}

public enum UpstreamTransportError: Error, Equatable {
    case connectFailed(String)
    case connectTimeout
    case deadlineExceeded
    /// No connection became free before the queue deadline (the pool is at its `pool_size`).
    case poolTimeout
    /// Too many requests already wait for a connection to this host.
    case poolExhausted
    /// The answer's head did not arrive before the head deadline.
    case headTimeout
    /// The answer began, then no byte arrived for the idle timeout.
    case idleTimeout
    /// The answer carried another request's `x-request-id`: the connection was out of step and is closed.
    case outOfStep
    /// The connection closed before the answer was complete.
    case connectionClosed
    case responseTooLarge
    case cancelled
    case malformedResponse
}

// MARK: - Per-loop pool

/// What the per-loop pools share: the waiters gauge, the anomaly recorder, and the upstreams caught out of step.
final class SharedPoolState: Sendable {
    let loopCount: Int
    let anomalies: (any UpstreamAnomalyRecorder)?
    /// Touched only when a pool is full (a request queues or leaves the queue), never on the common path.
    let waiters = Locked([String: Int]())
    /// Upstreams that sent bytes no request asked for, until when their connections are not reused. Keyed by
    /// configured endpoints only.
    private let distrusted = Locked([PoolKey: NIODeadline]())
    /// `distrusted.count`, read without the lock on every request.
    private let distrustedCount = Atomic<Int>(0)
    /// How long an upstream caught sending an unrequested answer gets a connection per request.
    static let distrustPeriod = TimeAmount.minutes(10)

    init(loopCount: Int, anomalies: (any UpstreamAnomalyRecorder)?) {
        self.loopCount = loopCount
        self.anomalies = anomalies
    }

    func adjustWaiters(_ provider: String, by delta: Int) {
        waiters.withLock { $0[provider, default: 0] += delta }
    }

    func anomaly(_ kind: UpstreamAnomaly) {
        anomalies?.upstreamAnomaly(kind)
    }

    /// An upstream sent an answer nobody asked for: it may send more, late, where they would be taken for the next
    /// request's answer. Every loop stops reusing its connections for `distrustPeriod`.
    func distrust(_ key: PoolKey, now: NIODeadline = .now()) {
        distrusted.withLock { map in
            map[key] = now + Self.distrustPeriod
            // Stored under the lock, so the count never lags the map.
            distrustedCount.store(map.count, ordering: .relaxed)
        }
    }

    func isDistrusted(_ key: PoolKey, now: NIODeadline) -> Bool {
        guard distrustedCount.load(ordering: .relaxed) > 0 else { return false }
        return distrusted.withLock { map in
            guard let until = map[key] else { return false }
            if until > now { return true }
            map[key] = nil
            distrustedCount.store(map.count, ordering: .relaxed)
            return false
        }
    }
}

/// What a pooled connection can be reused for: the same endpoint, verified against the same roots.
struct PoolKey: Hashable, Sendable {
    var endpoint: UpstreamEndpoint
    var tlsCAFile: String?

    init(_ request: UpstreamRequest) {
        endpoint = request.endpoint
        tlsCAFile = request.endpoint.tls ? request.tlsCAFile : nil
    }
}

/// The connections of one event loop. Used only on `loop`.
final class LoopPool: @unchecked Sendable {
    let loop: any EventLoop
    let connectTimeout: TimeAmount
    let connectionsPerHost: Int
    let idleTimeout: TimeAmount
    let maximumWaiters: Int
    let shared: SharedPoolState
    let flusher: TickFlusher
    let tls: UpstreamTLSContexts
    private var hosts: [PoolKey: HostConnections] = [:]

    init(loop: any EventLoop, connectTimeout: TimeAmount, connectionsPerHost: Int, idleTimeout: TimeAmount,
         maximumWaiters: Int, shared: SharedPoolState, tls: UpstreamTLSContexts) {
        self.tls = tls
        self.loop = loop
        self.connectTimeout = connectTimeout
        self.connectionsPerHost = connectionsPerHost
        self.idleTimeout = idleTimeout
        self.maximumWaiters = maximumWaiters
        self.shared = shared
        self.flusher = TickFlusher(loop: loop)
    }

    final class HostConnections: @unchecked Sendable {
        var idle: [Connection] = []
        var open = 0
        /// This loop's share of the endpoint's connection limit.
        var limit: Int
        /// Exchanges waiting for a connection, in arrival order; ones that left (deadline, cancellation) are skipped
        /// when met, and swept out once they outnumber the live ones.
        var waiters = CircularBuffer<Exchange>()
        /// Live entries of `waiters`.
        var waiting = 0
        let provider: String

        init(limit: Int, provider: String) {
            self.limit = limit
            self.provider = provider
        }
    }

    // Deadlines: one sweep every `sweepInterval` while exchanges are open, instead of a timer per request (a timer
    // costs an allocation, a promise and a heap insert and removal). A deadline fires up to one interval late.
    static let sweepInterval = TimeAmount.milliseconds(25)
    private var watched: [Exchange] = []
    private var sweepScheduled = false

    func watch(_ exchange: Exchange) {
        watched.append(exchange)
        if !sweepScheduled {
            sweepScheduled = true
            loop.scheduleTask(in: Self.sweepInterval) { self.sweep() }
        }
    }

    private func sweep() {
        sweepScheduled = false
        let now = NIODeadline.now()
        // Ticks run after the filter: a tick can fail an exchange, which can hand its connection to a waiter, which
        // appends to `watched`.
        var due: [Exchange] = []
        watched.removeAll { exchange in
            guard exchange.needsWatching else { return true }
            due.append(exchange)
            return false
        }
        for exchange in due { exchange.tick(now: now) }
        watched.removeAll { !$0.needsWatching }
        if !watched.isEmpty && !sweepScheduled {
            sweepScheduled = true
            loop.scheduleTask(in: Self.sweepInterval) { self.sweep() }
        }
    }

    private func host(for request: UpstreamRequest) -> HostConnections {
        let key = PoolKey(request)
        if let host = hosts[key] { return host }
        let total = request.maximumConnections ?? connectionsPerHost
        let created = HostConnections(limit: max(1, (total + shared.loopCount - 1) / shared.loopCount),
                                      provider: request.provider)
        hosts[key] = created
        return created
    }

    func acquire(for exchange: Exchange) {
        let host = host(for: exchange.request)
        let now = NIODeadline.now()
        let distrusted = shared.isDistrusted(PoolKey(exchange.request), now: now)
        while let connection = host.idle.popLast() {
            if !distrusted && connection.channel.isActive && now - connection.idleSince < idleTimeout {
                exchange.assign(connection)
                return
            }
            connection.channel.close(promise: nil)  // its close callback does the counting
        }
        if host.open < host.limit {
            host.open += 1
            connect(PoolKey(exchange.request), host: host, for: exchange)
        } else if host.waiting < maximumWaiters {
            host.waiters.append(exchange)
            exchange.inWaiters = true
            host.waiting += 1
            shared.adjustWaiters(host.provider, by: 1)
        } else {
            exchange.connectFailed(.poolExhausted)
        }
    }

    /// An exchange that ended while it waited in the queue (its entry is skipped when met: no search per exit, which
    /// would be quadratic when thousands of waiters time out together).
    func leaveQueue(_ exchange: Exchange) {
        // Only an exchange in the waiters list: one that was being connected for is not in it.
        guard exchange.inWaiters, let host = hosts[PoolKey(exchange.request)] else { return }
        exchange.inWaiters = false
        host.waiting -= 1
        shared.adjustWaiters(host.provider, by: -1)
        if host.waiters.count > 2 * host.waiting + 64 {
            host.waiters = CircularBuffer(host.waiters.filter(\.inWaiters))
        }
    }

    /// The first waiter still waiting, taken off the queue.
    private func nextWaiter(_ host: HostConnections) -> Exchange? {
        while let waiter = host.waiters.popFirst() {
            guard waiter.inWaiters else { continue }
            waiter.inWaiters = false
            host.waiting -= 1
            shared.adjustWaiters(host.provider, by: -1)
            return waiter
        }
        return nil
    }

    private func connect(_ key: PoolKey, host: HostConnections, for exchange: Exchange) {
        let pool = self
        let endpoint = key.endpoint
        let timeout = exchange.request.connectTimeout ?? connectTimeout
        let tlsContext: NIOSSLContext?
        do {
            tlsContext = endpoint.tls ? try tls.context(caFile: key.tlsCAFile) : nil
        } catch {
            host.open -= 1
            exchange.connectFailed(.connectFailed("TLS set-up failed: \(error)"))
            serveWaiter(host: host, key: key)
            return
        }
        let handshaking = tlsContext != nil
        ClientBootstrap(group: loop)
            .connectTimeout(timeout)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tlsContext {
                        let name = UpstreamTLSContexts.isIPAddress(endpoint.host) ? nil : endpoint.host
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tlsContext, serverHostname: name))
                    }
                    // The handler frames requests and parses answers itself (`HTTPResponseParser`). Header values come
                    // from validated configuration and the gateway itself, never from clients.
                    try channel.pipeline.syncOperations.addHandler(
                        ConnectionHandler(flusher: pool.flusher, shared: pool.shared,
                                          handshake: handshaking ? channel.eventLoop.makePromise() : nil))
                }
            }
            .connect(host: endpoint.host, port: endpoint.port)
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    guard let handler = try? channel.pipeline.syncOperations.handler(type: ConnectionHandler.self) else {
                        channel.close(promise: nil)
                        host.open -= 1
                        exchange.connectFailed(.connectFailed("connection set-up failed"))
                        pool.serveWaiter(host: host, key: key)
                        return
                    }
                    pool.whenHandshaken(handler, channel: channel, timeout: timeout) { failure in
                        if let failure {
                            channel.close(promise: nil)
                            host.open -= 1
                            exchange.connectFailed(.connectFailed("TLS handshake with \(endpoint.host) failed: \(failure)"))
                            pool.serveWaiter(host: host, key: key)
                            return
                        }
                        let connection = Connection(channel: channel, handler: handler, key: key, pool: pool)
                        handler.connection = connection
                        channel.closeFuture.whenComplete { _ in pool.closed(connection, host: host) }
                        if !exchange.assign(connection) { pool.release(connection) }
                    }
                case .failure(let error):
                    host.open -= 1
                    if case ChannelError.connectTimeout = error {
                        exchange.connectFailed(.connectTimeout)
                    } else {
                        exchange.connectFailed(.connectFailed("\(error)"))
                    }
                    pool.serveWaiter(host: host, key: key)
                }
            }
    }

    /// Calls `body` once the connection's TLS handshake completed (at once for plain HTTP), or with why it did not
    /// within `timeout` (counted from the TCP connect, so connect and handshake together take at most twice it).
    private func whenHandshaken(_ handler: ConnectionHandler, channel: any Channel, timeout: TimeAmount,
                                _ body: @escaping (String?) -> Void) {
        guard let handshake = handler.handshake else {
            body(nil)
            return
        }
        let timer = loop.assumeIsolated().scheduleTask(in: timeout) { handler.failHandshake(UpstreamTLSHandshakeTimeout()) }
        handshake.futureResult.assumeIsolated().whenComplete { result in
            timer.cancel()
            switch result {
            case .success: body(nil)
            case .failure(let error): body("\(error)")
            }
        }
    }

    /// A connection whose answer ended whole, with keep-alive and nothing after it.
    func release(_ connection: Connection) {
        guard let host = hosts[connection.key], connection.channel.isActive else { return }
        while let waiter = nextWaiter(host) {
            if waiter.assign(connection) { return }
        }
        connection.idleSince = .now()
        host.idle.append(connection)
    }

    private func closed(_ connection: Connection, host: HostConnections) {
        host.open -= 1
        if let index = host.idle.firstIndex(where: { $0 === connection }) { host.idle.remove(at: index) }
        serveWaiter(host: host, key: connection.key)
    }

    private func serveWaiter(host: HostConnections, key: PoolKey) {
        while host.open < host.limit, let waiter = nextWaiter(host) {
            host.open += 1
            connect(key, host: host, for: waiter)
        }
    }

    func closeAll() {
        for host in hosts.values {
            for connection in host.idle { connection.channel.close(promise: nil) }
            host.idle.removeAll()
        }
    }
}

/// One pooled connection. Used only on its event loop.
final class Connection: @unchecked Sendable {
    let channel: any Channel
    let handler: ConnectionHandler
    let key: PoolKey
    let pool: LoopPool
    var idleSince = NIODeadline.now()

    init(channel: any Channel, handler: ConnectionHandler, key: PoolKey, pool: LoopPool) {
        self.channel = channel
        self.handler = handler
        self.key = key
        self.pool = pool
    }
}

/// The I/O shell of one exchange: feeds its state machine and performs the actions it returns. Used only on its
/// event loop.
final class Exchange: @unchecked Sendable {
    let request: UpstreamRequest
    let pool: LoopPool
    private var machine: UpstreamExchangeStateMachine
    /// The caller waiting for the answer's head (streams) or whole body; resumed once, then cleared.
    private var continuation: UnsafeContinuation<UpstreamResponse, any Error>?
    /// The stream reader waiting for a part.
    private var reader: EventLoopPromise<ByteBuffer?>?
    private(set) var connection: Connection?

    init(request: UpstreamRequest, pool: LoopPool, machine: UpstreamExchangeStateMachine) {
        self.request = request
        self.pool = pool
        self.machine = machine
    }

    var needsWatching: Bool { machine.needsWatching }
    /// Whether the exchange sits in its pool's waiters list (set and cleared by the pool).
    var inWaiters = false
    var wantsMoreData: Bool { machine.wantsMoreData }
    var receivedHead: Bool { machine.receivedHead }

    /// Runs the exchange on its event loop (directly when already there) and waits for the answer; cancelling the
    /// waiting task ends the exchange, even before it started. The answer resumes the caller directly: no promise,
    /// future or callback list in between.
    func run() async throws -> UpstreamResponse {
        let loop = pool.loop
        return try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { continuation in
                if loop.inEventLoop {
                    self.begin(continuation)
                } else {
                    loop.execute { self.begin(continuation) }
                }
            }
        } onCancel: {
            loop.execute { self.perform(self.machine.cancel()) }
        }
    }

    private func begin(_ continuation: UnsafeContinuation<UpstreamResponse, any Error>) {
        self.continuation = continuation
        pool.watch(self)
        perform(machine.start())
    }

    /// The pool's connection for this exchange; `false` if the exchange ended meanwhile (the pool keeps it).
    @discardableResult
    func assign(_ connection: Connection) -> Bool {
        let (use, action) = machine.connectionAssigned(now: .now())
        guard use else { return false }
        self.connection = connection
        perform(action)
        return true
    }

    func connectFailed(_ error: UpstreamTransportError) { perform(machine.connectFailed(error)) }
    func head(_ head: HTTPResponseHead) { perform(machine.head(head, now: .now())) }
    func body(_ buffer: ByteBuffer) { perform(machine.body(buffer, now: .now())) }
    func end(keepAlive: Bool) { perform(machine.end(keepAlive: keepAlive)) }
    func tick(now: NIODeadline) { perform(machine.tick(now: now)) }

    /// The connection closed, or its bytes did not parse, under this exchange.
    func connectionLost(_ error: UpstreamTransportError = .connectionClosed) {
        connection = nil
        perform(machine.connectionLost(error))
    }

    /// The connection was found closed before the request was written.
    func connectionUnusable() {
        connection = nil
        perform(machine.connectionUnusable())
    }

    /// The next streamed body part.
    func nextPart() -> EventLoopFuture<ByteBuffer?> {
        let waiting = pool.loop.makePromise(of: ByteBuffer?.self)
        reader = waiting
        perform(machine.readerNext(now: .now()))
        return waiting.futureResult
    }

    /// The stream's reader went away before the end: drop the connection.
    func abandon() {
        perform(machine.readerAbandoned())
    }

    private func perform(_ action: UpstreamExchangeStateMachine.Action) {
        if let step = action.connection {
            switch step {
            case .acquire:
                pool.acquire(for: self)
            case .leaveQueue:
                pool.leaveQueue(self)
            case .writeRequest:
                if let connection { connection.handler.begin(self) }
            case .answerEnded(let keepAlive):
                // The handler decides once it has looked past the answer's end (see `ConnectionHandler.channelRead`).
                let connection = self.connection
                self.connection = nil
                connection?.handler.answerEnded(keepAlive: keepAlive)
            case .close:
                if let connection {
                    self.connection = nil
                    connection.handler.detach()
                    connection.channel.close(promise: nil)
                }
            case .pauseReading:
                break  // `ConnectionHandler.read` asks `wantsMoreData`
            case .resumeReading:
                connection?.handler.resumeReading()
            }
        }
        if let caller = action.caller, let continuation {
            self.continuation = nil
            switch caller {
            case .succeedStreaming(let head):
                continuation.resume(returning: UpstreamResponse(status: head.status, headers: head.headers, body: ByteBuffer(),
                                                                stream: LoopLocalBodyStream(self)))
            case .succeedWhole(let head, let body):
                continuation.resume(returning: UpstreamResponse(status: head.status, headers: head.headers, body: body))
            case .fail(let error):
                if error == .idleTimeout { pool.shared.anomaly(.stalledBody) }
                continuation.resume(throwing: error)
            }
        }
        if let step = action.reader, let reader {
            self.reader = nil
            switch step {
            case .deliver(let part): reader.succeed(part)
            case .fail(let error):
                if error == .idleTimeout { pool.shared.anomaly(.stalledBody) }
                reader.fail(error)
            }
        }
    }

    /// Runs `step` on this exchange's event loop (directly when already there) and waits for its result; cancelling
    /// the waiting task ends the exchange.
    func onLoop<T: Sendable>(_ step: @escaping @Sendable () -> EventLoopFuture<T>) async throws -> T {
        let loop = pool.loop
        return try await withTaskCancellationHandler {
            try await (loop.inEventLoop ? step() : loop.flatSubmit(step)).get()
        } onCancel: {
            loop.execute { self.perform(self.machine.cancel()) }
        }
    }
}

/// Reads a streamed body from its exchange, on the exchange's event loop.
final class LoopLocalBodyStream: UpstreamBodyStream {
    private let exchange: Exchange
    private let loop: any EventLoop

    init(_ exchange: Exchange) {
        self.exchange = exchange
        self.loop = exchange.pool.loop
    }

    func next() async throws -> ByteBuffer? {
        let exchange = self.exchange
        return try await exchange.onLoop { exchange.nextPart() }
    }

    deinit {
        let exchange = self.exchange
        loop.execute { exchange.abandon() }
    }
}

/// The last handler of a pooled connection: writes the current exchange's request, passes the answer's parts to
/// it, holds reads back while a stream's reader lags, and closes the connection on any byte no request asked for.
final class ConnectionHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var exchange: Exchange?
    weak var connection: Connection?
    /// Sends requests at the end of the loop's batch, so the upstream is woken once for many.
    let flusher: TickFlusher
    let shared: SharedPoolState
    private var context: ChannelHandlerContext?
    private var readPending = false
    private var parser = HTTPResponseParser()
    /// Bytes received and not parsed yet (an incomplete head or chunk-size line).
    private var pending: ByteBuffer?
    /// The current answer's keep-alive, from its head and the request's `keepAlive`.
    private var answerKeepAlive = false
    /// The current request's `keepAlive`.
    private var reuse = true
    /// Set when the current answer ended: whether the connection may be reused.
    private var ended: Bool?
    /// Whether this upstream echoes `x-request-id` (learnt from the connection's first answer).
    private var echoesRequestID: Bool?
    /// HTTPS: completed when the TLS handshake did, failed when it failed or the connection closed first.
    private(set) var handshake: EventLoopPromise<Void>?
    /// HTTPS: the upstream closed without TLS's close_notify, so a body read until the close may be truncated.
    private var uncleanShutdown = false

    init(flusher: TickFlusher, shared: SharedPoolState, handshake: EventLoopPromise<Void>? = nil) {
        self.flusher = flusher
        self.shared = shared
        self.handshake = handshake
    }

    func failHandshake(_ error: any Error) {
        guard let handshake else { return }
        self.handshake = nil
        handshake.fail(error)
        context?.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event, let handshake {
            self.handshake = nil
            handshake.succeed()
        }
        context.fireUserInboundEventTriggered(event)
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) {
        failHandshake(ChannelError.ioOnClosedChannel)
        self.context = nil
    }

    func begin(_ exchange: Exchange) {
        guard let context, context.channel.isActive else {
            exchange.connectionUnusable()
            return
        }
        self.exchange = exchange
        ended = nil
        let request = exchange.request
        reuse = request.keepAlive && !(connection.map { shared.isDistrusted($0.key, now: .now()) } ?? false)
        let framed = UpstreamFraming.frame(request, keepAlive: reuse, allocator: context.channel.allocator)
        context.write(wrapOutboundOut(framed.buffer), promise: nil)
        if !framed.bodyIncluded {
            context.write(wrapOutboundOut(request.body), promise: nil)
        }
        flusher.flushSoon(context.channel)
        resumeReading()
    }

    /// The exchange gave up the connection (it is being closed).
    func detach() {
        exchange = nil
    }

    /// The current answer ended whole (called while its last bytes are parsed).
    func answerEnded(keepAlive: Bool) {
        exchange = nil
        ended = keepAlive
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        guard let exchange else {
            // An answer nobody asked for: the connection is out of step.
            shared.anomaly(.unsolicitedBytes)
            if let key = connection?.key { shared.distrust(key) }
            context.close(promise: nil)
            return
        }
        if var buffered = pending {
            buffered.writeBuffer(&incoming)
            incoming = buffered
            pending = nil
        }
        // Parsed on a copy: delivering a part can close the connection, and `channelInactive` then touches the parser.
        var parser = self.parser
        let answerEnded: Bool
        do {
            answerEnded = try parser.parse(&incoming) { part in
                switch part {
                case .head(let head):
                    answerKeepAlive = reuse && HTTPResponseParser.isKeepAlive(head)
                    if isOutOfStep(head, exchange: exchange) {
                        shared.anomaly(.unsolicitedBytes)
            if let key = connection?.key { shared.distrust(key) }
                        self.exchange = nil
                        exchange.connectionLost(.outOfStep)
                        context.close(promise: nil)
                        return
                    }
                    exchange.head(head)
                case .body(let buffer): exchange.body(buffer)
                case .end: exchange.end(keepAlive: answerKeepAlive)
                }
            }
        } catch {
            self.parser = parser
            shared.anomaly(.malformedResponse)
            self.exchange = nil
            exchange.connectionLost(.malformedResponse)
            context.close(promise: nil)
            return
        }
        self.parser = parser
        guard answerEnded, let keepAlive = ended else {
            if incoming.readableBytes > 0 { pending = incoming }
            return
        }
        ended = nil
        if incoming.readableBytes > 0 {
            // Bytes after the answer's end: a second answer to one request. Never hand this connection on.
            shared.anomaly(.unsolicitedBytes)
            if let key = connection?.key { shared.distrust(key) }
            context.close(promise: nil)
        } else if keepAlive, let connection {
            connection.pool.release(connection)
        } else {
            context.close(promise: nil)
        }
    }

    /// Whether the answer carries another request's id on a connection whose upstream echoes ids.
    private func isOutOfStep(_ head: HTTPResponseHead, exchange: Exchange) -> Bool {
        guard echoesRequestID != false, let ours = exchange.request.requestID else { return false }
        guard let theirs = head.headers.first(name: "x-request-id") else {
            if echoesRequestID == nil { echoesRequestID = false }
            return echoesRequestID == true
        }
        if theirs == ours {
            echoesRequestID = true
            return false
        }
        if echoesRequestID == nil {
            echoesRequestID = false
            return false
        }
        return true
    }

    func read(context: ChannelHandlerContext) {
        if let exchange, exchange.receivedHead, !exchange.wantsMoreData {
            readPending = true
        } else {
            context.read()
        }
    }

    func resumeReading() {
        guard readPending, let context else { return }
        readPending = false
        context.read()
    }

    func channelInactive(context: ChannelHandlerContext) {
        failHandshake(ChannelError.ioOnClosedChannel)
        // A body read until the connection closes ends here (unless TLS says the close may have cut it short).
        if let exchange, !uncleanShutdown {
            parser.finish { part in
                if case .end = part { exchange.end(keepAlive: false) }
            }
        }
        if let exchange {
            self.exchange = nil
            exchange.connectionLost()
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? NIOSSLError, case .uncleanShutdown = error { uncleanShutdown = true }
        failHandshake(error)
        context.close(promise: nil)
    }
}

/// The TLS handshake did not complete within the connect timeout.
struct UpstreamTLSHandshakeTimeout: Error, CustomStringConvertible {
    var description: String { "the handshake did not complete within the connect timeout" }
}
