import Caching
import Embeddings
import HTTPEdge
import HTTPTypes
import NIOCore
import NIOHTTP1
import Stages
import Stores
import SwitchyardCore
import SwitchyardModels

/// The on-device encoder behind the semantic cache (batched with concurrent requests, off the cooperative pool).
/// Sheds load: when more than `maximumQueuedTokens` wait for the encoder, the semantic cache is skipped for the request
/// rather than making it wait (on 2 cores the encoder does roughly 5,000–8,000 tokens of long text a second).
struct BatcherEmbedder: TextEmbedder {
    let batcher: EmbeddingBatcher
    var maximumQueuedTokens = 2048

    func embed(_ text: String) async -> [Float]? {
        await batcher.embed([batcher.encoder.tokenizer.encode(text)], unlessQueuedTokensExceed: maximumQueuedTokens)?.first
    }
}

/// `POST /v1/cache/feedback` and `DELETE /v1/cache`.
struct CacheAdminHandler: Sendable {
    let exact: any ExactCacheStore
    let semantic: any SemanticCacheStore
    let auth: AuthStage
    /// SHA-256 of `SWITCHYARD_ADMIN_KEY`; without it `DELETE /v1/cache` is refused.
    let adminKeyHash: String?
    let recorder: any CacheRecorder
    /// Where a verdict becomes a label for the learned verifier's threshold (nil: no calibration).
    var calibration: SemanticCalibration? = nil
    /// The same, shared by every instance (feedback through any of them labels a hit served by another).
    var sharedCalibration: SharedCalibration? = nil

    /// `{"entry_id": "sc_…", "verdict": "bad" | "good"}`: a bad verdict removes the entry and counts a false hit.
    /// Only the tenant the entry belongs to can judge it.
    func feedback(_ request: EdgeRequest) async -> EdgeResponse {
        let requestID = ChatHandler.makeRequestID()
        do {
            let caller = try auth.authenticate(ChatHandler.credential(request))
            let json = try ChatHandler.readJSON(request, limit: 1 << 16)
            guard let id = json["entry_id"]?.stringValue else {
                throw GatewayError(.invalidRequest, "entry_id: is required (the x-switchyard-cache-entry of a semantic hit)",
                                   param: "entry_id")
            }
            guard let verdict = json["verdict"]?.stringValue, ["bad", "good"].contains(verdict) else {
                throw GatewayError(.invalidRequest, "verdict: must be 'bad' or 'good'", param: "verdict")
            }
            var removed = false
            // A label for the threshold that served it (known only for hits the learned verifier judged).
            let labelled = if let sharedCalibration {
                await sharedCalibration.feedback(entryID: id, tenant: caller.tenant, correct: verdict == "good")
            } else {
                calibration?.feedback(entryID: id, tenant: caller.tenant, correct: verdict == "good") == true
            }
            if labelled { recorder.calibrationLabelled(source: .feedback) }
            if verdict == "bad" {
                if let entry = semantic.remove(id: id) {
                    if entry.answer.tenant != caller.tenant {
                        semantic.insert(entry)  // not this caller's to judge: put it back, and say nothing of it
                        throw GatewayError(.notFound, "no cache entry '\(id)'")
                    }
                    removed = true
                    recorder.falseHitReported()
                } else {
                    throw GatewayError(.notFound, "no cache entry '\(id)'")
                }
            }
            return json200(["entry_id": .string(id), "verdict": .string(verdict), "removed": .bool(removed),
                            "labelled": .bool(labelled)], requestID)
        } catch {
            return ErrorRenderer.response(for: error as? GatewayError ?? GatewayError(.internalError, "internal error"),
                                          format: .openAI, requestID: requestID)
        }
    }

    /// Removes cached answers of `?tenant=NAME`, or all; needs `Authorization: Bearer <SWITCHYARD_ADMIN_KEY>`.
    /// The refusal of a request without the admin key (nil: it has it): 403 when none is configured, 401 otherwise.
    static func refuseUnlessAdmin(_ request: EdgeRequest, adminKeyHash: String?, endpoint: String, requestID: String) -> EdgeResponse? {
        guard let adminKeyHash else {
            return ErrorRenderer.response(for: GatewayError(.permissionDenied, "no admin key is configured (SWITCHYARD_ADMIN_KEY)"),
                                          format: .openAI, requestID: requestID)
        }
        guard let credential = ChatHandler.credential(request), KeyHash.sha256Hex(credential) == adminKeyHash else {
            return ErrorRenderer.response(for: GatewayError(.unauthenticated, "\(endpoint) needs the admin key"),
                                          format: .openAI, requestID: requestID)
        }
        return nil
    }

    func clear(_ request: EdgeRequest) async -> EdgeResponse {
        let requestID = ChatHandler.makeRequestID()
        if let refusal = Self.refuseUnlessAdmin(request, adminKeyHash: adminKeyHash, endpoint: "DELETE /v1/cache", requestID: requestID) {
            return refusal
        }
        let tenant = Self.query(request.head.uri, "tenant")
        let exactRemoved: Int
        do {
            exactRemoved = try await exact.removeAll(tenant: tenant)
        } catch {
            return ErrorRenderer.response(for: GatewayError(.overloaded, "the exact cache's store is unavailable: \(error)"),
                                          format: .openAI, requestID: requestID)
        }
        let removed = exactRemoved + semantic.removeAll(tenant: tenant)
        return json200(["deleted": .int(Int64(removed)), "tenant": tenant.map { .string($0) } ?? .null], requestID)
    }

    func json200(_ body: JSONValue, _ requestID: String) -> EdgeResponse {
        EdgeResponse(status: .ok, headers: [.contentType: "application/json", .requestID: requestID],
                     body: .buffer(ByteBuffer(bytes: body.serialized())))
    }

    /// A query parameter's value (percent-decoding `%XX` and `+`).
    static func query(_ uri: String, _ name: String) -> String? {
        guard let start = uri.firstIndex(of: "?") else { return nil }
        for pair in uri[uri.index(after: start)...].split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            guard parts.first == Substring(name) else { continue }
            return decode(parts.count > 1 ? String(parts[1]) : "")
        }
        return nil
    }

    static func decode(_ text: String) -> String {
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8).makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "+") {
                bytes.append(0x20)
            } else if byte == UInt8(ascii: "%"), let high = iterator.next(), let low = iterator.next(),
                      let value = UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16) {
                bytes.append(value)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
