public import HTTPEdge
public import Logging
import HTTPTypes
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Settings of the mock provider.
public struct MockSettings: Sendable {
    public var host: String
    /// 0 picks a free port.
    public var port: Int
    public var models: [MockModel]
    /// Multiplies every latency (1 = realistic, 0 = instant).
    public var latencyScale: Double
    /// When set, requests without an API key get a 401 like the real APIs.
    public var requireAPIKey: Bool
    /// Requests and tokens per minute per API key and model.
    public var limits: MockLimits
    /// The share of requests that get each fault without asking for it by header (drawn from `seed`).
    public var faultRates: [MockFault: Double]
    /// Windows of time (seconds after the first request) in which a model's requests get other fault rates.
    public var schedule: [FaultWindow] = []
    /// Seeds the fault draws.
    public var seed: UInt64
    /// When set, every model's answer lengths are drawn from this trace instead of its distribution.
    public var lengthTrace: MockLengthTrace?
    /// When set, a prompt found here is answered with its recorded answer for the model's tier.
    public var recordedAnswers: MockRecordedAnswers?
    /// When set, the mock is one self-hosted replica of finite capacity (`ReplicaEngine`): its timing comes from
    /// the engine, not from the latency model.
    public var replica: ReplicaEngine.Settings?

    public init(host: String = "127.0.0.1", port: Int = 0, models: [MockModel] = MockModel.defaults,
                latencyScale: Double = 1, requireAPIKey: Bool = true, limits: MockLimits = MockLimits(),
                faultRates: [MockFault: Double] = [:], seed: UInt64 = 1, lengthTrace: MockLengthTrace? = nil,
                recordedAnswers: MockRecordedAnswers? = nil, replica: ReplicaEngine.Settings? = nil) {
        self.recordedAnswers = recordedAnswers
        self.replica = replica
        self.host = host
        self.port = port
        self.models = models
        self.latencyScale = latencyScale
        self.requireAPIKey = requireAPIKey
        self.limits = limits
        self.faultRates = faultRates
        self.seed = seed
        self.lengthTrace = lengthTrace
    }
}

/// From `start` to `end` seconds after the first request the mock served, requests for `model` (every model when
/// nil) get `faultRates` instead of the usual rates: an outage (`503: 1`), a 429 storm, a slow spell.
public struct FaultWindow: Sendable, Hashable {
    public var start: Double
    public var end: Double
    public var model: String?
    public var faultRates: [MockFault: Double]

    public init(start: Double, end: Double, model: String? = nil, faultRates: [MockFault: Double]) {
        self.start = start
        self.end = end
        self.model = model
        self.faultRates = faultRates
    }

    /// The rates for a request for `model` at `elapsed` seconds: the first window that applies, or `usual`.
    public static func rates(_ windows: [FaultWindow], model: String, elapsed: Double, usual: [MockFault: Double]) -> [MockFault: Double] {
        windows.first { $0.start <= elapsed && elapsed < $0.end && ($0.model == nil || $0.model == model) }?.faultRates ?? usual
    }
}

/// Counters the mock keeps, for tests and `GET /mock/stats`.
public struct MockStats: Sendable, Hashable {
    public var requests = 0
    public var streamsStarted = 0
    public var streamsCompleted = 0
    /// Streams that ended because the client went away.
    public var streamsCancelled = 0
    /// Every distinct credential presented (`authorization` or `x-api-key`), to prove which keys reach upstream.
    public var credentialsSeen: Set<String> = []
    /// Every header name seen.
    public var headerNamesSeen: Set<String> = []
    /// Requests refused by the per-key limits.
    public var rateLimited = 0
    /// Requests that got a fault (asked for by header, drawn from the rates or the schedule).
    public var faults = 0
}

