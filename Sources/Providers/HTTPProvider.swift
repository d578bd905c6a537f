import Logging
import NIOCore
import NIOHTTP1
import ServerSentEvents
public import SwitchyardCore
import SwitchyardModels

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Calls one configured provider over the shared pooled upstream client.
public struct HTTPProvider: ProviderClient {
    public let config: ProviderConfig
    let transports: UpstreamTransports
    let apiKey: String?
    /// Largest upstream body read for a non-streamed answer.
    let maximumResponseBytes: Int
    /// The base URL, read per call (the in-process mock's port is known only once it listens).
    let baseURL: @Sendable () -> String
    /// `config.baseURL` parsed once (nil when `baseURL` overrides it).
    let fixedEndpoint: UpstreamEndpoint?
    /// The headers every call to this provider sends, per upstream format: content type, auth, configured headers.
    let baseHeaders: [APIFormat: HTTPHeaders]
    /// Where upstream values the gateway refused to trust are counted.
    let anomalies: (any UpstreamAnomalyRecorder)?

    /// - Parameters:
    ///   - environment: Where the provider's `api_key_env` is read.
    ///   - baseURL: Overrides `config.baseURL` (for the in-process mock).
    public init(config: ProviderConfig, transports: UpstreamTransports, environment: [String: String],
                maximumResponseBytes: Int = 64 << 20, baseURL: (@Sendable () -> String)? = nil,
                anomalies: (any UpstreamAnomalyRecorder)? = nil) {
        self.config = config
        self.anomalies = anomalies
        self.transports = transports
        // A trailing newline (common in secrets files) or any control character would corrupt the request head.
        self.apiKey = config.apiKeyEnv.flatMap { environment[$0] }
            .map { String($0.unicodeScalars.filter { $0.value >= 0x20 && $0.value != 0x7F }) }
        self.maximumResponseBytes = maximumResponseBytes
        let fixed = config.baseURL
        self.baseURL = baseURL ?? { fixed }
        self.fixedEndpoint = baseURL == nil ? UpstreamEndpoint(baseURL: fixed) : nil
        var baseHeaders: [APIFormat: HTTPHeaders] = [:]
        for (format, dialect) in [(APIFormat.openAI, UpstreamDialect.openAI), (.anthropic, .anthropic)] {
            var headers = HTTPHeaders()
            headers.reserveCapacity(6 + config.headers.count)
            headers.add(name: "content-type", value: "application/json")
            for (name, value) in dialect.authHeaders(apiKey) { headers.add(name: name, value: value) }
            for (name, value) in config.headers { headers.replaceOrAdd(name: name, value: value) }
            baseHeaders[format] = headers
        }
        self.baseHeaders = baseHeaders
    }

    public func send(_ request: ChatRequest, route: ModelRoute, context: GatewayContext) async throws -> GatewayResponse {
        // The async part holds only what crosses an `await`; framing the request and reading the answer are synchronous
        // (their locals live on the thread's stack, not in the task's frame).
        // Rendering (or comparing) a multi-megabyte request, and parsing a large answer, leave the event loop.
        let bytes = context.original?.byteCount ?? 0
        let (upstream, dialect) = bytes >= Offload.thresholdBytes
            ? try await Offload.ifLarge(bytes) { [self] () throws(GatewayError) in try prepare(request, route: route, context: context) }
            : try prepare(request, route: route, context: context)
        let started = ContinuousClock.now
        let now = NIODeadline.now()
        let deadline = now + .nanoseconds(config.timeouts.total.nanoseconds)
        // Waiting for a free connection counts against the first-token timeout, for both kinds of request.
        let firstByte = now + .nanoseconds(config.timeouts.firstToken.nanoseconds)
        let idle = TimeAmount.nanoseconds(config.timeouts.idle.nanoseconds)
        let response: UpstreamResponse
        do {
            // The client keeps the head deadline itself (no timer task per request). A non-streamed answer arrives
            // whole, so only the total deadline bounds its head.
            response = try await transports.execute(upstream, deadline: deadline, headDeadline: request.stream ? firstByte : deadline,
                                                    queueDeadline: firstByte, idleTimeout: idle, streaming: request.stream,
                                                    maximumBodyBytes: request.stream ? 1 << 20 : maximumResponseBytes)
        } catch {
            throw mapTransportError(error)
        }
        if response.status == .ok, let stream = response.stream {
            return .stream(try await openStream(stream, dialect: dialect, started: started))
        }
        if response.body.readableBytes >= Offload.thresholdBytes {
            return try await Offload.ifLarge(response.body.readableBytes) { [self] () throws(GatewayError) in
                try complete(response, dialect: dialect, route: route, started: started, context: context)
            }
        }
        return try complete(response, dialect: dialect, route: route, started: started, context: context)
    }

