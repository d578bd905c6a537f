public import HTTPTypes
public import Logging
public import NIOCore
import NIOConcurrencyHelpers
import NIOExtras
public import NIOHTTP1
import NIOPosix
public import ServiceLifecycle

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
    public var body: Body

    public init(status: HTTPResponse.Status, headers: HTTPFields = [:], body: Body = .buffer(ByteBuffer())) {
        self.status = status
        self.headers = headers
        self.body = body
    }
}

/// Writes the parts of a streamed body. Each write returns once the bytes are handed to the socket, so a slow
/// reader slows the writer instead of growing a buffer; it throws when the client has gone.
public struct EdgeBodyWriter: Sendable {
    let channel: any Channel

    public func write(_ buffer: ByteBuffer) async throws {
        guard buffer.readableBytes > 0 else { return }
        var chunk = ByteBuffer()
        chunk.reserveCapacity(buffer.readableBytes + 12)
        HTTPFraming.writeChunk(buffer, into: &chunk)
        try await channel.writeAndFlush(chunk)
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

        public init(host: String, port: Int, backlog: Int32 = 4096, maxBodyBytes: Int) {
            self.host = host
            self.port = port
            self.backlog = backlog
            self.maxBodyBytes = maxBodyBytes
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
        let loops = Dictionary(uniqueKeysWithValues: group.makeIterator().map {
            (ObjectIdentifier($0), LoopServices(loop: $0))
        })
        let server = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: configuration.backlog)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(quiesce.makeServerChannelHandler(channel: channel))
                }
            }
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelInitializer { channel in
                let id = ObjectIdentifier(channel)
                connections.withLockedValue { $0[id] = channel }
                channel.closeFuture.whenComplete { _ in _ = connections.withLockedValue { $0.removeValue(forKey: id) } }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        EdgeChannelHandler(responder: responder, maxBodyBytes: maxBodyBytes,
                                           loop: loops[ObjectIdentifier(channel.eventLoop)]
                                               ?? LoopServices(loop: channel.eventLoop)))
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

/// What the connections of one event loop share: the executor their responders' tasks prefer, and the flusher that
/// sends their answers at the end of the loop's batch.
struct LoopServices: Sendable {
    let executor: EventLoopTaskExecutor
    let flusher: TickFlusher

    init(loop: any EventLoop) {
        executor = EventLoopTaskExecutor(loop: loop)
        flusher = TickFlusher(loop: loop)
    }
}

