/// How an attempt failed, as far as trying again is concerned.
public enum AttemptFailure: Sendable, Hashable {
    /// The same deployment may answer later: 429, 5xx, 529, a refused or dropped connection, a first-token timeout.
    case retryable
    /// This deployment will not answer it (its key is refused, it does not serve the model): another may.
    case deployment
    /// Nobody will (the request is invalid, too large): neither a retry nor a fallback is made.
    case request

    /// The kind of an upstream HTTP status.
    public init(status: Int) {
        switch status {
        case 408, 429, 500...599: self = .retryable
        case 401, 403, 404: self = .deployment
        default: self = .request
        }
    }
}

/// When to try an upstream again: exponential backoff with full jitter (a delay drawn uniformly from zero to
/// `base · 2^(n−1)`, capped, after the n-th failure), never sooner than the upstream's `retry-after`, within a number
/// of attempts and the request's deadline. Times are nanoseconds on the caller's clock; the randomness is passed in.
public struct RetryPolicy: Sendable, Hashable {
    /// Attempts on one deployment, the first included (1: no retry).
    public var maximumAttempts: Int
    public var base: Int64
    public var cap: Int64
    /// A `retry-after` longer than this is not waited for: the next candidate is tried instead.
    public var maximumRetryAfter: Int64

    public init(maximumAttempts: Int = 3, base: Int64 = 100_000_000, cap: Int64 = 5_000_000_000,
                maximumRetryAfter: Int64 = 10_000_000_000) {
        self.maximumAttempts = max(1, maximumAttempts)
        self.base = max(0, base)
        self.cap = max(0, cap)
        self.maximumRetryAfter = max(0, maximumRetryAfter)
    }

    /// The ceiling of the jittered delay after `failures` failures (1 for the first): `base · 2^(failures−1)`,
    /// capped, without overflow for any count.
    public func ceiling(afterFailures failures: Int) -> Int64 {
        guard failures >= 1 else { return 0 }
        let exponent = min(failures - 1, 62)
        let (scaled, overflow) = base.multipliedReportingOverflow(by: Int64(1) << exponent)
        return overflow ? cap : min(scaled, cap)
    }
}

/// One request's retries against one deployment: a value the attempt loop asks after every failure.
public struct RetryState: Sendable, Hashable {
    public enum Decision: Sendable, Hashable {
        /// Try the same deployment again after this many nanoseconds.
        case retry(after: Int64)
        /// Stop trying this deployment.
        case stop(Reason)
    }

    public enum Reason: String, Sendable, Hashable {
        /// The failure is not one that a retry can cure.
        case notRetryable = "not_retryable"
        case attemptsExhausted = "attempts_exhausted"
        /// The retry would start at or after the request's deadline.
        case deadline
        /// The upstream asked for a longer wait than the policy allows.
        case retryAfterTooLong = "retry_after_too_long"
    }

    public let policy: RetryPolicy
    /// Absolute, on the caller's clock; nil: none.
    public let deadline: Int64?
    public private(set) var failures = 0

    public init(policy: RetryPolicy, deadline: Int64?) {
        self.policy = policy
        self.deadline = deadline
    }

    /// After a failed attempt at `now`: whether, and when, to try again. `unit`: a random number in [0, 1).
    /// `retryAfter`: what the upstream asked for, in nanoseconds (already range-checked where it was parsed).
    public mutating func afterFailure(_ failure: AttemptFailure, retryAfter: Int64?, now: Int64, unit: Double) -> Decision {
        failures += 1
        guard failure == .retryable else { return .stop(.notRetryable) }
        guard failures < policy.maximumAttempts else { return .stop(.attemptsExhausted) }
        if let retryAfter, retryAfter > policy.maximumRetryAfter { return .stop(.retryAfterTooLong) }
        let share = unit.isFinite ? min(max(unit, 0), 1) : 0
        let jittered = Int64(Double(policy.ceiling(afterFailures: failures)) * share)
        let delay = max(jittered, max(retryAfter ?? 0, 0))
        if let deadline {
            let (start, overflow) = now.addingReportingOverflow(delay)
            if overflow || start >= deadline { return .stop(.deadline) }
        }
        return .retry(after: delay)
    }
}
