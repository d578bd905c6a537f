import HTTPEdge
import HTTPTypes
import NIOCore
import NIOHTTP1
import Synchronization

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The mock's batch APIs: OpenAI's files and batches, Anthropic's message batches. Every request of a batch is
/// answered as it would be alone (the same deterministic plan); a batch runs for `batchDuration(requests)` — a
/// minute plus a tenth of a second per request at latency scale 1, as small real batches take minutes — and its
/// status moves through the providers' own steps meanwhile (OpenAI: validating, in_progress, finalizing,
/// completed; Anthropic: in_progress, ended). What it keeps is bounded: the oldest files and batches go first.
final class MockBatchStore: Sendable {
    struct Batch {
        var id: String
        var anthropic: Bool
        var created: ContinuousClock.Instant
        var createdAt: Int
        var duration: Duration
        var inputFileID: String?
        var endpoint: String
        var total: Int
        /// OpenAI: the output and error files' lines; Anthropic: the results' lines.
        var output: [MockJSON]
        var errors: [MockJSON]
        var cancelled: ContinuousClock.Instant?
    }

    struct State {
        var files: [String: (bytes: [UInt8], createdAt: Int, name: String)] = [:]
        var fileOrder: [String] = []
        var fileBytes = 0
        var batches: [String: Batch] = [:]
        var batchOrder: [String] = []
        var counter = 0
        var created = 0
        var requests = 0
        var cancelled = 0
    }

    static let maxFiles = 1000
    static let maxFileBytes = 512 << 20
    static let maxBatches = 1000
    let state = Mutex(State())

    func nextID(_ prefix: String) -> String {
        state.withLock { state in
            state.counter += 1
            return "\(prefix)\(String(state.counter, radix: 36))\(String(UInt32.random(in: 0...UInt32.max), radix: 36))"
        }
    }

    func addFile(_ bytes: [UInt8], name: String) -> String {
        let id = nextID("file-")
        state.withLock { state in
            state.files[id] = (bytes, Int(Date().timeIntervalSince1970), name)
            state.fileOrder.append(id)
            state.fileBytes += bytes.count
            while state.fileOrder.count > Self.maxFiles || state.fileBytes > Self.maxFileBytes, !state.fileOrder.isEmpty {
                let oldest = state.fileOrder.removeFirst()
                state.fileBytes -= state.files.removeValue(forKey: oldest)?.bytes.count ?? 0
            }
        }
        return id
    }

    func add(_ batch: Batch) {
        state.withLock { state in
            state.batches[batch.id] = batch
            state.batchOrder.append(batch.id)
            state.created += 1
            state.requests += batch.total
            while state.batchOrder.count > Self.maxBatches {
                state.batches[state.batchOrder.removeFirst()] = nil
            }
        }
    }
}

extension MockServer {
    /// How long a batch of `requests` runs.
    func batchDuration(requests: Int) -> Duration {
        .nanoseconds(Int64((60 + 0.1 * Double(requests)) * settings.latencyScale * 1e9))
    }

    /// Batches created, the requests in them, and cancellations asked for, for tests (`GET /mock/stats`: `batches`,
    /// `batch_requests`, `batches_cancelled`).
    public var batchCounts: (batches: Int, requests: Int, cancelled: Int) {
        batchStore.state.withLock { ($0.created, $0.requests, $0.cancelled) }
    }

