import HTTPTypes
import HTTPEdge
import Logging
import NIOCore
import ServerSentEvents
import Synchronization
import SwitchyardCore
import SwitchyardModels

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

private let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)
private let requestIDPrefix: [UInt8] = {
    var prefix = Array("req_".utf8)
    let random = UInt32.random(in: .min ... .max)
    for shift in stride(from: 28, through: 0, by: -4) { prefix.append(hexDigits[Int((random >> UInt32(shift)) & 0xF)]) }
    return prefix
}()
private let requestCounter = Atomic<UInt64>(0)

/// The edge of the chat endpoints: decode the client's wire format, run the pipeline, encode the answer
/// (JSON or SSE) in the client's format, and render errors in its envelope.
struct ChatHandler: Sendable {
    let pipeline: Pipeline
    let metrics: GatewayMetrics
    let maxBodyBytes: Int
    let logger: Logger
    /// Whether a streaming request may wait in a deployment's queue (budgets are configured): it is then told so in
    /// SSE comments while it waits.
    var watchQueues = false

    /// A logger that adds `switchyard.request.id` to what it logs, and costs nothing for levels it does not log.
    struct RequestLogger: Sendable {
        let base: Logger
        let requestID: String

        func info(_ message: Logger.Message, metadata: @autoclosure () -> Logger.Metadata) {
            log(.info, message, metadata())
        }

        func error(_ message: Logger.Message, metadata: @autoclosure () -> Logger.Metadata) {
            log(.error, message, metadata())
        }

        private func log(_ level: Logger.Level, _ message: Logger.Message, _ metadata: @autoclosure () -> Logger.Metadata) {
            guard base.logLevel <= level else { return }
            var logger = base
            logger[metadataKey: "switchyard.request.id"] = "\(requestID)"
            logger.log(level: level, message, metadata: metadata())
        }
    }

    func handle(_ request: EdgeRequest, format: APIFormat) async -> EdgeResponse {
        // Only what crosses the `await` is kept here; decoding, rendering, metrics and logging are synchronous (their
        // locals live on the thread's stack, not in the task's frame).
        let requestID = Self.makeRequestID()
        let chat: ChatRequest
        let context: GatewayContext
        do {
            if request.body.readableBytes >= Offload.thresholdBytes {
                // Parsing a multi-megabyte body takes milliseconds: not on the event loop other connections share.
                (chat, context) = try await Offload.ifLarge(request.body.readableBytes) { [self] () throws(GatewayError) in
                    try prepare(request, format: format, requestID: requestID)
                }
            } else {
                (chat, context) = try prepare(request, format: format, requestID: requestID)
            }
        } catch {
            return failure(error, format: format, model: nil, requestID: requestID, started: request.receivedAt)
        }
        if chat.stream, watchQueues {
            return await watched(chat, context: context, format: format, requestID: requestID, started: request.receivedAt)
        }
        let response: GatewayResponse
        do {
            response = try await pipeline.run(chat, context: context)
        } catch {
            return failure(error, format: format, model: chat.model, requestID: requestID, started: request.receivedAt)
        }
        return answer(response, chat: chat, format: format, requestID: requestID, started: request.receivedAt)
    }

    /// The request decoded, and the context it starts the pipeline with.
    @inline(never)
    func prepare(_ request: EdgeRequest, format: APIFormat, requestID: String) throws(GatewayError)
        -> (ChatRequest, GatewayContext)
    {
        let chat = try decode(request, format: format)
        // From the moment the request head arrived: time spent before this handler ran is the gateway's too.
        var context = GatewayContext(requestID: requestID, logger: logger, clientFormat: format,
                                     credential: Self.credential(request), receivedAt: request.receivedAt)
        context.original = ClientOriginal(request: chat, body: request.body)
        if let feature = try Self.feature(request) { context.requestedFeature = feature }
        if let priority = request.header("x-switchyard-priority") {
            guard let value = Priority(name: priority) else {
                throw GatewayError(.invalidRequest, "x-switchyard-priority must be p0, p1 or p2", param: "x-switchyard-priority")
            }
            context.requestedPriority = value
        }
        context.cacheDirectives = try CacheDirectives(cacheControl: request.header("cache-control"),
                                                  ttlSeconds: request.header("x-switchyard-cache-ttl"),
                                                  promptVersion: request.header("x-switchyard-prompt-version"))
        return (chat, context)
    }