/// One connection's request reader and response writer. Requests are parsed from the connection's bytes
/// (`HTTPRequestParser`) and answers framed straight into one buffer per response (or per streamed chunk), with no
/// trip through decoder or encoder handlers. Requests are answered one at a time in arrival order; pipelined ones
/// wait in a short queue. A request that cannot be parsed is answered 400 (431, 501, 505 where they fit) and the
/// connection closed.
final class EdgeChannelHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Requests a pipelining client may queue behind the one being answered before the connection is closed.
    static let maximumQueued = 16

    let responder: EdgeResponder
    let maxBodyBytes: Int
    var parser = HTTPRequestParser()
    /// Bytes received and not parsed yet (an incomplete head or chunk-size line).
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
    /// Runs the responders' tasks on this connection's event loop, and flushes their answers.
    let loop: LoopServices

    init(responder: @escaping EdgeResponder, maxBodyBytes: Int, loop: LoopServices) {
        self.responder = responder
        self.maxBodyBytes = maxBodyBytes
        self.loop = loop
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        var incoming = unwrapInboundIn(data)
        if var buffered = unparsed {
            buffered.writeBuffer(&incoming)
            incoming = buffered
            unparsed = nil
        }
        do {
            try parser.parse(&incoming) { part in received(part, context: context) }
        } catch {
            refuse(error, context: context)
            return
        }
        if incoming.readableBytes > 0 { unparsed = incoming }
    }

    /// A request that cannot be read: answered with its status when nothing else is being answered, and the
    /// connection closed either way (what follows on it cannot be trusted).
    func refuse(_ failure: HTTPRequestParser.Failure, context: ChannelHandlerContext) {
        failed = true
        unparsed = nil
        guard task == nil, queued.isEmpty else {
            context.close(promise: nil)
            return
        }
        let message = #"{"error":{"message":"\#(failure.reason)","type":"invalid_request_error","code":"malformed_http"}}"#
        var buffer = context.channel.allocator.buffer(capacity: 256)
        buffer.writeStaticString("HTTP/1.1 ")
        buffer.writeString("\(failure.status.code) \(failure.status.reasonPhrase)")
        buffer.writeStaticString("\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: ")
        buffer.writeString(String(message.utf8.count))
        buffer.writeStaticString("\r\n\r\n")
        buffer.writeString(message)
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in bound.value.close(promise: nil) }
    }

    func received(_ part: HTTPRequestParser.Part, context: ChannelHandlerContext) {
        switch part {
        case .head(let head, let keepAlive):
            self.head = head
            self.keepAlive = keepAlive
            receivedAt = .now
            body.clear()
            exceeded = false
            if head.headers.first(name: "expect")?.lowercased() == "100-continue" {
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(staticString: "HTTP/1.1 100 Continue\r\n\r\n")), promise: nil)
            }
        case .body(var part):
            guard !exceeded else { return }
            if body.readableBytes + part.readableBytes > maxBodyBytes {
                exceeded = true
                body = ByteBuffer()
            } else if body.readableBytes == 0 {
                body = part
            } else {
                body.writeBuffer(&part)
            }
        case .end:
            guard let head else { return }
            self.head = nil
            let request = EdgeRequest(head: head, body: body, bodyExceededLimit: exceeded, receivedAt: receivedAt,
                                      keepAlive: keepAlive)
            body = ByteBuffer()
            if task == nil {
                start(request, context: context)
            } else if queued.count < Self.maximumQueued {
                queued.append(request)
            } else {
                context.close(promise: nil)
            }
        }
    }

    func start(_ request: EdgeRequest, context: ChannelHandlerContext) {
        let keepAlive = request.keepAlive && !quiescing
        let done = context.eventLoop.makePromise(of: Bool.self)
        task = Self.respond(to: request, with: responder, on: context.channel, loop: loop, keepAlive: keepAlive, done: done)
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        done.futureResult.whenSuccess { reusable in handler.value.finished(reusable: reusable, context: bound.value) }
    }

    /// The answer is written: the next queued request goes, or the connection closes if it cannot carry more.
    func finished(reusable: Bool, context: ChannelHandlerContext) {
        task = nil
        guard reusable, context.channel.isActive else {
            queued.removeAll()
            context.close(promise: nil)
            return
        }
        if !queued.isEmpty {
            start(queued.removeFirst(), context: context)
        } else if quiescing {
            context.close(promise: nil)
        }
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

    func channelInactive(context: ChannelHandlerContext) {
        // The client went away: stop the work done on its behalf (the upstream call, a stream being relayed).
        task?.cancel()
        task = nil
        queued.removeAll()
        context.fireChannelInactive()
    }

    static func respond(to request: EdgeRequest, with responder: @escaping EdgeResponder, on channel: any Channel,
                        loop: LoopServices, keepAlive: Bool, done: EventLoopPromise<Bool>) -> Task<Void, Never> {
        Task(executorPreference: loop.executor) {
            let response = await responder(request)
            done.succeed(await write(response, to: channel, flusher: loop.flusher, keepAlive: keepAlive))
        }
    }

    /// Writes the response; returns whether the connection can carry another request.
    static func write(_ response: EdgeResponse, to channel: any Channel, flusher: TickFlusher, keepAlive: Bool) async -> Bool {
        switch response.body {
        case .buffer(let body):
            var buffer = channel.allocator.buffer(capacity: 256 + body.readableBytes)
            HTTPFraming.writeHead(response.status, response.headers, contentLength: body.readableBytes, keepAlive: keepAlive,
                                  into: &buffer)
            buffer.writeImmutableBuffer(body)
            if keepAlive {
                flusher.write(buffer, to: channel)
                return true
            }
            try? await channel.writeAndFlush(buffer)
            return false
        case .stream(let produce):
            do {
                var head = channel.allocator.buffer(capacity: 256)
                HTTPFraming.writeHead(response.status, response.headers, contentLength: nil, keepAlive: keepAlive, into: &head)
                try await channel.writeAndFlush(head)
                try await produce(EdgeBodyWriter(channel: channel))
                try await channel.writeAndFlush(ByteBuffer(staticString: "0\r\n\r\n"))
                return keepAlive
            } catch {
                // The client is gone or the body failed half-way: the connection cannot carry another answer.
                return false
            }
        }
    }
}

/// HTTP/1.1 response framing.
enum HTTPFraming {
    static func writeHead(_ status: HTTPResponse.Status, _ headers: HTTPFields, contentLength: Int?, keepAlive: Bool,
                          into buffer: inout ByteBuffer) {
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
        if let contentLength {
            buffer.writeStaticString("content-length: ")
            buffer.writeString(String(contentLength))
            buffer.writeStaticString("\r\n")
        } else {
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
