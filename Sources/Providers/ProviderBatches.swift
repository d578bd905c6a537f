import NIOCore
import NIOHTTP1
public import SwitchyardCore
import SwitchyardModels

/// One request of a batch: its id in the batch (`custom_id`) and its body in the provider's format.
public struct BatchRequestItem: Sendable {
    public var id: String
    public var body: ByteBuffer

    public init(id: String, body: ByteBuffer) {
        self.id = id
        self.body = body
    }
}

/// Where a sent batch stands.
public enum BatchProgress: Sendable, Hashable {
    case running
    /// Its results can be read (some may be errors, some missing when it expired).
    case ended
    /// It failed as a whole (validation failed, cancelled before it ran).
    case failed(String)
}

/// What one request of a batch came to.
public enum BatchItemResult: Sendable {
    /// Its answer: the body a call of its own would have had.
    case answered(ByteBuffer)
    case failed(GatewayError)
}

/// A provider's batch API: what `BatchCollector` sends its batches to. `HTTPProvider` speaks OpenAI's and
/// Anthropic's; tests use fakes.
public protocol BatchUpstream: Sendable {
    /// Sends a batch of `upstreamModel`'s requests; returns the provider's batch id.
    func submitBatch(_ items: [BatchRequestItem], upstreamModel: String) async throws(GatewayError) -> String
    func pollBatch(_ id: String, upstreamModel: String) async throws(GatewayError) -> BatchProgress
    /// The results of an ended batch, by request id.
    func batchResults(_ id: String, upstreamModel: String) async throws(GatewayError) -> [String: BatchItemResult]
    /// Best effort: nobody waits for the batch any more.
    func cancelBatch(_ id: String, upstreamModel: String) async
}

/// OpenAI: the requests as a JSONL file (`POST /v1/files`, purpose `batch`), then `POST /v1/batches`; the status at
/// `GET /v1/batches/{id}`, the results in its output and error files (`GET /v1/files/{id}/content`).
/// Anthropic: `POST /v1/messages/batches` with the requests inline; `GET /v1/messages/batches/{id}` until
/// `processing_status` is `ended`, then its results (JSONL). Ids the provider returns are checked before they are
/// put in a path, and the results' location is always the provider's own base URL, never a URL it names.
extension HTTPProvider: BatchUpstream {
    /// What a file of results may weigh at most.
    var maximumBatchBytes: Int { max(maximumResponseBytes, 1 << 20) * 4 }