    func routeBatches(_ request: EdgeRequest) async throws -> EdgeResponse? {
        let path = request.path
        guard path.hasPrefix("/v1/files") || path.hasPrefix("/v1/batches") || path.hasPrefix("/v1/messages/batches") else { return nil }
        let anthropic = path.hasPrefix("/v1/messages/")
        let credential = request.header("authorization") ?? request.header("x-api-key")
        if settings.requireAPIKey, credential?.isEmpty != false {
            return try error(.unauthorized, anthropic: anthropic, type: anthropic ? "authentication_error" : "invalid_request_error",
                             message: "missing API key")
        }
        guard !request.bodyExceededLimit else {
            return try error(.contentTooLarge, anthropic: anthropic, type: "request_too_large", message: "body too large")
        }
        let parts = path.split(separator: "/").map(String.init)
        switch (request.method, parts.count) {
        case (.POST, 2) where parts[1] == "files": return try uploadFile(request)
        case (.GET, 4) where parts[1] == "files" && parts[3] == "content":
            guard let file = batchStore.state.withLock({ $0.files[parts[2]] }) else {
                return try error(.notFound, anthropic: false, type: "invalid_request_error", message: "No such File object: \(parts[2])")
            }
            return EdgeResponse(status: .ok, headers: [.contentType: "application/octet-stream"], body: .buffer(ByteBuffer(bytes: file.bytes)))
        case (.POST, 2) where parts[1] == "batches": return try createOpenAIBatch(request)
        case (.GET, 3) where parts[1] == "batches": return try batchView(parts[2], anthropic: false)
        case (.POST, 4) where parts[1] == "batches" && parts[3] == "cancel": return try cancelBatch(parts[2], anthropic: false)
        case (.POST, 3) where parts[1] == "messages": return try createAnthropicBatch(request)
        case (.GET, 4) where parts[1] == "messages": return try batchView(parts[3], anthropic: true)
        case (.GET, 5) where parts[1] == "messages" && parts[4] == "results": return try anthropicResults(parts[3])
        case (.POST, 5) where parts[1] == "messages" && parts[4] == "cancel": return try cancelBatch(parts[3], anthropic: true)
        default:
            return try error(.notFound, anthropic: anthropic, type: "not_found_error", message: "no route \(path)")
        }
    }

    func invalid(_ message: String, anthropic: Bool) throws -> EdgeResponse {
        try error(.badRequest, anthropic: anthropic, type: "invalid_request_error", message: message)
    }

    func uploadFile(_ request: EdgeRequest) throws -> EdgeResponse {
        guard let type = request.header("content-type"), let boundary = Self.boundary(type) else {
            return try invalid("expected multipart/form-data with a boundary", anthropic: false)
        }
        let parts = Self.multipartParts(Array(request.body.readableBytesView), boundary: boundary)
        guard let purpose = parts.first(where: { $0.name == "purpose" }).map({ String(decoding: $0.content, as: UTF8.self) }) else {
            return try invalid("purpose: Field required", anthropic: false)
        }
        guard purpose == "batch" else { return try invalid("purpose: the mock takes only 'batch' files", anthropic: false) }
        guard let file = parts.first(where: { $0.name == "file" }) else { return try invalid("file: Field required", anthropic: false) }
        let id = batchStore.addFile(file.content, name: file.fileName ?? "upload")
        return try json(.ok, .object(["id": .string(id), "object": "file", "bytes": .number(Double(file.content.count)),
                                      "created_at": .number(Date().timeIntervalSince1970.rounded()), "filename": .string(file.fileName ?? "upload"),
                                      "purpose": "batch", "status": "processed"]))
    }

    func decodeJSON(_ bytes: some Collection<UInt8>) -> MockJSON? {
        try? decoder.decode(MockJSON.self, from: Data(bytes))
    }

    /// The answer a request would get alone, or the error it would get: (status, body).
    func batchAnswer(_ payload: MockJSON, anthropic: Bool) -> (Int, MockJSON) {
        func failure(_ status: Int, _ type: String, _ message: String) -> (Int, MockJSON) {
            (status, anthropic
                ? .object(["type": "error", "error": .object(["type": .string(type), "message": .string(message)])])
                : .object(["error": .object(["type": .string(type), "message": .string(message), "code": .null, "param": .null])]))
        }
        guard let name = payload["model"]?.string, let model = models[name] else {
            return failure(404, "not_found_error", "model '\(payload["model"]?.string ?? "")' not found")
        }
        guard model.isAnthropic == anthropic else { return failure(400, "invalid_request_error", "model '\(name)' is not served on this endpoint") }
        if payload["stream"]?.bool == true { return failure(400, "invalid_request_error", "stream: batch requests cannot stream") }
        if anthropic, payload["max_tokens"]?.number == nil { return failure(400, "invalid_request_error", "max_tokens: Field required") }
        let plan = MockPlan(request: payload, model: model, anthropic: anthropic, lengthTrace: settings.lengthTrace,
                            recorded: settings.recordedAnswers)
        return (200, anthropic ? plan.anthropicMessage() : plan.openAICompletion())
    }

