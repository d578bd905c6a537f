public import HTTPTypes
public import Logging
public import NIOCore
import NIOConcurrencyHelpers
import NIOExtras
public import NIOHTTP1
import NIOPosix
public import ServiceLifecycle
import Synchronization

/// A request as the edge hands it to a responder: its head and its whole body (bodies here are JSON documents,
/// read up to a limit before the responder runs).
public struct EdgeRequest: Sendable {
    public var head: HTTPRequestHead
    /// The body, empty when it exceeded the limit.
    public var body: ByteBuffer
    /// Whether the body was larger than the server's limit (it was then read and dropped).
    public var bodyExceededLimit: Bool
    /// When the request head arrived, so the time before the responder runs is counted too.
    public var receivedAt: ContinuousClock.Instant
    /// Whether the client lets the connection carry another request (its version and `Connection` header).
    public var keepAlive: Bool

    public init(head: HTTPRequestHead, body: ByteBuffer = ByteBuffer(), bodyExceededLimit: Bool = false,
                receivedAt: ContinuousClock.Instant = .now, keepAlive: Bool? = nil) {
        self.head = head
        self.body = body
        self.bodyExceededLimit = bodyExceededLimit
        self.receivedAt = receivedAt
        self.keepAlive = keepAlive ?? head.isKeepAlive
    }

    public var method: HTTPMethod { head.method }
    /// The path without its query string.
    public var path: Substring {
        let full = head.uri
        // Searched as UTF-8: a `Character` search walks grapheme clusters (1% of the proxy path's CPU).
        return full.utf8.firstIndex(of: UInt8(ascii: "?")).map { full[..<$0] } ?? full[...]
    }

    /// The first value of a header, by case-insensitive name.
    public func header(_ name: String) -> String? {
        head.headers.first(name: name)
    }
}

/// A response: a complete body, or a body written piece by piece (server-sent events).
public struct EdgeResponse: Sendable {
    public enum Body: Sendable {
        case buffer(ByteBuffer)
        /// Written by the closure; the edge ends the chunked body when it returns.
        case stream(@Sendable (EdgeBodyWriter) async throws -> Void)
    }

    public var status: HTTPResponse.Status
    public var headers: HTTPFields
    /// Header lines already written (`name: value\r\n` each), sent after `headers`: for fields a hot path renders
    /// itself. Each `HTTPField` of `headers` carries names every thread shares, whose reference counts the cores then
    /// pass back and forth.
    public var headerLines: ByteBuffer?
    public var body: Body

    public init(status: HTTPResponse.Status, headers: HTTPFields = [:], headerLines: ByteBuffer? = nil, body: Body = .buffer(ByteBuffer())) {
        self.status = status
        self.headers = headers
        self.headerLines = headerLines
        self.body = body
    }
}

/// Writes the parts of a streamed body. Each write returns once the bytes are handed to the socket, so a slow
/// reader slows the writer instead of growing a buffer; it throws when the client has gone.
public struct EdgeBodyWriter: Sendable {
    let channel: any Channel
    /// Chunked framing (HTTP/1.1); an HTTP/1.0 client gets the bare bytes, the body ending when the connection closes.
    let chunked: Bool
    /// Lets the connection's sweep see a client that stopped reading.
    let progress: WriteProgress

    public func write(_ buffer: ByteBuffer) async throws {
        guard buffer.readableBytes > 0 else { return }
        let framed: ByteBuffer
        if chunked {
            var chunk = ByteBuffer()
            chunk.reserveCapacity(buffer.readableBytes + 12)
            HTTPFraming.writeChunk(buffer, into: &chunk)
            framed = chunk
        } else {
            framed = buffer
        }
        progress.issued()
        defer { progress.completed() }
        try await channel.writeAndFlush(framed)
    }
}

/// The progress of a streamed answer's writes, shared between the task writing it and the connection's sweep.
final class WriteProgress: Sendable {
    private let pending = Atomic<Int>(0)
    /// Uptime nanoseconds of the last progress while writes are pending; 0 when none is.
    private let progressAt = Atomic<UInt64>(0)

