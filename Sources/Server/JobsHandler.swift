import Foundation
import HTTPEdge
import HTTPTypes
import Limits
import Logging
import NIOCore
import NIOHTTP1
import ServerSentEvents
import Stages
import SwitchyardCore
import SwitchyardModels

/// The jobs API:
/// - `POST /v1/jobs` `{"endpoint": "/v1/chat/completions" | "/v1/messages", "request": {…}, "priority": "p2",
///   "webhook_url": "https://…"}` → 202 with the job (priority default p2, never above the key's);
/// - `GET /v1/jobs/{id}`: its status, and when it ended, its answer (or error) in the request's API format, and its cost;
/// - `GET /v1/jobs/{id}/events`: SSE — `queued`, `position` when it moves, `started`, then `completed`, `failed` or
///   `cancelled` (the job as `GET` shows it), and the stream ends;
/// - `DELETE /v1/jobs/{id}`: cancels a job that has not ended.
/// A job is visible to its tenant only: anyone else's id is a 404, as an unknown one is. Errors are in OpenAI's
/// envelope (the jobs API is the gateway's own).
struct JobsHandler: Sendable {
    let store: any JobStore
    let auth: AuthStage
    let settings: JobSettings
    /// The public names a job may ask for (models and routes).
    let names: Set<String>
    /// The key webhooks are signed with (`SWITCHYARD_WEBHOOK_SECRET`); without it a job cannot name a webhook.
    let webhookSecret: [UInt8]?
    let maxBodyBytes: Int
    let logger: Logger
    /// Wakes the workers when a job was accepted (the in-memory store: work is picked up at once).
    let accepted: @Sendable (JobRecord) -> Void
    let clock: @Sendable () -> Int64

    static let path = "/v1/jobs"

    func handle(_ request: EdgeRequest) async -> EdgeResponse {
        let requestID = ChatHandler.makeRequestID()
        let rest = request.path.dropFirst(Self.path.count)
        let parts = rest.isEmpty ? [] : rest.split(separator: "/", omittingEmptySubsequences: false)
        do throws(GatewayError) {
            let caller = try authenticated(request)
            switch (request.method, parts.count) {
            case (.POST, 0): return try await submit(request, caller: caller, requestID: requestID)
            case (.GET, 2) where parts[0].isEmpty:
                return try await show(try await owned(parts[1], caller: caller), requestID: requestID)
            case (.DELETE, 2) where parts[0].isEmpty:
                _ = try await owned(parts[1], caller: caller)
                guard let job = try await stored({ try await store.cancel(String(parts[1]), now: clock()) }) else { throw Self.unknownJob }
                return try await show(job, requestID: requestID)
            case (.GET, 3) where parts[0].isEmpty && parts[2] == "events":
                return events(try await owned(parts[1], caller: caller), requestID: requestID)
            case (_, let count) where count == 0 || (parts[0].isEmpty && (count == 2 || (count == 3 && parts[2] == "events"))):
                var response = ErrorRenderer.response(for: GatewayError(.invalidRequest, "no endpoint \(request.method.rawValue) \(request.path)"),
                                                      format: .openAI, requestID: requestID)
                response.status = .methodNotAllowed
                return response
            default:
                throw GatewayError(.notFound, "no endpoint \(request.method.rawValue) \(request.path)")
            }
        } catch {
            return ErrorRenderer.response(for: error, format: .openAI, requestID: requestID)
        }
    }

    static let unknownJob = GatewayError(.notFound, "no such job")

    func authenticated(_ request: EdgeRequest) throws(GatewayError) -> Caller {
        var caller = try auth.authenticate(ChatHandler.credential(request))
        if let feature = try ChatHandler.feature(request), caller.featureFromHeader { caller.feature = feature }
        return caller
    }

    /// The job, when it is the caller's tenant's.
    func owned(_ id: Substring, caller: Caller) async throws(GatewayError) -> JobRecord {
        guard JobRecord.isValidID(id), let job = try await stored({ try await store.job(String(id)) }), job.caller.tenant == caller.tenant
        else {
            throw Self.unknownJob
        }
        return job
    }

    // MARK: Submission

