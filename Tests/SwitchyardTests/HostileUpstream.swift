import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import SwitchyardCore

/// A scripted upstream on loopback that speaks raw bytes: each request it reads is answered by whatever steps the
/// script returns (bytes, pauses, a close), so it can misbehave in ways no well-formed server library allows —
/// an answer too many, a body shorter than its length, a stream that stalls, absurd numbers.
final class HostileUpstream: Sendable {
    struct Request: Sendable {
        /// Over the whole server, from 0.
        var index: Int
        /// On its connection, from 0.
        var onConnection: Int
        var head: String
        var body: String
        /// The text after `marker-` in the body (up to a quote or space): which test request this is.
        var marker: String
        var requestID: String?
        var stream: Bool { body.contains("\"stream\":true") || body.contains("\"stream\": true") }
    }

    enum Step: Sendable {
        case write(String)
        case pause(milliseconds: Int64)
        case close
    }

    typealias Script = @Sendable (Request) -> [Step]

    let channel: any Channel
    let counts = Locked((connections: 0, requests: 0))
    /// The base URL's scheme and host.
    let origin: String

    private init(channel: any Channel, origin: String) {
        self.channel = channel
        self.origin = origin
    }

    var port: Int { channel.localAddress?.port ?? 0 }
    var baseURL: String { "\(origin):\(port)" }
    var connections: Int { counts.withLock { $0.connections } }

    /// The test CA (`Fixtures/tls`) that signed the certificate an HTTPS upstream presents, for `localhost` and
    /// `127.0.0.1`; valid until 2126.
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/tls")
    static var testCAFile: String { fixtures.appendingPathComponent("ca.pem").path }

    /// - Parameters:
    ///   - tls: Speak HTTPS with the test certificate (the base URL names `localhost`, or `host` when it is not
    ///     127.0.0.1).
    ///   - host: The loopback address to listen on.
    static func start(tls: Bool = false, host: String = "127.0.0.1", _ script: @escaping Script) async throws -> HostileUpstream {
        let box = Locked<HostileUpstream?>(nil)
        let context: NIOSSLContext? = tls ? try NIOSSLContext(configuration: .makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMFile(fixtures.appendingPathComponent("server.pem").path).map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(file: fixtures.appendingPathComponent("server.key").path, format: .pem)))) : nil
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                guard let server = box.withLock({ $0 }) else { return channel.eventLoop.makeSucceededVoidFuture() }
                server.counts.withLock { $0.connections += 1 }
                return channel.eventLoop.makeCompletedFuture {
                    if let context { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context)) }
                    try channel.pipeline.syncOperations.addHandler(ScriptedConnection(server: server, script: script))
                }
            }
            .bind(host: host, port: 0).get()
        let name = host == "127.0.0.1" && tls ? "localhost" : host
        let server = HostileUpstream(channel: channel, origin: "\(tls ? "https" : "http")://\(name)")
        box.withLock { $0 = server }
        return server
    }

    func nextIndex() -> Int {
        counts.withLock { counts in
            defer { counts.requests += 1 }
            return counts.requests
        }
    }

    func stop() async throws { try await channel.close() }

    // MARK: Answers

    /// A Chat Completions answer whose text is the request's marker.
    static func completion(_ request: Request, usage: String = #"{"prompt_tokens":10,"completion_tokens":5}"#,
                           extraHeaders: String = "") -> String {
        let body = #"{"id":"chatcmpl-1","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"answer-"#
            + request.marker + #""},"finish_reason":"stop"}],"usage":"# + usage + "}"
        return "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\(extraHeaders)content-length: \(body.utf8.count)\r\n\r\n\(body)"
    }

    /// A streamed answer's head, its text events, and optionally its end.
    static func streamHead(extraHeaders: String = "") -> String {
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\(extraHeaders)transfer-encoding: chunked\r\n\r\n"
    }

    static func chunk(_ text: String) -> String {
        "\(String(text.utf8.count, radix: 16))\r\n\(text)\r\n"
    }

    static func textEvent(_ text: String) -> String {
        chunk(#"data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":""#
              + text + #""},"finish_reason":null}]}"# + "\n\n")
    }

    static func streamEnd(usage: String = #"{"prompt_tokens":10,"completion_tokens":5}"#) -> String {
        chunk(#"data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"# + "\n\n")
            + chunk(#"data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[],"usage":"# + usage + "}\n\n")
            + chunk("data: [DONE]\n\n") + "0\r\n\r\n"
    }

    static func error(_ status: Int, headers: String) -> String {
        let body = #"{"error":{"message":"slow down","type":"rate_limit_error"}}"#
        return "HTTP/1.1 \(status) Busy\r\ncontent-type: application/json\r\n\(headers)content-length: \(body.utf8.count)\r\n\r\n\(body)"
    }
}

/// Reads requests off one connection and plays the script's steps for each, in order.
final class ScriptedConnection: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let server: HostileUpstream
    let script: HostileUpstream.Script
    private var buffer = ""
    private var onConnection = 0
    /// Steps still to play (requests are answered one after another, as HTTP/1.1 requires).
    private var steps: [HostileUpstream.Step] = []
    private var playing = false

    init(server: HostileUpstream, script: @escaping HostileUpstream.Script) {
        self.server = server
        self.script = script
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        buffer += String(buffer: unwrapInboundIn(data))
        while let headEnd = buffer.range(of: "\r\n\r\n") {
            let head = String(buffer[..<headEnd.lowerBound])
            let length = head.split(separator: "\r\n").compactMap { line -> Int? in
                let parts = line.split(separator: ":", maxSplits: 1)
                guard parts.count == 2, parts[0].lowercased() == "content-length" else { return nil }
                return Int(parts[1].trimmingCharacters(in: .whitespaces))
            }.first ?? 0
            let bodyStart = headEnd.upperBound
            guard buffer.utf8.distance(from: bodyStart, to: buffer.endIndex) >= length else { return }
            let bodyEnd = buffer.utf8.index(bodyStart, offsetBy: length)
            let body = String(buffer[bodyStart..<bodyEnd])
            buffer = String(buffer[bodyEnd...])
            var marker = ""
            if let range = body.range(of: "marker-") {
                marker = String(body[range.upperBound...].prefix { $0 != "\"" && $0 != " " && $0 != "\\" })
            }
            let requestID = head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("x-request-id:") }
                .map { String($0.dropFirst("x-request-id:".count)).trimmingCharacters(in: .whitespaces) }
            let request = HostileUpstream.Request(index: server.nextIndex(), onConnection: onConnection, head: head, body: body,
                                                  marker: marker, requestID: requestID)
            onConnection += 1
            steps += script(request)
        }
        play(context: context)
    }

    private func play(context: ChannelHandlerContext) {
        guard !playing else { return }
        while !steps.isEmpty {
            let step = steps.removeFirst()
            switch step {
            case .write(let text):
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: text)), promise: nil)
            case .pause(let milliseconds):
                playing = true
                let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
                context.eventLoop.scheduleTask(in: .milliseconds(milliseconds)) {
                    bound.value.0.playing = false
                    bound.value.0.play(context: bound.value.1)
                }
                return
            case .close:
                steps.removeAll()
                context.close(promise: nil)
                return
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