    static let usageKey: Set<String> = ["usage"]

    /// The upstream request: the client's own bytes when they can go unchanged, else the request rendered in the
    /// upstream's dialect.
    @inline(never)
    func prepare(_ request: ChatRequest, route: ModelRoute, context: GatewayContext) throws(GatewayError)
        -> (UpstreamRequest, UpstreamDialect)
    {
        let dialect = UpstreamDialect.forProvider(config.kind, upstreamModel: route.upstreamModel)
        let bytes: ByteBuffer
        if let original = context.original?.body(for: request, format: dialect.format, upstreamModel: route.upstreamModel) {
            bytes = original
        } else {
            do {
                bytes = ByteBuffer(bytes: try dialect.renderRequest(request, route.upstreamModel).serialized())
            } catch {
                throw GatewayError(.invalidRequest, error.description, param: error.path)
            }
        }
        guard let endpoint = fixedEndpoint ?? UpstreamEndpoint(baseURL: baseURL()) else {
            throw GatewayError(.upstreamError, "provider '\(config.name)' has an unusable base URL", upstreamStatus: 502)
        }
        var headers = baseHeaders[dialect.format] ?? HTTPHeaders()
        if !config.headers.keys.contains(where: { $0.lowercased() == "accept" }) {
            headers.add(name: "accept", value: request.stream ? "text/event-stream" : "application/json")
        }
        headers.add(name: "x-request-id", value: context.requestID)
        return (UpstreamRequest(endpoint: endpoint, target: endpoint.basePath + dialect.path, headers: headers, body: bytes,
                                provider: config.name, maximumConnections: config.poolSize,
                                connectTimeout: .nanoseconds(config.timeouts.connect.nanoseconds), requestID: context.requestID,
                                tlsCAFile: config.tlsCAFile, keepAlive: config.keepAlive),
                dialect)
    }

    /// A whole answer: an error for any status but 200, else the completion (relayed untouched when the client speaks
    /// the upstream's format, with only its usage read).
    @inline(never)
    func complete(_ response: UpstreamResponse, dialect: UpstreamDialect, route: ModelRoute, started: ContinuousClock.Instant,
                  context: GatewayContext) throws(GatewayError) -> GatewayResponse
    {
        guard response.status == .ok else {
            throw upstreamError(status: response.status, headers: response.headers, body: response.body, dialect: dialect,
                                route: route)
        }
        var completion = try completion(from: response.body, dialect: dialect, duration: ContinuousClock.now - started, context: context)
        completion.providerRemaining = config.readsRateLimitHeaders ? Self.remaining(response.headers) : nil
        return .completion(completion)
    }

    /// A 200 answer's body: relayed untouched when the client speaks the upstream's format (only its usage read),
    /// else parsed.
    func completion(from collected: ByteBuffer, dialect: UpstreamDialect, duration: Duration, context: GatewayContext)
        throws(GatewayError) -> Completion
    {
        do {
            var completion: Completion
            if dialect.format == context.clientFormat {
                // Relayed untouched: read only the usage, skipping the rest without building it.
                let members = try JSONValue.parseMembers(collected.readableBytesView, keys: Self.usageKey)
                let usage = try members["usage"].map(dialect.parseUsage) ?? Usage()
                completion = Completion(usage: usage, raw: (dialect.format, collected), upstreamDuration: duration)
            } else {
                let parsed = try dialect.parseResponse(try JSONValue.parse(collected.readableBytesView))
                completion = Completion(response: parsed, raw: (dialect.format, collected), upstreamDuration: duration)
            }
            return completion
        } catch {
            context.logger.debug("upstream answered malformed JSON", metadata: ["switchyard.provider": "\(config.name)"])
            throw GatewayError(.upstreamError, "upstream '\(config.name)' answered with a malformed body", upstreamStatus: 502)
        }
    }

    /// Reads until the first event so that failures before the first byte surface as ordinary errors.
    func openStream(_ body: any UpstreamBodyStream, dialect: UpstreamDialect, started: ContinuousClock.Instant)
        async throws -> ChatStream
    {
        let reader = UpstreamEventReader(body: body, parser: dialect.makeStreamParser(), provider: config.name,
                                         deadline: started + config.timeouts.total)
        let first = try await withFirstTokenTimeout(config.timeouts.firstToken) { try await reader.next() }
        var pending: StreamEvent?? = .some(first)
        var stream = ChatStream(format: dialect.format) {
            if let buffered = pending {
                pending = nil
                return buffered
            }
            return try await reader.next()
        }
        stream.upstreamTimeToFirstEvent = ContinuousClock.now - started
        return stream
    }

