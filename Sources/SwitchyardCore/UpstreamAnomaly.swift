/// Something an upstream sent that the gateway refused to trust as is: clamped, rejected, or the connection
/// closed. A bounded set, so each kind is a metric label (`switchyard_upstream_anomalies_total{kind}`).
public enum UpstreamAnomaly: String, Sendable, CaseIterable {
    /// A usage count out of range (negative, over `Usage.maximumTokens`, cached tokens over the prompt), clamped.
    case usage
    /// A `retry-after` or `retry-after-ms` that is not a finite, non-negative number of a sane size.
    case retryAfter = "retry_after"
    /// Bytes that arrived when no request was waiting, or after the end of an answer: the connection was closed.
    case unsolicitedBytes = "unsolicited_bytes"
    /// An answer that does not parse as HTTP/1.1 (head, length or chunk framing).
    case malformedResponse = "malformed_response"
    /// An answer whose body stopped short of its length, or a stream that went silent past its idle timeout.
    case stalledBody = "stalled_body"
}

/// Counts upstream anomalies. Called from event loops: implementations must be cheap and never block.
public protocol UpstreamAnomalyRecorder: Sendable {
    func upstreamAnomaly(_ anomaly: UpstreamAnomaly)
}