    func issued() {
        if pending.add(1, ordering: .relaxed).newValue == 1 {
            progressAt.store(NIODeadline.now().uptimeNanoseconds, ordering: .relaxed)
        }
    }

    func completed() {
        let left = pending.subtract(1, ordering: .relaxed).newValue
        progressAt.store(left > 0 ? NIODeadline.now().uptimeNanoseconds : 0, ordering: .relaxed)
    }

    /// When the pending writes last made progress; `nil` if none is pending.
    var stalledSince: NIODeadline? {
        let value = progressAt.load(ordering: .relaxed)
        return value == 0 ? nil : .uptimeNanoseconds(value)
    }
}

/// Answers one request. Never throws: errors are responses in the API's own envelope.
public typealias EdgeResponder = @Sendable (EdgeRequest) async -> EdgeResponse

/// An HTTP/1.1 server on SwiftNIO channel handlers. A request's head and body are read on its connection's event
/// loop; the responder runs in a task whose preferred executor is that loop (`EventLoopTaskExecutor`).
/// Requests on one connection are answered in order (pipelining assistance), and a client that disconnects
/// cancels its request's task.
///
/// As a `Service`, graceful shutdown closes the listening socket, lets in-flight requests and streams finish,
/// closes idle keep-alive connections, and returns when every connection has closed. Cancellation closes them all.
public struct EdgeServer: Service {
    public struct Configuration: Sendable {
        public var host: String
        public var port: Int
        public var backlog: Int32
        public var maxBodyBytes: Int
        public var timeouts: EdgeTimeouts
        /// Open connections past which a new one is answered 503 and closed.
        public var maxConnections: Int
        /// Request bodies held at once (read, queued or being answered), over all connections: a request that
        /// does not fit waits up to `bodyBudgetWait` (its connection not read meanwhile), then gets 503.
        public var bodyBudgetBytes: Int
        public var bodyBudgetWait: TimeAmount

        public init(host: String, port: Int, backlog: Int32 = 4096, maxBodyBytes: Int, timeouts: EdgeTimeouts = EdgeTimeouts(),
                    maxConnections: Int = 10_000, bodyBudgetBytes: Int = 256 << 20, bodyBudgetWait: TimeAmount = .seconds(2)) {
            self.bodyBudgetBytes = bodyBudgetBytes
            self.bodyBudgetWait = bodyBudgetWait
            self.host = host
            self.port = port
            self.backlog = backlog
            self.maxBodyBytes = maxBodyBytes
            self.timeouts = timeouts
            self.maxConnections = maxConnections
        }
    }

    let configuration: Configuration
    let responder: EdgeResponder
    let logger: Logger
    let beforeListening: @Sendable () async -> Void
    let onListening: @Sendable (Int) -> Void

    /// - Parameters:
    ///   - beforeListening: Awaited before the socket is bound (for example, until an in-process upstream is up).
    ///   - onListening: Called with the bound port.
    public init(configuration: Configuration, logger: Logger, beforeListening: @escaping @Sendable () async -> Void = {},
                onListening: @escaping @Sendable (Int) -> Void = { _ in }, responder: @escaping EdgeResponder) {
        self.configuration = configuration
        self.responder = responder
        self.logger = logger
        self.beforeListening = beforeListening
        self.onListening = onListening
    }