    func withFirstTokenTimeout<T: Sendable>(_ timeout: Duration, _ body: @escaping @Sendable () async throws -> T)
        async throws -> T
    {
        try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await body() }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let value = first else {
                throw GatewayError(.upstreamTimeout, "upstream '\(config.name)' sent nothing within \(timeout)")
            }
            return value
        }
    }

    func mapTransportError(_ error: any Error) -> GatewayError {
        if let error = error as? GatewayError { return error }
        switch error as? UpstreamTransportError {
        case .connectTimeout: return GatewayError(.upstreamTimeout, "cannot connect to upstream '\(config.name)' in time")
        case .deadlineExceeded: return GatewayError(.upstreamTimeout, "upstream '\(config.name)' timed out")
        case .headTimeout:
            return GatewayError(.upstreamTimeout, "upstream '\(config.name)' sent nothing within \(config.timeouts.firstToken)")
        case .poolTimeout:
            return GatewayError(.upstreamTimeout, "no connection to upstream '\(config.name)' became free within "
                                + "\(config.timeouts.firstToken) (pool_size \(config.poolSize))")
        case .poolExhausted:
            return GatewayError(.overloaded, "too many requests are waiting for a connection to upstream '\(config.name)'",
                                retryAfter: .seconds(1))
        case .idleTimeout:
            return GatewayError(.upstreamTimeout, "upstream '\(config.name)' went silent for \(config.timeouts.idle) mid-answer")
        case .outOfStep, .malformedResponse:
            return GatewayError(.upstreamError, "upstream '\(config.name)' sent a malformed or unrequested answer",
                                upstreamStatus: 502)
        case .cancelled: return GatewayError(.upstreamError, "request cancelled")
        case .responseTooLarge:
            return GatewayError(.upstreamError, "upstream '\(config.name)' answered with a body over the size limit",
                                upstreamStatus: 502)
        default: break
        }
        if error is CancellationError { return GatewayError(.upstreamError, "request cancelled") }
        return GatewayError(.upstreamError, "cannot reach upstream '\(config.name)'", upstreamStatus: 502)
    }

    func upstreamError(status: HTTPResponseStatus, headers: HTTPHeaders, body: ByteBuffer, dialect: UpstreamDialect,
                       route: ModelRoute) -> GatewayError
    {
        let parsed = (try? JSONValue.parse(body.readableBytesView)).map(dialect.parseError)
        var detail = parsed?.message ?? ""
        if detail.count > 500 { detail = String(detail.prefix(500)) + "…" }
        let suffix = detail.isEmpty ? "" : ": \(detail)"
        let code = Int(status.code)
        switch code {
        case 429:
            return GatewayError(.rateLimited, "upstream '\(config.name)' is rate limiting\(suffix)",
                                retryAfter: retryAfter(headers), upstreamStatus: 429)
        case 529:
            return GatewayError(.overloaded, "upstream '\(config.name)' is overloaded\(suffix)",
                                retryAfter: retryAfter(headers), upstreamStatus: 529)
        case 401, 403:
            return GatewayError(.upstreamError, "upstream '\(config.name)' rejected the gateway's credentials", upstreamStatus: 502)
        case 408, 504:
            return GatewayError(.upstreamTimeout, "upstream '\(config.name)' timed out\(suffix)", upstreamStatus: code)
        case 404:
            return GatewayError(.modelNotFound, "upstream '\(config.name)' does not serve model '\(route.upstreamModel)'\(suffix)",
                                upstreamStatus: 404)
        case 413:
            return GatewayError(.payloadTooLarge, "upstream '\(config.name)' refused the request as too large\(suffix)",
                                upstreamStatus: 413)
        case 400..<500:
            return GatewayError(.invalidRequest, "upstream '\(config.name)' rejected the request\(suffix)", upstreamStatus: code)
        default:
            return GatewayError(.upstreamError, "upstream '\(config.name)' failed with status \(code)\(suffix)",
                                retryAfter: retryAfter(headers), upstreamStatus: code >= 500 ? code : 502)
        }
    }

    /// The longest wait an upstream's `retry-after` is believed for; longer ones are clamped to it.
    static let maximumRetryAfterSeconds = 86_400.0

    /// `retry-after-ms` or `retry-after` (seconds; an HTTP date is ignored). A value that is not a finite,
    /// non-negative number is ignored, one over a day clamped to a day; both count as an upstream anomaly.
    /// What the provider's rate-limit headers say is left, in either API's names; nil when they say nothing usable.
    static func remaining(_ headers: HTTPHeaders) -> ProviderRemaining? {
        func count(_ names: String...) -> Int64? {
            for name in names { if let value = headers.first(name: name) { return ProviderRemaining.count(Substring(value)) } }
            return nil
        }
        let remaining = ProviderRemaining(
            requests: count("x-ratelimit-remaining-requests", "anthropic-ratelimit-requests-remaining"),
            tokens: count("x-ratelimit-remaining-tokens", "anthropic-ratelimit-tokens-remaining"),
            inputTokens: count("anthropic-ratelimit-input-tokens-remaining"),
            outputTokens: count("anthropic-ratelimit-output-tokens-remaining"))
        return remaining.isEmpty ? nil : remaining
    }

    func retryAfter(_ headers: HTTPHeaders) -> Duration? {
        let (duration, anomalous) = Self.retryAfter(headers)
        if anomalous { anomalies?.upstreamAnomaly(.retryAfter) }
        return duration
    }

    static func retryAfter(_ headers: HTTPHeaders) -> (Duration?, anomalous: Bool) {
        let raw: (text: String, scale: Double)
        if let ms = headers.first(name: "retry-after-ms") {
            raw = (ms, 1e-3)
        } else if let seconds = headers.first(name: "retry-after") {
            raw = (seconds, 1)
        } else {
            return (nil, false)
        }
        let text = raw.text.trimmingWhitespace()
        // An HTTP date (`Wed, 21 Oct 2026 07:28:00 GMT`) is valid but not a number: not an anomaly, just unused.
        guard let number = Double(text) else { return (nil, false) }
        let seconds = number * raw.scale
        guard seconds.isFinite, seconds >= 0 else { return (nil, true) }
        if seconds > maximumRetryAfterSeconds {
            return (Duration.checkedSeconds(maximumRetryAfterSeconds, limit: maximumRetryAfterSeconds), true)
        }
        return (Duration.checkedSeconds(seconds, limit: maximumRetryAfterSeconds), false)
    }
}

