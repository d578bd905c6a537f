public import AsyncHTTPClient
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

/// Calls one configured provider over the shared pooled `HTTPClient`.
public struct HTTPProvider: ProviderClient {
    public let config: ProviderConfig
    let client: HTTPClient
    let apiKey: String?
    /// Largest upstream body read for a non-streamed answer.
    let maximumResponseBytes: Int
    /// The base URL, read per call (the in-process mock's port is known only once it listens).
    let baseURL: @Sendable () -> String

    /// - Parameters:
    ///   - environment: Where the provider's `api_key_env` is read.
    ///   - baseURL: Overrides `config.baseURL` (for the in-process mock).
    public init(config: ProviderConfig, client: HTTPClient, environment: [String: String],
                maximumResponseBytes: Int = 64 << 20, baseURL: (@Sendable () -> String)? = nil) {
        self.config = config
        self.client = client
        self.apiKey = config.apiKeyEnv.flatMap { environment[$0] }
        self.maximumResponseBytes = maximumResponseBytes
        let fixed = config.baseURL
        self.baseURL = baseURL ?? { fixed }
    }

    public func send(_ request: ChatRequest, route: ModelRoute, context: GatewayContext) async throws -> GatewayResponse {
        let dialect = UpstreamDialect.forProvider(config.kind, upstreamModel: route.upstreamModel)
        let body: JSONValue
        do {
            body = try dialect.renderRequest(request, route.upstreamModel)
        } catch {
            throw GatewayError(.invalidRequest, error.description, param: error.path)
        }
        var upstream = HTTPClientRequest(url: baseURL() + dialect.path)
        upstream.method = .POST
        upstream.headers.reserveCapacity(4 + config.headers.count)
        upstream.headers.add(name: "content-type", value: "application/json")
        upstream.headers.add(name: "accept", value: request.stream ? "text/event-stream" : "application/json")
        for (name, value) in dialect.authHeaders(apiKey) { upstream.headers.add(name: name, value: value) }
        for (name, value) in config.headers { upstream.headers.replaceOrAdd(name: name, value: value) }
        upstream.headers.add(name: "x-request-id", value: context.requestID)
        var bytes = ByteBuffer()
        bytes.writeBytes(body.serialized())
        upstream.body = .bytes(bytes)

        let started = ContinuousClock.now
        let deadline = NIODeadline.now() + .nanoseconds(config.timeouts.total.nanoseconds)
        let timeouts = config.timeouts
        let response: HTTPClientResponse
        let outgoing = upstream
        let logger = context.logger
        do {
            if request.stream {
                response = try await withFirstTokenTimeout(timeouts.firstToken) { [client] in
                    try await client.execute(outgoing, deadline: deadline, logger: logger)
                }
            } else {
                // A non-streamed answer arrives whole: only the total deadline applies.
                response = try await client.execute(outgoing, deadline: deadline, logger: logger)
            }
        } catch {
            throw mapTransportError(error)
        }
        guard response.status == .ok else {
            let errorBody = try? await response.body.collect(upTo: 1 << 20)
            throw upstreamError(status: response.status, headers: response.headers, body: errorBody, dialect: dialect,
                                route: route)
        }
        if request.stream {
            return .stream(try await openStream(response, dialect: dialect, started: started))
        }
        let collected: ByteBuffer
        do {
            collected = try await response.body.collect(upTo: maximumResponseBytes)
        } catch {
            throw mapTransportError(error)
        }
        let duration = ContinuousClock.now - started
        do {
            if dialect.format == context.clientFormat {
                // Relayed untouched: read only the usage, skipping the rest without building it.
                let members = try JSONValue.parseMembers(collected.readableBytesView, keys: ["usage"])
                let usage = try members["usage"].map(dialect.parseUsage) ?? Usage()
                return .completion(Completion(usage: usage, raw: (dialect.format, collected), upstreamDuration: duration))
            }
            let parsed = try dialect.parseResponse(try JSONValue.parse(collected.readableBytesView))
            return .completion(Completion(response: parsed, raw: (dialect.format, collected), upstreamDuration: duration))
        } catch {
            context.logger.debug("upstream answered malformed JSON", metadata: ["switchyard.provider": "\(config.name)"])
            throw GatewayError(.upstreamError, "upstream '\(config.name)' answered with a malformed body", upstreamStatus: 502)
        }
    }

    /// Reads until the first event so that failures before the first byte surface as ordinary errors.
    func openStream(_ response: HTTPClientResponse, dialect: UpstreamDialect, started: ContinuousClock.Instant)
        async throws -> ChatStream
    {
        let reader = UpstreamEventReader(body: response.body, parser: dialect.makeStreamParser(), provider: config.name,
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
        if let error = error as? HTTPClientError {
            if error == .connectTimeout { return GatewayError(.upstreamTimeout, "cannot connect to upstream '\(config.name)' in time") }
            if error == .deadlineExceeded || error == .readTimeout {
                return GatewayError(.upstreamTimeout, "upstream '\(config.name)' timed out")
            }
        }
        if error is CancellationError { return GatewayError(.upstreamError, "request cancelled") }
        return GatewayError(.upstreamError, "cannot reach upstream '\(config.name)'", upstreamStatus: 502)
    }

    func upstreamError(status: HTTPResponseStatus, headers: HTTPHeaders, body: ByteBuffer?, dialect: UpstreamDialect,
                       route: ModelRoute) -> GatewayError
    {
        let parsed = body.flatMap { try? JSONValue.parse($0.readableBytesView) }.map(dialect.parseError)
        var detail = parsed?.message ?? ""
        if detail.count > 500 { detail = String(detail.prefix(500)) + "…" }
        let suffix = detail.isEmpty ? "" : ": \(detail)"
        let code = Int(status.code)
        switch code {
        case 429:
            return GatewayError(.rateLimited, "upstream '\(config.name)' is rate limiting\(suffix)",
                                retryAfter: Self.retryAfter(headers), upstreamStatus: 429)
        case 529:
            return GatewayError(.overloaded, "upstream '\(config.name)' is overloaded\(suffix)",
                                retryAfter: Self.retryAfter(headers), upstreamStatus: 529)
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
                                retryAfter: Self.retryAfter(headers), upstreamStatus: code >= 500 ? code : 502)
        }
    }

    /// `retry-after` (seconds) or `retry-after-ms`.
    static func retryAfter(_ headers: HTTPHeaders) -> Duration? {
        if let ms = headers.first(name: "retry-after-ms").flatMap(Double.init) { return .milliseconds(Int64(ms.rounded(.up))) }
        if let seconds = headers.first(name: "retry-after").flatMap(Double.init) { return .milliseconds(Int64(seconds * 1000)) }
        return nil
    }
}

/// Reads SSE events from an upstream body and parses them, one event per call.
///
/// `@unchecked Sendable`: owned by one stream and read by one task at a time — first by the provider's
/// first-token race, then, after that task has finished, by the response writer (see `ChatStream.Source`).
final class UpstreamEventReader: @unchecked Sendable {
    private var iterator: HTTPClientResponse.Body.AsyncIterator
    private var decoder = SSEDecoder(maximumEventSize: 4 << 20)
    private var parser: any UpstreamStreamParser
    private var queue: [ServerSentEvent] = []
    private var finished = false
    private let provider: String
    private let deadline: ContinuousClock.Instant

    init(body: HTTPClientResponse.Body, parser: any UpstreamStreamParser, provider: String,
         deadline: ContinuousClock.Instant) {
        self.iterator = body.makeAsyncIterator()
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
                buffer = try await iterator.next()
            } catch is CancellationError {
                throw CancellationError()
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