    /// `x-switchyard-feature`, validated: a label in metrics and limits, so a short token, never free text.
    static func feature(_ request: EdgeRequest) throws(GatewayError) -> String? {
        guard let feature = request.header("x-switchyard-feature") else { return nil }
        guard (1...64).contains(feature.utf8.count),
              feature.utf8.allSatisfy({ $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".")
                  || (0x30...0x39).contains($0) || (0x41...0x5A).contains($0) || (0x61...0x7A).contains($0) })
        else {
            throw GatewayError(.invalidRequest, "x-switchyard-feature must be 1–64 letters, digits, '-', '_' or '.'",
                               param: "x-switchyard-feature")
        }
        return feature
    }

    /// The pipeline's answer in the client's format, with its metrics and access log.
    @inline(never)
    func answer(_ response: GatewayResponse, chat: ChatRequest, format: APIFormat, requestID: String,
                started: ContinuousClock.Instant) -> EdgeResponse
    {
        switch response {
        case .completion(let completion):
            let result: EdgeResponse
            do {
                result = try renderCompletion(completion, chat: chat, format: format, requestID: requestID)
            } catch {
                return failure(error, format: format, model: chat.model, requestID: requestID, started: started)
            }
            let elapsed = ContinuousClock.now - started
            metrics.overhead(api: format, streamed: false, elapsed - completion.upstreamDuration)
            metrics.request(api: format, status: Int(result.status.code), streamed: false, duration: elapsed)
            RequestLogger(base: logger, requestID: requestID).info("request", metadata: access(format, chat.model, Int(result.status.code), elapsed))
            return result
        case .stream(let stream):
            return renderStream(stream, chat: chat, format: format, requestID: requestID, started: started,
                                logger: RequestLogger(base: logger, requestID: requestID))
        }
    }

    /// An error in the client's envelope, with its metrics and access log.
    @inline(never)
    func failure(_ error: any Error, format: APIFormat, model: String?, requestID: String, started: ContinuousClock.Instant)
        -> EdgeResponse
    {
        let logger = RequestLogger(base: self.logger, requestID: requestID)
        let gatewayError = error as? GatewayError ?? GatewayError(.internalError, "internal error")
        if !(error is GatewayError) {
            logger.error("unexpected error", metadata: ["switchyard.error": "\(String(reflecting: type(of: error)))"])
        }
        let response = ErrorRenderer.response(for: gatewayError, format: format, requestID: requestID)
        let elapsed = ContinuousClock.now - started
        metrics.error(api: format, code: gatewayError.code)
        metrics.request(api: format, status: Int(response.status.code), streamed: false, duration: elapsed)
        logger.info("request", metadata: access(format, model, Int(response.status.code), elapsed,
                                                extra: ["switchyard.error.code": "\(gatewayError.code.rawValue)"]))
        return response
    }

    func access(_ format: APIFormat, _ model: String?, _ status: Int, _ elapsed: Duration,
                extra: Logger.Metadata = [:]) -> Logger.Metadata {
        [
            "switchyard.api": "\(format.rawValue)", "switchyard.model": "\(model ?? "-")", "http.status": "\(status)",
            "switchyard.duration_ms": "\(Double(elapsed.nanoseconds) / 1e6)",
        ].merging(extra) { _, new in new }
    }

    // MARK: Decoding

    func decode(_ request: EdgeRequest, format: APIFormat) throws(GatewayError) -> ChatRequest {
        // The usual value exactly as SDKs send it, checked without splitting or lowercasing.
        if let type = request.header("content-type"), type != "application/json" {
            let essence = type.split(separator: ";").first.map { $0.trimmingWhitespace().lowercased() } ?? ""
            guard essence == "application/json" || essence.hasSuffix("+json") else {
                throw GatewayError(.unsupportedMediaType, "Content-Type must be application/json, got '\(essence)'")
            }
        }
        let json = try Self.readJSON(request, limit: maxBodyBytes)
        do {
            switch format {
            case .openAI: return try OpenAIFormat.parseRequest(json)
            case .anthropic: return try AnthropicFormat.parseRequest(json)
            }
        } catch {
            throw GatewayError(.invalidRequest, error.description, param: error.path.isEmpty ? nil : error.path)
        }
    }

    /// The request body as JSON: 413 above `limit` bytes, 400 when empty or malformed.
    static func readJSON(_ request: EdgeRequest, limit: Int) throws(GatewayError) -> JSONValue {
        guard !request.bodyExceededLimit else {
            throw GatewayError(.payloadTooLarge, "request body exceeds the limit of \(limit) bytes")
        }
        let body = request.body
        guard body.readableBytes > 0 else { throw GatewayError(.invalidRequest, "request body is empty; send a JSON object") }
        do {
            return try JSONValue.parse(body.readableBytesView)
        } catch {
            throw GatewayError(.invalidRequest, "request body is not valid JSON: \(error.description)")
        }
    }

    /// `Authorization: Bearer KEY` or `x-api-key: KEY`, on either API.
    static func credential(_ request: EdgeRequest) -> String? {
        if let authorization = request.header("authorization") {
            // As bytes: `dropFirst` on a `String` walks grapheme clusters.
            let trimmed = HeaderTokens.trimmed(authorization.utf8)
            if trimmed.count > 7, HeaderTokens.equals(trimmed.prefix(7), "bearer ") {
                return String(Substring(HeaderTokens.trimmed(trimmed.dropFirst(7))))
            }
            return String(Substring(trimmed))
        }
        return request.header("x-api-key")
    }

    /// `req_`, 8 hex digits drawn once per process, and 16 hex digits of a counter: unique within the process,
    /// and across instances with high probability, for one atomic increment (no system call per request).
    static func makeRequestID() -> String {
        let value = requestCounter.add(1, ordering: .relaxed).newValue
        var bytes: [UInt8] = requestIDPrefix
        bytes.reserveCapacity(28)
        for shift in stride(from: 60, through: 0, by: -4) {
            bytes.append(hexDigits[Int((value >> UInt64(shift)) & 0xF)])
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func unixTime() -> Int64 {
        Int64(Date().timeIntervalSince1970)
    }

    /// `x-switchyard-model`: the model that served (for a route, the one its rule chose; for a cache hit, the name
    /// asked for), and `x-switchyard-route` for a routed answer.
    /// `downgradedTo`: the model a degradation step chose after the limits refused the one decided.
    static func addModelHeaders(_ routing: RoutingOutcome?, requested: String, downgradedTo: String? = nil, to headers: inout HTTPFields) {
        headers.append(HTTPField(name: .switchyardModel, value: downgradedTo ?? routing?.model.name ?? requested))
        if let routing { headers.append(HTTPField(name: .switchyardRoute, value: routing.header)) }
        if let complexity = routing?.complexity {
            headers.append(HTTPField(name: .switchyardComplexity, value: String((complexity * 1000).rounded() / 1000)))
        }
        if let cascade = routing?.cascade {
            headers.append(HTTPField(name: .switchyardCascade, value: cascade.accepted ? "accepted" : "escalated"))
            if let confidence = cascade.confidence {
                headers.append(HTTPField(name: .switchyardCascadeConfidence,
                                         value: "\(String((confidence * 1000).rounded() / 1000)) \(cascade.source)"))
            }
        }
    }

    /// Adds the cache headers to fields that have none yet. (Fields are appended throughout: `HTTPFields`'
    /// subscript setter and dictionary literal look for earlier values of each name.)
    static func addCacheHeaders(_ outcome: CacheOutcome?, to headers: inout HTTPFields) {
        guard let outcome else { return }
        headers.append(HTTPField(name: .switchyardCache, value: outcome.status.rawValue))
        if let similarity = outcome.similarity {
            headers.append(HTTPField(name: .switchyardCacheSimilarity, value: String((similarity * 10000).rounded() / 10000)))
        }
        if let id = outcome.entryID { headers.append(HTTPField(name: .switchyardCacheEntry, value: id)) }
    }

    // MARK: Complete answers

    func renderCompletion(_ completion: Completion, chat: ChatRequest, format: APIFormat, requestID: String)
        throws(GatewayError) -> EdgeResponse
    {
        var headers = HTTPFields()
        headers.reserveCapacity(9)
        headers.append(HTTPField(name: .contentType, value: "application/json"))
        headers.append(HTTPField(name: .requestID, value: requestID))
        Self.addModelHeaders(completion.routing, requested: chat.model, downgradedTo: completion.limits?.servedModel, to: &headers)
        if let cost = completion.cost { headers.append(HTTPField(name: .switchyardCost, value: cost.usdString)) }
        Self.addCacheHeaders(completion.cache, to: &headers)
        ErrorRenderer.addDegradedHeader(completion.limits, to: &headers)
        let body: ByteBuffer
        if let raw = completion.raw, raw.format == format {
            body = raw.body
        } else {
            let response = try completion.canonicalResponse()
            let json = switch format {
            case .openAI: OpenAIFormat.renderResponse(response, created: Self.unixTime())
            case .anthropic: AnthropicFormat.renderResponse(response)
            }
            body = ByteBuffer(bytes: json.serialized())
        }
        var status = HTTPResponse.Status.ok
        if let job = completion.acceptedJob {
            // Accepted as a background job: the body is the job, to poll at its location.
            status = .accepted
            headers.append(HTTPField(name: .location, value: "\(JobsHandler.path)/\(job)"))
        }
        return EdgeResponse(status: status, headers: headers,
                            headerLines: completion.limits.flatMap { ErrorRenderer.rateLimitHeaderLines($0, format: format) }, body: .buffer(body))
    }

    // MARK: Streams

    func renderStream(_ stream: ChatStream, chat: ChatRequest, format: APIFormat, requestID: String,
                      started: ContinuousClock.Instant, logger: RequestLogger) -> EdgeResponse
    {
        var headers: HTTPFields = [.contentType: "text/event-stream", .cacheControl: "no-cache", .requestID: requestID]
        Self.addModelHeaders(stream.routing, requested: chat.model, downgradedTo: stream.limits?.servedModel, to: &headers)
        Self.addCacheHeaders(stream.cache, to: &headers)
        ErrorRenderer.addDegradedHeader(stream.limits, to: &headers)
        let headerLines = stream.limits.flatMap { ErrorRenderer.rateLimitHeaderLines($0, format: format) }
        return EdgeResponse(status: .ok, headers: headers, headerLines: headerLines, body: .stream { [self] writer in
            try await relay(stream, chat: chat, format: format, requestID: requestID, started: started, logger: logger,
                            waited: false, to: writer)
        })
    }

    /// The stream's events to the client in its format, ended by the API's terminator or, after a cut, an error event.
    func relay(_ stream: ChatStream, chat: ChatRequest, format: APIFormat, requestID: String, started: ContinuousClock.Instant,
               logger: RequestLogger, waited: Bool, to writer: EdgeBodyWriter) async throws {
        let metrics = self.metrics
        let upstreamWait = stream.upstreamTimeToFirstEvent
        var encoder = StreamEncoder(clientFormat: format, upstreamFormat: stream.isSynthesized ? nil : stream.format, model: chat.model,
                                    includeUsage: chat.streamIncludeUsage, requestID: requestID)
        var iterator = stream.makeAsyncIterator()
        var firstWritten = false
        var failure: GatewayError?
        defer {
            // Runs the end-of-stream work if the client went away before the stream ended.
            stream.lifecycle.end(.cancelled)
        }
        while true {
            let event: StreamEvent?
            do {
                event = try await iterator.next()
            } catch {
                failure = error as? GatewayError ?? GatewayError(.upstreamError, "upstream stream failed")
                break
            }
            guard let event else { break }
            var buffer = ByteBuffer()
            encoder.encode(event, into: &buffer)
            guard buffer.readableBytes > 0 else { continue }
            try await writer.write(buffer)
            if !firstWritten {
                firstWritten = true
                let ttft = ContinuousClock.now - started
                metrics.timeToFirstToken(api: format, model: chat.model, ttft)
                // A wait in the queue is the budget's, not the gateway's overhead.
                if !waited { metrics.overhead(api: format, streamed: true, ttft - upstreamWait) }
            }
        }
        var tail = ByteBuffer()
        if let failure {
            // Never a clean finish after a cut: the client sees an error event and no terminator.
            ErrorRenderer.streamEvent(for: failure, format: format, requestID: requestID).write(into: &tail)
            metrics.error(api: format, code: failure.code)
        } else {
            encoder.finish(into: &tail)
        }
        try await writer.write(tail)
        let elapsed = ContinuousClock.now - started
        metrics.request(api: format, status: 200, streamed: true, duration: elapsed)
        logger.info("request", metadata: access(format, chat.model, 200, elapsed,
                                                extra: ["switchyard.stream": failure == nil ? "completed" : "failed"]))
    }

    // MARK: Streams that wait in a queue

    /// A streaming request run while watching whether it waits in a deployment's queue: answered as usual when the
    /// pipeline returns first; otherwise the stream's head goes out at once and SSE comments say where the request
    /// stands (`: queued position=N estimated_wait_ms=M`, when it moves and every 5 s), until its events follow, or
    /// an error event when it is refused. Both official SDKs skip comment lines. The early head carries no
    /// model, cache or rate-limit headers: they are not known yet.
    func watched(_ chat: ChatRequest, context: GatewayContext, format: APIFormat, requestID: String,
                 started: ContinuousClock.Instant) async -> EdgeResponse {
        var context = context
        let watch = QueueWatch()
        context.queueWatch = watch
        let pipeline = self.pipeline
        let task = Task { [context] in
            defer { watch.finished() }
            return try await pipeline.run(chat, context: context)
        }
        let queued = await withTaskCancellationHandler { await watch.queuedOrFinished() } onCancel: { task.cancel() }
        guard queued else {
            switch await task.result {
            case .success(let response): return answer(response, chat: chat, format: format, requestID: requestID, started: started)
            case .failure(let error): return failure(error, format: format, model: chat.model, requestID: requestID, started: started)
            }
        }
        let logger = RequestLogger(base: self.logger, requestID: requestID)
        let headers: HTTPFields = [.contentType: "text/event-stream", .cacheControl: "no-cache", .requestID: requestID]
        return EdgeResponse(status: .ok, headers: headers, body: .stream { [self] writer in
            var lastPosition: Int?
            var lastSent = ContinuousClock.now - .seconds(60)
            do {
                while !watch.isDone {
                    if let report = watch.report(), report.position != lastPosition || ContinuousClock.now - lastSent >= .seconds(5) {
                        lastPosition = report.position
                        lastSent = .now
                        var comment = ": queued position=\(report.position)"
                        if let wait = report.estimatedWait { comment += " estimated_wait_ms=\(wait.nanoseconds / 1_000_000)" }
                        try await writer.write(ByteBuffer(string: comment + "\n\n"))
                    }
                    try await Task.sleep(for: .milliseconds(20))
                }
            } catch {
                // The client went away while it waited: its place is given up, and a stream granted meanwhile ended.
                task.cancel()
                Task {
                    if case .success(.stream(let stream)) = await task.result { stream.lifecycle.end(.cancelled) }
                }
                throw error
            }
            switch await task.result {
            case .success(.stream(let stream)):
                try await relay(stream, chat: chat, format: format, requestID: requestID, started: started, logger: logger,
                                waited: true, to: writer)
            case .success(.completion):
                try await refuse(GatewayError(.internalError, "a streamed request was answered whole"))
            case .failure(let error):
                try await refuse(error as? GatewayError ?? GatewayError(.internalError, "internal error"))
            }
            func refuse(_ error: GatewayError) async throws {
                var tail = ByteBuffer()
                ErrorRenderer.streamEvent(for: error, format: format, requestID: requestID).write(into: &tail)
                try await writer.write(tail)
                let elapsed = ContinuousClock.now - started
                metrics.error(api: format, code: error.code)
                metrics.request(api: format, status: 200, streamed: true, duration: elapsed)
                logger.info("request", metadata: access(format, chat.model, 200, elapsed,
                                                        extra: ["switchyard.stream": "refused", "switchyard.error.code": "\(error.code.rawValue)"]))
            }
        })
    }
}

/// Turns upstream events into the client's SSE bytes: untouched when the formats match, translated otherwise.
struct StreamEncoder: Sendable {
    let clientFormat: APIFormat
    /// `nil` for events the gateway made itself (a cache replay): encoded from their chunks, opened and closed here.
    let upstreamFormat: APIFormat?
    let includeUsage: Bool
    var openAI: OpenAIStreamEncoder
    var anthropic: AnthropicStreamEncoder

    init(clientFormat: APIFormat, upstreamFormat: APIFormat?, model: String, includeUsage: Bool, requestID: String) {
        self.clientFormat = clientFormat
        self.upstreamFormat = upstreamFormat
        self.includeUsage = includeUsage
        self.openAI = OpenAIStreamEncoder(id: requestID, model: model, created: ChatHandler.unixTime(), includeUsage: includeUsage)
        self.anthropic = AnthropicStreamEncoder(id: requestID, model: model)
    }

    mutating func encode(_ event: StreamEvent, into buffer: inout ByteBuffer) {
        if clientFormat == upstreamFormat, let raw = event.raw {
            // The gateway always asks OpenAI upstreams for usage; drop the usage-only chunk if the client did not.
            if clientFormat == .openAI, !includeUsage, event.chunks.allSatisfy(Self.isUsageOrStart),
               event.chunks.contains(where: Self.isUsage)
            {
                return
            }
            raw.write(into: &buffer)
            return
        }
        for chunk in event.chunks {
            switch clientFormat {
            case .openAI:
                for json in openAI.encode(chunk) { Self.write(json, event: nil, into: &buffer) }
            case .anthropic:
                for (name, json) in anthropic.encode(chunk) { Self.write(json, event: name, into: &buffer) }
            }
        }
    }

    mutating func finish(into buffer: inout ByteBuffer) {
        switch clientFormat {
        case .openAI:
            if upstreamFormat != .openAI {
                for json in openAI.finish() { Self.write(json, event: nil, into: &buffer) }
            }
            buffer.writeStaticString("data: [DONE]\n\n")
        case .anthropic:
            // A same-format upstream already sent message_stop (relayed untouched).
            if upstreamFormat != .anthropic {
                for (name, json) in anthropic.finish() { Self.write(json, event: name, into: &buffer) }
            }
        }
    }

    static func isUsage(_ chunk: ChatChunk) -> Bool {
        if case .usage = chunk { return true }
        return false
    }

    static func isUsageOrStart(_ chunk: ChatChunk) -> Bool {
        switch chunk {
        case .usage, .start: true
        default: false
        }
    }

    static func write(_ json: JSONValue, event: String?, into buffer: inout ByteBuffer) {
        if let event {
            buffer.writeStaticString("event: ")
            buffer.writeString(event)
            buffer.writeStaticString("\n")
        }
        buffer.writeStaticString("data: ")
        buffer.writeBytes(json.serialized())
        buffer.writeStaticString("\n\n")
    }
}
