public import SwitchyardModels

/// The one error type of the gateway: a bounded code (usable as a metric label), a client-safe message,
/// and what the edge needs to render it: its HTTP status here, its envelopes in `Server/ErrorRenderer.swift`.
public struct GatewayError: Error, Sendable, CustomStringConvertible, Hashable {
    /// The kind of failure; `rawValue` doubles as metric label.
    public enum Code: String, Sendable, CaseIterable {
        case invalidRequest = "invalid_request"
        case unauthenticated
        case permissionDenied = "permission_denied"
        case modelNotFound = "model_not_found"
        case notFound = "not_found"
        case payloadTooLarge = "payload_too_large"
        case unsupportedMediaType = "unsupported_media_type"
        case rateLimited = "rate_limited"
        case overloaded
        /// The request waited for its deployment's budget past its priority's deadline, or a full queue had no
        /// place for it: OpenAI 429, Anthropic 529.
        case queueTimeout = "queue_timeout"
        case upstreamTimeout = "upstream_timeout"
        case upstreamError = "upstream_error"
        case internalError = "internal_error"
    }

    public var code: Code
    /// Safe to show the client: no secrets, no upstream body.
    public var message: String
    /// Honoured by clients and by the retry stage.
    public var retryAfter: Duration?
    /// The HTTP status an upstream answered with, when this error relays one.
    public var upstreamStatus: Int?
    /// The key path of the offending field, for invalid requests.
    public var param: String?
    /// For a rate-limit refusal: the limits' state, for the API's rate-limit headers.
    public var limits: LimitStatus?

    public init(_ code: Code, _ message: String, retryAfter: Duration? = nil, upstreamStatus: Int? = nil,
                param: String? = nil) {
        self.code = code
        self.message = message
        self.retryAfter = retryAfter
        self.upstreamStatus = upstreamStatus
        self.param = param
    }

    /// Whether another attempt might succeed.
    public var isRetryable: Bool { [.upstreamTimeout, .upstreamError, .overloaded, .rateLimited, .queueTimeout].contains(code) }

    public var description: String { "GatewayError.\(code.rawValue): \(message)" }
}

extension GatewayError {
    /// The HTTP status for this error, as the client's API would answer it.
    public func httpStatus(for format: APIFormat) -> Int {
        switch code {
        case .invalidRequest:
            if let status = upstreamStatus, (400..<500).contains(status) { return status }
            return 400
        case .unauthenticated: return 401
        case .permissionDenied: return 403
        case .modelNotFound, .notFound: return 404
        case .payloadTooLarge: return 413
        case .unsupportedMediaType: return 415
        case .rateLimited: return 429
        case .overloaded: return format == .anthropic ? 529 : 503
        case .queueTimeout: return format == .anthropic ? 529 : 429
        case .upstreamTimeout: return 504
        case .upstreamError:
            if let status = upstreamStatus, (500..<600).contains(status) { return status }
            return 502
        case .internalError: return 500
        }
    }
}