    public func run() async throws {
        await beforeListening()
        let group = MultiThreadedEventLoopGroup.singleton
        let quiesce = ServerQuiescingHelper(group: group)
        let connections = NIOLockedValueBox([ObjectIdentifier: any Channel]())
        let responder = self.responder
        let maxBodyBytes = configuration.maxBodyBytes
        let timeouts = configuration.timeouts
        let maxConnections = configuration.maxConnections
        let loopCount = max(1, Array(group.makeIterator()).count)
        let budget = (share: max(1, configuration.bodyBudgetBytes / loopCount), wait: configuration.bodyBudgetWait)
        let loops = Dictionary(uniqueKeysWithValues: group.makeIterator().map {
            (ObjectIdentifier($0), LoopServices(loop: $0, timeouts: timeouts, budget: budget))
        })
        let server = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: configuration.backlog)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AcceptThrottle())
                    try channel.pipeline.syncOperations.addHandler(quiesce.makeServerChannelHandler(channel: channel))
                }
            }
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelInitializer { channel in
                let id = ObjectIdentifier(channel)
                let admitted = connections.withLockedValue { open in
                    guard open.count < maxConnections else { return false }
                    open[id] = channel
                    return true
                }
                guard admitted else {
                    return channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(OverCapacityHandler())
                    }
                }
                channel.closeFuture.whenComplete { _ in _ = connections.withLockedValue { $0.removeValue(forKey: id) } }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        EdgeChannelHandler(responder: responder, maxBodyBytes: maxBodyBytes,
                                           loop: loops[ObjectIdentifier(channel.eventLoop)]
                                               ?? LoopServices(loop: channel.eventLoop, timeouts: timeouts, budget: budget)))
                }
            }
            .bind(host: configuration.host, port: configuration.port).get()
        onListening(server.localAddress?.port ?? 0)
        logger.debug("edge server listening", metadata: ["switchyard.port": "\(server.localAddress?.port ?? 0)"])

        // Until graceful shutdown begins (or the task is cancelled, when this throws).
        let graceful = (try? await gracefulShutdown()) != nil
        let closed = group.next().makePromise(of: Void.self)
        quiesce.initiateShutdown(promise: closed)
        await withTaskCancellationHandler {
            if !graceful || Task.isCancelled { Self.closeAll(connections) }
            try? await closed.futureResult.get()
        } onCancel: {
            Self.closeAll(connections)
        }
    }

    static func closeAll(_ connections: NIOLockedValueBox<[ObjectIdentifier: any Channel]>) {
        for channel in connections.withLockedValue({ Array($0.values) }) { channel.close(promise: nil) }
    }
}

/// What the connections of one event loop share: the executor their responders' tasks prefer, the flusher that
/// sends their answers at the end of the loop's batch, and the sweep that enforces their timeouts.
struct LoopServices: Sendable {
    let executor: EventLoopTaskExecutor
    let flusher: TickFlusher
    let sweeper: EdgeSweeper
    let timeouts: EdgeTimeouts
    let bodies: BodyBudget

    init(loop: any EventLoop, timeouts: EdgeTimeouts, budget: (share: Int, wait: TimeAmount) = (256 << 20, .seconds(2))) {
        executor = EventLoopTaskExecutor(loop: loop)
        flusher = TickFlusher(loop: loop)
        bodies = BodyBudget(share: budget.share, wait: budget.wait)
        sweeper = EdgeSweeper(loop: loop, interval: min(timeouts.sweepInterval, max(.milliseconds(10), .nanoseconds(budget.wait.nanoseconds / 4))))
        self.timeouts = timeouts
    }
}

/// One event loop's share of the request-body budget. Used only on its loop, so no lock: a request waits if its
/// loop's share is spent even when another loop's is not. One body larger than the share is still admitted when
/// nothing else is held, so every request that fits `max_body_bytes` can be served.
final class BodyBudget: @unchecked Sendable {
    let share: Int
    let wait: TimeAmount
    private(set) var reserved = 0

    init(share: Int, wait: TimeAmount) {
        self.share = share
        self.wait = wait
    }

    func tryReserve(_ bytes: Int) -> Bool {
        guard bytes > 0 else { return true }
        guard reserved == 0 || reserved + bytes <= share else { return false }
        reserved += bytes
        return true
    }

    /// For bytes already in memory (a chunked body's part): counted whatever the share.
    func force(_ bytes: Int) {
        reserved += bytes
    }

    var overdrawn: Bool { reserved > share }

