import HTTPTypes
import Synchronization

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Provider-style limits per API key and model, as the real APIs enforce them (OpenAI's and Anthropic's limits are
/// per model): requests per minute and tokens per minute
/// (prompt tokens plus `max_tokens`, counted when the request arrives), each a token bucket that refills
/// continuously. A refused request gets 429 with `retry-after` and the provider's rate-limit headers.
public struct MockLimits: Sendable, Hashable {
    public var requestsPerMinute: Int?
    public var tokensPerMinute: Int?

    public init(requestsPerMinute: Int? = nil, tokensPerMinute: Int? = nil) {
        self.requestsPerMinute = requestsPerMinute
        self.tokensPerMinute = tokensPerMinute
    }

    public var isEmpty: Bool { requestsPerMinute == nil && tokensPerMinute == nil }
}

/// The buckets of every key. Thread-safe.
final class MockRateLimiter: Sendable {
    struct Bucket {
        var level: Double
        var updated: ContinuousClock.Instant
    }

    struct Decision {
        var allowed: Bool
        /// How long until the refused request would fit.
        var retryAfter: Double
        var remainingRequests: Int?
        var remainingTokens: Int?
        /// Seconds until each bucket is full again.
        var resetRequests: Double
        var resetTokens: Double
    }

    let limits: MockLimits
    private let buckets = Mutex([String: (requests: Bucket, tokens: Bucket)]())

    init(limits: MockLimits) { self.limits = limits }

    /// Keys tracked at once: callers choose their keys, so the map is bounded.
    static let maximumKeys = 100_000

    func admit(key: String, tokens: Int, now: ContinuousClock.Instant = .now) -> Decision {
        let rpm = limits.requestsPerMinute.map(Double.init) ?? .infinity
        let tpm = limits.tokensPerMinute.map(Double.init) ?? .infinity
        return buckets.withLock { all in
            var entry = all[key] ?? (Bucket(level: rpm, updated: now), Bucket(level: tpm, updated: now))
            func refill(_ bucket: inout Bucket, capacity: Double) {
                let elapsed = bucket.updated.duration(to: now)
                let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
                bucket.level = min(capacity, bucket.level + seconds * capacity / 60)
                bucket.updated = now
            }
            refill(&entry.requests, capacity: rpm)
            refill(&entry.tokens, capacity: tpm)
            let cost = Double(tokens)
            var retry = 0.0
            if entry.requests.level < 1 { retry = max(retry, (1 - entry.requests.level) * 60 / rpm) }
            if entry.tokens.level < cost {
                // A request larger than the whole bucket never fits: wait for a full bucket, as the APIs say.
                retry = max(retry, (min(cost, tpm) - entry.tokens.level) * 60 / tpm)
            }
            let allowed = entry.requests.level >= 1 && entry.tokens.level >= cost
            if allowed {
                entry.requests.level -= 1
                entry.tokens.level -= cost
            }
            if all.count >= Self.maximumKeys && all[key] == nil {
                // Full: forget the keys whose buckets have refilled (a full bucket is what a new key gets anyway).
                all = all.filter { now - $0.value.requests.updated < .seconds(60) }
            }
            if all.count < Self.maximumKeys || all[key] != nil { all[key] = entry }
            return Decision(
                allowed: allowed, retryAfter: retry,
                remainingRequests: rpm.isFinite ? Int(entry.requests.level) : nil,
                remainingTokens: tpm.isFinite ? Int(max(0, entry.tokens.level)) : nil,
                resetRequests: rpm.isFinite ? (rpm - entry.requests.level) * 60 / rpm : 0,
                resetTokens: tpm.isFinite ? (tpm - entry.tokens.level) * 60 / tpm : 0)
        }
    }

    /// The rate-limit headers of OpenAI (`x-ratelimit-*`) or Anthropic (`anthropic-ratelimit-*`).
    func headers(_ decision: Decision, anthropic: Bool) -> HTTPFields {
        var fields = HTTPFields()
        func add(_ name: String, _ value: String) { fields[HTTPField.Name(name)!] = value }
        if !decision.allowed { add("retry-after", String(max(1, Int(decision.retryAfter.rounded(.up))))) }
        /// One bucket's three headers, named as each provider names them (`kind`: requests or tokens).
        func bucket(_ kind: String, limit: Int?, remaining: Int?, reset: Double) {
            guard let limit, let remaining else { return }
            if anthropic {
                add("anthropic-ratelimit-\(kind)-limit", "\(limit)")
                add("anthropic-ratelimit-\(kind)-remaining", "\(remaining)")
                add("anthropic-ratelimit-\(kind)-reset", Date(timeIntervalSinceNow: reset).formatted(.iso8601))
            } else {
                add("x-ratelimit-limit-\(kind)", "\(limit)")
                add("x-ratelimit-remaining-\(kind)", "\(remaining)")
                add("x-ratelimit-reset-\(kind)", Self.openAIDuration(reset))
            }
        }
        bucket("requests", limit: limits.requestsPerMinute, remaining: decision.remainingRequests, reset: decision.resetRequests)
        bucket("tokens", limit: limits.tokensPerMinute, remaining: decision.remainingTokens, reset: decision.resetTokens)
        return fields
    }

    /// OpenAI writes resets as `1s`, `6m0s`, `120ms`.
    static func openAIDuration(_ seconds: Double) -> String {
        if seconds < 1 { return "\(Int((seconds * 1000).rounded(.up)))ms" }
        let whole = Int(seconds.rounded(.up))
        return whole >= 60 ? "\(whole / 60)m\(whole % 60)s" : "\(whole)s"
    }
}