/// The mock LLM server: OpenAI Chat Completions and Anthropic Messages, streaming and not, with the real event
/// sequences, deterministic text, consistent usage and a simple latency model. Faults by `x-mock-fault` header.
public final class MockServer: Sendable {
    public let settings: MockSettings
    let models: [String: MockModel]
    let stats = Mutex(MockStats())
    let limiter: MockRateLimiter?
    let replica: ReplicaGate?
    let promptCache = MockPromptCache()
    let batchStore = MockBatchStore()
    let faultDraws: Mutex<SplitMix64>
    /// When the first request came: the schedule's origin.
    let firstRequest = Mutex<ContinuousClock.Instant?>(nil)
    let encoder = JSONEncoder()
    let decoder = JSONDecoder()

    public init(settings: MockSettings = MockSettings()) {
        self.settings = settings
        self.limiter = settings.limits.isEmpty ? nil : MockRateLimiter(limits: settings.limits)
        self.replica = settings.replica.map(ReplicaGate.init)
        self.faultDraws = Mutex(SplitMix64(seed: settings.seed))
        self.models = Dictionary(settings.models.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    }

    /// A snapshot of the counters.
    public var currentStats: MockStats { stats.withLock { $0 } }

    /// The HTTP server serving the mock, as a service (graceful shutdown lets open streams finish).
    /// - Parameter onRunning: Called with the bound port once the server listens.
    public func makeServer(logger: Logger, onRunning: @escaping @Sendable (Int) -> Void = { _ in }) -> EdgeServer {
        EdgeServer(configuration: .init(host: settings.host, port: settings.port, backlog: 4096, maxBodyBytes: 64 << 20),
                   logger: logger, onListening: onRunning) { request in
            do {
                var response = try await self.route(request)
                // Echoed, as vLLM does with `--enable-request-id-headers`: the gateway's client then checks that every
                // answer belongs to the request it was read for.
                if let id = request.header("x-request-id"), let name = HTTPField.Name("x-request-id") {
                    response.headers[name] = id
                }
                return response
            } catch {
                return (try? self.error(.internalServerError, anthropic: false, type: "server_error", message: "mock failure"))
                    ?? EdgeResponse(status: .internalServerError)
            }
        }
    }

    func route(_ request: EdgeRequest) async throws -> EdgeResponse {
        switch (request.method, request.path) {
        case (.POST, "/v1/chat/completions"): return try await handle(request, anthropic: false)
        case (.POST, "/v1/messages"): return try await handle(request, anthropic: true)
        case (.GET, "/v1/models"):
            let data: [MockJSON] = settings.models.map { .object(["id": .string($0.name), "object": "model", "owned_by": "mock"]) }
            return try json(.ok, .object(["object": "list", "data": .array(data)]))
        case (.GET, "/mock/stats"):
            let snapshot = currentStats
            var fields: [String: MockJSON] = [
                "requests": .number(Double(snapshot.requests)), "streams_started": .number(Double(snapshot.streamsStarted)),
                "streams_completed": .number(Double(snapshot.streamsCompleted)),
                "streams_cancelled": .number(Double(snapshot.streamsCancelled)),
                "rate_limited": .number(Double(snapshot.rateLimited)), "faults": .number(Double(snapshot.faults)),
            ]
            if let replica { fields.merge(replica.occupancy()) { first, _ in first } }
            let batchCounts = self.batchCounts
            fields["batches"] = .number(Double(batchCounts.batches))
            fields["batch_requests"] = .number(Double(batchCounts.requests))
            fields["batches_cancelled"] = .number(Double(batchCounts.cancelled))
            return try json(.ok, .object(fields))
        case (.GET, "/healthz"): return EdgeResponse(status: .ok, body: .buffer(ByteBuffer(string: "ok")))
        default:
            if let response = try await routeBatches(request) { return response }
            return try error(.notFound, anthropic: false, type: "not_found_error", message: "no route \(request.path)")
        }
    }

    func json(_ status: HTTPResponse.Status, _ value: MockJSON, headers: HTTPFields = [:]) throws -> EdgeResponse {
        var headers = headers
        headers[.contentType] = "application/json"
        return EdgeResponse(status: status, headers: headers, body: .buffer(ByteBuffer(bytes: try encoder.encode(value))))
    }

    func error(_ status: HTTPResponse.Status, anthropic: Bool, type: String, message: String, headers: HTTPFields = [:])
        throws -> EdgeResponse
    {
        let body: MockJSON = anthropic
            ? .object(["type": "error", "error": .object(["type": .string(type), "message": .string(message)])])
            : .object(["error": .object(["type": .string(type), "message": .string(message), "code": .null, "param": .null])])
        return try json(status, body, headers: headers)
    }

    func handle(_ request: EdgeRequest, anthropic: Bool) async throws -> EdgeResponse {
        let credential = request.header("authorization") ?? request.header("x-api-key")
        stats.withLock { stats in
            stats.requests += 1
            if let credential, stats.credentialsSeen.count < 1000 { stats.credentialsSeen.insert(credential) }
            for (name, _) in request.head.headers where stats.headerNamesSeen.count < 1000 {
                stats.headerNamesSeen.insert(name.lowercased())
            }
        }
        if settings.requireAPIKey, credential?.isEmpty != false {
            return try error(.unauthorized, anthropic: anthropic, type: anthropic ? "authentication_error" : "invalid_request_error",
                             message: "missing API key")
        }
        guard !request.bodyExceededLimit else {
            return try error(.contentTooLarge, anthropic: anthropic, type: "request_too_large", message: "body too large")
        }
        let body = request.body
        let decoder = self.decoder
        let decode: @Sendable () -> MockJSON? = {
            // Decoded from the body's own bytes, without copying them into a `Data` first.
            body.withUnsafeReadableBytes { raw -> MockJSON? in
                guard let base = raw.baseAddress else { return try? decoder.decode(MockJSON.self, from: Data()) }
                let view = Data(bytesNoCopy: UnsafeMutableRawPointer(mutating: base), count: raw.count, deallocator: .none)
                return try? decoder.decode(MockJSON.self, from: view)
            }
        }
        // A multi-megabyte prompt is decoded and counted on the thread pool: the in-process mock shares the gateway's
        // event loops, and must not stall them any more than the gateway may.
        let large = body.readableBytes >= 256 << 10
        guard let payload = large ? try await NIOThreadPool.singleton.runIfActive(decode) : decode() else {
            return try error(.badRequest, anthropic: anthropic, type: "invalid_request_error", message: "body is not valid JSON")
        }
        guard let modelName = payload["model"]?.string, let model = models[modelName] else {
            return try error(.notFound, anthropic: anthropic, type: "not_found_error",
                             message: "model '\(payload["model"]?.string ?? "")' not found")
        }
        guard model.isAnthropic == anthropic else {
            return try error(.badRequest, anthropic: anthropic, type: "invalid_request_error",
                             message: "model '\(modelName)' is not served on this endpoint")
        }
        if anthropic, payload["max_tokens"]?.number == nil {
            return try error(.badRequest, anthropic: true, type: "invalid_request_error", message: "max_tokens: Field required")
        }
        let fault = request.header("x-mock-fault").flatMap(MockFault.init(rawValue:)) ?? drawFault(model: modelName)
        if fault != nil { stats.withLock { $0.faults += 1 } }
        if let response = try await immediateFault(fault, anthropic: anthropic) { return response }
        let lengthTrace = settings.lengthTrace, recorded = settings.recordedAnswers
        let makePlan: @Sendable () -> MockPlan = {
            MockPlan(request: payload, model: model, anthropic: anthropic, lengthTrace: lengthTrace, recorded: recorded)
        }
        var plan = large ? try await NIOThreadPool.singleton.runIfActive(makePlan) : makePlan()
        var limitHeaders = HTTPFields()
        if let limiter {
            let requested = payload["max_completion_tokens"]?.boundedInt ?? payload["max_tokens"]?.boundedInt
            let decision = limiter.admit(key: (credential ?? "") + "\u{0}" + modelName, tokens: plan.promptTokens + (requested ?? plan.outputTokens))
            limitHeaders = limiter.headers(decision, anthropic: anthropic)
            guard decision.allowed else {
                stats.withLock { $0.rateLimited += 1 }
                return try error(.tooManyRequests, anthropic: anthropic, type: anthropic ? "rate_limit_error" : "rate_limit_exceeded",
                                 message: "Rate limit reached for requests or tokens per minute (mock)", headers: limitHeaders)
            }
        }
        let cacheModel = model.name
        let findBreakpoints: @Sendable () -> [MockPromptCache.Breakpoint] = {
            MockPromptCache.breakpoints(payload, anthropic: anthropic, model: cacheModel)
        }
        let points = large ? try await NIOThreadPool.singleton.runIfActive(findBreakpoints) : findBreakpoints()
        let cached = promptCache.resolve(points, key: "\(credential ?? "")\u{0}\(model.name)")
        plan.cacheRead = cached.read
        plan.cacheWrite = anthropic ? cached.written : 0
        let scale = settings.latencyScale * (fault == .slow ? 10 : 1)
        // `slow`: 2 s before anything, whatever the latency scale (a fault is a fault even in an instant mock), then
        // ten times the latency model.
        if fault == .slow { try await Self.sleep(for: Self.slowStart) }
        let stream = payload["stream"]?.bool ?? false
        var sequence: UInt64?
        if let replica {
            guard let id = replica.submit(promptTokens: plan.promptTokens, outputTokens: plan.outputTokens) else {
                return try error(.serviceUnavailable, anthropic: anthropic, type: anthropic ? "overloaded_error" : "server_error",
                                 message: "the replica's queue is full (mock)")
            }
            sequence = id
        }
        if stream {
            let includeUsage = payload["stream_options"]?["include_usage"]?.bool ?? false
            return streamResponse(plan, anthropic: anthropic, includeUsage: includeUsage, scale: scale, fault: fault,
                                  headers: limitHeaders, sequence: sequence)
        }
        if let replica, let sequence {
            defer { replica.remove(sequence) }
            try await replica.wait(sequence, tokens: plan.outputTokens)
        } else {
            try await sleep(plan.timeToFirstToken + plan.tokenIntervals().reduce(.zero, +), scale: scale)
        }
        if fault == .malformedJSON {
            return EdgeResponse(status: .ok, headers: [.contentType: "application/json"], body: .buffer(ByteBuffer(string: "{\"id\": \"broken")))
        }
        return try json(.ok, anthropic ? plan.anthropicMessage() : plan.openAICompletion(), headers: limitHeaders)
    }

    static let slowStart = Duration.seconds(2)

    func sleep(_ duration: Duration, scale: Double) async throws {
        guard scale > 0 else { return }
        try await Self.sleep(for: duration * scale)
    }

    /// Sleeps on the event loop the task runs on (requests run on their connection's loop): a loop timer costs a heap
    /// insert, where `Task.sleep` on Linux arms a Dispatch timer and wakes a Dispatch thread for every token of
    /// every stream.
    static func sleep(for duration: Duration) async throws {
        guard let loop = MultiThreadedEventLoopGroup.currentEventLoop else {
            try await Task.sleep(for: duration)
            return
        }
        let (seconds, attoseconds) = duration.components
        let nanoseconds = seconds >= Int64.max / 1_000_000_000 ? Int64.max : seconds * 1_000_000_000 + attoseconds / 1_000_000_000
        let timer = loop.scheduleTask(in: .nanoseconds(max(0, nanoseconds))) {}
        do {
            try await withTaskCancellationHandler {
                try await timer.futureResult.get()
            } onCancel: {
                timer.cancel()
            }
        } catch {
            throw CancellationError()
        }
    }

    func immediateFault(_ fault: MockFault?, anthropic: Bool) async throws -> EdgeResponse? {
        switch fault {
        case .rateLimited:
            var headers: HTTPFields = [:]
            headers[HTTPField.Name("retry-after")!] = "2"
            let prefix = anthropic ? "anthropic-ratelimit-requests" : "x-ratelimit"
            headers[HTTPField.Name(anthropic ? "\(prefix)-limit" : "\(prefix)-limit-requests")!] = "60"
            headers[HTTPField.Name(anthropic ? "\(prefix)-remaining" : "\(prefix)-remaining-requests")!] = "0"
            return try error(.tooManyRequests, anthropic: anthropic, type: anthropic ? "rate_limit_error" : "rate_limit_exceeded",
                             message: "Rate limit reached (mock)", headers: headers)
        case .serverError:
            return try error(.internalServerError, anthropic: anthropic, type: anthropic ? "api_error" : "server_error",
                             message: "The server had an error (mock)")
        case .unavailable:
            return try error(.serviceUnavailable, anthropic: anthropic, type: anthropic ? "api_error" : "server_error",
                             message: "Service unavailable (mock)")
        case .overloaded:
            return try error(HTTPResponse.Status(code: 529, reasonPhrase: "Overloaded"), anthropic: anthropic,
                             type: "overloaded_error", message: "Overloaded (mock)")
        case .timeout:
            try await Self.sleep(for: .seconds(3600))
            return nil
        default:
            return nil
        }
    }

    /// A fault by the configured rates, or none.
    func drawFault(model: String) -> MockFault? {
        var rates = settings.faultRates
        if !settings.schedule.isEmpty {
            let now = ContinuousClock.now
            let first = firstRequest.withLock { first in
                if first == nil { first = now }
                return first ?? now
            }
            let elapsed = (now - first).components
            rates = FaultWindow.rates(settings.schedule, model: model,
                                      elapsed: Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18, usual: rates)
        }
        guard !rates.isEmpty else { return nil }
        var draw = faultDraws.withLock { $0.nextUniform() }
        for fault in MockFault.allCases {
            guard let rate = rates[fault] else { continue }
            if draw <= rate { return fault }
            draw -= rate
        }
        return nil
    }

    func streamResponse(_ plan: MockPlan, anthropic: Bool, includeUsage: Bool, scale: Double, fault: MockFault?,
                        headers: HTTPFields = [:], sequence: UInt64? = nil) -> EdgeResponse {
        stats.withLock { $0.streamsStarted += 1 }
        let events = anthropic ? plan.anthropicEvents() : plan.openAIChunks(includeUsage: includeUsage)
        let cutAt = (fault == .disconnectMidStream || fault == .errorInStream || fault == .malformedJSON) ? max(1, events.count / 2) : nil
        var fields = headers
        fields[.contentType] = "text/event-stream"
        fields[.cacheControl] = "no-cache"
        return EdgeResponse(
            status: .ok, headers: fields,
            body: .stream { writer in
                let replica = sequence == nil ? nil : self.replica
                defer { if let replica, let sequence { replica.remove(sequence) } }
                do {
                    if replica == nil { try await self.sleep(plan.timeToFirstToken, scale: scale) }
                    var intervals = plan.tokenIntervals().makeIterator()
                    var tokensSent = 0
                    for (offset, event) in events.enumerated() {
                        if let cutAt, offset == cutAt {
                            switch fault {
                            case .disconnectMidStream:
                                throw MockDisconnect()
                            case .errorInStream:
                                let data: MockJSON = anthropic
                                    ? .object(["type": "error", "error": .object(["type": "overloaded_error", "message": "Overloaded (mock)"])])
                                    : .object(["error": .object(["type": "server_error", "message": "The server had an error (mock)"])])
                                try await writer.write(Self.sse(event: anthropic ? "error" : nil, json: data))
                            default:
                                try await writer.write(Self.sse(event: anthropic ? "content_block_delta" : nil, data: Data("{\"broken".utf8)))
                            }
                            return
                        }
                        if event.isToken {
                            // The first token comes with the time to first token; each later one after an interval.
                            if let replica, let sequence {
                                try await replica.wait(sequence, tokens: min(tokensSent + 1, plan.outputTokens))
                            } else if tokensSent > 0 {
                                try await self.sleep(intervals.next() ?? .zero, scale: scale)
                            }
                            tokensSent += 1
                        }
                        try await writer.write(Self.sse(event: event.name, json: event.json))
                    }
                    self.stats.withLock { $0.streamsCompleted += 1 }
                } catch is MockDisconnect {
                    throw MockDisconnect()
                } catch {
                    self.stats.withLock { $0.streamsCancelled += 1 }
                    throw error
                }
            })
    }

    /// An event whose data is `json`, or `[DONE]` when it is nil.
    static func sse(event: String?, json: MockJSON?) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(256)
        if let event {
            buffer.writeStaticString("event: ")
            buffer.writeString(event)
            buffer.writeStaticString("\n")
        }
        buffer.writeStaticString("data: ")
        if let json { json.write(into: &buffer) } else { buffer.writeStaticString("[DONE]") }
        buffer.writeStaticString("\n\n")
        return buffer
    }

