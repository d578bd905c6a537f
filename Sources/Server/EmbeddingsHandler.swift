import Embeddings
import HTTPTypes
import HTTPEdge
import NIOCore
import Stages
import SwitchyardCore
import SwitchyardModels

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Whether the gateway serves on-device embeddings.
public enum EmbeddingsSetting: Sendable {
    /// Serve `/v1/embeddings` from the model in this folder.
    case model(directory: String)
    /// Answer `/v1/embeddings` with 503 and this reason (the model could not be fetched or loaded).
    case unavailable(String)
    /// No embeddings endpoint behaviour beyond a 503 saying it is off.
    case disabled
}

/// `POST /v1/embeddings` in the OpenAI format, served by the in-process MiniLM encoder.
struct EmbeddingsHandler: Sendable {
    static let modelName = "all-MiniLM-L6-v2"
    static let aliases: Set<String> = ["all-MiniLM-L6-v2", "local-embedding", "sentence-transformers/all-MiniLM-L6-v2"]
    static let maximumInputs = 2048
    /// Tokens per request (after each input is cut to the model's 256): past it, 400. The encoder runs on the
    /// gateway's own CPU, so one request must not hold it for long.
    static let maximumTokens = 65_536
    /// Inputs up to this many bytes in all are tokenised where the request runs (its event loop); larger ones on
    /// the thread pool, so a big batch does not hold the loop.
    static let inlineTokenizeBytes = 16 << 10

    let batcher: EmbeddingBatcher?
    let unavailableReason: String
    let auth: AuthStage
    let maxBodyBytes: Int

    func handle(_ request: EdgeRequest) async -> EdgeResponse {
        let requestID = ChatHandler.makeRequestID()
        do {
            _ = try auth.authenticate(ChatHandler.credential(request))
            let json = try ChatHandler.readJSON(request, limit: maxBodyBytes)
            let parsed = try Self.parse(json)
            guard let batcher else { throw GatewayError(.overloaded, "embeddings are unavailable: \(unavailableReason)") }
            let tokenizer = batcher.encoder.tokenizer
            let inputs = parsed.inputs
            let ids: [[Int32]]
            if inputs.reduce(0, { $0 + $1.utf8.count }) <= Self.inlineTokenizeBytes {
                ids = inputs.map(tokenizer.encode)
            } else {
                ids = try await Offload.run { inputs.map(tokenizer.encode) }
            }
            let tokens = ids.reduce(0) { $0 + $1.count }
            guard tokens <= Self.maximumTokens else {
                throw GatewayError(.invalidRequest, "input: at most \(Self.maximumTokens) tokens per request, got \(tokens)",
                                   param: "input")
            }
            let vectors = await batcher.embed(ids)
            let data: [JSONValue] = vectors.enumerated().map { index, vector in
                let embedding: JSONValue = parsed.base64 ? .string(Self.base64(vector)) : .array(vector.map { .double(Double($0)) })
                return ["object": "embedding", "index": .int(Int64(index)), "embedding": embedding]
            }
            let response: JSONValue = [
                "object": "list", "data": .array(data), "model": .string(Self.modelName),
                "usage": ["prompt_tokens": .int(Int64(tokens)), "total_tokens": .int(Int64(tokens))],
            ]
            return EdgeResponse(status: .ok, headers: [
                .contentType: "application/json", .requestID: requestID, .switchyardModel: Self.modelName,
                .switchyardCost: NanoUSD.zero.usdString,
            ], body: .buffer(ByteBuffer(bytes: response.serialized())))
        } catch {
            let gatewayError = error as? GatewayError ?? GatewayError(.internalError, "internal error")
            return ErrorRenderer.response(for: gatewayError, format: .openAI, requestID: requestID)
        }
    }

    struct Parsed {
        var inputs: [String]
        var base64: Bool
    }

    static func parse(_ json: JSONValue) throws(GatewayError) -> Parsed {
        guard let object = json.objectValue else { throw GatewayError(.invalidRequest, "request body must be a JSON object") }
        guard let model = object["model"]?.stringValue else {
            throw GatewayError(.invalidRequest, "model: is required", param: "model")
        }
        guard aliases.contains(model) else {
            throw GatewayError(.modelNotFound, "embedding model '\(model)' does not exist; use '\(modelName)' (alias 'local-embedding')",
                               param: "model")
        }
        var inputs: [String]
        switch object["input"] {
        case .string(let text)?:
            inputs = [text]
        case .array(let elements)?:
            inputs = []
            for (index, element) in elements.enumerated() {
                guard case .string(let text) = element else {
                    let kind = element.intValue != nil || element.arrayValue != nil ? "token-id arrays are not supported; send text"
                        : "expected a string, got \(element.typeName)"
                    throw GatewayError(.invalidRequest, "input[\(index)]: \(kind)", param: "input")
                }
                inputs.append(text)
            }
            guard !inputs.isEmpty else { throw GatewayError(.invalidRequest, "input: must not be an empty array", param: "input") }
            guard inputs.count <= maximumInputs else {
                throw GatewayError(.invalidRequest, "input: at most \(maximumInputs) inputs per request, got \(inputs.count)", param: "input")
            }
        case nil, .null?:
            throw GatewayError(.invalidRequest, "input: is required", param: "input")
        case let other?:
            throw GatewayError(.invalidRequest, "input: expected a string or an array of strings, got \(other.typeName)", param: "input")
        }
        var base64 = false
        switch object["encoding_format"] {
        case nil, .null?, .string("float")?: break
        case .string("base64")?: base64 = true
        default: throw GatewayError(.invalidRequest, "encoding_format: must be 'float' or 'base64'", param: "encoding_format")
        }
        if let dimensions = object["dimensions"], !dimensions.isNull, dimensions.intValue != 384 {
            throw GatewayError(.invalidRequest, "dimensions: \(modelName) produces 384 dimensions", param: "dimensions")
        }
        return Parsed(inputs: inputs, base64: base64)
    }

    /// Little-endian float32 bytes, base64-encoded, as OpenAI's `encoding_format: base64`.
    static func base64(_ vector: [Float]) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(vector.count * 4)
        for value in vector {
            let bits = value.bitPattern.littleEndian
            bytes.append(contentsOf: [UInt8(bits & 0xFF), UInt8((bits >> 8) & 0xFF), UInt8((bits >> 16) & 0xFF), UInt8(bits >> 24)])
        }
        return Data(bytes).base64EncodedString()
    }
}
