import Foundation
import Limits
import HTTPTypes
import HTTPEdge
import NIOCore
import ServerSentEvents
public import SwitchyardCore
public import SwitchyardModels

/// The one place a `GatewayError` becomes an HTTP status and an OpenAI or Anthropic error envelope.
public enum ErrorRenderer {
    /// The HTTP status for an error, as the client's API would answer it.
    public static func status(for error: GatewayError, format: APIFormat) -> Int {
        error.httpStatus(for: format)
    }

    /// The error `type` string each API uses for a code.
    static func type(for error: GatewayError, format: APIFormat) -> String {
        switch (format, error.code) {
        case (.anthropic, .invalidRequest), (.anthropic, .unsupportedMediaType): "invalid_request_error"
        case (.anthropic, .unauthenticated): "authentication_error"
        case (.anthropic, .permissionDenied): "permission_error"
        case (.anthropic, .modelNotFound), (.anthropic, .notFound): "not_found_error"
        case (.anthropic, .payloadTooLarge): "request_too_large"
        case (.anthropic, .rateLimited): "rate_limit_error"
        case (.anthropic, .overloaded), (.anthropic, .queueTimeout): "overloaded_error"
        case (.anthropic, .upstreamTimeout), (.anthropic, .upstreamError), (.anthropic, .internalError): "api_error"
        case (.openAI, .invalidRequest), (.openAI, .modelNotFound), (.openAI, .notFound), (.openAI, .payloadTooLarge),
             (.openAI, .unsupportedMediaType): "invalid_request_error"
        case (.openAI, .unauthenticated): "authentication_error"
        case (.openAI, .permissionDenied): "permission_error"
        case (.openAI, .rateLimited), (.openAI, .queueTimeout): "rate_limit_error"
        case (.openAI, .overloaded), (.openAI, .upstreamTimeout), (.openAI, .upstreamError), (.openAI, .internalError):
            "server_error"
        }
    }

    /// The error envelope's JSON in the client's format.
    public static func body(for error: GatewayError, format: APIFormat, requestID: String) -> JSONValue {
        switch format {
        case .openAI:
            return ["error": [
                "message": .string(error.message), "type": .string(type(for: error, format: format)),
                "param": error.param.map { .string($0) } ?? .null, "code": .string(error.code.rawValue),
            ]]
        case .anthropic:
            return ["type": "error", "error": ["type": .string(type(for: error, format: format)), "message": .string(error.message)],
                    "request_id": .string(requestID)]
        }
    }

    /// A complete error response.
    static func response(for error: GatewayError, format: APIFormat, requestID: String) -> EdgeResponse {
        var headers: HTTPFields = [.contentType: "application/json", .requestID: requestID]
        if let retryAfter = error.retryAfter {
            // Whole seconds, at least 1; the nanosecond count saturates, so any `Duration` renders.
            let seconds = max(1, (retryAfter.nanoseconds / 1_000_000_000) + (retryAfter.nanoseconds % 1_000_000_000 > 0 ? 1 : 0))
            headers[.retryAfter] = String(seconds)
        }
        addDegradedHeader(error.limits, to: &headers)
        let bytes = body(for: error, format: format, requestID: requestID).serialized()
        return EdgeResponse(status: .init(code: status(for: error, format: format)), headers: headers,
                            headerLines: error.limits.flatMap { rateLimitHeaderLines($0, format: format) }, body: .buffer(ByteBuffer(bytes: bytes)))
    }