    static func sse(event: String?, data: Data) -> ByteBuffer {
        var buffer = ByteBuffer()
        if let event { buffer.writeString("event: \(event)\n") }
        buffer.writeString("data: ")
        buffer.writeBytes(data)
        buffer.writeString("\n\n")
        return buffer
    }
}

struct MockDisconnect: Error {}

/// Faults a request can ask for with the `x-mock-fault` header.
public enum MockFault: String, Sendable, CaseIterable {
    case rateLimited = "429"
    case serverError = "500"
    case unavailable = "503"
    case overloaded = "529"
    case timeout
    case slow
    case disconnectMidStream = "disconnect-mid-stream"
    case malformedJSON = "malformed-json"
    case errorInStream = "error-in-stream"
}

/// The replica engine behind a lock, for the server's requests: each waits, polling, until the engine has
/// produced the tokens it is about to send.
final class ReplicaGate: Sendable {
    private let engine: Mutex<ReplicaEngine>
    private let ids = Mutex<UInt64>(0)
    private let origin = ContinuousClock.now

    init(_ settings: ReplicaEngine.Settings) {
        engine = Mutex(ReplicaEngine(settings: settings))
    }

    private var now: Int64 {
        let (seconds, attoseconds) = (ContinuousClock.now - origin).components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }

    /// A new request's sequence, or nil when the queue is full.
    func submit(promptTokens: Int, outputTokens: Int) -> UInt64? {
        let id = ids.withLock { value -> UInt64 in
            value &+= 1
            return value
        }
        let now = self.now
        return engine.withLock { $0.submit(id: id, promptTokens: promptTokens, outputTokens: outputTokens, now: now) } ? id : nil
    }

    /// Returns once `id` has produced `tokens` output tokens (or all of its own).
    func wait(_ id: UInt64, tokens: Int) async throws {
        while true {
            let now = self.now
            let ready = engine.withLock { engine -> Bool in
                engine.advance(to: now)
                return engine.isFinished(id) || (engine.produced(id) ?? Int.max) >= tokens
            }
            if ready { return }
            try await MockServer.sleep(for: .milliseconds(2))
        }
    }

    /// How full the replica has been since it started: sequence-seconds, busy seconds, elapsed seconds, and what
    /// is running and waiting now.
    func occupancy() -> [String: MockJSON] {
        let now = self.now
        return engine.withLock { engine in
            engine.advance(to: now)
            return ["replica_sequence_seconds": .number(engine.sequenceSeconds), "replica_busy_seconds": .number(engine.busySeconds),
                    "replica_work_seconds": .number(engine.workSeconds),
                    "replica_seconds": .number(Double(now) / 1e9), "replica_sequences": .number(Double(engine.settings.maxSequences)),
                    "replica_running": .number(Double(engine.runningCount)), "replica_waiting": .number(Double(engine.waitingCount))]
        }
    }

    func remove(_ id: UInt64) {
        let now = self.now
        engine.withLock { engine in
            engine.advance(to: now)
            engine.remove(id)
        }
    }
}