/// Reads SSE events from an upstream body and parses them, one event per call.
///
/// `@unchecked Sendable`: owned by one stream and read by one task at a time — first by the provider's
/// first-token race, then, after that task has finished, by the response writer (see `ChatStream.Source`).
final class UpstreamEventReader: @unchecked Sendable {
    private let body: any UpstreamBodyStream
    private var decoder = SSEDecoder(maximumEventSize: 4 << 20)
    private var parser: any UpstreamStreamParser
    private var queue: [ServerSentEvent] = []
    private var finished = false
    private let provider: String
    private let deadline: ContinuousClock.Instant

    init(body: any UpstreamBodyStream, parser: any UpstreamStreamParser, provider: String,
         deadline: ContinuousClock.Instant) {
        self.body = body
        self.parser = parser
        self.provider = provider
        self.deadline = deadline
    }

    /// The next event, `nil` after the upstream's terminal event, or a thrown `GatewayError` when the stream is
    /// cut or malformed.
    func next() async throws -> StreamEvent? {
        while true {
            if finished { return nil }
            guard ContinuousClock.now < deadline else {
                throw GatewayError(.upstreamTimeout, "upstream '\(provider)' stream exceeded its total timeout")
            }
            if !queue.isEmpty {
                let event = queue.removeFirst()
                let result: (chunks: [ChatChunk], isTerminal: Bool)
                do {
                    result = try parser.parse(event: event.event, data: event.dataString)
                } catch let error as UpstreamStreamError {
                    throw GatewayError(error.type == "overloaded_error" ? .overloaded : .upstreamError,
                                       "upstream '\(provider)' failed mid-stream: \(error.message)")
                } catch {
                    throw GatewayError(.upstreamError, "upstream '\(provider)' sent a malformed stream event")
                }
                if result.isTerminal {
                    finished = true
                    // The terminal event is relayed too (Anthropic's message_stop); OpenAI's [DONE] is rewritten by the edge.
                    return result.chunks.isEmpty && event.dataString == "[DONE]" ? nil : StreamEvent(raw: event, chunks: result.chunks)
                }
                return StreamEvent(raw: event, chunks: result.chunks)
            }
            let buffer: ByteBuffer?
            do {
                buffer = try await body.next()
            } catch is CancellationError {
                throw CancellationError()
            } catch UpstreamTransportError.cancelled {
                throw CancellationError()
            } catch UpstreamTransportError.deadlineExceeded {
                throw GatewayError(.upstreamTimeout, "upstream '\(provider)' stream exceeded its total timeout")
            } catch UpstreamTransportError.idleTimeout {
                throw GatewayError(.upstreamTimeout, "upstream '\(provider)' stream stalled past its idle timeout")
            } catch {
                throw GatewayError(.upstreamError, "upstream '\(provider)' stream was cut")
            }
            guard let buffer else {
                throw GatewayError(.upstreamError, "upstream '\(provider)' stream ended before completion")
            }
            do {
                queue = try decoder.feed(buffer)
            } catch {
                throw GatewayError(.upstreamError, "upstream '\(provider)' sent an oversized stream event")
            }
        }
    }
}