    public func submitBatch(_ items: [BatchRequestItem], upstreamModel: String) async throws(GatewayError) -> String {
        let format = config.kind.format(forUpstreamModel: upstreamModel)
        let dialectPath = UpstreamDialect.forProvider(config.kind, upstreamModel: upstreamModel).path
        switch format {
        case .openAI:
            var lines = ByteBuffer()
            for item in items {
                lines.writeString(#"{"custom_id":"\#(item.id)","method":"POST","url":"\#(dialectPath)","body":"#)
                // A client's own body may hold line breaks between its tokens; a JSONL line may not.
                lines.writeBytes(try Self.compact(item.body))
                lines.writeString("}\n")
            }
            let (form, boundary) = Self.multipart(fields: [("purpose", "batch")], file: lines, fileName: "batch.jsonl")
            let file = try await batchCall(.POST, "/v1/files", body: form, contentType: "multipart/form-data; boundary=\(boundary)",
                                           format: format, upstreamModel: upstreamModel)
            let fileID = try Self.id(in: file, key: "id", provider: config.name)
            let create: JSONValue = ["input_file_id": .string(fileID), "endpoint": .string(dialectPath), "completion_window": "24h"]
            let batch = try await batchCall(.POST, "/v1/batches", body: ByteBuffer(bytes: create.serialized()), format: format,
                                            upstreamModel: upstreamModel)
            return try Self.id(in: batch, key: "id", provider: config.name)
        case .anthropic:
            var body = ByteBuffer(string: #"{"requests":["#)
            for (index, item) in items.enumerated() {
                if index > 0 { body.writeString(",") }
                body.writeString(#"{"custom_id":"\#(item.id)","params":"#)
                var params = item.body
                body.writeBuffer(&params)
                body.writeString("}")
            }
            body.writeString("]}")
            let batch = try await batchCall(.POST, "/v1/messages/batches", body: body, format: format, upstreamModel: upstreamModel)
            return try Self.id(in: batch, key: "id", provider: config.name)
        }
    }

    public func pollBatch(_ id: String, upstreamModel: String) async throws(GatewayError) -> BatchProgress {
        let format = config.kind.format(forUpstreamModel: upstreamModel)
        let id = try Self.checked(id, provider: config.name)
        switch format {
        case .openAI:
            let body = try await batchCall(.GET, "/v1/batches/\(id)", format: format, upstreamModel: upstreamModel)
            let status = try Self.object(body, provider: config.name)["status"]?.stringValue
            switch status {
            case "validating", "in_progress", "finalizing", "cancelling": return .running
            case "completed", "expired", "cancelled": return .ended
            case "failed": return .failed("the provider failed batch \(id)")
            default: throw GatewayError(.upstreamError, "upstream '\(config.name)' sent an unknown batch status", upstreamStatus: 502)
            }
        case .anthropic:
            let body = try await batchCall(.GET, "/v1/messages/batches/\(id)", format: format, upstreamModel: upstreamModel)
            switch try Self.object(body, provider: config.name)["processing_status"]?.stringValue {
            case "in_progress", "canceling": return .running
            case "ended": return .ended
            default: throw GatewayError(.upstreamError, "upstream '\(config.name)' sent an unknown batch status", upstreamStatus: 502)
            }
        }
    }

    public func batchResults(_ id: String, upstreamModel: String) async throws(GatewayError) -> [String: BatchItemResult] {
        let format = config.kind.format(forUpstreamModel: upstreamModel)
        let id = try Self.checked(id, provider: config.name)
        switch format {
        case .openAI:
            let batch = try Self.object(try await batchCall(.GET, "/v1/batches/\(id)", format: format, upstreamModel: upstreamModel),
                                        provider: config.name)
            var results: [String: BatchItemResult] = [:]
            for key in ["output_file_id", "error_file_id"] {
                guard let named = batch[key]?.stringValue else { continue }
                let file = try Self.checked(named, provider: config.name)
                let lines = try await batchCall(.GET, "/v1/files/\(file)/content", format: format, upstreamModel: upstreamModel)
                results.merge(openAIResults(lines, upstreamModel: upstreamModel)) { first, _ in first }
            }
            return results
        case .anthropic:
            let lines = try await batchCall(.GET, "/v1/messages/batches/\(id)/results", format: format, upstreamModel: upstreamModel)
            return anthropicResults(lines)
        }
    }

    /// The requests' results in an OpenAI output or error file (JSONL). A line without a `custom_id` is skipped; a
    /// status outside 100…599 is read as a 502.
    func openAIResults(_ lines: ByteBuffer, upstreamModel: String) -> [String: BatchItemResult] {
        let dialect = UpstreamDialect.forProvider(config.kind, upstreamModel: upstreamModel)
        let route = errorRoute(upstreamModel)
        var results: [String: BatchItemResult] = [:]
        for line in Self.lines(lines) {
            guard let id = line["custom_id"]?.stringValue, results[id] == nil else { continue }
            if let response = line["response"]?.objectValue, let status = response["status_code"]?.intValue,
               let body = response["body"], body.objectValue != nil {
                let code = (100...599).contains(status) ? Int(status) : 502
                results[id] = code == 200
                    ? .answered(ByteBuffer(bytes: body.serialized()))
                    : .failed(upstreamError(status: HTTPResponseStatus(statusCode: code), headers: [:],
                                            body: ByteBuffer(bytes: body.serialized()), dialect: dialect, route: route))
            } else {
                let message = line["error"]?["message"]?.stringValue ?? "no answer"
                results[id] = .failed(GatewayError(.upstreamError, "upstream '\(config.name)' failed a batch request: "
                                                   + String(message.prefix(500)), upstreamStatus: 502))
            }
        }
        return results
    }

    /// The requests' results of an Anthropic message batch (JSONL). A line without a `custom_id` is skipped.
    func anthropicResults(_ lines: ByteBuffer) -> [String: BatchItemResult] {
        var results: [String: BatchItemResult] = [:]
        for line in Self.lines(lines) {
            guard let id = line["custom_id"]?.stringValue, results[id] == nil, let result = line["result"] else { continue }
            switch result["type"]?.stringValue {
            case "succeeded":
                guard let message = result["message"], message.objectValue != nil else { continue }
                results[id] = .answered(ByteBuffer(bytes: message.serialized()))
            case "errored":
                let error = result["error"]?["error"] ?? result["error"]
                let type = error?["type"]?.stringValue
                let message = String((error?["message"]?.stringValue ?? "").prefix(500))
                results[id] = .failed(type == "invalid_request_error"
                    ? GatewayError(.invalidRequest, "upstream '\(config.name)' rejected the request: \(message)", upstreamStatus: 400)
                    : GatewayError(.upstreamError, "upstream '\(config.name)' failed a batch request: \(message)", upstreamStatus: 502))
            default:
                // `canceled`, `expired`: not an answer, and not the request's fault.
                results[id] = .failed(GatewayError(.upstreamError, "upstream '\(config.name)' did not run the request in its batch",
                                                   upstreamStatus: 502))
            }
        }
        return results
    }

    public func cancelBatch(_ id: String, upstreamModel: String) async {
        let format = config.kind.format(forUpstreamModel: upstreamModel)
        guard let id = try? Self.checked(id, provider: config.name) else { return }
        let path = format == .openAI ? "/v1/batches/\(id)/cancel" : "/v1/messages/batches/\(id)/cancel"
        _ = try? await batchCall(.POST, path, format: format, upstreamModel: upstreamModel)
    }

    /// A batch completion's body read as a call of its own would have been.
    public func batchCompletion(_ body: ByteBuffer, upstreamModel: String, started: ContinuousClock.Instant,
                                context: GatewayContext) throws(GatewayError) -> Completion {
        let dialect = UpstreamDialect.forProvider(config.kind, upstreamModel: upstreamModel)
        var completion = try completion(from: body, dialect: dialect, duration: ContinuousClock.now - started, context: context)
        completion.batched = true
        return completion
    }

    /// One call of the batch API; its answer's body when it is a 200.
    func batchCall(_ method: HTTPMethod, _ path: String, body: ByteBuffer = ByteBuffer(), contentType: String? = nil,
                   format: APIFormat, upstreamModel: String) async throws(GatewayError) -> ByteBuffer {
        guard let endpoint = fixedEndpoint ?? UpstreamEndpoint(baseURL: baseURL()) else {
            throw GatewayError(.upstreamError, "provider '\(config.name)' has an unusable base URL", upstreamStatus: 502)
        }
        var headers = baseHeaders[format] ?? HTTPHeaders()
        if let contentType { headers.replaceOrAdd(name: "content-type", value: contentType) }
        if method == .GET { headers.remove(name: "content-type") }
        headers.add(name: "accept", value: "application/json")
        let request = UpstreamRequest(endpoint: endpoint, method: method, target: endpoint.basePath + path, headers: headers, body: body,
                                      provider: config.name, maximumConnections: config.poolSize,
                                      connectTimeout: .nanoseconds(config.timeouts.connect.nanoseconds),
                                      tlsCAFile: config.tlsCAFile, keepAlive: config.keepAlive)
        let response: UpstreamResponse
        do {
            response = try await transports.execute(request, deadline: .now() + .nanoseconds(config.timeouts.total.nanoseconds),
                                                    streaming: false, maximumBodyBytes: maximumBatchBytes)
        } catch {
            throw mapTransportError(error)
        }
        guard response.status == .ok else {
            throw upstreamError(status: response.status, headers: response.headers, body: response.body,
                                dialect: UpstreamDialect.forProvider(config.kind, upstreamModel: upstreamModel),
                                route: errorRoute(upstreamModel))
        }
        return response.body
    }

    /// What `upstreamError` names in its messages for a batch call (it reads only the names).
    func errorRoute(_ upstreamModel: String) -> ModelRoute {
        ModelRoute(name: upstreamModel, provider: config.name, upstreamModel: upstreamModel,
                   price: ModelPrice(input: .zero, output: .zero, cacheRead: .zero, cacheWrite: .zero))
    }

    /// A provider's id, checked before it goes into a path: letters, digits, `_` and `-` only.
    static func checked(_ id: String, provider: String) throws(GatewayError) -> String {
        guard (1...200).contains(id.utf8.count),
              id.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7A) || $0 == 0x5F || $0 == 0x2D })
        else { throw GatewayError(.upstreamError, "upstream '\(provider)' sent an unusable batch id", upstreamStatus: 502) }
        return id
    }