    func release(_ bytes: Int) {
        reserved = max(0, reserved - bytes)
    }
}

/// Checks the timeouts of one loop's connections every `interval` while it has any: one timer per loop, not one
/// per connection or per request. Used only on `loop`.
final class EdgeSweeper: @unchecked Sendable {
    let loop: any EventLoop
    let interval: TimeAmount
    private var handlers: [ObjectIdentifier: EdgeChannelHandler] = [:]
    private var scheduled = false

    init(loop: any EventLoop, interval: TimeAmount) {
        self.loop = loop
        self.interval = interval
    }

    func add(_ handler: EdgeChannelHandler) {
        handlers[ObjectIdentifier(handler)] = handler
        if !scheduled {
            scheduled = true
            loop.scheduleTask(in: interval) { self.sweep() }
        }
    }

    func remove(_ handler: EdgeChannelHandler) {
        handlers.removeValue(forKey: ObjectIdentifier(handler))
    }

    private func sweep() {
        scheduled = false
        let now = NIODeadline.now()
        for handler in Array(handlers.values) { handler.checkTimeouts(now: now) }
        if !handlers.isEmpty {
            scheduled = true
            loop.scheduleTask(in: interval) { self.sweep() }
        }
    }
}

/// When accept fails for want of resources (no descriptors left: `EMFILE`, `ENFILE`; no buffers), stops accepting
/// for a moment instead of retrying at once. NIO keeps the listening socket registered after a failed accept (its
/// read stays pending, so `AcceptBackoffHandler.read` is never asked), and epoll then reports it readable in a loop
/// that spins a core; turning `autoRead` off unregisters it until the pause ends.
final class AcceptThrottle: ChannelInboundHandler {
    typealias InboundIn = any Channel
    typealias InboundOut = any Channel

    static let pause = TimeAmount.milliseconds(250)
    private var paused = false

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let error = error as? IOError, [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(error.errnoCode) else {
            context.fireErrorCaught(error)
            return
        }
        guard !paused else { return }
        paused = true
        let channel = context.channel
        channel.setOption(.autoRead, value: false).whenComplete { _ in
            channel.eventLoop.scheduleTask(in: Self.pause) {
                channel.setOption(.autoRead, value: true).whenComplete { _ in }
            }
        }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: Self.pause) { bound.value.paused = false }
    }
}