    /// The API's own rate-limit headers: OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (reset as
    /// a duration, "1s", "6m0s"), Anthropic's `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}` (reset
    /// as an RFC 3339 time), written as header lines (`EdgeResponse.headerLines`): the names are static text, with no
    /// reference count for the threads to share. Nil when no limit applied.
    public static func rateLimitHeaderLines(_ status: LimitStatus, format: APIFormat, now: Double = Date().timeIntervalSince1970) -> ByteBuffer? {
        guard status.requests != nil || status.tokens != nil else { return nil }
        var lines = ByteBufferAllocator().buffer(capacity: 360)
        func line(_ name: StaticString, _ value: String) {
            lines.writeStaticString(name)
            lines.writeStaticString(": ")
            lines.writeString(value)
            lines.writeStaticString("\r\n")
        }
        func counter(_ counter: LimitStatus.Counter?, _ limit: StaticString, _ remaining: StaticString, _ reset: StaticString) {
            guard let counter else { return }
            line(limit, String(counter.limit))
            line(remaining, String(counter.remaining))
            line(reset, format == .openAI ? openAIDuration(counter.resetIn) : rfc3339(now + Double(max(counter.resetIn, 0)) / 1e9))
        }
        // Each name written out: a table of them would be an array to retain on every answer.
        if format == .openAI {
            counter(status.requests, "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")
            counter(status.tokens, "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")
        } else {
            counter(status.requests, "anthropic-ratelimit-requests-limit", "anthropic-ratelimit-requests-remaining",
                    "anthropic-ratelimit-requests-reset")
            counter(status.tokens, "anthropic-ratelimit-tokens-limit", "anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-tokens-reset")
        }
        return lines
    }

    /// `x-switchyard-degraded`, when the limits refused and a degradation step answered.
    static func addDegradedHeader(_ status: LimitStatus?, to headers: inout HTTPFields) {
        if let degraded = status?.degraded { headers.append(HTTPField(name: .switchyardDegraded, value: degraded.rawValue)) }
    }

    /// "350ms", "1s", "6m0s", "1h2m3s" (OpenAI's style), rounded up to what a client may wait.
    static func openAIDuration(_ nanoseconds: Int64) -> String {
        let nanoseconds = max(nanoseconds, 0)
        if nanoseconds < 1_000_000_000 { return "\((nanoseconds + 999_999) / 1_000_000)ms" }
        let seconds = nanoseconds / 1_000_000_000 + (nanoseconds % 1_000_000_000 > 0 ? 1 : 0)
        let hours = seconds / 3600, minutes = seconds % 3600 / 60, rest = seconds % 60
        if hours > 0 { return "\(hours)h\(minutes)m\(rest)s" }
        if minutes > 0 { return "\(minutes)m\(rest)s" }
        return "\(rest)s"
    }

    static func rfc3339(_ unixSeconds: Double) -> String {
        // Up to the last second of year 9999 (and a NaN as 1970): the conversion cannot trap.
        let seconds = unixSeconds.isNaN ? 0 : Int64(min(max(unixSeconds.rounded(.up), 0), 253_402_300_799))
        let days = seconds >= 0 ? seconds / 86400 : (seconds + 1) / 86400 - 1
        let (year, month, day) = CalendarPeriod.civil(fromDays: days)
        let inDay = seconds - days * 86400
        func two(_ value: Int64) -> String { value < 10 ? "0\(value)" : "\(value)" }
        return "\(year)-\(two(month))-\(two(day))T\(two(inDay / 3600)):\(two(inDay % 3600 / 60)):\(two(inDay % 60))Z"
    }

    /// The event that ends a failed stream, so that a cut stream never looks like a clean finish.
    static func streamEvent(for error: GatewayError, format: APIFormat, requestID: String) -> ServerSentEvent {
        let bytes = body(for: error, format: format, requestID: requestID).serialized()
        var data = ByteBuffer()
        data.writeBytes(bytes)
        return ServerSentEvent(event: format == .anthropic ? "error" : nil, data: data)
    }
}

extension HTTPField.Name {
    static let requestID = HTTPField.Name("x-request-id")!
    static let switchyardModel = HTTPField.Name("x-switchyard-model")!
    static let switchyardRoute = HTTPField.Name("x-switchyard-route")!
    static let switchyardComplexity = HTTPField.Name("x-switchyard-complexity")!
    static let switchyardCascade = HTTPField.Name("x-switchyard-cascade")!
    static let switchyardCascadeConfidence = HTTPField.Name("x-switchyard-cascade-confidence")!
    static let switchyardCost = HTTPField.Name("x-switchyard-cost-usd")!
    static let switchyardCache = HTTPField.Name("x-switchyard-cache")!
    static let switchyardCacheSimilarity = HTTPField.Name("x-switchyard-cache-similarity")!
    static let switchyardCacheEntry = HTTPField.Name("x-switchyard-cache-entry")!
    static let switchyardDegraded = HTTPField.Name("x-switchyard-degraded")!
    static let apiKey = HTTPField.Name("x-api-key")!
}