    static func object(_ body: ByteBuffer, provider: String) throws(GatewayError) -> [String: JSONValue] {
        guard let object = (try? JSONValue.parse(body.readableBytesView))?.objectValue else {
            throw GatewayError(.upstreamError, "upstream '\(provider)' answered its batch API with a malformed body", upstreamStatus: 502)
        }
        return object
    }

    static func id(in body: ByteBuffer, key: String, provider: String) throws(GatewayError) -> String {
        guard let id = try object(body, provider: provider)[key]?.stringValue else {
            throw GatewayError(.upstreamError, "upstream '\(provider)' answered its batch API without an id", upstreamStatus: 502)
        }
        return try checked(id, provider: provider)
    }

    /// The JSON objects of a JSONL body; lines that are not one are skipped (their requests then have no result).
    static func lines(_ body: ByteBuffer) -> [JSONValue] {
        body.readableBytesView.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true).compactMap { line in
            (try? JSONValue.parse(line)).flatMap { $0.objectValue == nil ? nil : $0 }
        }
    }

    static func compact(_ body: ByteBuffer) throws(GatewayError) -> [UInt8] {
        guard let value = try? JSONValue.parse(body.readableBytesView) else {
            throw GatewayError(.internalError, "a batch request's body is not JSON")
        }
        return value.serialized()
    }

    /// A `multipart/form-data` body (RFC 7578) with text fields and one file, and its boundary.
    static func multipart(fields: [(String, String)], file: ByteBuffer, fileName: String) -> (ByteBuffer, String) {
        var boundary: String
        repeat {
            boundary = "switchyard-" + String(UInt64.random(in: 0...UInt64.max), radix: 36) + String(UInt64.random(in: 0...UInt64.max), radix: 36)
        } while file.readableBytesView.firstRange(of: Array(boundary.utf8)) != nil
        var body = ByteBuffer()
        for (name, value) in fields {
            body.writeString("--\(boundary)\r\ncontent-disposition: form-data; name=\"\(name)\"\r\n\r\n\(value)\r\n")
        }
        body.writeString("--\(boundary)\r\ncontent-disposition: form-data; name=\"file\"; filename=\"\(fileName)\"\r\n"
                         + "content-type: application/jsonl\r\n\r\n")
        var file = file
        body.writeBuffer(&file)
        body.writeString("\r\n--\(boundary)--\r\n")
        return (body, boundary)
    }
}