    func submit(_ request: EdgeRequest, caller: Caller, requestID: String) async throws(GatewayError) -> EdgeResponse {
        let body = try ChatHandler.readJSON(request, limit: maxBodyBytes)
        guard let object = body.objectValue else { throw GatewayError(.invalidRequest, "the body must be a JSON object") }
        for key in object.keys where !["endpoint", "request", "priority", "webhook_url", "metadata"].contains(key) {
            throw GatewayError(.invalidRequest, "unknown field '\(key)'", param: key)
        }
        let format: APIFormat
        switch object["endpoint"] {
        case nil, .string("/v1/chat/completions")?: format = .openAI
        case .string("/v1/messages")?: format = .anthropic
        default: throw GatewayError(.invalidRequest, "endpoint must be /v1/chat/completions or /v1/messages", param: "endpoint")
        }
        guard let chatJSON = object["request"], chatJSON.objectValue != nil else {
            throw GatewayError(.invalidRequest, "request is required: the chat request, as its endpoint takes it", param: "request")
        }
        let chat: ChatRequest
        do {
            chat = switch format {
            case .openAI: try OpenAIFormat.parseRequest(chatJSON)
            case .anthropic: try AnthropicFormat.parseRequest(chatJSON)
            }
        } catch {
            throw GatewayError(.invalidRequest, error.description, param: error.path.isEmpty ? "request" : "request.\(error.path)")
        }
        var priority = Priority.p2
        if let value = object["priority"] {
            guard let name = value.stringValue, let asked = Priority(name: name) else {
                throw GatewayError(.invalidRequest, "priority must be p0, p1 or p2", param: "priority")
            }
            priority = asked
        }
        // A job asks for a priority as a request does: never above its key's.
        if let header = request.header("x-switchyard-priority") {
            guard let asked = Priority(name: header) else {
                throw GatewayError(.invalidRequest, "x-switchyard-priority must be p0, p1 or p2", param: "x-switchyard-priority")
            }
            if object["priority"] == nil { priority = asked }
        }
        priority = max(priority, caller.priority)
        var webhook: String?
        if let value = object["webhook_url"], !value.isNull {
            guard let url = value.stringValue, url.utf8.count <= 2048, let endpoint = UpstreamEndpoint(baseURL: url),
                  !url.utf8.contains(where: { $0 <= 0x20 || $0 == 0x7F })
            else {
                throw GatewayError(.invalidRequest, "webhook_url must be an http or https URL of at most 2048 bytes", param: "webhook_url")
            }
            _ = endpoint
            guard webhookSecret != nil else {
                throw GatewayError(.invalidRequest, "webhooks need the gateway's signing secret (SWITCHYARD_WEBHOOK_SECRET), which is not set",
                                   param: "webhook_url")
            }
            webhook = url
        }
        let (job, ahead) = try await accept(chatJSON, model: chat.model, format: format, caller: caller, priority: priority,
                                            webhook: webhook)
        var headers: HTTPFields = [.contentType: "application/json", .requestID: requestID]
        headers[.location] = "\(Self.path)/\(job.id)"
        return EdgeResponse(status: .accepted, headers: headers,
                            body: .buffer(ByteBuffer(bytes: Self.view(job, position: ahead).serialized())))
    }

    /// Stores a new job for `caller`. Shared by `POST /v1/jobs` and the limits' `queue` step.
    func accept(_ chat: JSONValue, model: String, format: APIFormat, caller: Caller, priority: Priority, webhook: String?)
        async throws(GatewayError) -> (JobRecord, Int)
    {
        guard names.contains(model) else { throw GatewayError(.modelNotFound, "model '\(model)' not found", param: "request.model") }
        let now = clock()
        let job = JobRecord(id: JobRecord.makeID(), caller: caller, priority: priority, format: format, request: chat, model: model,
                            webhook: webhook, createdAt: now, deadline: now &+ settings.deadline(priority).nanoseconds)
        let ahead: Int
        do {
            ahead = try await store.submit(job)
        } catch let refusal as JobRefusal {
            let message = refusal == .full ? "the job queue is full" : "this tenant has as many waiting jobs as it may"
            throw GatewayError(.rateLimited, message, retryAfter: .seconds(60))
        } catch {
            throw GatewayError(.overloaded, "the job store is unavailable", retryAfter: .seconds(1))
        }
        accepted(job)
        return (job, ahead)
    }

    /// The limits' `queue` step: the refused request accepted as a job, in the client's format; nil when it cannot
    /// be (no original body to keep, a full queue).
    func queueStep(_ request: ChatRequest, context: GatewayContext) async -> GatewayResponse? {
        guard let caller = context.caller, let original = context.original,
              let chat = try? JSONValue.parse(original.body.readableBytesView)
        else { return nil }
        guard let (job, ahead) = try? await accept(chat, model: original.request.model, format: context.clientFormat, caller: caller,
                                                   priority: max(context.priority, .p1), webhook: nil)
        else { return nil }
        var completion = Completion(usage: Usage(), raw: (context.clientFormat, ByteBuffer(bytes: Self.view(job, position: ahead).serialized())))
        completion.acceptedJob = job.id
        return .completion(completion)
    }