    func createOpenAIBatch(_ request: EdgeRequest) throws -> EdgeResponse {
        guard let body = decodeJSON(request.body.readableBytesView) else { return try invalid("body is not valid JSON", anthropic: false) }
        guard let fileID = body["input_file_id"]?.string else { return try invalid("input_file_id: Field required", anthropic: false) }
        guard let endpoint = body["endpoint"]?.string, endpoint == "/v1/chat/completions" else {
            return try invalid("endpoint: the mock batches only /v1/chat/completions", anthropic: false)
        }
        guard body["completion_window"]?.string == "24h" else { return try invalid("completion_window: must be 24h", anthropic: false) }
        guard let file = batchStore.state.withLock({ $0.files[fileID] }) else {
            return try error(.notFound, anthropic: false, type: "invalid_request_error", message: "No such File object: \(fileID)")
        }
        var output: [MockJSON] = [], errors: [MockJSON] = [], seen = Set<String>(), model: String?
        let lines = file.bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true)
        guard !lines.isEmpty, lines.count <= 50_000 else { return try invalid("the input file must hold 1 to 50,000 requests", anthropic: false) }
        for (index, bytes) in lines.enumerated() {
            guard let line = decodeJSON(bytes), let customID = line["custom_id"]?.string, let payload = line["body"],
                  line["method"]?.string == "POST", line["url"]?.string == endpoint else {
                return try invalid("line \(index + 1) of the input file is not a batch request", anthropic: false)
            }
            guard seen.insert(customID).inserted else { return try invalid("custom_id '\(customID)' is not unique", anthropic: false) }
            // Like OpenAI: one model per batch.
            if let model, payload["model"]?.string != model { return try invalid("a batch must use one model", anthropic: false) }
            model = payload["model"]?.string
            let (status, answer) = batchAnswer(payload, anthropic: false)
            let entry: MockJSON = .object(["id": .string("batch_req_\(index)"), "custom_id": .string(customID),
                                           "response": .object(["status_code": .number(Double(status)), "request_id": .string("req_\(index)"),
                                                                "body": answer]), "error": .null])
            if status == 200 { output.append(entry) } else { errors.append(entry) }
        }
        let batch = MockBatchStore.Batch(id: batchStore.nextID("batch_"), anthropic: false, created: .now,
                                         createdAt: Int(Date().timeIntervalSince1970), duration: batchDuration(requests: lines.count),
                                         inputFileID: fileID, endpoint: endpoint, total: lines.count, output: output, errors: errors)
        batchStore.add(batch)
        return try json(.ok, view(batch))
    }

    func createAnthropicBatch(_ request: EdgeRequest) throws -> EdgeResponse {
        guard let body = decodeJSON(request.body.readableBytesView) else { return try invalid("body is not valid JSON", anthropic: true) }
        guard let requests = body["requests"]?.array, (1...100_000).contains(requests.count) else {
            return try invalid("requests: must hold 1 to 100,000 requests", anthropic: true)
        }
        var results: [MockJSON] = [], seen = Set<String>()
        for (index, item) in requests.enumerated() {
            guard let customID = item["custom_id"]?.string, let params = item["params"] else {
                return try invalid("requests.\(index): custom_id and params are required", anthropic: true)
            }
            guard (1...64).contains(customID.utf8.count),
                  customID.utf8.allSatisfy({ $0 == 0x2D || $0 == 0x5F || (0x30...0x39).contains($0) || (0x41...0x5A).contains($0) || (0x61...0x7A).contains($0) })
            else { return try invalid("requests.\(index).custom_id: must match ^[a-zA-Z0-9_-]{1,64}$", anthropic: true) }
            guard seen.insert(customID).inserted else { return try invalid("custom_id '\(customID)' is not unique", anthropic: true) }
            let (status, answer) = batchAnswer(params, anthropic: true)
            results.append(.object(["custom_id": .string(customID), "result": status == 200
                ? .object(["type": "succeeded", "message": answer])
                : .object(["type": "errored", "error": answer])]))
        }
        let batch = MockBatchStore.Batch(id: batchStore.nextID("msgbatch_"), anthropic: true, created: .now,
                                         createdAt: Int(Date().timeIntervalSince1970), duration: batchDuration(requests: requests.count),
                                         endpoint: "/v1/messages", total: requests.count, output: results, errors: [])
        batchStore.add(batch)
        return try json(.ok, view(batch))
    }

    func storedBatch(_ id: String, anthropic: Bool) -> MockBatchStore.Batch? {
        batchStore.state.withLock { $0.batches[id] }.flatMap { $0.anthropic == anthropic ? $0 : nil }
    }

    func batchNotFound(_ id: String, anthropic: Bool) throws -> EdgeResponse {
        try error(.notFound, anthropic: anthropic, type: anthropic ? "not_found_error" : "invalid_request_error", message: "No such batch: \(id)")
    }

    func batchView(_ id: String, anthropic: Bool) throws -> EdgeResponse {
        guard let batch = storedBatch(id, anthropic: anthropic) else { return try batchNotFound(id, anthropic: anthropic) }
        return try json(.ok, view(batch))
    }

    func cancelBatch(_ id: String, anthropic: Bool) throws -> EdgeResponse {
        let batch = batchStore.state.withLock { state -> MockBatchStore.Batch? in
            guard var batch = state.batches[id], batch.anthropic == anthropic else { return nil }
            if batch.cancelled == nil, ContinuousClock.now - batch.created < batch.duration {
                batch.cancelled = .now
                state.cancelled += 1
            }
            state.batches[id] = batch
            return batch
        }
        guard let batch else { return try batchNotFound(id, anthropic: anthropic) }
        return try json(.ok, view(batch))
    }

    /// How far a batch has come: its share of its duration, or nil once it ended (1 when cancelled).
    func progress(_ batch: MockBatchStore.Batch) -> Double? {
        if let cancelled = batch.cancelled, ContinuousClock.now - cancelled >= .milliseconds(10) { return nil }
        let elapsed = ContinuousClock.now - batch.created
        guard elapsed < batch.duration else { return nil }
        return batch.duration == .zero ? nil : elapsed / batch.duration
    }

    func view(_ batch: MockBatchStore.Batch) -> MockJSON {
        let progress = progress(batch)
        let ended = progress == nil
        let cancelled = batch.cancelled != nil
        let endedAt: MockJSON = ended ? .number(Double(batch.createdAt) + batch.duration / .seconds(1)) : .null
        if batch.anthropic {
            let succeeded = cancelled ? 0 : batch.output.filter { $0["result"]?["type"]?.string == "succeeded" }.count
            let errored = cancelled ? 0 : batch.total - succeeded
            return .object([
                "id": .string(batch.id), "type": "message_batch", "processing_status": .string(ended ? "ended" : (cancelled ? "canceling" : "in_progress")),
                "request_counts": .object(["processing": .number(Double(ended ? 0 : batch.total)), "succeeded": .number(Double(ended ? succeeded : 0)),
                                           "errored": .number(Double(ended ? errored : 0)), "canceled": .number(Double(ended && cancelled ? batch.total : 0)),
                                           "expired": 0]),
                "created_at": .string(Self.iso8601(batch.createdAt)), "ended_at": ended ? .string(Self.iso8601(batch.createdAt)) : .null,
                "expires_at": .string(Self.iso8601(batch.createdAt + 86_400)), "archived_at": .null,
                "cancel_initiated_at": cancelled ? .string(Self.iso8601(batch.createdAt)) : .null,
                "results_url": ended ? .string("/v1/messages/batches/\(batch.id)/results") : .null,
            ])
        }
        let status: String = switch progress {
        case nil: cancelled ? "cancelled" : "completed"
        case let share? where share < 0.05: "validating"
        case let share? where share > 0.95: "finalizing"
        default: cancelled ? "cancelling" : "in_progress"
        }
        let done = ended && !cancelled
        let outputFile: MockJSON = done && !batch.output.isEmpty ? .string(fileID(batch, "output")) : .null
        let errorFile: MockJSON = done && !batch.errors.isEmpty ? .string(fileID(batch, "errors")) : .null
        return .object([
            "id": .string(batch.id), "object": "batch", "endpoint": .string(batch.endpoint), "errors": .null,
            "input_file_id": .string(batch.inputFileID ?? ""), "completion_window": "24h", "status": .string(status),
            "output_file_id": outputFile, "error_file_id": errorFile, "created_at": .number(Double(batch.createdAt)),
            "completed_at": done ? endedAt : .null, "cancelled_at": ended && cancelled ? endedAt : .null,
            "request_counts": .object(["total": .number(Double(batch.total)), "completed": .number(Double(done ? batch.output.count : 0)),
                                       "failed": .number(Double(done ? batch.errors.count : 0))]),
            "metadata": .null,
        ])
    }

    /// A finished OpenAI batch's output or error file, stored on first ask.
    func fileID(_ batch: MockBatchStore.Batch, _ kind: String) -> String {
        let id = "file-\(batch.id)-\(kind)"
        let lines = kind == "output" ? batch.output : batch.errors
        batchStore.state.withLock { state in
            guard state.files[id] == nil else { return }
            var bytes: [UInt8] = []
            for line in lines {
                bytes += (try? encoder.encode(line)).map(Array.init) ?? []
                bytes.append(UInt8(ascii: "\n"))
            }
            state.files[id] = (bytes, batch.createdAt, "\(kind).jsonl")
            state.fileOrder.append(id)
            state.fileBytes += bytes.count
        }
        return id
    }

    func anthropicResults(_ id: String) throws -> EdgeResponse {
        guard let batch = storedBatch(id, anthropic: true) else { return try batchNotFound(id, anthropic: true) }
        guard progress(batch) == nil else { return try invalid("batch \(id) is still processing", anthropic: true) }
        var body = ByteBuffer()
        for line in batch.output {
            let result: MockJSON = batch.cancelled != nil
                ? .object(["custom_id": line["custom_id"] ?? .null, "result": .object(["type": "canceled"])]) : line
            body.writeBytes((try? encoder.encode(result)) ?? Data())
            body.writeString("\n")
        }
        return EdgeResponse(status: .ok, headers: [.contentType: "application/binary"], body: .buffer(body))
    }

    static func iso8601(_ seconds: Int) -> String {
        Date(timeIntervalSince1970: TimeInterval(seconds)).formatted(.iso8601)
    }

    /// The boundary of a `multipart/form-data` content type.
    static func boundary(_ contentType: String) -> String? {
        guard contentType.lowercased().hasPrefix("multipart/form-data") else { return nil }
        for parameter in contentType.split(separator: ";").dropFirst() {
            let pair = parameter.split(separator: "=", maxSplits: 1)
            guard pair.count == 2, trimmed(pair[0]).lowercased() == "boundary" else { continue }
            let value = trimmed(pair[1], also: "\"")
            return (1...200).contains(value.utf8.count) ? value : nil
        }
        return nil
    }

    /// `text` without the spaces and tabs (and `also`) at its ends.
    static func trimmed(_ text: Substring, also: Character? = nil) -> String {
        let drop: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == also }
        return String(text.drop(while: drop).reversed().drop(while: drop).reversed())
    }

    struct Part {
        var name: String?
        var fileName: String?
        var content: [UInt8]
    }

    /// The parts of a multipart body (RFC 7578); a malformed part is skipped.
    static func multipartParts(_ body: [UInt8], boundary: String) -> [Part] {
        let delimiter = Array("--\(boundary)".utf8)
        var parts: [Part] = []
        var ranges: [Range<Int>] = []
        var search = body[...]
        while let found = search.firstRange(of: delimiter) {
            ranges.append(found)
            search = body[found.upperBound...]
        }
        for (start, end) in zip(ranges, ranges.dropFirst()) {
            var content = body[start.upperBound..<end.lowerBound]
            // The delimiter's line break before, and the part's own after the delimiter.
            if content.starts(with: [13, 10]) { content = content.dropFirst(2) }
            if content.last == 10 { content = content.dropLast() }
            if content.last == 13 { content = content.dropLast() }
            guard let split = content.firstRange(of: [13, 10, 13, 10]) else { continue }
            let head = String(decoding: content[content.startIndex..<split.lowerBound], as: UTF8.self)
            var part = Part(content: Array(content[split.upperBound...]))
            for line in head.split(separator: "\r\n") where line.lowercased().hasPrefix("content-disposition:") {
                for parameter in line.split(separator: ";").dropFirst() {
                    let pair = parameter.split(separator: "=", maxSplits: 1)
                    guard pair.count == 2 else { continue }
                    let value = trimmed(pair[1], also: "\"")
                    switch trimmed(pair[0]).lowercased() {
                    case "name": part.name = value
                    case "filename": part.fileName = value
                    default: break
                    }
                }
            }
            parts.append(part)
        }
        return parts
    }
}