/// A connection past the cap: answered 503 and closed, without reading it.
final class OverCapacityHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelActive(context: ChannelHandlerContext) {
        let body = #"{"error":{"message":"the gateway has too many open connections; retry shortly","type":"overloaded_error","code":"overloaded"}}"#
        var buffer = context.channel.allocator.buffer(capacity: 256)
        buffer.writeString("HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
                           + "connection: close\r\ncontent-length: \(body.utf8.count)\r\n\r\n\(body)")
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in bound.value.close(promise: nil) }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// One connection's request reader and response writer. Requests are parsed from the connection's bytes
/// (`HTTPRequestParser`) and answers framed straight into one buffer per response (or per streamed chunk), with no
/// trip through decoder or encoder handlers. Requests are answered one at a time in arrival order; pipelined ones
/// wait in a short queue, and reading pauses while it is full. A request that cannot be parsed is answered 400 (413,
/// 431, 501, 505 where they fit) and the connection closed. Its time limits (`EdgeConnectionTimer`) are checked by
/// the loop's `EdgeSweeper`.
final class EdgeChannelHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Requests a pipelining client may queue behind the one being answered; past it the connection stops reading.
    static let maximumQueued = 16
    /// Bodies up to this size are kept as the slices they arrived in; larger declared ones get one buffer.
    static let inlineBodyBytes = 64 << 10

    let responder: EdgeResponder
    let maxBodyBytes: Int
    var parser: HTTPRequestParser
    /// Bytes received and not parsed yet (an incomplete head or chunk-size line, or requests past the queue).
    var unparsed: ByteBuffer?
    /// The connection is refusing further input after a malformed request.
    var failed = false
    var head: HTTPRequestHead?
    var keepAlive = true
    var body = ByteBuffer()
    var exceeded = false
    var receivedAt = ContinuousClock.now
    var task: Task<Void, Never>?
    var queued: [EdgeRequest] = []
    var quiescing = false
    /// A `100 Continue` held back while an earlier answer is written (it would land inside that answer's bytes).
    var continuePending = false
    /// A read the channel asked for while the queue was full.
    var readPending = false
    var timer: EdgeConnectionTimer
    let progress = WriteProgress()
    /// Budget held by the request being read, the one being answered, and the queued ones (in order).
    var readingReservation = 0
    var answeringReservation = 0
    var queuedReservations: [Int] = []
    /// Bytes the request being read still needs from the budget, and since when it waits (reading paused).
    var budgetWait: (bytes: Int, since: NIODeadline)?
    /// The request being read waited too long for the budget: its body is dropped, and it is answered 503.
    var budgetRefused = false
    /// The declared length of the body being read, when it is large: read into one buffer of that size.
    var expectedLength = 0
    private var context: ChannelHandlerContext?
    /// Runs the responders' tasks on this connection's event loop, and flushes their answers.
    let loop: LoopServices

    init(responder: @escaping EdgeResponder, maxBodyBytes: Int, loop: LoopServices) {
        self.responder = responder
        self.maxBodyBytes = maxBodyBytes
        self.loop = loop
        self.parser = HTTPRequestParser(maximumChunkedBodyBytes: maxBodyBytes)
        self.timer = EdgeConnectionTimer(limits: loop.timeouts, now: .now())
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        timer = EdgeConnectionTimer(limits: loop.timeouts, now: .now())
        loop.sweeper.add(self)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        loop.sweeper.remove(self)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        var incoming = unwrapInboundIn(data)
        timer.bytesArrived(incoming.readableBytes, now: .now())
        if var buffered = unparsed {
            buffered.writeBuffer(&incoming)
            incoming = buffered
            unparsed = nil
        }
        parseAvailable(&incoming, context: context)
    }

    /// Parses requests from `incoming` while the queue has room; keeps what is left for later.
    private func parseAvailable(_ incoming: inout ByteBuffer, context: ChannelHandlerContext) {
        do {
            while incoming.readableBytes > 0 && !failed && queued.count < Self.maximumQueued {
                guard try parser.parse(&incoming, emit: { part in received(part, context: context) }) else { break }
            }
        } catch {
            refuse(error, context: context)
            return
        }
        if incoming.readableBytes > 0 {
            unparsed = incoming
            // The next request has begun (or waits behind a full queue): its head timeout runs.
            timer.bytesArrived(0, now: .now())
        }
    }

    func read(context: ChannelHandlerContext) {
        if queued.count >= Self.maximumQueued || budgetWait != nil {
            readPending = true
        } else {
            context.read()
        }
    }

    /// Asks for the read held back while the queue was full or the body budget spent, once neither holds.
    private func resumeReading(_ context: ChannelHandlerContext) {
        guard readPending, queued.count < Self.maximumQueued, budgetWait == nil else { return }
        readPending = false
        context.read()
    }

    /// A request that cannot be read: answered with its status when nothing else is being answered, and the
    /// connection closed either way (what follows on it cannot be trusted).
    func refuse(_ failure: HTTPRequestParser.Failure, context: ChannelHandlerContext) {
        refuse(status: failure.status, reason: failure.reason, code: "malformed_http", context: context)
    }

    func refuse(status: HTTPResponseStatus, reason: String, code: String, retryAfter: Bool = false,
                context: ChannelHandlerContext) {
        failed = true
        unparsed = nil
        guard task == nil, queued.isEmpty else {
            context.close(promise: nil)
            return
        }
        let message = #"{"error":{"message":"\#(reason)","type":"invalid_request_error","code":"\#(code)"}}"#
        var buffer = context.channel.allocator.buffer(capacity: 256)
        buffer.writeStaticString("HTTP/1.1 ")
        buffer.writeString("\(status.code) \(status.reasonPhrase)")
        buffer.writeStaticString("\r\ncontent-type: application/json\r\nconnection: close\r\n")
        if retryAfter { buffer.writeStaticString("retry-after: 1\r\n") }
        buffer.writeStaticString("content-length: ")
        buffer.writeString(String(message.utf8.count))
        buffer.writeStaticString("\r\n\r\n")
        buffer.writeString(message)
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in bound.value.close(promise: nil) }
    }

    /// Called by the loop's sweep.
    func checkTimeouts(now: NIODeadline) {
        guard let context else { return }
        if let waiting = budgetWait {
            if waiting.bytes == 0 ? !loop.bodies.overdrawn : loop.bodies.tryReserve(waiting.bytes) {
                readingReservation += waiting.bytes
                budgetWait = nil
                resumeReading(context)
            } else if now - waiting.since >= loop.bodies.wait {
                // Refused: the body is read and dropped (nothing held), then the client gets 503 with retry-after in
                // place of a connection reset in the middle of its upload.
                budgetWait = nil
                budgetRefused = true
                body = ByteBuffer()
                resumeReading(context)
            }
        }
        timer.writeStalled(since: progress.stalledSince)
        switch timer.check(now: now) {
        case nil:
            return
        case .headTimeout:
            refuse(status: .requestTimeout, reason: "the request head did not arrive in time", code: "request_timeout",
                   context: context)
        case .bodyTooSlow:
            refuse(status: .requestTimeout, reason: "the request body arrived too slowly", code: "request_timeout",
                   context: context)
        case .idle, .writeStalled:
            failed = true
            context.close(promise: nil)
        }
        loop.sweeper.remove(self)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        timer.writabilityChanged(writable: context.channel.isWritable, now: .now())
        context.fireChannelWritabilityChanged()
    }

    func received(_ part: HTTPRequestParser.Part, context: ChannelHandlerContext) {
        guard !failed else { return }
        switch part {
        case .head(let head, let keepAlive):
            self.head = head
            self.keepAlive = keepAlive
            receivedAt = .now
            timer.headComplete(now: .now())
            body.clear()
            exceeded = false
            continuePending = false
            // A declared body that fits the limit is reserved whole now; one past the limit is read and dropped.
            budgetRefused = false
            expectedLength = 0
            if let length = head.headers.first(name: "content-length").flatMap(Int.init), length <= maxBodyBytes {
                if loop.bodies.tryReserve(length) {
                    readingReservation += length
                } else {
                    budgetWait = (length, .now())
                }
                expectedLength = length
            }
            if let expect = head.headers.first(name: "expect") {
                guard HeaderTokens.equals(expect.utf8, "100-continue") else {
                    refuse(status: .expectationFailed, reason: "only Expect: 100-continue is supported",
                           code: "expectation_failed", context: context)
                    return
                }
                if let length = head.headers.first(name: "content-length").flatMap(Int.init), length > maxBodyBytes {
                    // Refused before the client sends the body it announced.
                    refuse(status: .payloadTooLarge, reason: "request body larger than \(maxBodyBytes) bytes",
                           code: "payload_too_large", context: context)
                    return
                }
                if task == nil && queued.isEmpty {
                    context.writeAndFlush(wrapOutboundOut(ByteBuffer(staticString: "HTTP/1.1 100 Continue\r\n\r\n")), promise: nil)
                } else {
                    continuePending = true
                }
            }
        case .body(var part):
            continuePending = false
            guard !exceeded, !budgetRefused else { return }
            if body.readableBytes + part.readableBytes > maxBodyBytes {
                exceeded = true
                body = ByteBuffer()
                loop.bodies.release(readingReservation)
                readingReservation = 0
                return
            }
            if body.readableBytes + part.readableBytes > readingReservation, (budgetWait?.bytes ?? 0) == 0 {
                // Chunked (or past what was declared): counted as it arrives; reading pauses while the share is overdrawn.
                let extra = body.readableBytes + part.readableBytes - readingReservation
                loop.bodies.force(extra)
                readingReservation += extra
                if loop.bodies.overdrawn && budgetWait == nil { budgetWait = (0, .now()) }
            }
            if body.readableBytes == 0 && expectedLength <= Self.inlineBodyBytes {
                body = part  // the common small body: the read buffer's slice, no copy
            } else {
                if body.capacity == 0 && expectedLength > Self.inlineBodyBytes {
                    // One buffer of the declared size: growing by doubling would hold up to twice the body.
                    body = context.channel.allocator.buffer(capacity: expectedLength)
                }
                body.writeBuffer(&part)
            }
        case .end:
            guard let head else { return }
            self.head = nil
            continuePending = false
            if budgetRefused {
                budgetRefused = false
                refuse(status: .serviceUnavailable, reason: "the gateway holds too many request bodies; retry shortly",
                       code: "overloaded", retryAfter: true, context: context)
                return
            }
            timer.requestComplete(leftoverBytes: false, now: .now())
            let request = EdgeRequest(head: head, body: body, bodyExceededLimit: exceeded, receivedAt: receivedAt,
                                      keepAlive: keepAlive)
            body = ByteBuffer()
            if let waiting = budgetWait, waiting.bytes > 0 {
                // The whole body arrived with the bytes already read while it waited: it is in memory, so count it.
                loop.bodies.force(waiting.bytes)
                readingReservation += waiting.bytes
                budgetWait = nil
                resumeReading(context)
            }
            let reservation = readingReservation
            readingReservation = 0
            if task == nil {
                answeringReservation = reservation
                start(request, context: context)
            } else {
                queued.append(request)
                queuedReservations.append(reservation)
            }
        }
    }

    func start(_ request: EdgeRequest, context: ChannelHandlerContext) {
        let keepAlive = request.keepAlive && !quiescing
        let done = context.eventLoop.makePromise(of: Bool.self)
        task = Self.respond(to: request, with: responder, on: context.channel, loop: loop, keepAlive: keepAlive,
                            progress: progress, done: done)
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        done.futureResult.whenSuccess { reusable in handler.value.finished(reusable: reusable, context: bound.value) }
    }

    /// The answer is written: the next queued request goes, or the connection closes if it cannot carry more.
    func finished(reusable: Bool, context: ChannelHandlerContext) {
        task = nil
        loop.bodies.release(answeringReservation)
        answeringReservation = 0
        guard reusable, context.channel.isActive else {
            releaseAll()
            context.close(promise: nil)
            return
        }
        if !queued.isEmpty {
            answeringReservation = queuedReservations.removeFirst()
            start(queued.removeFirst(), context: context)
            // Room in the queue again: parse what waited, and read on.
            if var waiting = unparsed {
                unparsed = nil
                parseAvailable(&waiting, context: context)
            }
            resumeReading(context)
            return
        }
        timer.allAnswered(now: .now())
        if continuePending {
            continuePending = false
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(staticString: "HTTP/1.1 100 Continue\r\n\r\n")), promise: nil)
        }
        if quiescing { context.close(promise: nil) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            // Graceful shutdown: an idle connection closes now, a busy one after its answers.
            quiescing = true
            if task == nil { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    /// Gives back every reservation but the one of the request being answered (its task still holds the body).
    private func releaseAll() {
        queued.removeAll()
        loop.bodies.release(queuedReservations.reduce(0, +) + readingReservation)
        queuedReservations.removeAll()
        readingReservation = 0
        budgetWait = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        // The client went away: stop the work done on its behalf (the upstream call, a stream being relayed).
        task?.cancel()
        if task == nil {
            loop.bodies.release(answeringReservation)
            answeringReservation = 0
        }
        task = nil
        releaseAll()
        loop.sweeper.remove(self)
        context.fireChannelInactive()
    }

    static func respond(to request: EdgeRequest, with responder: @escaping EdgeResponder, on channel: any Channel,
                        loop: LoopServices, keepAlive: Bool, progress: WriteProgress, done: EventLoopPromise<Bool>)
        -> Task<Void, Never>
    {
        Task(executorPreference: loop.executor) {
            let response = await responder(request)
            let http10 = request.head.version.minor == 0
            done.succeed(await write(response, to: channel, flusher: loop.flusher, keepAlive: keepAlive, http10: http10,
                                     progress: progress))
        }
    }

    /// Writes the response; returns whether the connection can carry another request.
    static func write(_ response: EdgeResponse, to channel: any Channel, flusher: TickFlusher, keepAlive: Bool,
                      http10: Bool = false, progress: WriteProgress = WriteProgress()) async -> Bool {
        switch response.body {
        case .buffer(let body):
            // Sized for the head as well (about 40 bytes a field), so that it is not copied to grow.
            var buffer = channel.allocator.buffer(capacity: 128 + 48 * response.headers.count + (response.headerLines?.readableBytes ?? 0)
                                                  + body.readableBytes)
            HTTPFraming.writeHead(response.status, response.headers, lines: response.headerLines, contentLength: body.readableBytes,
                                  keepAlive: keepAlive, into: &buffer)
            buffer.writeImmutableBuffer(body)
            if keepAlive {
                flusher.write(buffer, to: channel)
                return true
            }
            try? await channel.writeAndFlush(buffer)
            return false
        case .stream(let produce):
            // HTTP/1.0 has no chunked coding: the body runs until the connection closes.
            let chunked = !http10
            let reusable = keepAlive && chunked
            do {
                var head = channel.allocator.buffer(capacity: 256)
                HTTPFraming.writeHead(response.status, response.headers, lines: response.headerLines, contentLength: nil,
                                      keepAlive: reusable, chunked: chunked, into: &head)
                try await channel.writeAndFlush(head)
                try await produce(EdgeBodyWriter(channel: channel, chunked: chunked, progress: progress))
                if chunked { try await channel.writeAndFlush(ByteBuffer(staticString: "0\r\n\r\n")) }
                return reusable
            } catch {
                // The client is gone or the body failed half-way: the connection cannot carry another answer.
                return false
            }
        }
    }
}

/// HTTP/1.1 response framing.
enum HTTPFraming {
    /// - Parameter chunked: Without a `contentLength`, whether the body is chunked (else it runs until the close).
    static func writeHead(_ status: HTTPResponse.Status, _ headers: HTTPFields, lines: ByteBuffer? = nil, contentLength: Int?,
                          keepAlive: Bool, chunked: Bool = true, into buffer: inout ByteBuffer) {
        if status == .ok {
            buffer.writeStaticString("HTTP/1.1 200 OK\r\n")
        } else {
            buffer.writeStaticString("HTTP/1.1 ")
            buffer.writeString(String(status.code))
            buffer.writeStaticString(" ")
            buffer.writeString(status.reasonPhrase)
            buffer.writeStaticString("\r\n")
        }
        for field in headers {
            buffer.writeString(field.name.canonicalName)
            buffer.writeStaticString(": ")
            buffer.writeString(field.value)
            buffer.writeStaticString("\r\n")
        }
        if let lines { buffer.writeImmutableBuffer(lines) }
        if let contentLength {
            buffer.writeStaticString("content-length: ")
            buffer.writeString(String(contentLength))
            buffer.writeStaticString("\r\n")
        } else if chunked {
            buffer.writeStaticString("transfer-encoding: chunked\r\n")
        }
        if !keepAlive { buffer.writeStaticString("connection: close\r\n") }
        buffer.writeStaticString("\r\n")
    }

    static func writeChunk(_ data: ByteBuffer, into buffer: inout ByteBuffer) {
        buffer.writeString(String(data.readableBytes, radix: 16))
        buffer.writeStaticString("\r\n")
        buffer.writeImmutableBuffer(data)
        buffer.writeStaticString("\r\n")
    }
}