    // MARK: Views

    func show(_ job: JobRecord, requestID: String) async throws(GatewayError) -> EdgeResponse {
        let position = job.status == .queued ? try await stored({ try await store.position(job.id) }) : nil
        return EdgeResponse(status: .ok, headers: [.contentType: "application/json", .requestID: requestID],
                            body: .buffer(ByteBuffer(bytes: Self.view(job, position: position).serialized())))
    }

    /// The job as the API shows it (times in Unix seconds, cost in USD as a decimal string).
    static func view(_ job: JobRecord, position: Int?) -> JSONValue {
        func seconds(_ nanoseconds: Int64) -> JSONValue { .int(nanoseconds / 1_000_000_000) }
        var object: [String: JSONValue] = [
            "id": .string(job.id), "object": "job", "status": .string(job.status.rawValue), "priority": .string(job.priority.name),
            "endpoint": .string(job.format == .openAI ? "/v1/chat/completions" : "/v1/messages"), "model": .string(job.model),
            "created_at": seconds(job.createdAt), "expires_at": seconds(job.deadline), "attempts": .int(Int64(job.attempts)),
            "webhook": job.webhook == nil ? false : true,
        ]
        if let position { object["position"] = .int(Int64(position)) }
        if let startedAt = job.startedAt { object["started_at"] = seconds(startedAt) }
        if let finishedAt = job.finishedAt { object["finished_at"] = seconds(finishedAt) }
        if let result = job.result { object["result"] = result }
        if let error = job.error { object["error"] = error }
        if let status = job.errorStatus { object["error_status"] = .int(Int64(status)) }
        if let cost = job.cost { object["cost_usd"] = .string(cost.usdString) }
        if let model = job.servedModel { object["served_model"] = .string(model) }
        return .object(object)
    }

    // MARK: Events

    /// How often an events stream looks at its job, and sends a comment when nothing changed (proxies close idle
    /// streams).
    static let eventPoll = Duration.milliseconds(100)
    static let keepAlive = Duration.seconds(15)

    func events(_ job: JobRecord, requestID: String) -> EdgeResponse {
        let store = self.store, clock = self.clock
        // Bounded: past the job's deadline (and a margin for its last attempt) the stream ends whatever the job's state.
        let end = ContinuousClock.now + .nanoseconds(max(job.deadline &- clock(), 0)) + .seconds(30)
        let poll = max(min(settings.pollInterval, Self.eventPoll), .milliseconds(10))
        return EdgeResponse(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache", .requestID: requestID],
                            body: .stream { writer in
            var last = job
            var lastPosition: Int? = nil
            var sentQueued = false
            var sentStarted = false
            var quietSince = ContinuousClock.now
            func send(_ name: String, _ data: JSONValue) async throws {
                var buffer = ByteBuffer()
                StreamEncoder.write(data, event: name, into: &buffer)
                try await writer.write(buffer)
                quietSince = ContinuousClock.now
            }
            while true {
                if last.status == .queued {
                    let position = try? await store.position(last.id)
                    if !sentQueued {
                        sentQueued = true
                        lastPosition = position
                        try await send("queued", ["id": .string(last.id), "status": "queued",
                                                  "position": position.map { .int(Int64($0)) } ?? .null])
                    } else if let position, position != lastPosition {
                        lastPosition = position
                        try await send("position", ["id": .string(last.id), "position": .int(Int64(position))])
                    }
                }
                if last.status != .queued, !sentStarted, last.startedAt != nil {
                    sentStarted = true
                    try await send("started", ["id": .string(last.id), "status": "running", "attempts": .int(Int64(last.attempts))])
                }
                if last.status.isFinal {
                    try await send(last.status.rawValue, Self.view(last, position: nil))
                    return
                }
                if ContinuousClock.now >= end { return }
                if ContinuousClock.now - quietSince >= Self.keepAlive {
                    try await writer.write(ByteBuffer(string: ": keep-alive\n\n"))
                    quietSince = ContinuousClock.now
                }
                try await Task.sleep(for: poll)
                do {
                    // Gone (past its retention): nothing more will happen.
                    guard let now = try await store.job(last.id) else { return }
                    last = now
                } catch {
                    // The store is down for now: asked again next time.
                }
            }
        })
    }

    // MARK: Store calls

    /// A store call whose failure is a 503 (the store, not the request, is at fault).
    func stored<T: Sendable>(_ body: () async throws -> T) async throws(GatewayError) -> T {
        do {
            return try await body()
        } catch {
            throw GatewayError(.overloaded, "the job store is unavailable", retryAfter: .seconds(1))
        }
    }
}
